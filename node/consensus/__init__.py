"""Pure Tendermint consensus core: events in, actions out (no I/O, clock or randomness).

Public surface (everything else is private):

- values: `Step`, `VoteType`, `Vote`, `Proposal`, `CommitCertificate`, `DuplicateVoteEvidence`,
  `Evidence`, `SignState`, `TimeoutConfig`, aliases `Height`, `Round`, `Power`, `Address`, `BlockId`;
- validators: `Validator`, `ValidatorSet`, `ValidatorSchedule` (changes take effect at H+2);
- injected interfaces: `Signer`, `Application`;
- events: `ProposalReceived`, `VoteReceived`, `TimeoutFired`, `CommitReceived`, `StartHeight`;
- actions: `Persist`, `Broadcast`, `ScheduleTimeout`, `Decide`, `RecordEvidence`;
- the state machine `Tendermint`, its drop reasons `Dropped`/`DropReason`, and the error tree rooted
  at `ConsensusError`.
"""

from node.consensus.errors import ConsensusError, InvalidEvent, InvalidRestoreState, InvalidValidatorSet
from node.consensus.messages import (
    Action,
    Application,
    Broadcast,
    CommitReceived,
    Decide,
    Dropped,
    DropReason,
    Event,
    Persist,
    ProposalReceived,
    RecordEvidence,
    ScheduleTimeout,
    Signer,
    StartHeight,
    TimeoutFired,
    VoteReceived,
)
from node.consensus.schedule import ACTIVATION_DELAY, ValidatorSchedule, activation_height
from node.consensus.tendermint import BUFFER_PER_SENDER, MAX_PROPOSALS_PER_ROUND, ROUND_WINDOW, Tendermint
from node.consensus.types import (
    NO_ROUND,
    Address,
    BlockId,
    CommitCertificate,
    DuplicateVoteEvidence,
    Evidence,
    Height,
    Power,
    Proposal,
    Round,
    SignState,
    Step,
    TimeoutConfig,
    Vote,
    VoteType,
)
from node.consensus.validators import Validator, ValidatorSet

__all__ = [
    "ACTIVATION_DELAY",
    "BUFFER_PER_SENDER",
    "MAX_PROPOSALS_PER_ROUND",
    "NO_ROUND",
    "ROUND_WINDOW",
    "Action",
    "Address",
    "Application",
    "BlockId",
    "Broadcast",
    "CommitCertificate",
    "CommitReceived",
    "ConsensusError",
    "Decide",
    "DropReason",
    "Dropped",
    "DuplicateVoteEvidence",
    "Event",
    "Evidence",
    "Height",
    "InvalidEvent",
    "InvalidRestoreState",
    "InvalidValidatorSet",
    "Persist",
    "Power",
    "Proposal",
    "ProposalReceived",
    "RecordEvidence",
    "Round",
    "ScheduleTimeout",
    "SignState",
    "Signer",
    "StartHeight",
    "Step",
    "Tendermint",
    "TimeoutConfig",
    "TimeoutFired",
    "Validator",
    "ValidatorSchedule",
    "ValidatorSet",
    "Vote",
    "VoteReceived",
    "VoteType",
    "activation_height",
]
