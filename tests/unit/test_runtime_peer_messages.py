"""How the runtime treats peers' messages, on a Node with in-memory stand-ins for its network and core.

Transaction batches from a peer are admitted in the background: the peer's stream goes on to its
next message (a vote, a proposal) while the batch's signatures are checked; beyond
MAX_GOSSIP_ADMITS batches in flight the stream waits (back-pressure); a failing admission is logged
and never stops the stream. A height that stalls relays the votes the core names.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from clearline.v1 import peer_pb2
from cluster.netgen import init_network
from node import runtime, wire
from node.config import load_config
from node.consensus.types import Vote, VoteType
from node.mempool import MempoolFull


class GatedMempool:
    """Records each admitted batch; admission finishes only when the test opens the gate."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.gate = asyncio.Event()
        self.started: list[list[bytes]] = []
        self.finished: list[list[bytes]] = []
        self.fail_with = fail_with

    async def admit(
        self, raws: Sequence[bytes], *, gossip: bool = True, dry_run: bool = True
    ) -> list[object]:
        assert gossip is False and dry_run is False  # peers' transactions are not gossiped again
        self.started.append(list(raws))
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.finished.append(list(raws))
        return []


@pytest.fixture
def node(tmp_path: Path) -> Iterator[runtime.Node]:
    net = init_network(tmp_path / "net", validators=4, tls=False)
    n = runtime.Node(load_config(net.node(0).home))
    yield n
    for task in n._gossip_admits:
        task.cancel()
    n._executor.shutdown(wait=False)
    n._io.shutdown(wait=False)


def _batch(i: int) -> peer_pb2.PeerMessage:
    return peer_pb2.PeerMessage(txs=peer_pb2.TxBatch(txs=[b"tx-%d" % i]))


async def test_a_peers_stream_does_not_wait_for_its_batch_to_be_verified(node: runtime.Node) -> None:
    pool = GatedMempool()
    node.mempool = pool  # type: ignore[assignment]
    # Returns while the admission is still waiting at the gate: the next message can be read.
    await asyncio.wait_for(node.on_peer_message("node1", _batch(0)), timeout=1)
    await asyncio.sleep(0)
    assert pool.started == [[b"tx-0"]] and pool.finished == []
    assert len(node._gossip_admits) == 1
    pool.gate.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert pool.finished == [[b"tx-0"]]
    assert not node._gossip_admits  # finished admissions are forgotten


async def test_beyond_the_limit_the_stream_waits_for_the_admission(node: runtime.Node) -> None:
    pool = GatedMempool()
    node.mempool = pool  # type: ignore[assignment]
    for i in range(runtime.MAX_GOSSIP_ADMITS):
        await asyncio.wait_for(node.on_peer_message("node1", _batch(i)), timeout=1)
    assert len(node._gossip_admits) == runtime.MAX_GOSSIP_ADMITS
    extra = asyncio.create_task(node.on_peer_message("node1", _batch(99)))
    await asyncio.sleep(0.05)
    assert not extra.done()  # back-pressure: the peer's stream is held
    assert len(node._gossip_admits) == runtime.MAX_GOSSIP_ADMITS  # no unbounded task growth
    pool.gate.set()
    await asyncio.wait_for(extra, timeout=1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert sorted(b[0] for b in pool.finished) == sorted([b"tx-%d" % i for i in range(8)] + [b"tx-99"])


@pytest.mark.parametrize("error", [MempoolFull("MEMPOOL_FULL", "full"), RuntimeError("boom")])
async def test_a_failing_admission_is_contained(
    node: runtime.Node, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    pool = GatedMempool(fail_with=error)
    node.mempool = pool  # type: ignore[assignment]
    await node.on_peer_message("node1", _batch(0))
    pool.gate.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert not node._gossip_admits
    # A full mempool is routine; anything else is logged with its traceback.
    logged = [r for r in caplog.records if "admitting transactions from a peer" in r.getMessage()]
    assert len(logged) == (0 if isinstance(error, MempoolFull) else 1)
    # The stream goes on: the next batch is admitted as usual.
    pool.fail_with = None
    await node.on_peer_message("node1", _batch(1))
    for _ in range(20):
        await asyncio.sleep(0)
    assert pool.finished == [[b"tx-1"]]


async def test_an_oversized_batch_is_dropped_without_admission(node: runtime.Node) -> None:
    pool = GatedMempool()
    node.mempool = pool  # type: ignore[assignment]
    too_many = 10 * node.cfg.p2p.tx_gossip_batch + 1
    await node.on_peer_message("node1", peer_pb2.PeerMessage(txs=peer_pb2.TxBatch(txs=[b"x"] * too_many)))
    assert pool.started == [] and not node._gossip_admits


class RecordingNetwork:
    """In-memory stand-in for PeerNetwork: records what the node broadcasts."""

    def __init__(self) -> None:
        self.sent: list[peer_pb2.PeerMessage] = []

    def broadcast(self, msg: peer_pb2.PeerMessage) -> None:
        self.sent.append(msg)


class StalledCore:
    """The consensus core of a height that makes no progress, with votes for the runtime to relay."""

    def __init__(self, height: int, votes: list[Vote]) -> None:
        self.height = height
        self.round = 3
        self._votes = votes

    def relay_votes(self) -> list[Vote]:
        return list(self._votes)


async def test_a_stalled_height_relays_the_votes_the_core_names(node: runtime.Node) -> None:
    """Votes others signed are sent again when a height makes no progress for a second (a restarted
    validator lost the prevotes a proof of lock needs); a height that progresses relays nothing."""
    votes = [
        Vote(VoteType.PREVOTE, 8, 1, b"\x07" * 32, b"\x01" * 20, b"s" * 64),
        Vote(VoteType.PRECOMMIT, 8, 3, None, b"\x02" * 20, b"t" * 64),
    ]
    net = RecordingNetwork()
    node.network = net  # type: ignore[assignment]
    node.height = 7
    node.core = StalledCore(8, votes)  # type: ignore[assignment]
    loop = asyncio.create_task(node._status_loop())
    try:
        await asyncio.sleep(0.8)  # not yet stalled for a second: only status messages
        assert {m.WhichOneof("msg") for m in net.sent} == {"status"}
        await asyncio.sleep(0.8)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    relayed = [m.vote for m in net.sent if m.WhichOneof("msg") == "vote"]
    assert relayed[: len(votes)] == [wire.vote_to_pb(v) for v in votes]
