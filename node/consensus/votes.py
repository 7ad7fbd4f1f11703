"""Vote tallies of one height: power per block id per (round, type), equivocation detection.

Each validator counts once per (round, type): its first vote. A second, different vote for the same
(round, type) is not counted; it is returned as a conflict so the core can turn it into evidence.
The power of distinct validators heard from in each round (any message type) drives the f+1 round
skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from node.consensus.types import Address, BlockId, Power, Round, Vote, VoteType
from node.consensus.validators import ValidatorSet


class AddResult(Enum):
    """Outcome of adding a vote to a tally."""

    ADDED = "added"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"


@dataclass(slots=True)
class RoundVotes:
    """The votes of one type in one round."""

    votes: dict[Address, Vote] = field(default_factory=dict)
    """First vote of each validator."""
    power_by_block: dict[BlockId | None, Power] = field(default_factory=dict)
    """Power voting for each block id (None = nil)."""
    total: Power = 0
    """Power of all validators that voted, whatever their value."""

    def power_for(self, block_id: BlockId | None) -> Power:
        """Power that voted for block_id (None: nil)."""
        return self.power_by_block.get(block_id, 0)


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
        """Add a vote of a member; on CONFLICT also return the earlier vote it conflicts with."""
        rv = self.get(vote.round, vote.type)
        earlier = rv.votes.get(vote.validator)
        if earlier is not None:
            if earlier.block_id == vote.block_id:
                return AddResult.DUPLICATE, earlier
            return AddResult.CONFLICT, earlier
        power = self.validators.power_of(vote.validator)
        rv.votes[vote.validator] = vote
        rv.power_by_block[vote.block_id] = rv.power_by_block.get(vote.block_id, 0) + power
        rv.total += power
        self.note_sender(vote.round, vote.validator)
        return AddResult.ADDED, None
