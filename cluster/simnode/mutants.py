"""Runtime mutants: the bugs the adversary found before the hardening, put back into the honest
nodes' parts, to prove the node simulation catches them (as cluster/sim/mutants.py does for the
core). Each patches an opened node's parts (`apply(node)`); honest code has no switch for them.

    sync-inline      block sync as it was: run inside the consensus loop, fetching from the peer
                     that claims the most, trusting the claim (no strike, no back-off)
    trusted-claim    block sync in its own task, but a peer's claimed height trusted: only the peer
                     that claims the most is asked, and one that serves nothing is never struck
    unchecked-sync   a synced block's body taken as the certificate says, without checking it
                     against its header: its transactions are executed as certified
    unbounded-cache  the verified-signature cache without its bounds, keeping rejected transactions
    trusting-state-sync  state sync taking each chunk as a peer serves it, unverified, and the
                     rebuilt state without checking its root (with Settings.state_sync)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clearline.v1 import block_pb2, peer_pb2
from node import blocksync as blocksync_mod
from node import validation
from node.runtime import Node


@dataclass(frozen=True)
class RuntimeMutant:
    name: str
    description: str
    apply: Callable[[Node], None]
    adversary: str  # the Byzantine mode that exposes it (the Byzantine validators run it)
    budget: int  # seeds within which a test expects it caught
    expect: str  # what the violation that catches it says ("a|b": either), caught for the right reason
    joining: Callable[[Node], None] | None = None  # patches a node about to join by state sync
    settings: tuple[tuple[str, Any], ...] = ()  # the simulation settings that expose it


def _trust_claims(node: Node) -> None:
    sync = node.blocksync
    sync.strike = lambda peer, reason, message: None  # type: ignore[method-assign]

    def candidates() -> list[str]:
        height = node.height
        claims = [(s.claimed, p) for p, s in sync.peers.items() if s.claimed > height]
        return [max(claims)[1]] if claims else []  # the peer that claims the most is believed

    sync.candidates = candidates  # type: ignore[method-assign]


def _sync_inline(node: Node) -> None:
    _trust_claims(node)
    driver = node.driver
    assert driver is not None
    dispatch = driver._dispatch

    async def never() -> None:
        await asyncio.Event().wait()

    node.blocksync.run = never  # type: ignore[method-assign]

    async def inline(event: Any) -> None:
        sync = node.blocksync
        transport = node.router.transport
        if sync.best_claim() > node.height + 1 and transport is not None:
            for peer in sync.candidates():
                stream = transport.fetch_blocks(peer, node.height + 1, sync.peers[peer].claimed, 1 << 26)
                try:
                    while True:
                        sb: peer_pb2.SyncBlock = await asyncio.wait_for(
                            anext(stream), timeout=blocksync_mod.FIRST_BLOCK_TIMEOUT_S
                        )
                        await driver._apply_synced(sb)
                except (StopAsyncIteration, TimeoutError, ConnectionError, Exception):
                    pass
                finally:
                    with contextlib.suppress(Exception):
                        await stream.aclose()  # type: ignore[attr-defined]
                break
        await dispatch(event)

    driver._dispatch = inline  # type: ignore[method-assign]


def _unchecked_sync(node: Node) -> None:
    executor = node.executor
    ledger = node.ledger
    chain = node.chain
    assert chain is not None

    def check_certified(block_id: bytes, block: block_pb2.Block, cert: block_pb2.CommitCertificate) -> None:
        height = block.header.height
        validation.check_certificate(chain, block_id, height, cert)
        result = ledger.execute_block(executor.certified_txs(block), height, block.header.time_ms)
        executor.remember(block_id, result, block)

    executor.check_certified = check_certified  # type: ignore[method-assign]


def _unbounded_cache(node: Node) -> None:
    verifier = node.mempool.verifier
    lru = verifier._verified
    lru._max = lru._max_bytes = 1 << 62
    verifier.forget = lambda wire_hash: None  # type: ignore[method-assign]


def _trusting_state_sync(node: Node) -> None:
    make = node.make_state_sync

    def patched(source: Any, trust: Any) -> Any:
        sync = make(source, trust)

        async def chunk(peer: str, height: int, index: int, manifest: Any) -> Any:
            served = await sync._source.snapshot_chunk(peer, height, index)
            entries = peer_pb2.SnapshotEntries.FromString(served.data)
            return list(zip(entries.keys, entries.values, strict=False))

        def rebuild(entries: dict[bytes, bytes], state_root: bytes) -> Any:
            from node.ledger import merkle
            from node.ledger.kv import MemoryKV
            from node.ledger.ledger import compute_state_root

            writes: dict[bytes, bytes | None] = dict(entries)
            empty = MemoryKV()
            _root, nodes = compute_state_root(empty, writes)
            writes.update(merkle.stored_node_writes(nodes, merkle.ChunkedNodes(empty)))
            return writes

        sync._chunk = chunk  # type: ignore[method-assign]
        sync._rebuild = rebuild  # type: ignore[method-assign]
        return sync

    node.make_state_sync = patched  # type: ignore[method-assign]


MUTANTS: dict[str, RuntimeMutant] = {
    m.name: m
    for m in (
        RuntimeMutant(
            "sync-inline",
            "block sync inside the consensus loop, trusting claims",
            _sync_inline,
            "lying-status",
            5,
            "without a commit",
        ),
        RuntimeMutant(
            "trusted-claim",
            "a peer's claimed height trusted by block sync",
            _trust_claims,
            "lying-status",
            10,
            "without a commit",
        ),
        RuntimeMutant(
            "unchecked-sync",
            "synced bodies applied without checking them",
            _unchecked_sync,
            "tamper-sync",
            10,
            "stopped: InvariantBroken",
        ),
        RuntimeMutant(
            "unbounded-cache",
            "the verified cache unbounded, keeping rejected txs",
            _unbounded_cache,
            "",
            5,
            "verified-signature cache bytes",
        ),
        RuntimeMutant(
            "trusting-state-sync",
            "state sync trusting the chunks peers serve",
            lambda node: None,
            "tamper-sync",
            10,
            # A node on a wrong state either shows the lost money or, unable to validate the
            # blocks its peers propose, stalls the heights it is needed for: either is the catch.
            "sum of balances|without a commit",
            joining=_trusting_state_sync,
            settings=(("state_sync", True),),
        ),
    )
}
