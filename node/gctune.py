"""Cyclic garbage collector settings for a validator process (and the benchmarks that model one).

A node allocates many short-lived objects per transaction (decoded messages, receipts, records),
almost none of them in reference cycles, and keeps a large, stable working set (the committed-state
cache, the mempool). With CPython's default thresholds (700, 10, 10) the collector runs a young
collection every 700 net allocations and regularly rescans the long-lived objects, which costs
about a tenth of the ledger's time per transfer (`make bench-ledger`). Larger thresholds keep the
same collector (cycles are still found) but run it far less often.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Final

THRESHOLDS: Final = (50_000, 20, 100)


def tune_gc() -> None:
    """Apply the node's collector thresholds to this process."""
    gc.set_threshold(*THRESHOLDS)


SLOW_COLLECTION_S: Final = 0.02


class PauseWatch:
    """Times the collector's passes (gc.callbacks): a long full collection stalls the event loop,
    and with it the node's votes; slow ones are logged and all are counted."""

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self._log = log
        self._started = 0.0
        self.pauses: dict[int, tuple[int, float]] = {}  # generation -> (count, seconds)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        gen = info.get("generation", 0)
        count, total = self.pauses.get(gen, (0, 0.0))
        self.pauses[gen] = (count + 1, total + took)
        if took >= SLOW_COLLECTION_S and self._log is not None:
            self._log(
                f"garbage collection of generation {gen} took {took * 1000:.0f} ms"
                f" ({info.get('collected', 0)} collected)"
            )
