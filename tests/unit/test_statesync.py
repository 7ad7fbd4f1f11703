"""node.statesync against a real chain (one validator, LevelDB, logical time) served in process: the
header is trusted from genesis or from a configured height and hash, and a source that lies (a wrong
trusted hash, a light block that its certificate does not sign, chunks from another height, nothing
at all) is refused and counted, never written."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from clearline.v1 import peer_pb2
from cluster.netgen import init_network
from node import blocks
from node.clock import ManualClock
from node.config import SnapshotsConfig, load_config
from node.ledger import merkle
from node.runtime import Node, genesis_validator_set
from node.snapshot import SnapshotService
from node.statesync import StateSync, StateSyncFailed, Trust
from node.storage import NodeStore
from tests.unit.test_driver import Outbox


class Served:
    """A peer serving what one node has, with optional lies."""

    def __init__(self, node: Node, lie: str = "") -> None:
        self.service = SnapshotService(node.store, node.snapshots)
        self.store = node.store
        self.lie = lie

    def snapshot_peers(self) -> list[str]:
        return ["peer"]

    async def list_snapshots(self, peer: str) -> peer_pb2.ListSnapshotsResponse:
        if self.lie == "silent":
            await asyncio.Event().wait()
        return self.service.list_snapshots()

    async def snapshot_chunk(self, peer: str, height: int, index: int) -> peer_pb2.SnapshotChunk:
        chunk = self.service.snapshot_chunk(peer_pb2.SnapshotChunkRequest(height=height, index=index))
        assert chunk is not None
        if self.lie == "other-height":  # a chunk of the older snapshot in place of the newer one's
            older = self.service.snapshots.heights()[0]
            other = self.service.snapshot_chunk(peer_pb2.SnapshotChunkRequest(height=older, index=index))
            if other is not None:
                return peer_pb2.SnapshotChunk(height=height, index=index, data=other.data)
        return chunk

    async def light_block(self, peer: str, height: int) -> peer_pb2.LightBlock:
        light = self.service.light_block(peer_pb2.LightBlockRequest(height=height))
        assert light is not None
        if self.lie == "unsigned-header":
            light.header.time_ms += 1  # no longer the header the certificate signs
        return light

    async def fetch_blocks(
        self, peer: str, from_height: int, to_height: int, max_bytes: int
    ) -> AsyncIterator[peer_pb2.SyncBlock]:
        height = from_height - 1 if self.lie == "other-block" else from_height
        block = self.store.load_block(height)
        commit = self.store.load_commit(height)
        assert block is not None and commit is not None
        yield peer_pb2.SyncBlock(block=block, commit=commit)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One validator that ran a few seconds of logical time, snapshotting every 3 heights."""
    root = tmp_path_factory.mktemp("statesync")
    net = init_network(root / "net", validators=1, tls=False)
    home = Path(net.node(0).home)
    base = load_config(home)
    fast = dataclasses.replace(base.consensus, timeout_commit_ms=10, create_empty_blocks_interval_ms=50)
    cfg = dataclasses.replace(base, consensus=fast, snapshots=SnapshotsConfig(interval=3, keep=2))
    node = Node(cfg, clock=ManualClock(), pools=None)

    async def run() -> None:
        node.open()
        assert node.driver is not None
        outbox = Outbox(node)
        node.driver.outbox = outbox
        node.router.transport = outbox
        task = asyncio.create_task(node.driver.run())
        assert isinstance(node.clock, ManualClock)
        await node.clock.advance(2.0, step=0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for _ in range(100):  # the snapshot thread
            if len(node.snapshots.heights()) == 2:
                break
            await asyncio.sleep(0.02)

    asyncio.run(run())
    assert len(node.snapshots.heights()) == 2, node.snapshots.heights()
    yield node
    node.close()
    node.verify_pool.shutdown(wait=False)
    node.io_pool.shutdown(wait=True)
    node.snapshot_pool.shutdown(wait=True)


def _sync(node: Node, source: Served, trust: Trust | None = None, **kw: object) -> StateSync:
    return StateSync(
        source,
        chain_id=node.chain_id,
        trust=trust or Trust(genesis_validator_set(node.genesis)),
        clock=ManualClock(),
        chunk_timeout_s=0.5,
        discovery_s=0.0,
        **kw,  # type: ignore[arg-type]
    )


async def test_a_snapshot_is_trusted_from_genesis_and_rebuilds_the_same_state(
    chain: Node, tmp_path: Path
) -> None:
    newest = chain.snapshots.heights()[-1]
    synced = await _sync(chain, Served(chain)).run()
    assert synced is not None and synced.height == newest
    assert synced.block.header == chain.store.load_block(newest).header  # type: ignore[union-attr]
    # Written into an empty store, it opens at that height with the node's state root there.
    with NodeStore.open(tmp_path / "store") as store:
        sets = {1: genesis_validator_set(chain.genesis), **synced.validator_sets}
        store.save_state_sync(
            chain.store.load_genesis_json() or b"", chain.chain_id, synced.state_writes, synced.block,
            synced.block_hash, synced.commit, sets,
        )  # fmt: skip
        assert store.latest_height() == newest and store.base_height() == newest + 1
        root = merkle.MerkleTree(merkle.ChunkedNodes(store.state)).root_hash()
        assert root == synced.block.header.state_root


async def test_trust_starts_from_a_configured_height_and_hash(chain: Node) -> None:
    trusted = chain.store.load_block(2)
    assert trusted is not None
    good = Trust(genesis_validator_set(chain.genesis), 2, blocks.block_hash(trusted.header))
    synced = await _sync(chain, Served(chain), good).run()
    assert synced is not None
    wrong = Trust(genesis_validator_set(chain.genesis), 2, b"\x01" * 32)
    sync = _sync(chain, Served(chain), wrong)
    with pytest.raises(StateSyncFailed):
        await sync.run()
    assert ("peer", "bad_light_block") in sync.faults


@pytest.mark.parametrize(
    ("lie", "fault"),
    [("unsigned-header", "bad_light_block"), ("other-height", "bad_chunk"), ("other-block", "bad_block")],
)
async def test_a_lying_peer_is_refused_and_counted(chain: Node, lie: str, fault: str) -> None:
    sync = _sync(chain, Served(chain, lie))
    with pytest.raises(StateSyncFailed):
        await sync.run()
    assert (("peer", fault) in sync.faults) and sync.strikes["peer"] >= 1, sync.faults


async def test_no_snapshot_offered_means_starting_from_genesis(chain: Node) -> None:
    assert await _sync(chain, Served(chain, "silent")).run() is None
