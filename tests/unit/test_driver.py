"""node.driver with a real node's parts (LevelDB in a temporary directory) on a one-validator network,
in logical time (ManualClock): heights are decided, committed and announced to listeners without a
socket or a sleep; every Broadcast goes out only after the Persist it depends on; a node restarted
on the same directory resumes from its store; a block that breaks this node's own invariant stops it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from clearline.v1 import block_pb2, peer_pb2, wal_pb2
from cluster.netgen import init_network
from node import blocks, wire
from node.clock import ManualClock
from node.config import load_config
from node.consensus import Step, Vote, VoteReceived, VoteType
from node.driver import PeerInput
from node.errors import InvariantBroken
from node.execution import Committed
from node.runtime import Node


class Outbox:
    """Records each message with the sign state on disk at the moment it left."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.sent: list[tuple[peer_pb2.PeerMessage, tuple[int, int, int]]] = []
        self.connected: list[str] = []

    def send(self, peer: str, msg: peer_pb2.PeerMessage) -> bool:
        return False

    def ban(self, peer: str, seconds: float, reason: str) -> None:
        pass

    def fetch_blocks(self, peer: str, from_height: int, to_height: int, max_bytes: int) -> object:
        raise ConnectionError("no peers")

    def broadcast(self, msg: peer_pb2.PeerMessage) -> None:
        stored = self.node.sign_state.load_state()
        signed = (
            (0, 0, 0)
            if stored is None
            else (stored.last_signed.height, stored.last_signed.round, int(stored.last_signed.step))
        )
        self.sent.append((msg, signed))


def signed_as(msg: peer_pb2.PeerMessage) -> tuple[int, int, int]:
    """(height, round, step) of this node's own vote or proposal."""
    if msg.WhichOneof("msg") == "proposal":
        return (msg.proposal.height, msg.proposal.round, int(Step.PROPOSE))
    step = Step.PREVOTE if msg.vote.type == block_pb2.VOTE_TYPE_PREVOTE else Step.PRECOMMIT
    return (msg.vote.height, msg.vote.round, int(step))


async def run_driver(home: Path, seconds: float) -> AsyncIterator[tuple[Node, Outbox, list[Committed]]]:
    node = Node(load_config(home), clock=ManualClock())
    node.open()
    assert node.driver is not None
    outbox = Outbox(node)
    node.driver.outbox = outbox
    node.router.transport = outbox
    committed: list[Committed] = []
    node.driver.commit_listeners.append(committed.append)
    task = asyncio.create_task(node.driver.run())
    try:
        assert isinstance(node.clock, ManualClock)
        await node.clock.advance(seconds, step=0.05)
        assert not task.done(), task.exception()
        yield node, outbox, committed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.wal.close()
        node.sign_state.close()
        node.store.close()
        node.verify_pool.shutdown(wait=False)
        node.io_pool.shutdown(wait=True)


async def test_heights_are_decided_committed_and_announced_in_logical_time(tmp_path: Path) -> None:
    net = init_network(tmp_path / "net", validators=1, tls=False)
    home = Path(net.node(0).home)
    async for node, outbox, committed in run_driver(home, 5.0):
        assert node.chain is not None and node.chain.height >= 3
        assert [c.height for c in committed] == list(range(1, node.chain.height + 1))
        assert node.store.latest_height() == node.chain.height  # durably, not only in memory
        consensus = [
            (m, on_disk) for m, on_disk in outbox.sent if m.WhichOneof("msg") in ("vote", "proposal")
        ]
        assert len(consensus) >= 3 * node.chain.height, "the validator signed too little"
        # Persist before Broadcast: when a signed message leaves, the sign state on disk already
        # records that signature (or a later one), so a crash cannot make the node sign it again.
        for msg, on_disk in consensus:
            assert on_disk >= signed_as(msg), (signed_as(msg), on_disk)
        reached = node.chain.height
    async for node, _outbox, _committed in run_driver(home, 3.0):  # restarted on the same directory
        assert node.chain is not None and node.chain.height > reached


async def test_a_decided_block_whose_execution_differs_is_a_broken_invariant(tmp_path: Path) -> None:
    """Not a peer's fault: applying a decided block whose state root this node's execution does not
    reproduce raises InvariantBroken naming the height, and nothing is written."""
    net = init_network(tmp_path / "net", validators=1, tls=False)
    node = Node(load_config(Path(net.node(0).home)), clock=ManualClock())
    node.open()
    try:
        assert node.chain is not None
        _id, proposed = node.executor.propose_block(1, 0)
        assert isinstance(proposed, block_pb2.Block)
        proposed.header.state_root = b"\x00" * 32
        block_id = blocks.block_hash(proposed.header)
        root = node.ledger.state_root
        with pytest.raises(InvariantBroken) as info:
            await node.executor.apply(
                block_id, proposed, block_pb2.CommitCertificate(height=1, block_id=block_id)
            )
        assert info.value.height == 1 and "state root mismatch" in str(info.value)
        assert (node.store.latest_height(), node.chain.height, node.ledger.state_root) == (0, 0, root)
    finally:
        node.wal.close()
        node.sign_state.close()
        node.store.close()
        node.verify_pool.shutdown(wait=False)
        node.io_pool.shutdown(wait=True)


async def test_a_restarted_validator_sends_its_earlier_votes_of_the_height_again(tmp_path: Path) -> None:
    """Found by the node simulation (4 validators, seeds 230 and 482): a validator signed its prevote
    and then its precommit and crashed before either left. Restarted, it re-sent only the last
    signed message (the precommit), while its peers sat in the prevote step, each waiting for a
    third prevote: that one. The sign state now keeps the earlier own votes of the height, and the
    restarted driver counts and sends them again."""
    net = init_network(tmp_path / "net", validators=4, tls=False)
    home = Path(net.node(0).home)
    async for node, outbox, _committed in run_driver(home, 1.5):  # past the propose timeout
        assert node.driver is not None and node.chain is not None and isinstance(node.clock, ManualClock)
        others = [v.address for v in node.chain.core_set(1) if v.address != node.signer.address]
        for address in others[:2]:  # two nil prevotes: a prevote quorum, so it precommits
            nil = Vote(VoteType.PREVOTE, 1, 0, None, address, b"s" * 64)
            node.driver.put(PeerInput(VoteReceived(nil), wal_pb2.WalMessage(vote=wire.vote_to_pb(nil))))
        await node.clock.advance(1.0, step=0.05)
        signed = [signed_as(m) for m, _ in outbox.sent if m.WhichOneof("msg") == "vote"]
        assert signed == [(1, 0, int(Step.PREVOTE)), (1, 0, int(Step.PRECOMMIT))]
    async for node, outbox, _committed in run_driver(home, 0.1):  # restarted: nothing got out
        assert node.driver is not None
        resent = sorted(signed_as(m) for m, _ in outbox.sent if m.WhichOneof("msg") == "vote")
        assert resent == [(1, 0, int(Step.PREVOTE)), (1, 0, int(Step.PRECOMMIT))]
        kept = sorted(signed_as(m) for m in node.driver.own_messages())
        assert kept == resent  # and sent again to a peer that connects or when the height stalls
        assert node.driver.core is not None  # counted again, not only sent:
        assert node.signer.address in node.driver.core._votes.prevotes(0).votes


async def test_a_validator_whose_sign_state_is_ahead_of_its_chain_sits_those_heights_out(
    tmp_path: Path,
) -> None:
    """A node that lost its block store but kept its sign state (state-synced to an older height,
    or restored from an older backup) has signed at heights its chain has not reached. It signs
    nothing below the sign state's height (before, save() refused the lower position and the node
    stopped), and follows the chain until it gets there."""
    import shutil

    net = init_network(tmp_path / "net", validators=1, tls=False)
    home = Path(net.node(0).home)
    async for node, _outbox, _committed in run_driver(home, 3.0):
        stored = node.sign_state.load_state()
        assert stored is not None
        signed_at = stored.last_signed.height
        assert signed_at >= 3
    shutil.rmtree(home / "data" / "blockstore")  # the disk is gone but for the sign state
    for wal in (home / "data").glob("consensus.wal*"):
        if wal.is_dir():
            shutil.rmtree(wal)
        else:
            wal.unlink()
    async for node, outbox, committed in run_driver(home, 3.0):
        assert node.chain is not None and node.chain.height == 0 and committed == []
        signed = [m for m, _ in outbox.sent if m.WhichOneof("msg") in ("vote", "proposal")]
        assert signed == [], [signed_as(m) for m in signed]
        stored = node.sign_state.load_state()
        assert stored is not None and stored.last_signed.height == signed_at  # untouched
