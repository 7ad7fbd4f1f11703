"""node.gctune: the collector settings of a node and the watch on its pauses."""

from __future__ import annotations

import gc
import time

from node import gctune


def test_pause_watch_counts_every_pass_and_logs_only_slow_ones() -> None:
    logged: list[str] = []
    watch = gctune.PauseWatch(logged.append)
    watch("start", {"generation": 0})
    watch("stop", {"generation": 0, "collected": 3})
    assert logged == [] and watch.pauses[0][0] == 1
    watch("start", {"generation": 2})
    time.sleep(gctune.SLOW_COLLECTION_S * 1.5)
    watch("stop", {"generation": 2, "collected": 7})
    assert len(logged) == 1 and "generation 2" in logged[0] and "(7 collected)" in logged[0]
    count, seconds = watch.pauses[2]
    assert count == 1 and seconds >= gctune.SLOW_COLLECTION_S


def test_pause_watch_sees_real_collections() -> None:
    watch = gctune.PauseWatch()
    gc.callbacks.append(watch)
    try:
        gc.collect(1)
    finally:
        gc.callbacks.remove(watch)
    assert watch.pauses.get(1, (0, 0.0))[0] >= 1
