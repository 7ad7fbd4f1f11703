"""The rule that keeps a validator restored without its own sign state from signing twice
(node/storage/signstate.py RestoreGuard, enforced by node/driver.py `_sits_out`), on a real node's
parts in logical time: four validators, the one under test fed a valid proposal and the others'
votes at a height it may have signed before its disk was lost. With the guard it signs nothing
there (and a signature that got that far would stop the node before it left); it decides the height
from the others' votes and signs from the first height after a block timed past the guard's mark.
Without the guard the same validator prevotes: what the guard prevents."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest

from clearline.v1 import block_pb2, peer_pb2, wal_pb2
from cluster.netgen import init_network
from node import wire
from node.backup import MIN_GUARD_MARGIN_MS
from node.clock import ManualClock
from node.config import load_config
from node.consensus import Proposal, ProposalReceived, SignState, Step, Vote, VoteReceived, VoteType
from node.driver import PeerInput
from node.errors import InvariantBroken
from node.ledger import parse_genesis
from node.runtime import Node, NodeSigner
from node.storage.signstate import RestoreGuard, save_guard


class Outbox:
    def __init__(self) -> None:
        self.sent: list[peer_pb2.PeerMessage] = []

    def broadcast(self, msg: peer_pb2.PeerMessage) -> None:
        self.sent.append(msg)

    def own(self, address: bytes) -> list[tuple[str, int]]:
        """(kind, height) of the messages this node signed."""
        out = []
        for m in self.sent:
            if m.HasField("vote") and m.vote.validator == address:
                out.append(
                    ("prevote" if m.vote.type == block_pb2.VOTE_TYPE_PREVOTE else "precommit", m.vote.height)
                )
            elif m.HasField("proposal") and m.proposal.proposer == address:
                out.append(("proposal", m.proposal.height))
        return out


def open_node(home: Path, clock: ManualClock) -> Node:
    node = Node(load_config(home), clock=clock)
    node.open()
    return node


def close_node(node: Node) -> None:
    node.close()
    node.verify_pool.shutdown(wait=False)
    node.io_pool.shutdown(wait=True)


def vote(signer: Node, vote_type: VoteType, block_id: bytes) -> PeerInput:
    unsigned = Vote(vote_type, 1, 0, block_id, signer.key.address)
    signed = dataclasses.replace(
        unsigned, signature=NodeSigner(signer.key, signer.chain_id).sign_vote(unsigned)
    )
    return PeerInput(VoteReceived(signed), wal_pb2.WalMessage(vote=wire.vote_to_pb(signed)))


@pytest.mark.parametrize("guarded", [True, False], ids=["restore-guard", "no-guard"])
async def test_a_restored_validator_signs_nothing_where_it_may_have_signed_before(
    tmp_path: Path, guarded: bool
) -> None:
    net = init_network(tmp_path / "net", validators=4, tls=False)
    homes = [Path(n.home) for n in net.nodes]
    genesis_ms = parse_genesis((homes[0] / "genesis.json").read_text()).genesis_time * 1000
    clock = ManualClock(wall=time.time() + 3600)  # block 1 is timed well past the guard's mark
    nodes = [open_node(h, clock) for h in homes]
    try:
        proposer_address = nodes[0].chain.core_set(1).proposer(1, 0).address  # type: ignore[union-attr]
        proposer = next(n for n in nodes if n.key.address == proposer_address)
        subject = next(n for n in nodes if n is not proposer)
        others = [n for n in nodes if n is not subject]
        for n in nodes:
            if n is not subject:
                close_node(n)
        nodes = [subject]
        close_node(subject)
        # Restored after a lost disk: the guard's mark is after the genesis, so height 1 (whose
        # previous block is the genesis) may have been signed before the loss.
        data = Path(subject.cfg.path(subject.cfg.storage.data_dir))
        if guarded:
            save_guard(data / "sign_state.bin", RestoreGuard(genesis_ms, MIN_GUARD_MARGIN_MS, 0))
        subject = open_node(Path(subject.cfg.home), clock)
        nodes = [subject]
        assert (subject.sign_state.guard is not None) is guarded
        outbox = Outbox()
        assert subject.driver is not None
        subject.driver.outbox = outbox
        subject.router.transport = outbox  # type: ignore[assignment]
        task = asyncio.create_task(subject.driver.run())
        try:
            await clock.advance(0.1, step=0.05)
            await drive(subject, proposer, others, outbox, clock, guarded)
            assert not task.done(), task.exception() if task.done() else None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    finally:
        for n in nodes:
            close_node(n)


async def drive(
    subject: Node, proposer: Node, others: list[Node], outbox: Outbox, clock: ManualClock, guarded: bool
) -> None:
    """Height 1 as the others run it, seen by the subject; then height 2."""
    assert subject.driver is not None
    # The proposer's valid block for (1, 0), signed by its key, and its fellows' prevotes.
    maker = open_node(Path(proposer.cfg.home), clock)
    try:
        block_id, block = maker.executor.propose_block(1, 0)
    finally:
        close_node(maker)
    unsigned = Proposal(1, 0, -1, block_id, block, proposer.key.address)
    signature = NodeSigner(proposer.key, proposer.chain_id).sign_proposal(unsigned)
    proposal = dataclasses.replace(unsigned, signature=signature)
    subject.driver.put(
        PeerInput(ProposalReceived(proposal), wal_pb2.WalMessage(proposal=wire.proposal_to_pb(proposal)))
    )
    for other in others:
        subject.driver.put(vote(other, VoteType.PREVOTE, block_id))
    await clock.advance(0.5, step=0.05)
    own_at_1 = [m for m in outbox.own(subject.key.address) if m[1] == 1]
    if not guarded:
        assert ("prevote", 1) in own_at_1  # the signature the guard is there to prevent
        return
    assert own_at_1 == []
    # A signature at a height it sits out would stop the node before it left.
    with pytest.raises(InvariantBroken, match="sits out"):
        subject.driver._persist(
            SignState(1, 0, Step.PREVOTE, block_id, b"\x01" * 64, -1, None, -1, None), None
        )
    assert subject.sign_state.load() is None  # nothing was stored

    # It decides height 1 from the others' precommits, signing nothing there.
    for other in others:
        subject.driver.put(vote(other, VoteType.PRECOMMIT, block_id))
    await clock.advance(0.5, step=0.05)
    assert subject.chain is not None and subject.chain.height == 1
    assert [m for m in outbox.own(subject.key.address) if m[1] == 1] == []
    # Block 1 is timed past the mark: from height 2 on it signs (a proposal, or a nil prevote
    # once the propose timeout passes with no proposal from the silent others).
    await clock.advance(5.0, step=0.05)
    assert any(h == 2 for _kind, h in outbox.own(subject.key.address)), outbox.own(subject.key.address)
