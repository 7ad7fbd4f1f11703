"""node.router: how peers' messages are treated, through the router's own interface, on a node whose
state is opened for real (LevelDB in a temporary directory) and whose clock is logical.

Transaction batches from a peer are admitted in the background: the peer's stream goes on to its
next message while the batch's signatures are checked; beyond MAX_GOSSIP_ADMITS batches in flight
the stream waits (back-pressure). A full mempool is routine; any other failure of an admission is
this node's own and stops it (on_fatal), it is not logged and skipped. A height that stalls relays
the votes the core names; a peer's invalid message is counted and, past the limit, the peer banned.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from clearline.v1 import block_pb2, peer_pb2
from cluster.netgen import init_network
from node import blocks, crypto, wire
from node import router as router_mod
from node.clock import ManualClock
from node.config import load_config
from node.consensus.types import Proposal, Vote, VoteType
from node.mempool import MempoolFull
from node.router import PeerRouter
from node.runtime import Node


class GatedMempool:
    """Records each admitted batch; admission finishes only when the test opens the gate."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.gate = asyncio.Event()
        self.started: list[list[bytes]] = []
        self.finished: list[list[bytes]] = []
        self.fail_with = fail_with
        self.tx_arrived = asyncio.Event()

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


class RecordingTransport:
    """In-memory stand-in for the peer network: records what the router sends and whom it bans."""

    def __init__(self) -> None:
        self.sent: list[peer_pb2.PeerMessage] = []
        self.banned: list[str] = []
        self.connected: list[str] = ["node1"]

    def broadcast(self, msg: peer_pb2.PeerMessage) -> None:
        self.sent.append(msg)

    def send(self, peer: str, msg: peer_pb2.PeerMessage) -> bool:
        self.sent.append(msg)
        return True

    def ban(self, peer: str, seconds: float, reason: str) -> None:
        self.banned.append(peer)

    def fetch_blocks(self, peer: str, from_height: int, to_height: int, max_bytes: int) -> object:
        raise ConnectionError("not in this test")


class StalledDriver:
    """The consensus driver of a height that makes no progress, with votes for the router to relay."""

    def __init__(self, votes: list[Vote]) -> None:
        self.votes = votes
        self.core = None
        self.round = 3
        self.put_events: list[object] = []

    def own_messages(self) -> list[peer_pb2.PeerMessage]:
        return []

    def relay_votes(self) -> list[Vote]:
        return list(self.votes)

    def put(self, event: object) -> None:
        self.put_events.append(event)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    net = init_network(tmp_path / "net", validators=4, tls=False)
    n = Node(load_config(net.node(0).home), clock=ManualClock())
    n.open()
    homes = [load_config(net.node(i).home) for i in range(4)]
    n.validator_keys = {  # type: ignore[attr-defined]
        k.address: k for k in (crypto.load_key_file(c.path(c.keys.validator_key)) for c in homes)
    }
    yield n
    for task in n.router.gossip_admits:
        task.cancel()
    n.wal.close()
    n.sign_state.close()
    n.store.close()
    n.verify_pool.shutdown(wait=False)
    n.io_pool.shutdown(wait=False)


def make_router(
    node: Node, driver: object, mempool: object
) -> tuple[PeerRouter, RecordingTransport, list[BaseException]]:
    assert node.chain is not None
    router = PeerRouter(
        cfg=node.cfg,
        key=node.key,
        names=node.peer_names,
        chain=node.chain,
        driver=driver,  # type: ignore[arg-type]
        executor=node.executor,
        evidence=node.evidence,
        mempool=mempool,  # type: ignore[arg-type]
        blocksync=node.blocksync,
        clock=node.clock,
    )
    transport = RecordingTransport()
    router.transport = transport
    fatal: list[BaseException] = []
    router.on_fatal = fatal.append
    return router, transport, fatal


def _batch(i: int) -> peer_pb2.PeerMessage:
    return peer_pb2.PeerMessage(txs=peer_pb2.TxBatch(txs=[b"tx-%d" % i]))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_peers_stream_does_not_wait_for_its_batch_to_be_verified(node: Node) -> None:
    pool = GatedMempool()
    router, _t, _f = make_router(node, StalledDriver([]), pool)
    # Returns while the admission is still waiting at the gate: the next message can be read.
    await asyncio.wait_for(router.on_peer_message("node1", _batch(0)), timeout=1)
    await asyncio.sleep(0)
    assert pool.started == [[b"tx-0"]] and pool.finished == []
    assert len(router.gossip_admits) == 1
    pool.gate.set()
    await settle()
    assert pool.finished == [[b"tx-0"]]
    assert not router.gossip_admits  # finished admissions are forgotten


async def test_beyond_the_limit_the_stream_waits_for_the_admission(node: Node) -> None:
    pool = GatedMempool()
    router, _t, _f = make_router(node, StalledDriver([]), pool)
    for i in range(router_mod.MAX_GOSSIP_ADMITS):
        await asyncio.wait_for(router.on_peer_message("node1", _batch(i)), timeout=1)
    assert len(router.gossip_admits) == router_mod.MAX_GOSSIP_ADMITS
    extra = asyncio.create_task(router.on_peer_message("node1", _batch(99)))
    await settle()
    assert not extra.done()  # back-pressure: the peer's stream is held
    assert len(router.gossip_admits) == router_mod.MAX_GOSSIP_ADMITS  # no unbounded task growth
    pool.gate.set()
    await asyncio.wait_for(extra, timeout=1)
    await settle()
    assert sorted(b[0] for b in pool.finished) == sorted([b"tx-%d" % i for i in range(8)] + [b"tx-99"])


async def test_a_full_mempool_is_routine_and_the_stream_goes_on(node: Node) -> None:
    pool = GatedMempool(fail_with=MempoolFull("MEMPOOL_FULL", "full"))
    router, _t, fatal = make_router(node, StalledDriver([]), pool)
    await router.on_peer_message("node1", _batch(0))
    pool.gate.set()
    await settle()
    assert not router.gossip_admits and fatal == []
    pool.fail_with = None
    await router.on_peer_message("node1", _batch(1))
    await settle()
    assert pool.finished == [[b"tx-1"]]


async def test_an_internal_failure_of_an_admission_stops_the_node(node: Node) -> None:
    """Not a peer's fault, so not caught as one: the node is told to stop with the error."""
    boom = RuntimeError("the ledger's cache is corrupt")
    pool = GatedMempool(fail_with=boom)
    router, _t, fatal = make_router(node, StalledDriver([]), pool)
    await router.on_peer_message("node1", _batch(0))
    pool.gate.set()
    await settle()
    assert fatal == [boom]


async def test_an_oversized_batch_is_a_counted_fault_without_admission(node: Node) -> None:
    pool = GatedMempool()
    router, _t, _f = make_router(node, StalledDriver([]), pool)
    too_many = 10 * node.cfg.p2p.tx_gossip_batch + 1
    await router.on_peer_message("node1", peer_pb2.PeerMessage(txs=peer_pb2.TxBatch(txs=[b"x"] * too_many)))
    assert pool.started == [] and not router.gossip_admits
    assert router.faults.counts == {("node1", "oversized_batch"): 1}


async def test_invalid_votes_are_counted_and_past_the_limit_the_peer_is_banned(node: Node) -> None:
    driver = StalledDriver([])
    router, transport, _f = make_router(node, driver, GatedMempool())
    forged = block_pb2.Vote(
        type=block_pb2.VOTE_TYPE_PREVOTE,
        height=1,
        round=0,
        validator=node.key.address,
        signature=b"\x00" * 64,
    )
    for _ in range(router_mod.PEER_FAULT_LIMIT - 1):
        await router.on_peer_message("node1", peer_pb2.PeerMessage(vote=forged))
    assert transport.banned == [] and driver.put_events == []  # nothing forged reaches consensus
    await router.on_peer_message("node1", peer_pb2.PeerMessage(vote=forged))
    assert transport.banned == ["node1"]
    assert router.faults.counts[("node1", "vote_bad_signature")] == router_mod.PEER_FAULT_LIMIT


async def test_a_stalled_height_relays_the_votes_the_core_names(node: Node) -> None:
    """Votes others signed are sent again when a height makes no progress for a second (a restarted
    validator lost the prevotes a proof of lock needs); until then only status messages go out."""
    votes = [
        Vote(VoteType.PREVOTE, 1, 1, b"\x07" * 32, b"\x01" * 20, b"s" * 64),
        Vote(VoteType.PRECOMMIT, 1, 3, None, b"\x02" * 20, b"t" * 64),
    ]
    router, transport, _f = make_router(node, StalledDriver(votes), GatedMempool())
    clock = node.clock
    assert isinstance(clock, ManualClock)
    loop = asyncio.create_task(router.status_loop())
    try:
        await clock.advance(0.8)  # not yet stalled for a second: only status messages
        assert transport.sent and {m.WhichOneof("msg") for m in transport.sent} == {"status"}
        await clock.advance(0.6)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    relayed = [m.vote for m in transport.sent if m.WhichOneof("msg") == "vote"]
    assert relayed[: len(votes)] == [wire.vote_to_pb(v) for v in votes]


async def test_an_invalid_proposal_is_counted_and_still_reaches_consensus(node: Node) -> None:
    """The core must see a proposal it will prevote nil on (not wait out its propose timeout), and
    the verdict is cached so the core does not execute it again; the sender is counted."""
    assert node.chain is not None
    driver = StalledDriver([])
    router, _t, _f = make_router(node, driver, node.mempool)
    _id, block = node.executor.propose_block(1, 0)
    assert isinstance(block, block_pb2.Block)
    block.header.state_root = b"\x0b" * 32  # executes to a different root
    block_id = blocks.block_hash(block.header)
    proposer = node.chain.core_set(1).proposer(1, 0).address
    unsigned = Proposal(1, 0, -1, block_id, block, proposer)
    key = node.validator_keys[proposer]  # type: ignore[attr-defined]
    signature = key.sign_raw(blocks.proposal_sign_bytes(node.chain_id, 1, 0, -1, block_id))
    signed = Proposal(1, 0, -1, block_id, block, proposer, signature)
    assert unsigned.block_id == signed.block_id
    await router.on_peer_message("node1", peer_pb2.PeerMessage(proposal=wire.proposal_to_pb(signed)))
    assert [type(e).__name__ for e in driver.put_events] == ["PeerInput"]
    assert router.faults.counts == {("node1", "invalid_proposal"): 1}
    assert node.executor.is_executed(block_id) and node.executor.result_of(block_id) is None
    assert not node.executor.validate_block(1, block_id, block)


async def test_a_replayed_vote_or_proposal_reaches_consensus_once_and_is_not_checked_again(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A validator can send anyone's signed messages again and again (node/byzantine.py replay): the
    copies are dropped before their signature check, so they cost neither a verification nor a WAL
    write. A copy with a different signature is a different message and is checked."""
    assert node.chain is not None
    driver = StalledDriver([])
    router, _t, _f = make_router(node, driver, node.mempool)
    checks: list[str] = []
    real_check = router._check_signed
    monkeypatch.setattr(router, "_check_signed", lambda what, *a: (checks.append(what), real_check(what, *a)))
    keys = node.validator_keys  # type: ignore[attr-defined]
    voter = next(a for a in keys if a != node.key.address)
    block_id = b"\x07" * 32
    sig = keys[voter].sign_raw(blocks.vote_sign_bytes(node.chain_id, int(VoteType.PREVOTE), 1, 0, block_id))
    vote = wire.vote_to_pb(Vote(VoteType.PREVOTE, 1, 0, block_id, voter, sig))
    for _ in range(50):
        await router.on_peer_message("node1", peer_pb2.PeerMessage(vote=vote))
    proposer = node.chain.core_set(1).proposer(1, 0).address
    pid, block = node.executor.propose_block(1, 0)
    psig = keys[proposer].sign_raw(blocks.proposal_sign_bytes(node.chain_id, 1, 0, -1, pid))
    proposal = wire.proposal_to_pb(Proposal(1, 0, -1, pid, block, proposer, psig))
    for _ in range(50):
        await router.on_peer_message("node1", peer_pb2.PeerMessage(proposal=proposal))
    assert checks == ["vote", "proposal"]
    assert len(driver.put_events) == 2 and router.faults.counts == {}
    forged = block_pb2.Vote()
    forged.CopyFrom(vote)
    forged.signature = b"\x00" * 64
    await router.on_peer_message("node1", peer_pb2.PeerMessage(vote=forged))
    assert checks == ["vote", "proposal", "vote"] and len(driver.put_events) == 2
    assert router.faults.counts == {("node1", "vote_bad_signature"): 1}


async def test_copies_of_the_next_heights_messages_are_checked_again(node: Node) -> None:
    """Only the current height's messages are remembered: the driver may drop a held message of the
    height after (its bound), and a copy sent again must then get through."""
    driver = StalledDriver([])
    router, _t, _f = make_router(node, driver, node.mempool)
    keys = node.validator_keys  # type: ignore[attr-defined]
    voter = next(a for a in keys if a != node.key.address)
    sig = keys[voter].sign_raw(blocks.vote_sign_bytes(node.chain_id, int(VoteType.PREVOTE), 2, 0, b""))
    vote = wire.vote_to_pb(Vote(VoteType.PREVOTE, 2, 0, None, voter, sig))
    for _ in range(3):
        await router.on_peer_message("node1", peer_pb2.PeerMessage(vote=vote))
    assert len(driver.put_events) == 3 and len(router.seen) == 0


async def test_a_proposal_from_this_nodes_future_reaches_consensus_and_is_not_the_peers_fault(
    node: Node,
) -> None:
    """Which clock is wrong is not known: the peer is not counted (twenty such would ban an honest
    proposer while this node's clock is off), and the core gets the proposal to prevote nil on."""
    assert node.chain is not None
    clock = node.clock
    assert isinstance(clock, ManualClock)
    driver = StalledDriver([])
    router, _t, _f = make_router(node, driver, node.mempool)
    clock.step_wall(30)
    block_id, block = node.executor.propose_block(1, 0)
    clock.step_wall(-30)
    node.executor.new_height(2)  # this node has not judged it yet
    proposer = node.chain.core_set(1).proposer(1, 0).address
    sig = node.validator_keys[proposer].sign_raw(  # type: ignore[attr-defined]
        blocks.proposal_sign_bytes(node.chain_id, 1, 0, -1, block_id)
    )
    pb = wire.proposal_to_pb(Proposal(1, 0, -1, block_id, block, proposer, sig))
    await router.on_peer_message("node1", peer_pb2.PeerMessage(proposal=pb))
    assert router.faults.counts == {}
    assert [type(e).__name__ for e in driver.put_events] == ["PeerInput"]
    assert not node.executor.is_executed(block_id)
