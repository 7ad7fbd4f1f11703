"""State sync against block sync from genesis, on one chain with a large state.

    python -m cluster.statesync_bench [--accounts 200000] [--blocks 20000]   (make bench-statesync)

Builds the chain on one validator (so blocks come as fast as this machine makes them): `accounts`
new accounts, each created by a KYC transaction (bank-a, bank-b and compliance sign them, up to the
nonce window ahead each), then empty blocks up to `blocks` heights, with a snapshot every
`--snapshot-interval` heights. Then two fresh observers join, one after the other, from nothing:
obs0 by state sync (a snapshot, verified chunk by chunk, then block sync of the heights after it),
obs1 by block sync from genesis (every block verified and executed). Each is timed from its start
until it has the height the validator had when it started, and its state root there is compared
with the validator's. Prints one JSON object:

    accounts, blocks, snapshot_height, statesync_s, blocksync_s, speedup (blocksync_s / statesync_s),
    state_roots_match, snapshot_cut_s (the longest snapshot cut), longest_height_during_snapshot_ms
    and longest_height_otherwise_ms (block-time gaps while the chain was built), build_s

Before the joins the validator is restarted with one empty block per second, so the chain the
joining nodes chase barely moves; during the build it makes blocks as fast as it can.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc, tx_pb2
from cluster.client import builders
from cluster.launcher import Launcher, node_height, stop_nodes_on_sigterm
from cluster.netgen import Network, init_network
from cluster.ports import free_base_port
from cluster.progress import Progress
from node import crypto, txs
from node.config import ConsensusConfig, StateSyncConfig, load_config, render_config
from node.mempool import NONCE_WINDOW

SIGNERS = ("bank-a", "bank-b", "compliance")


def _new_account(i: int) -> tuple[bytes, bytes]:
    """(address, public key) of the i-th account: a key nobody holds (the bench only creates it)."""
    public_key = hashlib.sha256(b"statesync-bench:%d" % i).digest()
    return crypto.address_of(public_key), public_key


def _stub(network: Network, name: str) -> tuple[Any, ledger_api_pb2_grpc.LedgerStub]:
    channel = network.channel(network.node(name).api_target, "auditor")
    return channel, ledger_api_pb2_grpc.LedgerStub(channel)


def _next_nonce(stub: ledger_api_pb2_grpc.LedgerStub, address: bytes) -> int:
    resp = stub.GetAccount(ledger_api_pb2.GetAccountRequest(address=address), timeout=10)
    return int(resp.account.nonce)


def create_accounts(network: Network, count: int, progress: Progress) -> None:
    """count KYC transactions creating count accounts, SIGNERS in turn, each at most the nonce
    window ahead of its committed nonce."""
    keys = {name: crypto.load_key_file(Path(network.accounts[name])) for name in SIGNERS}
    channel, stub = _stub(network, "node0")
    with channel:
        sent = {name: _next_nonce(stub, keys[name].address) for name in SIGNERS}
        made = 0
        while made < count:
            for name in SIGNERS:
                key = keys[name]
                committed = _next_nonce(stub, key.address)
                room = committed + NONCE_WINDOW - 24 - sent[name]
                batch: list[bytes] = []
                while room > 0 and made < count:
                    address, public_key = _new_account(made)
                    op = builders.set_kyc(address, tx_pb2.KYC_STATUS_APPROVED, public_key=public_key)
                    body = builders.make_body(network.chain_id, key.address, sent[name], f"k{made}", op)
                    batch.append(txs.sign_tx(body, [key]))
                    sent[name] += 1
                    made += 1
                    room -= 1
                for i in range(0, len(batch), 2000):
                    resp = stub.SubmitTxs(
                        ledger_api_pb2.SubmitTxsRequest(
                            txs=batch[i : i + 2000], wait=ledger_api_pb2.WAIT_FOR_NONE
                        ),
                        timeout=60,
                    )
                    refused = [r for r in resp.results if not r.accepted]
                    if refused:
                        raise SystemExit(f"statesync bench: account creation refused: {refused[0].message}")
            progress.update(completed=made, status=f"{made} accounts sent")
            time.sleep(0.2)
        for name in SIGNERS:  # all committed
            while _next_nonce(stub, keys[name].address) < sent[name]:
                time.sleep(0.2)


def _height(network: Network, name: str) -> int:
    return node_height(network.node(name).api_target, tls=network.client_tls()) or 0


def _state_root(network: Network, name: str, height: int) -> bytes:
    channel, stub = _stub(network, name)
    with channel:
        resp = stub.GetBlock(ledger_api_pb2.GetBlockRequest(height=height), timeout=30)
    return bytes(resp.block.header.state_root)


class BlockTimes:
    """Streams the validator's blocks and keeps each one's header time, to see what a snapshot
    being cut (in its own thread) does to the heights committed meanwhile."""

    def __init__(self, network: Network) -> None:
        self.times: list[tuple[int, int]] = []  # (height, header time ms)
        self._network = network
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        channel, stub = _stub(self._network, "node0")
        with channel:
            stream = stub.StreamBlocks(ledger_api_pb2.StreamBlocksRequest(from_height=1))
            try:
                for block in stream:
                    self.times.append((block.block.header.height, block.block.header.time_ms))
                    if self._stop.is_set():
                        break
            except grpc.RpcError:
                pass
            finally:
                stream.cancel()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def longest(self, windows: list[tuple[float, float]]) -> dict[str, float]:
        """The longest height (ms between consecutive block times) while a snapshot was being cut,
        and otherwise."""
        inside = outside = 0
        for (_h0, t0), (_h1, t1) in itertools.pairwise(self.times):
            gap = t1 - t0
            if any(lo * 1000 <= t1 and t0 <= hi * 1000 for lo, hi in windows):
                inside = max(inside, gap)
            else:
                outside = max(outside, gap)
        return {"longest_height_during_snapshot_ms": inside, "longest_height_otherwise_ms": outside}


def _snapshot_windows(network: Network) -> tuple[list[tuple[float, float]], float]:
    """(start, end) wall times of each snapshot the validator cut, from its log; the longest cut."""
    windows = []
    longest = 0.0
    for line in (Path(network.node("node0").home) / "node.log").read_text().splitlines():
        if '"event": "snapshot"' not in line:
            continue
        doc = json.loads(line)
        windows.append((doc["ts"] - doc["seconds"], doc["ts"]))
        longest = max(longest, doc["seconds"])
    return windows, longest


def _slow_down(network: Network, launcher: Launcher) -> None:
    """Restart the validator with an empty block per second, so the chain the joining nodes chase
    stays put while they join (each is timed to the height of its own start)."""
    home = Path(network.node("node0").home)
    cfg = load_config(home)
    calm = dataclasses.replace(cfg.consensus, create_empty_blocks_interval_ms=1000, timeout_commit_ms=50)
    launcher.stop("node0")
    (home / "config.toml").write_text(render_config(dataclasses.replace(cfg, consensus=calm)))
    launcher.start("node0")
    launcher.wait_until(lambda n: _height(network, n.name) >= 1, ["node0"], timeout=120, what="serving")


def _join(
    network: Network, launcher: Launcher, name: str, state_sync: bool, timeout: float
) -> dict[str, Any]:
    home = Path(network.node(name).home)
    cfg = load_config(home)
    statesync = StateSyncConfig(enable=state_sync, discovery_s=10.0, chunk_timeout_s=20.0)
    (home / "config.toml").write_text(render_config(dataclasses.replace(cfg, statesync=statesync)))
    target = _height(network, "node0")
    started = time.perf_counter()
    launcher.start(name)
    with Progress(f"{name} joining by {'state' if state_sync else 'block'} sync", target) as bar:
        while (reached := _height(network, name)) < target:
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"statesync bench: {name} did not reach {target} in {timeout:.0f} s")
            bar.update(completed=reached, status=f"height {reached} of {target}")
            time.sleep(0.05)
    took = time.perf_counter() - started
    match = _state_root(network, name, target) == _state_root(network, "node0", target)
    launcher.stop(name)
    return {"seconds": round(took, 2), "target": target, "state_root_matches": match}


def run(args: argparse.Namespace) -> dict[str, Any]:
    consensus = ConsensusConfig(
        timeout_commit_ms=0,
        create_empty_blocks_interval_ms=args.empty_block_ms,
        max_block_txs=5000,
        timeout_propose_ms=2000,
    )
    with tempfile.TemporaryDirectory(prefix="clearline-statesync-bench-") as tmp:
        home = Path(args.home) if args.home else Path(tmp) / "net"
        network = init_network(
            home, validators=1, observers=2, base_port=free_base_port(4), consensus=consensus,
            snapshot_interval=args.snapshot_interval, force=True,
        )  # fmt: skip
        launcher = Launcher(network)
        built = time.perf_counter()
        try:
            launcher.start("node0")
            launcher.wait_until(
                lambda n: _height(network, n.name) >= 1, ["node0"], timeout=60, what="committing"
            )
            times = BlockTimes(network)
            with Progress("accounts", args.accounts) as bar:
                create_accounts(network, args.accounts, bar)
            with Progress("blocks", args.blocks) as bar:
                while (height := _height(network, "node0")) < args.blocks:
                    bar.update(completed=height, status=f"height {height}")
                    time.sleep(0.2)
            # A snapshot above the accounts' heights: the next one the validator takes.
            first = _height(network, "node0")
            snapshot_height = (first // args.snapshot_interval + 1) * args.snapshot_interval
            while _height(network, "node0") < snapshot_height + 2:
                time.sleep(0.2)
            time.sleep(6.0)  # the snapshot is cut in its own thread
            times.stop()
            windows, cut_s = _snapshot_windows(network)
            stalls = times.longest(windows)
            build_s = time.perf_counter() - built
            _slow_down(network, launcher)
            by_state = _join(network, launcher, "obs0", True, args.timeout)
            by_blocks = _join(network, launcher, "obs1", False, args.timeout)
        finally:
            launcher.stop_all()
    return {
        "accounts": args.accounts,
        "blocks": by_blocks["target"],
        "snapshot_height": snapshot_height,
        "statesync_s": by_state["seconds"],
        "blocksync_s": by_blocks["seconds"],
        "speedup": round(by_blocks["seconds"] / max(by_state["seconds"], 1e-9), 1),
        "state_roots_match": by_state["state_root_matches"] and by_blocks["state_root_matches"],
        "statesync_target_height": by_state["target"],
        "snapshot_cut_s": round(cut_s, 2),
        "snapshots_cut": len(windows),
        **stalls,
        "build_s": round(build_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m cluster.statesync_bench", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--accounts", type=int, default=200_000)
    p.add_argument("--blocks", type=int, default=20_000)
    p.add_argument("--snapshot-interval", type=int, default=1000)
    p.add_argument("--empty-block-ms", type=int, default=0, help="idle time before an empty block")
    p.add_argument("--timeout", type=float, default=3600, help="seconds a joining node may take")
    p.add_argument("--home", default="", help="network directory (default: a temporary one)")
    args = p.parse_args(argv)
    stop_nodes_on_sigterm()
    result = run(args)
    print(json.dumps(result))
    return 0 if result["state_roots_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
