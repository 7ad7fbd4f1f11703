"""`python -m cluster.prune_bench`, short: a pruning network and an archive network under the same
constant load. The pruning nodes' base follows the chain, they keep no more blocks than they should,
and hold fewer live bytes than the archive nodes; the JSON keeps the keys the docs quote. Disk
flatness itself needs minutes of load (docs/performance.md), not a CI run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

RETAIN = 100
SNAPSHOT_INTERVAL = RETAIN // 2  # the bench's: the oldest snapshot served keeps its block


def test_pruned_nodes_keep_their_window_and_less_than_archive_nodes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.prune_bench", "--minutes", "0.2", "--retain-blocks", str(RETAIN),
         "--rate", "150", "--accounts", "300", "--timeout-commit-ms", "10", "--sample-s", "2", "--json",
         "--home", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    pruned, archive = r["pruned"], r["archive"]
    for mode in (pruned, archive):
        assert {"first_bytes", "last_bytes", "growth_bytes_per_min", "samples", "live_bytes"} <= set(mode)
        assert all({"t_s", "height", "base", "bytes", "node_bytes"} <= set(s) for s in mode["samples"])
        assert mode["height"] > RETAIN + SNAPSHOT_INTERVAL, "too short a chain to prune"
    # The base follows the chain: the last RETAIN blocks, or back to the oldest snapshot served.
    assert archive["base_height"] == 1 and archive["blocks_kept"] >= archive["height"]
    assert (
        pruned["height"] - RETAIN + 1 - SNAPSHOT_INTERVAL
        <= pruned["base_height"]
        <= pruned["height"] - RETAIN + 1
    )
    bases = [s["base"] for s in pruned["samples"]]
    assert bases == sorted(bases) and bases[-1] > 1
    assert pruned["blocks_kept"] <= RETAIN + SNAPSHOT_INTERVAL + 20  # + what committed after the last sample
    # Old blocks and their indexes are gone: fewer live bytes, in the block table and overall.
    assert pruned["live_bytes_by_table"]["b"] < archive["live_bytes_by_table"]["b"]
    assert pruned["live_bytes"] < archive["live_bytes"]
