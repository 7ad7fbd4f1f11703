"""Which validator set signs which height: changes committed in block H take effect at H + 2.

The one place the rule lives. The runtime (node/chain.py, over the sets as the block store keeps them)
and the simulator (over core `ValidatorSet`s) both record every validator-set change a committed
block carries (`record_change`) and ask `validators_for(height)` when they feed `StartHeight` or
check a certificate. The delay of two heights means the set of
height H + 1 is already fixed when H + 1 starts (so its proposer and quorum are known to everyone
before the block that changed them is even committed everywhere), as in CometBFT.
"""

from __future__ import annotations

import bisect
from typing import Generic, TypeVar

from node.consensus.errors import InvalidEvent
from node.consensus.types import Height

ACTIVATION_DELAY = 2
"""A change committed at height H signs from height H + ACTIVATION_DELAY."""

S = TypeVar("S")


def activation_height(committed_at: Height) -> Height:
    """The first height signed by a set that block `committed_at` changed."""
    return committed_at + ACTIVATION_DELAY


class ValidatorSchedule(Generic[S]):
    """The validator set of every height, from the genesis set and the recorded changes. Generic in
    the set's representation: core `ValidatorSet`s in the simulator, the stored protobuf sets in
    the runtime."""

    __slots__ = ("_sets", "_starts")

    def __init__(self, genesis: S, first_height: Height = 1) -> None:
        self._starts: list[Height] = [first_height]
        self._sets: list[S] = [genesis]

    @property
    def last_change(self) -> Height:
        """The height the most recent recorded set takes effect."""
        return self._starts[-1]

    def record_change(self, committed_at: Height, new_set: S) -> Height:
        """Block `committed_at` changed the set to `new_set`; returns the height it takes effect."""
        effective = activation_height(committed_at)
        if effective <= self._starts[-1]:
            raise InvalidEvent("validator-set changes must be recorded in height order", committed_at)
        self._starts.append(effective)
        self._sets.append(new_set)
        return effective

    def validators_for(self, height: Height) -> S:
        """The set that proposes and votes at `height`."""
        if height < self._starts[0]:
            raise InvalidEvent("height before the genesis height", height)
        return self._sets[bisect.bisect_right(self._starts, height) - 1]
