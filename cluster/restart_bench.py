"""Restart cost against chain length: kill -9 a validator at height ~1,000 and at height >= 50,000,
restart it, and time how long until it signs and commits again.

    python -m cluster.restart_bench [--heights 1000,50000] [--validators 1] [--repeats 5]

A single-validator network builds a long chain fastest (no network round trips), and restart cost
is a property of one node: opening LevelDB, reading the tip, the sign state and the WAL of the
height in progress. The kill lands anywhere in a height, so each height gets several restarts.
Prints one JSON object: per restart, the height at the kill, seconds from restart to the process
serving and to its next committed block; per target height, the median and max of the latter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.launcher import Launcher, node_height, stop_nodes_on_sigterm
from cluster.netgen import init_network
from cluster.ports import free_base_port
from node.config import ConsensusConfig


def _kill_and_restart(launcher: Launcher, node: Any, target: int) -> dict[str, Any]:
    """kill -9 the node, start it, and time until it serves and until it commits a new block."""
    at = node_height(node.api_target, 0.5, tls=launcher.network.client_tls()) or 0
    launcher.kill(node.name)
    t0 = time.monotonic()
    launcher.start(node.name)
    serving = None
    while True:
        seen = node_height(node.api_target, 0.5, tls=launcher.network.client_tls())
        now = time.monotonic() - t0
        if seen is not None and serving is None:
            serving = now
        if seen is not None and seen > at:
            break
        if now > 60:
            break
        time.sleep(0.01)
    # Let it run on a little before the next kill.
    deadline = time.monotonic() + 10
    while (
        node_height(node.api_target, 0.5, tls=launcher.network.client_tls()) or 0
    ) < at + 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    return {
        "target": target,
        "height": at,
        "serving_s": round(serving or -1, 3),
        "next_commit_s": round(now, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="restart_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--heights", default="1000,50000")
    p.add_argument("--validators", type=int, default=1)
    p.add_argument("--home", default="")
    p.add_argument("--repeats", type=int, default=5, help="restarts at each height (the kill lands anywhere)")
    args = p.parse_args(argv)
    stop_nodes_on_sigterm()
    targets = [int(h) for h in args.heights.split(",")]
    consensus = dataclasses.replace(ConsensusConfig(), timeout_commit_ms=0, create_empty_blocks_interval_ms=0)
    results = []
    with tempfile.TemporaryDirectory(prefix="clearline-restart-") as tmp:
        home = Path(args.home) if args.home else Path(tmp) / "net"
        net = init_network(home, validators=args.validators, base_port=free_base_port(args.validators),
                           consensus=consensus, force=True)  # fmt: skip
        launcher = Launcher(net)
        node = net.nodes[-1]
        try:
            launcher.start_all()
            started = time.monotonic()
            for target in targets:
                while (node_height(node.api_target, 0.5, tls=launcher.network.client_tls()) or 0) < target:
                    time.sleep(0.5)
                    h = node_height(node.api_target, 0.5, tls=launcher.network.client_tls()) or 0
                    rate = h / max(1e-6, time.monotonic() - started)
                    print(f"\rheight {h} ({rate:.0f} blocks/s) -> {target}", end="", file=sys.stderr)
                print(file=sys.stderr)
                for _ in range(args.repeats):
                    results.append(_kill_and_restart(launcher, node, target))
        finally:
            launcher.stop_all()
    summary = {}
    for target in targets:
        mine = [r["next_commit_s"] for r in results if r["target"] == target]
        summary[str(target)] = {"median_s": statistics.median(mine), "max_s": max(mine)} if mine else {}
    print(json.dumps({"validators": args.validators, "restarts": results, "next_commit": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
