"""Prometheus metrics of one node, served on the configured metrics address.

Height, round, block interval, transactions per block, mempool size and rejections by reason, peers,
sync state and commit latency. Each node process has its own registry.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class NodeMetrics:
    def __init__(self, listen: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("clearline_height", "Last committed height", registry=r)
        self.round = Gauge("clearline_round", "Round of the height in progress", registry=r)
        self.peers = Gauge("clearline_peers", "Connected peers", registry=r)
        self.mempool = Gauge("clearline_mempool_size", "Transactions in the mempool", registry=r)
        self.syncing = Gauge("clearline_syncing", "1 while block sync runs", registry=r)
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
        self.rejections = Gauge(
            "clearline_mempool_rejections", "Mempool rejections by reason", ["reason"], registry=r
        )
        self.peer_faults = Gauge(
            "clearline_peer_faults",
            "Invalid messages by peer and kind (invalid proposals and votes, blocks served by block"
            " sync that did not verify, heights claimed and not served, stalled fetches)",
            ["peer", "kind"],
            registry=r,
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
        for reason, count in node.mempool.rejections.items():
            self.rejections.labels(reason=reason).set(count)
        for (peer, kind), count in node.peer_fault_counts.items():
            self.peer_faults.labels(peer=peer, kind=kind).set(count)
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
