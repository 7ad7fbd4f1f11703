"""The errors of the consensus core.

ConsensusError                 base; never raised for a bad peer message (those are dropped and
 |                             reported through `Tendermint.dropped`), only for caller mistakes
 +-- InvalidValidatorSet       empty set, duplicate address, non-positive power
 +-- InvalidRestoreState       a restored SignState that cannot belong to this validator/height
 +-- InvalidEvent              an event the core cannot accept in its current state (e.g. a
                               StartHeight that does not follow the decided height)
"""

from __future__ import annotations


class ConsensusError(Exception):
    """Base of the consensus core's errors."""


class InvalidValidatorSet(ConsensusError):
    """A validator set that cannot be used."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class InvalidRestoreState(ConsensusError):
    """A restored sign state inconsistent with the height the core starts at."""

    def __init__(self, problem: str, restored_height: int, height: int) -> None:
        super().__init__(f"{problem} (restored height {restored_height}, starting height {height})")
        self.problem = problem
        self.restored_height = restored_height
        self.height = height


class InvalidEvent(ConsensusError):
    """An event the caller must not feed in the core's current state."""

    def __init__(self, problem: str, event: object) -> None:
        super().__init__(f"{problem}: {event!r}")
        self.problem = problem
        self.event = event
