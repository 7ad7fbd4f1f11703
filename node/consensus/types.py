"""Values of the consensus core: steps, votes, proposals, certificates, evidence, sign state.

These mirror the protobuf messages in proto/clearline/v1/block.proto and wal.proto field for field;
the runtime converts at the network and WAL boundary. Everything here is a frozen, slotted value.
Heights, rounds, powers, addresses and block ids are named aliases of int/bytes (aliases rather than
NewTypes so the runtime can pass decoded protobuf fields without wrapping each one).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TypeAlias

Height: TypeAlias = int
"""A block height (the first block is height 1)."""
Round: TypeAlias = int
"""A round within a height, from 0."""
Power: TypeAlias = int
"""Voting power of a validator (a positive integer)."""
Address: TypeAlias = bytes
"""A validator address (node.crypto.address_of of its public key)."""
BlockId: TypeAlias = bytes
"""A block hash; `None` stands for nil wherever a block id is optional."""

NO_ROUND: Round = -1
"""`pol_round`, `locked_round` and `valid_round` when there is none."""


class Step(IntEnum):
    """The step within a round; numbers as in block.proto `Step`."""

    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3


class VoteType(IntEnum):
    """The kind of vote; numbers as in block.proto `VoteType`."""

    PREVOTE = 1
    PRECOMMIT = 2


def step_of(vote_type: VoteType) -> Step:
    """The step in which a vote of this type is signed."""
    return Step.PREVOTE if vote_type is VoteType.PREVOTE else Step.PRECOMMIT


@dataclass(frozen=True, slots=True)
class Vote:
    """A signed prevote or precommit (block.proto `Vote`)."""

    type: VoteType
    """Prevote or precommit."""
    height: Height
    """Height voted on."""
    round: Round
    """Round voted in."""
    block_id: BlockId | None
    """The block voted for; None is a vote for nil."""
    validator: Address
    """Address of the signer."""
    signature: bytes = b""
    """Signature over node.crypto.vote_payload(type, height, round, block_id or b'')."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """A signed block proposal (block.proto `Proposal`)."""

    height: Height
    """Height proposed for."""
    round: Round
    """Round proposed in."""
    pol_round: Round
    """Round of the proof of lock (2f+1 prevotes) for this block, or -1 for a fresh proposal."""
    block_id: BlockId
    """Hash of `block`."""
    block: object
    """The block itself; opaque to the core (the Application builds and validates it)."""
    proposer: Address
    """Address of the proposer; must be the proposer of (height, round)."""
    signature: bytes = b""
    """Signature over node.crypto.proposal_payload(height, round, pol_round, block_id)."""


@dataclass(frozen=True, slots=True)
class CommitCertificate:
    """More than 2/3 of the voting power precommitted `block_id` in `round` (block.proto)."""

    height: Height
    """The decided height."""
    round: Round
    """The round whose precommits decided it."""
    block_id: BlockId
    """The decided block."""
    signatures: tuple[tuple[Address, bytes], ...]
    """(validator address, precommit signature), sorted by address."""


@dataclass(frozen=True, slots=True)
class DuplicateVoteEvidence:
    """Two different signed votes of one validator for the same height, round and type."""

    vote_a: Vote
    """The vote seen first."""
    vote_b: Vote
    """The conflicting vote."""

    @property
    def validator(self) -> Address:
        """The equivocating validator."""
        return self.vote_a.validator


Evidence: TypeAlias = DuplicateVoteEvidence
"""The kinds of evidence (block.proto `Evidence` oneof); only duplicate votes so far."""


@dataclass(frozen=True, slots=True)
class TimeoutConfig:
    """Timeouts in milliseconds; each grows linearly: base + delta * round (never exponentially)."""

    propose_ms: int = 3000
    """Wait for the proposal in round 0."""
    propose_delta_ms: int = 500
    """Added per round to the propose timeout."""
    prevote_ms: int = 1000
    """Wait after 2f+1 prevotes of any value, in round 0."""
    prevote_delta_ms: int = 500
    """Added per round to the prevote timeout."""
    precommit_ms: int = 1000
    """Wait after 2f+1 precommits of any value, in round 0."""
    precommit_delta_ms: int = 500
    """Added per round to the precommit timeout."""

    def propose(self, round_: Round) -> int:
        """timeoutPropose(round)."""
        return self.propose_ms + self.propose_delta_ms * round_

    def prevote(self, round_: Round) -> int:
        """timeoutPrevote(round)."""
        return self.prevote_ms + self.prevote_delta_ms * round_

    def precommit(self, round_: Round) -> int:
        """timeoutPrecommit(round)."""
        return self.precommit_ms + self.precommit_delta_ms * round_

    def for_step(self, step: Step, round_: Round) -> int:
        """The timeout of `step` in `round_`."""
        if step is Step.PROPOSE:
            return self.propose(round_)
        if step is Step.PREVOTE:
            return self.prevote(round_)
        return self.precommit(round_)


@dataclass(frozen=True, slots=True)
class SignState:
    """What a validator persists before its signature leaves it (wal.proto `LastSigned`).

    After a restart it is handed back to the core, which then never signs a message that conflicts
    with the last signed (height, round, step) and keeps its lock.
    """

    height: Height
    """Height of the last signed message."""
    round: Round
    """Round of the last signed message."""
    step: Step
    """PROPOSE for a proposal, PREVOTE or PRECOMMIT for a vote."""
    block_id: BlockId | None
    """Block id of the last signed message (None: a nil vote)."""
    signature: bytes
    """The signature produced, so the identical message can be re-sent after a restart."""
    locked_round: Round
    """-1 if not locked."""
    locked_block_id: BlockId | None
    """The locked block, if any."""
    valid_round: Round
    """-1 if no valid value."""
    valid_block_id: BlockId | None
    """The valid value, if any."""

    def position(self) -> tuple[Height, Round, Step]:
        """The (height, round, step) it protects, ordered like the protocol advances."""
        return (self.height, self.round, self.step)
