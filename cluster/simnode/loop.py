"""A deterministic asyncio event loop in simulated time.

The loop's selector never blocks: when no callback is ready, time jumps to the next scheduled one
(`asyncio.sleep`, `call_later`, `wait_for` timeouts all run on the loop's clock), so a simulation
runs as fast as the CPU allows and the same program with the same seed takes the same steps. A
selector asked to wait with nothing scheduled means every task waits for something that can never
happen: that is a deadlock, reported as an error rather than a hang. No real I/O may be registered.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class SimulationDeadlock(RuntimeError):
    """Nothing is ready and nothing is scheduled, yet the simulation was asked to go on."""


class _VirtualSelector(selectors.BaseSelector):
    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop
        self._map: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        # The loop's self-pipe (for call_soon_threadsafe) is the only file it registers.
        key = selectors.SelectorKey(
            fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(), events, data
        )
        self._map[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._map.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationDeadlock("every task waits and no timer is scheduled")
        self._loop.advance(max(0.0, timeout))
        return []

    def get_map(self) -> Any:
        return self._map

    def close(self) -> None:
        self._map.clear()


class SimLoop(asyncio.SelectorEventLoop):
    """asyncio on a simulated clock that starts at `start` seconds."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        super().__init__(selector=_VirtualSelector(self))
        self.slow_callback_duration = 1e9  # simulated time: wall-clock slowness is not a warning

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds


class SimClock:
    """The node's Clock (node/clock.py) on a SimLoop: monotonic and wall time are the loop's time."""

    def __init__(self, loop: SimLoop, epoch: float = 1_800_000_000.0, skew: float = 0.0) -> None:
        self._loop = loop
        self._epoch = epoch
        self.skew = skew  # seconds this node's wall clock is off

    def monotonic(self) -> float:
        return self._loop.time()

    def time(self) -> float:
        return self._epoch + self._loop.time() + self.skew

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        return self._loop.call_later(delay, callback, *args)
