"""Hostile clients (cluster/faults/attacks.py) against real 4-node networks: each flood is bounded,
every transaction it sends is refused with a clear reason code (or, for nonce gaps, parked within
the mempool's per-sender limit), the flooded node stays healthy and keeps committing, and no node's
RSS leaves its memory budget (node/budget.py). A throwaway-key flood must not grow the node by more
than REFUSED_GROWTH_MIB, and parked gap transactions must not make an idle chain produce empty
blocks faster than [consensus] create_empty_blocks_interval_ms.

The pure parts (transaction builders, bounds, the loopback rule, the RSS probe) are checked first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from clearline.v1 import receipt_pb2
from cluster.chaos import ATTACKERS
from cluster.client import WaitFor, builders
from cluster.faults.attacks import (
    MAX_COUNT,
    MIB,
    AttackError,
    FloodSummary,
    RssSampler,
    gap_flood,
    load_senders,
    node_budgets,
    oversized_flood,
    oversized_tx,
    rss_bytes,
    target_node,
    throwaway_flood,
    throwaway_tx,
)
from cluster.netgen import Network, NodeInfo
from cluster.workload import funded
from node import txs
from node.config import load_config
from tests.cluster.helpers import connect, get_block, key, usd
from tests.faults.conftest import FaultNetwork

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ("alice", "bob")
ACCOUNTS = ("alice", "bob", "carol", "dave", *ATTACKERS)
# What a rejection may say: a named transaction status. UNSPECIFIED and INTERNAL say nothing.
CLEAR_REASONS = set(receipt_pb2.TxStatus.keys()) - {"TX_STATUS_UNSPECIFIED", "TX_STATUS_INTERNAL"}
CLEAR_REASONS = {name.removeprefix("TX_STATUS_") for name in CLEAR_REASONS}
# What refusing a flood may grow a node by: 2,500 rejected 60 KB transactions are 150 MB it must not
# keep.
REFUSED_GROWTH_MIB = 100
FLOOD_SECONDS = 60.0


# --- the pure parts ----------------------------------------------------------------------------------


def test_throwaway_tx_verifies_for_an_unknown_sender() -> None:
    raw = throwaway_tx("chain-x", 60_000)
    vtx = txs.verify_tx(raw, "chain-x")
    assert 60_000 < len(raw) <= txs.DEFAULT_MAX_TX_BYTES
    assert vtx.body.transfer.amount == 1 and len(vtx.body.memo) == 60_000
    assert txs.tx_hash(throwaway_tx("chain-x", 60_000)) != txs.tx_hash(raw)


def test_oversized_tx_is_over_the_limit_and_refused_as_too_large() -> None:
    raw = oversized_tx("chain-x", 65_536, 1024)
    assert 65_536 < len(raw) <= 65_536 + 1024 + 64
    with pytest.raises(txs.TxRejected) as exc:
        txs.verify_tx(raw, "chain-x", 65_536)
    assert exc.value.reason == "TOO_LARGE"


def _network(host: str) -> Network:
    node = NodeInfo("node0", 0, "/nonexistent", "00" * 20, host, 1, 2, 3)
    return Network(home="/nonexistent", chain_id="c", nodes=(node,))


@pytest.mark.parametrize("host", ["10.0.0.7", "example.com", "0.0.0.0"])
def test_attacks_refuse_nodes_off_the_loopback_interface(host: str) -> None:
    with pytest.raises(AttackError, match=r"only target 127\.0\.0\.1"):
        throwaway_flood(_network(host), "node0", count=1)


def test_attacks_are_bounded_in_count_and_time() -> None:
    net = _network("127.0.0.1")
    assert target_node(net, "node0").name == "node0"
    with pytest.raises(AttackError, match="count"):
        throwaway_flood(net, "node0", count=MAX_COUNT + 1)
    with pytest.raises(AttackError, match="max_seconds"):
        throwaway_flood(net, "node0", count=1, max_seconds=10_000)
    with pytest.raises(AttackError, match="no node"):
        throwaway_flood(net, "node9", count=1)


def test_rss_probe_reads_proc() -> None:
    own = rss_bytes(os.getpid())
    assert own is not None and 10 * MIB < own < 4096 * MIB
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert rss_bytes(child.pid) is None  # reaped: gone
    sampler = RssSampler(["me", "gone"], {"me": os.getpid(), "gone": None}.get, interval_s=0.01)
    with sampler:
        ballast = bytearray(64 * MIB)  # touched: resident
        deadline = time.monotonic() + 10
        while sampler.peak_bytes().get("me", 0) < own + 60 * MIB and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sampler.peak_bytes()["me"] >= own + 60 * MIB and "gone" not in sampler.peak_bytes()
    del ballast


# --- floods against real networks ------------------------------------------------------------------


def _start(fault_network: Callable[..., FaultNetwork]) -> FaultNetwork:
    net = fault_network(4, faults=False, demo_accounts=ACCOUNTS, funded=funded((*CLIENTS, *ATTACKERS)))
    net.wait_height(2, timeout=60)  # past the start-up allocations
    return net


def _rss(net: FaultNetwork) -> dict[str, int]:
    out = {}
    for name in net.names:
        pid = net.launcher.pid(name)
        rss = rss_bytes(pid) if pid is not None else None
        assert rss is not None, f"{name} is not running"
        out[name] = rss
    return out


def _assert_healthy(net: FaultNetwork, node: str, height_before: int) -> None:
    """The flooded node answers, and a real payment sent through it commits."""
    network = net.network
    with connect(net.target(node), timeout_s=30) as client:
        result = client.send(
            key(network, "alice"), builders.transfer(usd(network), key(network, "bob").address, 1),
            wait=WaitFor.COMMITTED, timeout_s=30,
        )  # fmt: skip
    assert result.ok and result.height > height_before, result
    net.wait_height(result.height, timeout=30)  # every node has it


def _assert_within_budget(peaks: dict[str, int], budgets: dict[str, int]) -> None:
    over = {n: (peaks[n] // MIB, budgets[n] // MIB) for n in budgets if peaks[n] > budgets[n]}
    assert not over, f"RSS over budget (MiB, budget MiB): {over}"


def _flood(net: FaultNetwork, run: Callable[[], FloodSummary]) -> tuple[FloodSummary, RssSampler]:
    sampler = RssSampler(net.names, net.launcher.pid, interval_s=0.25)
    with sampler:
        summary = run()
        sampler.sample()
    return summary, sampler


def test_throwaway_key_flood_is_refused_and_not_kept(fault_network) -> None:
    """2,500 transfers from fresh keys with 60 KB memos: all UNKNOWN_ACCOUNT, and the node does not
    keep them (the verified-signature cache is bounded in bytes)."""
    net = _start(fault_network)
    before, height = _rss(net), net.height("node0")
    summary, sampler = _flood(
        net, lambda: throwaway_flood(net.network, "node0", count=2500, max_seconds=FLOOD_SECONDS)
    )
    assert (summary.sent, summary.stopped_by, summary.accepted) == (2500, "count", 0), summary
    assert summary.rejected == {"UNKNOWN_ACCOUNT": 2500}, summary
    after = sampler.last["node0"].rss
    _assert_healthy(net, "node0", height)
    _assert_within_budget(sampler.peak_bytes(), node_budgets(net.network))
    grown = (after - before["node0"]) / MIB
    assert grown < REFUSED_GROWTH_MIB, (
        f"node0 grew {grown:.0f} MiB ({before['node0'] / MIB:.0f} -> {after / MIB:.0f}) keeping "
        f"{summary.sent} rejected transactions of {summary.bytes_sent / summary.sent / 1024:.0f} KB"
    )


def _empty_blocks(net: FaultNetwork, node: str, low: int, high: int) -> int:
    return sum(1 for h in range(low + 1, high + 1) if not get_block(net.target(node), h).block.body.txs)


def _gap_flood_test(net: FaultNetwork, per_sender: int) -> None:
    cfg = load_config(net.network.node("node0").home)
    senders = load_senders(net.network, ATTACKERS)
    height = net.height("node0")
    summary, sampler = _flood(
        net,
        lambda: gap_flood(net.network, "node0", senders, per_sender=per_sender, max_seconds=FLOOD_SECONDS),
    )
    assert summary.sent == per_sender * len(senders) and summary.stopped_by == "count", summary
    assert set(summary.rejected) <= CLEAR_REASONS, f"unclear rejection reasons: {summary.rejected}"
    parked_limit = cfg.mempool.max_gap_per_sender * len(senders)
    assert summary.accepted <= parked_limit, (
        f"{summary.accepted} gap transactions parked, limit {cfg.mempool.max_gap_per_sender} per sender"
    )
    if parked_limit:  # the senders' transactions pass the dry run: the attack reached the mempool
        assert summary.accepted > 0, summary

    # Idle with gap transactions parked: empty blocks no faster than the empty-block interval.
    window_s = 6.0
    interval_s = cfg.consensus.create_empty_blocks_interval_ms / 1000
    low = net.height("node0")
    time.sleep(window_s)  # the measurement window itself, not a wait for a condition
    high = net.height("node0")
    allowed = window_s / interval_s + 2
    empty = _empty_blocks(net, "node0", low, high)
    assert empty <= allowed, (
        f"{empty} empty blocks in {window_s:.0f}s of idle chain with gap transactions parked "
        f"(create_empty_blocks_interval_ms {cfg.consensus.create_empty_blocks_interval_ms})"
    )
    _assert_healthy(net, "node0", height)
    sampler.sample()
    _assert_within_budget(sampler.peak_bytes(), node_budgets(net.network))


def test_gap_flood_parks_within_limits_and_does_not_race_empty_blocks(fault_network) -> None:
    """The reported attack: three clients, 1,022 transactions each with nonces ahead of their next
    one (the whole nonce window) and 60 KB memos."""
    _gap_flood_test(_start(fault_network), per_sender=1022)


def test_oversized_flood_is_refused_as_too_large(fault_network) -> None:
    """Transactions over [mempool] max_tx_bytes alone and in batches just under the API's request
    limit are each refused TOO_LARGE; a batch over the limit is refused by gRPC as a whole."""
    net = _start(fault_network)
    cfg = load_config(net.network.node("node0").home)
    before, height = _rss(net), net.height("node0")
    summary, sampler = _flood(
        net, lambda: oversized_flood(net.network, "node0", count=300, max_seconds=FLOOD_SECONDS)
    )
    assert summary.stopped_by == "count" and summary.accepted == 0, summary
    assert summary.rejected.get("TOO_LARGE") == 300, summary
    assert set(summary.rejected) == {"TOO_LARGE", "RESOURCE_EXHAUSTED"}, summary
    assert summary.call_errors == {"TOO_LARGE": 100, "RESOURCE_EXHAUSTED": 1}, summary  # singles, over-limit
    limit, one_tx = cfg.api.max_request_bytes, cfg.mempool.max_tx_bytes + 1024
    assert limit - 2 * one_tx < summary.largest_answered_bytes <= limit, summary  # a batch near the limit
    _assert_healthy(net, "node0", height)
    _assert_within_budget(sampler.peak_bytes(), node_budgets(net.network))
    grown = (sampler.last["node0"].rss - before["node0"]) / MIB
    assert grown < REFUSED_GROWTH_MIB, f"node0 grew {grown:.0f} MiB refusing oversized transactions"


def test_attack_command_prints_rss_before_and_after(fault_network) -> None:
    net = _start(fault_network)
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.faults.attacks", "--home", net.network.home, "--attack", "throwaway",
         "--count", "200", "--settle", "0"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["rejected"] == {"UNKNOWN_ACCOUNT": 200} and out["sent"] == 200
    assert set(out["nodes"]) == set(net.names)
    for name, node in out["nodes"].items():
        assert node["pid"] == net.launcher.pid(name)
        assert 0 < node["rss_before_mib"] <= node["rss_peak_mib"] <= node["budget_mib"], node
        assert node["rss_after_mib"] > 0
