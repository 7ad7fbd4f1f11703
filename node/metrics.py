"""Prometheus metrics of one node, served on the configured metrics address.

Height, round, block interval, transactions per block, mempool size and rejections by reason, peers,
sync state, base height and pruning time, commit latency, signatures each validator missed in commit certificates, evidence
committed and each instrument's supply. Each node process has its own registry.

Totals the node keeps itself (mempool rejections, peer faults) are exposed as counters by a
collector that reads a snapshot taken on the event loop (`on_status`): the HTTP server scrapes from
its own thread, which must not iterate the node's live dictionaries.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class _Totals(Collector):
    """Counters whose totals the node keeps: the latest snapshot of each, by label values."""

    def __init__(self) -> None:
        self.rejections: Mapping[str, int] = {}
        self.drops: Mapping[str, int] = {}
        self.peer_faults: Mapping[tuple[str, str], int] = {}

    def collect(self) -> Iterator[CounterMetricFamily]:
        rejections = CounterMetricFamily(
            "clearline_mempool_rejections", "Mempool rejections by reason", labels=["reason"]
        )
        for reason, count in self.rejections.items():
            rejections.add_metric([reason], count)
        yield rejections
        drops = CounterMetricFamily(
            "clearline_mempool_dropped",
            "Accepted transactions that left the mempool uncommitted, by reason (REPLACED, CANCELLED,"
            " EXPIRED, NONCE_USED, INVALID)",
            labels=["reason"],
        )
        for reason, count in self.drops.items():
            drops.add_metric([reason], count)
        yield drops
        faults = CounterMetricFamily(
            "clearline_peer_faults",
            "Invalid messages by peer and kind (invalid proposals and votes, blocks served by block"
            " sync that did not verify, heights claimed and not served, stalled fetches)",
            labels=["peer", "kind"],
        )
        for (peer, kind), count in self.peer_faults.items():
            faults.add_metric([peer, kind], count)
        yield faults


class NodeMetrics:
    def __init__(self, listen: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("clearline_height", "Last committed height", registry=r)
        self.round = Gauge("clearline_round", "Round of the height in progress", registry=r)
        self.peers = Gauge("clearline_peers", "Connected peers", registry=r)
        self.mempool = Gauge("clearline_mempool_size", "Transactions in the mempool", registry=r)
        self.syncing = Gauge("clearline_syncing", "1 while block sync runs", registry=r)
        self.snapshot_seconds = Histogram(
            "clearline_snapshot_seconds",
            "Time to cut a state snapshot for state sync (in its own thread)",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.base_height = Gauge(
            "clearline_base_height", "Lowest height whose block is kept (above 1 once pruned)", registry=r
        )
        self.prune_seconds = Histogram(
            "clearline_prune_batch_seconds",
            "Time to delete one batch of old blocks ([storage] retain_blocks; in the io thread)",
            buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=r,
        )
        self.txs = Counter("clearline_committed_txs", "Committed transactions", registry=r)
        self.block_txs = Histogram(
            "clearline_block_txs",
            "Transactions per block",
            buckets=(0, 1, 10, 100, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.block_interval = Histogram(
            "clearline_block_interval_seconds", "Time between committed blocks", registry=r
        )
        self.commit_latency = Histogram(
            "clearline_commit_write_seconds", "Time to write one block's batch (synced)", registry=r
        )
        self.height_duration = Histogram(
            "clearline_height_seconds", "From the start of a height to its decision", registry=r
        )
        self.rounds = Histogram(
            "clearline_rounds_per_height",
            "Rounds needed to decide a height",
            buckets=(1, 2, 3, 5, 10),
            registry=r,
        )
        self.verify_seconds = Histogram(
            "clearline_signature_verify_seconds",
            "Time to verify one batch of transaction signatures",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
            registry=r,
        )
        self.totals = _Totals()
        r.register(self.totals)
        self.missed_signatures = Counter(
            "clearline_validator_missed_signatures",
            "Commit certificates of this node's blocks that lack the validator's signature",
            ["validator"],
            registry=r,
        )
        self.evidence = Counter(
            "clearline_evidence_committed", "Equivocation evidence committed in blocks", registry=r
        )
        self.supply = Gauge(
            "clearline_instrument_supply", "An instrument's supply (minor units)", ["instrument"], registry=r
        )
        self.mempool_parked = Gauge(
            "clearline_mempool_parked", "Pending transactions waiting for a missing nonce", registry=r
        )
        self.mempool_bytes = Gauge("clearline_mempool_bytes", "Raw bytes of pending transactions", registry=r)
        self.verified_cache_bytes = Gauge(
            "clearline_verified_cache_bytes", "Raw bytes in the verified-signature cache", registry=r
        )
        self._last_commit = time.monotonic()
        self._server: Any = None
        if listen:
            host, _, port = listen.rpartition(":")
            self._server = start_http_server(int(port), addr=host, registry=r)

    def on_certificate(self, missed: list[str], evidence: int) -> None:
        """A committed block's certificate lacked these validators' signatures; it carried evidence."""
        for name in missed:
            self.missed_signatures.labels(validator=name).inc()
        if evidence:
            self.evidence.inc(evidence)

    def on_supply(self, supplies: Mapping[str, int]) -> None:
        for instrument, supply in supplies.items():
            self.supply.labels(instrument=instrument).set(supply)

    def on_commit(self, height: int, ntx: int, write_s: float, mempool: int) -> None:
        now = time.monotonic()
        self.height.set(height)
        self.txs.inc(ntx)
        self.block_txs.observe(ntx)
        self.block_interval.observe(now - self._last_commit)
        self.commit_latency.observe(write_s)
        self.mempool.set(mempool)
        self._last_commit = now

    def on_status(self, node: Any) -> None:
        self.round.set(node.core.round if node.core is not None else 0)
        self.peers.set(len(node.network.connected))
        self.mempool.set(len(node.mempool))
        self.syncing.set(1 if node.blocksync.active else 0)
        self.base_height.set(node.store.base_height())
        self.totals.rejections = dict(node.mempool.rejections)
        self.totals.drops = dict(node.mempool.drops)
        self.totals.peer_faults = dict(node.peer_fault_counts)
        self.mempool_parked.set(node.mempool.parked)
        self.mempool_bytes.set(node.mempool.size_bytes)
        self.verified_cache_bytes.set(node.mempool.cache_bytes)

    def close(self) -> None:
        if self._server is not None:
            server, thread = self._server if isinstance(self._server, tuple) else (self._server, None)
            server.shutdown()
            server.server_close()
            if thread is not None:
                thread.join(timeout=2)
