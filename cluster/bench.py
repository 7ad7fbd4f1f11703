"""`clearline bench`: start a fresh network, drive signed transfers at it, report what committed.

    clearline bench [--validators 4] [--duration 30] [--rate R | --max] [--json] [--profile]

Transactions are signed before the timed window (every one a real Ed25519-signed transfer between
KYC-approved accounts funded at genesis), then submitted open-loop in batches (SubmitTxs) to all
nodes. Commit times come from one node's block stream; submit->commit latency is measured per
transaction. In the same run the Ed25519 verification rate of one core is measured, giving the
ceiling (rate x cores / validators) and the efficiency (committed rate / ceiling). --profile also
samples every node with py-spy and splits the measured CPU per transaction by category
(cluster/profiling.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc, tx_pb2
from cluster.client import builders
from cluster.launcher import Launcher, node_status, stop_nodes_on_sigterm
from cluster.netgen import Network, init_network
from cluster.ports import free_base_port
from cluster.profiling import THREAD_KINDS, ProfileError, Sampler, budget
from cluster.progress import Progress
from node import crypto, txs
from node.config import ConsensusConfig
from node.threadname import thread_names

BATCH = 250
MAX_INFLIGHT = 8  # concurrent SubmitTxs calls in --max mode


@dataclass
class Plan:
    raws: list[bytes]
    hashes: list[bytes]
    senders: list[int]  # the sending account's index, per transaction


def measure_verify_rate(seconds: float = 1.0) -> float:
    """Ed25519 verifications per second on one core (PyNaCl), as the node does them."""
    key = crypto.SigningKey.generate()
    msg = crypto.sign_bytes(crypto.Domain.TX, "bench", b"x" * 120)
    sig = key.sign_raw(msg)
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(200):
            crypto.verify_raw(key.public_key, sig, msg)
        n += 200
    return n / (time.perf_counter() - start)


def make_network(home: Path, validators: int, accounts: int, timeout_commit_ms: int = 0) -> Network:
    names = tuple(f"u{i}" for i in range(accounts))
    funded = {name: [("bank-a", "USD", 10**12)] for name in names}
    consensus = ConsensusConfig(
        timeout_commit_ms=timeout_commit_ms, max_block_txs=5000, timeout_propose_ms=2000
    )
    return init_network(
        home,
        validators=validators,
        base_port=free_base_port(validators),
        demo_accounts=names,
        funded=funded,
        consensus=consensus,
        force=True,
    )


def presign(network: Network, accounts: int, total: int) -> Plan:
    keys = [crypto.load_key_file(Path(network.accounts[f"u{i}"])) for i in range(accounts)]
    usd = tx_pb2.InstrumentId(
        issuer=crypto.load_key_file(Path(network.accounts["bank-a"])).address, symbol="USD"
    )
    raws: list[bytes] = []
    senders: list[int] = []
    per = (total + accounts - 1) // accounts
    for nonce in range(per):
        for i, key in enumerate(keys):
            if len(raws) >= total:
                break
            to = keys[(i + 1 + nonce) % accounts].address
            body = builders.make_body(
                network.chain_id, key.address, nonce, f"b{i}-{nonce}", builders.transfer(usd, to, 1)
            )
            raws.append(txs.sign_tx(body, [key]))
            senders.append(i)
    return Plan(raws=raws, hashes=[txs.tx_hash(r) for r in raws], senders=senders)


def batches_by_node(plan: Plan, nodes: int, size: int) -> list[tuple[int, list[int]]]:
    """(node, indexes into plan) of each batch, in sending order. Each sender's transactions all go
    to one node, as a bank's client sends to its bank's node: a sender whose consecutive nonces
    went to different nodes would leave gaps at each until gossip filled them, and a node parks at
    most `[mempool] max_gap_per_sender` of them (the rest are refused)."""
    queues: list[list[int]] = [[] for _ in range(nodes)]
    for k, sender in enumerate(plan.senders):
        queues[sender % nodes].append(k)
    out: list[tuple[int, list[int]]] = []
    for start in range(0, max((len(q) for q in queues), default=0), size):
        for node, queue in enumerate(queues):
            if start < len(queue):
                out.append((node, queue[start : start + size]))
    return out


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of a node's threads by kind: the event loop ("main"), signature verification
    ("verify"), persistence ("io") and the rest (gRPC's poller, LevelDB, metrics: "other")."""
    out: dict[str, float] = {}
    for tid, name in thread_names(pid).items():
        kind = "main" if tid == pid else name if name in ("verify", "io") else "other"
        out[kind] = out.get(kind, 0.0) + _cpu_seconds(pid, tid)
    return out


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def run_load(
    network: Network, plan: Plan, rate: float | None, duration: float, progress: bool
) -> dict[str, Any]:
    targets = [n.api_target for n in network.nodes]
    opts = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    channels = [network.aio_channel(t, options=opts) for t in targets]
    stubs = [ledger_api_pb2_grpc.LedgerStub(c) for c in channels]
    submitted_at: dict[bytes, float] = {}
    committed_at: dict[bytes, float] = {}
    # The proposal time in the header of the block that committed each transaction, on this
    # client's perf_counter scale (the nodes run on this machine, so their wall clock is ours).
    proposed_at: dict[bytes, float] = {}
    wall_offset = time.time() - time.perf_counter()
    block_times: list[tuple[float, int]] = []
    rejected = 0
    start_height = (await stubs[0].GetStatus(ledger_api_pb2.GetStatusRequest(), timeout=5)).height

    async def watch() -> None:
        stream = stubs[0].StreamBlocks(ledger_api_pb2.StreamBlocksRequest(from_height=start_height + 1))
        async for block in stream:
            now = time.perf_counter()
            proposed = block.block.header.time_ms / 1000 - wall_offset
            n = 0
            for r in block.receipts:
                if r.tx_hash in submitted_at:
                    committed_at[r.tx_hash] = now
                    proposed_at[r.tx_hash] = proposed
                    n += 1
            block_times.append((now, len(block.receipts)))

    watcher = asyncio.create_task(watch())
    t0 = time.perf_counter()
    end = t0 + duration
    # Open loop: at a given rate, a batch every ~20 ms (so batching adds little latency); at --max, big batches.
    size = BATCH if rate is None else max(1, min(BATCH, int(rate * 0.02)))
    routed = batches_by_node(plan, len(stubs), size)
    batches = [[plan.raws[k] for k in idxs] for _node, idxs in routed]
    hashes = [[plan.hashes[k] for k in idxs] for _node, idxs in routed]
    inflight: set[asyncio.Task[Any]] = set()
    window = 20_000  # outstanding (submitted, not committed) transactions in --max mode

    async def send(i: int) -> None:
        nonlocal rejected
        now = time.perf_counter()
        for h in hashes[i]:
            submitted_at[h] = now
        try:
            resp = await stubs[routed[i][0]].SubmitTxs(
                ledger_api_pb2.SubmitTxsRequest(txs=batches[i], wait=ledger_api_pb2.WAIT_FOR_NONE), timeout=30
            )
            rejected += sum(1 for r in resp.results if not r.accepted)
        except grpc.aio.AioRpcError:
            rejected += len(batches[i])

    sent = 0
    last_print = 0.0
    with Progress("load", duration, enabled=progress, counted=False) as bar:
        for i in range(len(batches)):
            now = time.perf_counter()
            if now >= end:
                break
            if rate:
                due = t0 + (sent / rate)
                if due > now:
                    await asyncio.sleep(due - now)
            else:
                while (
                    len(inflight) >= MAX_INFLIGHT or sent - len(committed_at) > window
                ) and time.perf_counter() < end:
                    await asyncio.sleep(0.002)
            task = asyncio.create_task(send(i))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            sent += len(batches[i])
            if now - last_print > 0.5:
                last_print = now
                bar.update(
                    completed=min(duration, now - t0), status=f"sent {sent} committed {len(committed_at)}"
                )
        if inflight:
            await asyncio.gather(*inflight)
        # Let the tail commit (bounded).
        drain_end = time.perf_counter() + 20
        while len(committed_at) < len(submitted_at) - rejected and time.perf_counter() < drain_end:
            await asyncio.sleep(0.05)
        bar.update(completed=duration, status=f"sent {sent} committed {len(committed_at)}")
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await watcher
    for c in channels:
        await c.close()

    if committed_at:
        first_sub = min(submitted_at.values())
        last_commit = max(committed_at.values())
        span = max(1e-6, last_commit - first_sub)
    else:
        span = duration
    latencies = [(committed_at[h] - submitted_at[h]) * 1000 for h in committed_at]
    # Where the latency goes: waiting to be proposed (admission, gossip to the proposer, the next
    # proposal) and from the proposal to the commit this client sees (execution, votes, commit).
    to_proposal = [(proposed_at[h] - submitted_at[h]) * 1000 for h in committed_at]
    to_commit = [(committed_at[h] - proposed_at[h]) * 1000 for h in committed_at]
    blocks_in = [b for b in block_times if b[1] > 0]
    block_span = (blocks_in[-1][0] - blocks_in[0][0]) if len(blocks_in) > 1 else span
    return {
        "submitted": len(submitted_at),
        "rejected": rejected,
        "committed": len(committed_at),
        "committed_tx_per_s": round(len(committed_at) / span, 1),
        "latency_ms": {
            "p50": round(_pct(latencies, 50), 1),
            "p95": round(_pct(latencies, 95), 1),
            "p99": round(_pct(latencies, 99), 1),
            "mean": round(statistics.fmean(latencies), 1) if latencies else 0.0,
        },
        "latency_split_ms": {
            name: {f"p{q}": round(_pct(values, q), 1) for q in (50, 95, 99)}
            for name, values in (("submit_to_proposal", to_proposal), ("proposal_to_commit", to_commit))
        },
        "blocks": len(blocks_in),
        "blocks_per_s": round(len(blocks_in) / max(block_span, 1e-6), 2),
        "tx_per_block": round(statistics.fmean([b[1] for b in blocks_in]), 1) if blocks_in else 0.0,
        "span_s": round(span, 2),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    verify_rate = measure_verify_rate()
    cores = os.cpu_count() or 1
    ceiling = verify_rate * cores / args.validators
    offered_rate = None if args.max else float(args.rate)
    total = int((ceiling * 1.5 if offered_rate is None else offered_rate) * args.duration)
    total = max(total, BATCH)
    with tempfile.TemporaryDirectory(prefix="clearline-bench-") as tmp:
        home = Path(args.home) if args.home else Path(tmp) / "net"
        print(f"bench: {args.validators} validators, pre-signing {total} transfers...", file=sys.stderr)
        network = make_network(home, args.validators, args.accounts, args.timeout_commit_ms)
        plan = presign(network, args.accounts, total)
        launcher = Launcher(network)
        sampler: Sampler | None = None
        samples: dict[str, dict[str, Counter[str]]] = {}  # node -> thread kind -> category -> samples
        try:
            launcher.start_all()
            # A warm network: every node connected to every peer and committing. Right after launch a
            # peer may still be in its dial back-off (up to ~1.5 s), which is no steady state.
            launcher.wait_until(_warm(network, args.validators), timeout=90, what="connected and committing")
            pids = {n.name: launcher.pid(n.name) for n in network.nodes}
            if args.profile:
                sampler = Sampler({k: p for k, p in pids.items() if p}, home / "profiles", args.duration)
                sampler.check()
                sampler.start()
            cpu0 = {k: _cpu_seconds(p) for k, p in pids.items() if p}
            threads0 = {k: _thread_cpu(p) for k, p in pids.items() if p}
            t0 = time.perf_counter()
            result = asyncio.run(run_load(network, plan, offered_rate, args.duration, not args.json))
            elapsed = time.perf_counter() - t0
            cpu = {k: round((_cpu_seconds(p) - cpu0[k]) / elapsed, 2) for k, p in pids.items() if p}
            by_thread: dict[str, float] = {}
            for k, p in pids.items():
                if p:
                    for kind, seconds in _thread_cpu(p).items():
                        used = (seconds - threads0[k].get(kind, 0.0)) / elapsed / len(pids)
                        by_thread[kind] = by_thread.get(kind, 0.0) + used
            thread_cpu = {k: round(by_thread.get(k, 0.0), 3) for k in THREAD_KINDS}
            if sampler is not None:
                samples = sampler.finish()
        finally:
            if sampler is not None:
                sampler.stop()
            launcher.stop_all()
    result.update(
        validators=args.validators,
        offered_tx_per_s=offered_rate if offered_rate is not None else "max",
        duration_s=args.duration,
        verify_per_s_one_core=round(verify_rate),
        cores=cores,
        verify_ceiling_tx_per_s=round(ceiling),
        efficiency=round(result["committed_tx_per_s"] / ceiling, 3) if ceiling else 0.0,
        cpu_per_node=cpu,
        cpu_per_node_by_thread=thread_cpu,
    )
    if result["committed_tx_per_s"]:
        rate = result["committed_tx_per_s"]
        # CPU per committed transaction per node, by thread (fixed per-height costs included).
        result["cpu_us_per_tx_by_thread"] = {k: round(v / rate * 1e6, 1) for k, v in thread_cpu.items()}
        if samples and sampler is not None:
            # The same per-thread CPU, split by what the sampled threads were doing.
            per_sample = 1e6 / (sampler.rate * sampler.seconds * len(samples) * rate)
            result["cpu_us_per_tx"] = budget(samples.values(), result["cpu_us_per_tx_by_thread"], per_sample)
    return result


def _warm(network: Network, validators: int) -> Callable[[Any], bool]:
    def check(node: Any) -> bool:
        st = node_status(node.api_target, tls=network.client_tls())
        return st is not None and st.height >= 2 and st.peers >= validators - 1

    return check


def table(r: dict[str, Any]) -> str:
    lat = r["latency_ms"]
    rows = [
        ("validators", r["validators"]),
        ("offered tx/s", r["offered_tx_per_s"]),
        ("committed tx/s", r["committed_tx_per_s"]),
        ("committed / submitted", f"{r['committed']} / {r['submitted']} (rejected {r['rejected']})"),
        ("latency p50/p95/p99 ms", f"{lat['p50']} / {lat['p95']} / {lat['p99']}"),
        *(
            (f"  {name.replace('_', ' ')}", f"{v['p50']} / {v['p95']} / {v['p99']}")
            for name, v in r.get("latency_split_ms", {}).items()
        ),
        ("blocks/s", r["blocks_per_s"]),
        ("tx/block", r["tx_per_block"]),
        ("verify/s (1 core)", r["verify_per_s_one_core"]),
        ("ceiling tx/s", r["verify_ceiling_tx_per_s"]),
        ("efficiency", r["efficiency"]),
        ("CPU per node (cores)", ", ".join(f"{k} {v}" for k, v in r["cpu_per_node"].items())),
        (
            "  by thread (mean of nodes)",
            ", ".join(f"{k} {v}" for k, v in r.get("cpu_per_node_by_thread", {}).items()),
        ),
    ]
    if "cpu_us_per_tx_by_thread" in r:
        per_tx = r["cpu_us_per_tx_by_thread"]
        rows.append(("  us/tx per node by thread", ", ".join(f"{k} {v}" for k, v in per_tx.items())))
    for name, us in r.get("cpu_us_per_tx", {}).items():
        rows.append((f"  us/tx {name}", us))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clearline bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--validators", type=int, default=4)
    p.add_argument("--duration", type=float, default=30)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=float, default=1000, help="offered transactions per second")
    mode.add_argument("--max", action="store_true", help="offer as much as the network takes")
    p.add_argument("--accounts", type=int, default=400, help="funded sender accounts")
    p.add_argument(
        "--timeout-commit-ms", type=int, default=0, help="pause after each commit (gathers bigger blocks)"
    )
    p.add_argument("--home", default="", help="network directory (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--profile",
        action="store_true",
        help="sample every node with py-spy; print the CPU budget per tx by category (needs ptrace rights)",
    )
    args = p.parse_args(argv)
    stop_nodes_on_sigterm()
    try:
        result = run(args)
    except ProfileError as exc:
        print(f"clearline bench: --profile: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(table(result))
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
