"""Events into the core, actions out of it, the injected interfaces, and why input is dropped.

The runtime feeds `Event`s to `Tendermint.step` and carries out the returned `Action`s in list
order. A `Persist` always precedes the `Broadcast` of the own signed message it protects, so the
runtime must make the Persist durable (fsync) before it sends anything that follows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol, TypeAlias

from node.consensus.types import (
    Address,
    BlockId,
    CommitCertificate,
    DuplicateVoteEvidence,
    Evidence,
    Height,
    Proposal,
    Round,
    SignState,
    Step,
    Vote,
)
from node.consensus.validators import ValidatorSet

# --- injected interfaces ---------------------------------------------------------------------------


class Signer(Protocol):
    """Signs this validator's messages (the node: Ed25519 via node.crypto; the simulator: a fake)."""

    address: Address

    def sign_vote(self, vote: Vote) -> bytes:
        """Signature over the vote's canonical payload (its `signature` field is empty)."""
        ...

    def sign_proposal(self, proposal: Proposal) -> bytes:
        """Signature over the proposal's canonical payload (its `signature` field is empty)."""
        ...


class Application(Protocol):
    """Builds and validates blocks (synchronous; may cache by block id)."""

    def propose_block(self, height: Height, round: Round) -> tuple[BlockId, object]:
        """A new block to propose at (height, round): (its id, the block)."""
        ...

    def validate_block(self, height: Height, block_id: BlockId, block: object) -> bool:
        """Whether `block` is a valid block for `height` whose id is `block_id`."""
        ...


# --- events -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProposalReceived:
    """A proposal from a peer, its signature already verified by the runtime."""

    proposal: Proposal


@dataclass(frozen=True, slots=True)
class VoteReceived:
    """A vote from a peer, its signature already verified by the runtime."""

    vote: Vote


@dataclass(frozen=True, slots=True)
class TimeoutFired:
    """A timeout scheduled by `ScheduleTimeout` expired."""

    height: Height
    round: Round
    step: Step


@dataclass(frozen=True, slots=True)
class CommitReceived:
    """Catch-up: a certificate (signatures verified by the runtime) and block for the current height."""

    certificate: CommitCertificate
    block: object


@dataclass(frozen=True, slots=True)
class StartHeight:
    """The previous height's block is durably committed; start `height` with this validator set."""

    height: Height
    validators: ValidatorSet


Event: TypeAlias = ProposalReceived | VoteReceived | TimeoutFired | CommitReceived | StartHeight

# --- actions ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Persist:
    """Durably store the sign state (and the block its message refers to) BEFORE the next Broadcast.

    `block` is the body of the block the newly signed message refers to (the proposed block, or the
    block voted for when it is known), None for nil votes. The runtime keeps such blocks by id so it
    can hand `locked_block` / `valid_block` back to the core after a restart.
    """

    sign_state: SignState
    block: object | None


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send a signed message (own proposal or vote, or evidence) to all peers."""

    message: Proposal | Vote | Evidence


@dataclass(frozen=True, slots=True)
class ScheduleTimeout:
    """Feed `TimeoutFired(height, round, step)` back after `delay_ms`."""

    height: Height
    round: Round
    step: Step
    delay_ms: int


@dataclass(frozen=True, slots=True)
class Decide:
    """`block_id` is decided at `height`; commit it durably, then feed StartHeight(height + 1)."""

    height: Height
    round: Round
    block_id: BlockId
    block: object
    certificate: CommitCertificate


@dataclass(frozen=True, slots=True)
class RecordEvidence:
    """A validator equivocated: keep the evidence, gossip it and include it in a block."""

    evidence: DuplicateVoteEvidence


Action: TypeAlias = Persist | Broadcast | ScheduleTimeout | Decide | RecordEvidence

# --- why input was dropped ---------------------------------------------------------------------------


class DropReason(Enum):
    """Why the core ignored an event (a bad or stale message is dropped, never raised)."""

    STALE_HEIGHT = "message for a past height"
    FUTURE_HEIGHT = "message for a height more than one ahead"
    BUFFER_FULL = "next-height buffer is full"
    ROUND_TOO_FAR = "round too far ahead of the current round"
    NOT_A_VALIDATOR = "sender is not in the validator set"
    WRONG_PROPOSER = "proposal not from the proposer of its round"
    BAD_POL_ROUND = "pol_round not in [-1, round)"
    BAD_VOTE = "malformed vote (type, negative round)"
    DUPLICATE = "already have this message"
    TOO_MANY_VOTES = "validator already voted for too many different values in this round"
    TOO_MANY_PROPOSALS = "too many conflicting proposals for this round"
    STALE_TIMEOUT = "timeout for a (height, round, step) that has passed"
    ALREADY_DECIDED = "this height is already decided"
    BAD_CERTIFICATE = "certificate is not for this height or lacks > 2/3 of the power"


@dataclass(frozen=True, slots=True)
class Dropped:
    """The core ignored the last event, and why."""

    reason: DropReason
    detail: str = ""
