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
from typing import Final

THRESHOLDS: Final = (50_000, 20, 100)


def tune_gc() -> None:
    """Apply the node's collector thresholds to this process."""
    gc.set_threshold(*THRESHOLDS)
