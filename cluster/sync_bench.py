"""Block sync against the live commit rate, on the same chain.

    python -m cluster.sync_bench [--validators 4] [--duration 20] [--rate R | --max]

Builds a chain under load exactly as `clearline bench` does (pre-signed transfers, open loop; the
live rate is what that run committed), stops the load, then wipes one validator's data directory
and restarts it: it rejoins by block sync, verifying each block's commit certificate and executing
it. Times the catch-up to the height the chain had when the load stopped and prints one JSON
object: live and sync rates in blocks/s and tx/s and their ratios (the target: at least 3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.bench import _warm, make_network, presign, run_load
from cluster.launcher import Launcher, node_height, stop_nodes_on_sigterm
from cluster.progress import Progress


def run(args: argparse.Namespace) -> dict[str, Any]:
    rate = None if args.max else float(args.rate)
    total = int((4000 if rate is None else rate) * args.duration)
    with tempfile.TemporaryDirectory(prefix="clearline-sync-bench-") as tmp:
        home = Path(args.home) if args.home else Path(tmp) / "net"
        print(f"sync bench: {args.validators} validators, pre-signing {total} transfers...", file=sys.stderr)
        network = make_network(home, args.validators, args.accounts)
        plan = presign(network, args.accounts, total)
        launcher = Launcher(network)
        try:
            launcher.start_all()
            launcher.wait_until(_warm(network, args.validators), timeout=90, what="connected and committing")
            start_height = node_height(network.nodes[0].api_target, tls=network.client_tls()) or 0
            live = asyncio.run(run_load(network, plan, rate, args.duration, False))
            tip = node_height(network.nodes[0].api_target, tls=network.client_tls()) or 0
            last = network.nodes[-1]
            launcher.stop(last.name)
            data = Path(last.home) / "data"
            shutil.rmtree(data)
            data.mkdir()
            started = time.perf_counter()
            launcher.start(last.name)
            deadline = started + args.timeout
            with Progress(f"{last.name} syncing", tip) as bar:
                while (synced := node_height(last.api_target, tls=network.client_tls()) or 0) < tip:
                    if time.perf_counter() > deadline:
                        raise SystemExit(
                            f"sync bench: {last.name} did not reach height {tip} in {args.timeout}s"
                        )
                    bar.update(completed=synced, status=f"height {synced} of {tip}")
                    time.sleep(0.05)
                took = time.perf_counter() - started
                bar.update(completed=tip)
        finally:
            launcher.stop_all()
    live_blocks = max(tip - start_height, 1)
    live_span = live["span_s"]
    result = {
        "validators": args.validators,
        "offered_tx_per_s": rate if rate is not None else "max",
        "chain_height": tip,
        "chain_txs": live["committed"],
        "live_tx_per_s": live["committed_tx_per_s"],
        "live_blocks_per_s": round(live_blocks / live_span, 1),
        "sync_seconds": round(took, 2),
        "sync_tx_per_s": round(live["committed"] / took, 1),
        "sync_blocks_per_s": round(tip / took, 1),
    }
    result["ratio_tx"] = round(result["sync_tx_per_s"] / max(result["live_tx_per_s"], 1e-9), 2)
    result["ratio_blocks"] = round(result["sync_blocks_per_s"] / max(result["live_blocks_per_s"], 1e-9), 2)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.sync_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--validators", type=int, default=4)
    p.add_argument("--duration", type=float, default=20, help="seconds of load that build the chain")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=float, default=1000, help="offered transactions per second")
    mode.add_argument("--max", action="store_true", help="offer as much as the network takes")
    p.add_argument("--accounts", type=int, default=400)
    p.add_argument("--timeout", type=float, default=300, help="seconds the wiped validator may take")
    p.add_argument("--home", default="", help="network directory (default: a temporary one)")
    args = p.parse_args(argv)
    stop_nodes_on_sigterm()
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
