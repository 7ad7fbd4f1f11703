"""The runtime's clock: wall time, monotonic time, sleeps and timers from one injectable object.

The consensus core has no clock (its timeouts are actions the runtime schedules); the runtime's
loops (status, stall relay, the pause before the next height, block-sync back-offs) and its timers
read this one. `SystemClock` is asyncio's; `ManualClock` is logical time for tests: nothing
happens until the test calls `advance`, so a test of "a height stalled for a second" runs in
microseconds and cannot be flaky on a loaded machine.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds, for intervals (never goes back)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (block times)."""
        ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer: ...


def now_ms(clock: Clock) -> int:
    """Wall-clock milliseconds (a block's time)."""
    return int(clock.time() * 1000)


class SystemClock:
    """The real clock: time.time, time.monotonic and the running loop's timers."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback, *args)


class _ManualTimer:
    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Logical time for tests: `await advance(s)` moves time on, firing due timers and waking due
    sleepers in time order, and lets the woken tasks run before it returns."""

    def __init__(self, start: float = 1_000.0, wall: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._due: list[tuple[float, int, _ManualTimer, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def step_wall(self, seconds: float) -> None:
        """The wall clock jumps (a time source corrected or gone wrong); monotonic time does not."""
        self._wall_offset += seconds

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> _ManualTimer:
        timer = _ManualTimer()
        heapq.heappush(self._due, (self._now + max(0.0, delay), next(self._seq), timer, callback, args))
        return timer

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await fut
        finally:
            timer.cancel()

    async def advance(self, seconds: float, step: float = 0.01) -> None:
        """Move time on by `seconds` in steps of at most `step`, running what falls due."""
        end = self._now + seconds
        while True:
            await _settle()
            target = min(end, self._now + step)
            while self._due and self._due[0][0] <= target:
                at, _, timer, callback, args = heapq.heappop(self._due)
                self._now = max(self._now, at)
                if not timer.cancelled:
                    callback(*args)
                await _settle()
            self._now = target
            if self._now >= end:
                await _settle()
                return


async def _settle(rounds: int = 20) -> None:
    """Let ready tasks run (each round is one pass of the event loop)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def wait_event(clock: Clock, event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set or `seconds` of `clock` pass; True if it was set."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    try:
        await asyncio.wait([waiter, sleeper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        sleeper.cancel()
    return event.is_set()
