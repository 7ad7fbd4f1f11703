"""Vote tallies of one height: power per block id per (round, type), equivocation detection.

A validator's vote counts for every block id it signed (see `RoundVotes`), once per id; a second,
different vote for the same (round, type) is also returned as a conflict so the core can turn it
into evidence.
The power of distinct validators heard from in each round (any message type) drives the f+1 round
skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from node.consensus.types import Address, BlockId, Power, Round, Vote, VoteType
from node.consensus.validators import ValidatorSet

MAX_VALUES_PER_VALIDATOR = 3
"""Distinct block ids (nil included) counted per validator per (round, type); more are dropped."""


class AddResult(Enum):
    """Outcome of adding a vote to a tally."""

    ADDED = "added"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    """A second value of the same validator: evidence; still counted for its block id."""
    TOO_MANY = "too many values"


@dataclass(slots=True)
class RoundVotes:
    """The votes of one type in one round.

    "2f+1 votes for id(v)" counts every validator that signed a vote for id(v), even one that also
    signed another value (that signature is real, and quorum intersection still holds: two
    quorums for different values share > 1/3 of the power, hence a correct validator). "2f+1 votes
    of any value" and the f+1 round skip count each validator once.
    """

    votes: dict[Address, Vote] = field(default_factory=dict)
    """First vote of each validator."""
    by_block: dict[BlockId | None, dict[Address, Vote]] = field(default_factory=dict)
    """Every validator's vote for each block id (None = nil)."""
    power_by_block: dict[BlockId | None, Power] = field(default_factory=dict)
    """Power that voted for each block id."""
    values: dict[Address, int] = field(default_factory=dict)
    """How many distinct values each validator voted for."""
    total: Power = 0
    """Power of all validators that voted, whatever their value."""

    def power_for(self, block_id: BlockId | None) -> Power:
        """Power that voted for block_id (None: nil)."""
        return self.power_by_block.get(block_id, 0)

    def votes_for(self, block_id: BlockId | None) -> list[Vote]:
        """The votes for block_id, sorted by validator address."""
        return sorted(self.by_block.get(block_id, {}).values(), key=lambda v: v.validator)


@dataclass(slots=True)
class HeightVotes:
    """All votes of one height, and who was heard from in each round."""

    validators: ValidatorSet
    rounds: dict[tuple[Round, VoteType], RoundVotes] = field(default_factory=dict)
    senders: dict[Round, set[Address]] = field(default_factory=dict)
    sender_power: dict[Round, Power] = field(default_factory=dict)

    def get(self, round_: Round, vote_type: VoteType) -> RoundVotes:
        """The tally of (round, type), empty if nothing arrived."""
        rv = self.rounds.get((round_, vote_type))
        if rv is None:
            rv = self.rounds[(round_, vote_type)] = RoundVotes()
        return rv

    def prevotes(self, round_: Round) -> RoundVotes:
        """Prevotes of round_."""
        return self.get(round_, VoteType.PREVOTE)

    def precommits(self, round_: Round) -> RoundVotes:
        """Precommits of round_."""
        return self.get(round_, VoteType.PRECOMMIT)

    def note_sender(self, round_: Round, address: Address) -> None:
        """Count address as heard from in round_ (for the f+1 round skip)."""
        heard = self.senders.get(round_)
        if heard is None:
            heard = self.senders[round_] = set()
        if address not in heard:
            heard.add(address)
            self.sender_power[round_] = self.sender_power.get(round_, 0) + self.validators.power_of(address)

    def add(self, vote: Vote) -> tuple[AddResult, Vote | None]:
        """Add a vote of a member; on CONFLICT also return the validator's first vote."""
        rv = self.get(vote.round, vote.type)
        for_block = rv.by_block.get(vote.block_id)
        if for_block is not None and vote.validator in for_block:
            return AddResult.DUPLICATE, for_block[vote.validator]
        earlier = rv.votes.get(vote.validator)
        count = rv.values.get(vote.validator, 0)
        if count >= MAX_VALUES_PER_VALIDATOR:
            return AddResult.TOO_MANY, earlier
        power = self.validators.power_of(vote.validator)
        if for_block is None:
            for_block = rv.by_block[vote.block_id] = {}
        for_block[vote.validator] = vote
        rv.values[vote.validator] = count + 1
        rv.power_by_block[vote.block_id] = rv.power_by_block.get(vote.block_id, 0) + power
        if earlier is not None:
            return AddResult.CONFLICT, earlier
        rv.votes[vote.validator] = vote
        rv.total += power
        self.note_sender(vote.round, vote.validator)
        return AddResult.ADDED, None
