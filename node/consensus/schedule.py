"""Which validator set signs which height: changes committed in block H take effect at H + 2.

The runtime records every validator-set change a committed block carries (`record_change`) and asks
`validators_for(height)` when it feeds `StartHeight`. The delay of two heights means the set of
height H + 1 is already fixed when H + 1 starts (so its proposer and quorum are known to everyone
before the block that changed them is even committed everywhere), as in CometBFT.
"""

from __future__ import annotations

import bisect

from node.consensus.errors import InvalidEvent
from node.consensus.types import Height
from node.consensus.validators import ValidatorSet

ACTIVATION_DELAY = 2
"""A change committed at height H signs from height H + ACTIVATION_DELAY."""


class ValidatorSchedule:
    """The validator set of every height, from the genesis set and the recorded changes."""

    __slots__ = ("_sets", "_starts")

    def __init__(self, genesis: ValidatorSet, first_height: Height = 1) -> None:
        self._starts: list[Height] = [first_height]
        self._sets: list[ValidatorSet] = [genesis]

    def record_change(self, committed_at: Height, new_set: ValidatorSet) -> Height:
        """Block `committed_at` changed the set to `new_set`; returns the height it takes effect."""
        effective = committed_at + ACTIVATION_DELAY
        if effective <= self._starts[-1]:
            raise InvalidEvent("validator-set changes must be recorded in height order", committed_at)
        self._starts.append(effective)
        self._sets.append(new_set)
        return effective

    def validators_for(self, height: Height) -> ValidatorSet:
        """The set that proposes and votes at `height`."""
        if height < self._starts[0]:
            raise InvalidEvent("height before the genesis height", height)
        return self._sets[bisect.bisect_right(self._starts, height) - 1]
