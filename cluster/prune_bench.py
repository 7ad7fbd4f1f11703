"""Disk use of pruning nodes under a constant load, next to archive nodes under the same load.

    python -m cluster.prune_bench [--minutes 10] [--retain-blocks 1000] [--rate 300] [--validators 4]
                                  [--modes pruned,archive] [--no-client-refs] [--sample-s 10]
                                  [--warmup-minutes M] [--json]

For each mode, a fresh network (every node pruning with [storage] retain_blocks, or every node keeping
every block) takes pre-signed transfers at a constant rate (open loop, as `clearline bench --rate`)
for the given minutes. Every --sample-s seconds the size of each node's data directory (block store,
WAL, sign state, snapshots) is read from the file system with the chain's height and the node's base
height. After the run the nodes are stopped and each store's live bytes (keys and values, by table)
are counted, which LevelDB's files hold plus what compaction has not yet dropped.

Prints one JSON object: per mode the samples (the first node's also split into block store,
snapshots and the rest), the first and last size, and the growth per minute after the warm-up (a
least-squares slope over the samples after --warmup-minutes, by default a third of the run). The
blocks' share of a pruning node's disk is flat once its chain is longer than it keeps; what still
grows is the ledger state, which pruning does not touch: every transaction's client reference is
kept in it for good (replay protection), and each snapshot holds the state again. --no-client-refs
sends transfers without one, to measure the blocks' share alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from clearline.v1 import tx_pb2
from cluster.bench import Plan, _warm, presign, run_load
from cluster.client import builders
from cluster.launcher import Launcher, node_status, stop_nodes_on_sigterm
from cluster.netgen import Network, init_network
from cluster.ports import free_base_port
from node import crypto, txs
from node.config import MIN_RETAIN_BLOCKS, ConsensusConfig
from node.storage import NodeStore

MODES = ("pruned", "archive")


def dir_bytes(path: Path) -> int:
    """The bytes of every file under path (LevelDB's files are not sparse: this is what they use)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file LevelDB or the WAL just removed
                total += os.stat(os.path.join(root, name)).st_size
    return total


def live_bytes(store_path: Path) -> tuple[dict[str, int], int]:
    """Bytes of the keys and values a (stopped) node's store holds, by table prefix; and how many
    blocks it holds."""
    out: dict[str, int] = {}
    blocks = 0
    with NodeStore.open(store_path) as store:
        for key, value in store.iter_raw():
            table = "meta" if key[:1] == b"\x00" else key[:1].decode("ascii", "replace")
            out[table] = out.get(table, 0) + len(key) + len(value)
            blocks += table == "b"
    return out, blocks


def growth_per_minute(samples: list[dict[str, Any]], after_s: float) -> float:
    """Least-squares slope of the mean node size over the samples taken after after_s, in bytes/min."""
    points = [(float(s["t_s"]), float(s["bytes"])) for s in samples if s["t_s"] >= after_s]
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mb = sum(b for _, b in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    slope = sum((t - mt) * (b - mb) for t, b in points) / var
    return slope * 60


class SizeSampler:
    """A thread that samples each node's data directory size, height and base height."""

    def __init__(self, network: Network, interval_s: float) -> None:
        self._network = network
        self._interval_s = interval_s
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="size-sampler", daemon=True)
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling, after one last sample (idempotent)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.sample()

    def sample(self) -> None:
        sizes = {n.name: dir_bytes(Path(n.home) / "data") for n in self._network.nodes}
        first = self._network.nodes[0]
        status = node_status(first.api_target, tls=self._network.client_tls())
        data = Path(first.home) / "data"
        self.samples.append(
            {
                "t_s": round(time.monotonic() - self._t0, 1),
                "height": status.height if status is not None else None,
                "base": status.base_height if status is not None else None,
                "bytes": sum(sizes.values()) // len(sizes),
                "node_bytes": sizes,
                # The first node's data directory by part: LevelDB, snapshots, the rest (WAL, sign state).
                "parts": {
                    "blockstore": dir_bytes(data / "blockstore"),
                    "snapshots": dir_bytes(data / "snapshots"),
                    "other": sizes[first.name]
                    - dir_bytes(data / "blockstore")
                    - dir_bytes(data / "snapshots"),
                },
            }
        )


def presign_without_refs(network: Network, args: argparse.Namespace, total: int) -> Plan:
    """As cluster.bench.presign, but with no client reference: the ledger keeps a record of every
    reference used (replay protection, in the state, never pruned), so without them the state does
    not grow with the transactions and what is left is the blocks' share."""
    keys = [crypto.load_key_file(Path(network.accounts[f"u{i}"])) for i in range(args.accounts)]
    usd = tx_pb2.InstrumentId(
        issuer=crypto.load_key_file(Path(network.accounts["bank-a"])).address, symbol="USD"
    )
    raws: list[bytes] = []
    senders: list[int] = []
    for nonce in range((total + args.accounts - 1) // args.accounts):
        for i, key in enumerate(keys):
            if len(raws) >= total:
                break
            body = tx_pb2.TxBody(chain_id=network.chain_id, signer=key.address, nonce=nonce)
            body.transfer.CopyFrom(builders.transfer(usd, keys[(i + 1 + nonce) % args.accounts].address, 1))
            raws.append(txs.sign_tx(body, [key]))
            senders.append(i)
    return Plan(raws=raws, hashes=[txs.tx_hash(r) for r in raws], senders=senders)


def run_mode(args: argparse.Namespace, mode: str, home: Path, progress: bool) -> dict[str, Any]:
    retain = args.retain_blocks if mode == "pruned" else 0
    names = tuple(f"u{i}" for i in range(args.accounts))
    # Snapshots often enough that the oldest one served (blocks from it are kept) does not hold
    # the base back beyond retain_blocks; the archive network takes them alike.
    network = init_network(
        home,
        validators=args.validators,
        base_port=free_base_port(args.validators),
        demo_accounts=names,
        funded={name: [("bank-a", "USD", 10**12)] for name in names},
        consensus=ConsensusConfig(timeout_commit_ms=args.timeout_commit_ms, timeout_propose_ms=2000),
        force=True,
        retain_blocks=retain,
        snapshot_interval=max(1, min(500, args.retain_blocks // 2)),
    )
    seconds = args.minutes * 60
    total = max(1, int(args.rate * seconds))
    if progress:
        print(f"prune bench ({mode}): pre-signing {total} transfers...", file=sys.stderr)
    plan = (
        presign(network, args.accounts, total)
        if args.client_refs
        else presign_without_refs(network, args, total)
    )
    launcher = Launcher(network)
    sampler = SizeSampler(network, args.sample_s)
    try:
        launcher.start_all()
        launcher.wait_until(_warm(network, args.validators), timeout=90, what="connected and committing")
        sampler.start()
        load = asyncio.run(run_load(network, plan, float(args.rate), seconds, progress))
    finally:
        sampler.stop()
        launcher.stop_all()
    stores = {n.name: live_bytes(Path(n.home) / "data" / "blockstore")[0] for n in network.nodes}
    _tables, blocks_kept = live_bytes(Path(network.nodes[0].home) / "data" / "blockstore")
    samples = sampler.samples
    warmup_s = args.warmup_minutes * 60 if args.warmup_minutes is not None else seconds / 3
    growth = growth_per_minute(samples, warmup_s)
    after = [s["bytes"] for s in samples if s["t_s"] >= warmup_s] or [samples[-1]["bytes"]]
    mean_after = sum(after) / len(after)
    return {
        "mode": mode,
        "retain_blocks": retain,
        "client_refs": args.client_refs,
        "validators": args.validators,
        "offered_tx_per_s": args.rate,
        "committed_tx_per_s": load["committed_tx_per_s"],
        "blocks_per_s": load["blocks_per_s"],
        "duration_s": seconds,
        "height": samples[-1]["height"],
        "base_height": samples[-1]["base"],
        "first_bytes": samples[0]["bytes"],
        "last_bytes": samples[-1]["bytes"],
        "warmup_s": warmup_s,
        "min_bytes_after_warmup": min(after),
        "max_bytes_after_warmup": max(after),
        "growth_bytes_per_min": round(growth),
        "growth_pct_per_min": round(100 * growth / mean_after, 2) if mean_after else 0.0,
        "live_bytes": sum(sum(t.values()) for t in stores.values()) // len(stores),
        "live_bytes_by_table": stores[network.nodes[0].name],
        "blocks_kept": blocks_kept,
        "samples": samples,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="clearline-prune-bench-") as tmp:
        root = Path(args.home) if args.home else Path(tmp)
        for mode in modes:
            out[mode] = run_mode(args, mode, root / mode, not args.json)
    if "pruned" in out and "archive" in out and out["archive"]["last_bytes"]:
        out["last_bytes_pruned_over_archive"] = round(
            out["pruned"]["last_bytes"] / out["archive"]["last_bytes"], 3
        )
        out["live_bytes_pruned_over_archive"] = round(
            out["pruned"]["live_bytes"] / out["archive"]["live_bytes"], 3
        )
    return out


def summary(r: dict[str, Any]) -> str:
    lines = []
    for mode in MODES:
        m = r.get(mode)
        if m is None:
            continue
        lines.append(
            f"{mode:8} retain {m['retain_blocks'] or 'all'}: height {m['height']} base {m['base_height']}, "
            f"{m['committed_tx_per_s']} tx/s; data dir {m['first_bytes'] / 2**20:.1f} -> "
            f"{m['last_bytes'] / 2**20:.1f} MiB, after {m['warmup_s'] / 60:.1f} min "
            f"{m['growth_bytes_per_min'] / 2**20:+.2f} MiB/min ({m['growth_pct_per_min']:+.2f}%/min); "
            f"live {m['live_bytes'] / 2**20:.1f} MiB"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.prune_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--retain-blocks", type=int, default=1000)
    p.add_argument("--rate", type=float, default=300, help="offered transactions per second")
    p.add_argument("--validators", type=int, default=4)
    p.add_argument("--accounts", type=int, default=400)
    p.add_argument("--timeout-commit-ms", type=int, default=50)
    p.add_argument("--modes", default=",".join(MODES), help="pruned, archive or both (in that order)")
    p.add_argument(
        "--no-client-refs",
        dest="client_refs",
        action="store_false",
        help="transfers without a client reference: the state does not grow with them (its record of "
        "used references is never pruned), leaving the blocks' share of the disk",
    )
    p.add_argument("--sample-s", type=float, default=10)
    p.add_argument("--warmup-minutes", type=float, default=None, help="default: a third of the run")
    p.add_argument("--home", default="", help="directory for the networks (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.retain_blocks < MIN_RETAIN_BLOCKS:
        p.error(f"--retain-blocks: at least {MIN_RETAIN_BLOCKS}")
    unknown = {m.strip() for m in args.modes.split(",")} - set(MODES) - {""}
    if unknown:
        p.error(f"--modes: unknown {sorted(unknown)}; known: {', '.join(MODES)}")
    stop_nodes_on_sigterm()
    result = run(args)
    if not args.json:
        print(summary(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
