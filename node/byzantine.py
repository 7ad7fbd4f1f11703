"""Test-only Byzantine behaviour of a validator (`clearline-node --byzantine MODE`).

Refused unless the genesis was created for fault testing (`clearline init --faults`). The modes:

    equivocate      as proposer, send one block to half of the peers and a different block to the
                    other half, and prevote for both (a double vote: it must end as evidence)
    double-vote     every non-nil vote is also signed for a conflicting block id and sent to all
    bad-state-root  as proposer, put a wrong state root in the header
    forged-tx       as proposer, add a transaction whose signature does not verify
    garbage         flood peers with malformed messages (while otherwise behaving)
    silent          never send a consensus message (a crashed-but-connected validator)
    collude         equivocate as proposer AND prevote and precommit every proposal it sees; more
                    than f colluders can fork the chain -- used to prove the fault checker bites
    fake-ack        acknowledge SubmitTx(wait=COMMITTED) without committing -- a mutant node used
                    to prove the checker catches lost acknowledged transactions
    lying-status    claim to have committed height 2**64-1 in every status, and never answer a
                    block-sync request (the attack that once halted the network)
    stall-sync      claim a few heights more than it has, and hold every block-sync request open
                    without sending a block
    tamper-sync     serve block sync with bodies that do not match their certified headers (a
                    transaction dropped or a junk one added), claiming a few heights more than it has
                    so that peers ask it
    out-of-turn     send proposals for rounds it is not the proposer of, each carrying a block of
                    freshly signed transactions (costly to verify, if anyone did before checking who
                    proposes)

The hooks sit where the runtime builds and sends messages; honest code paths are unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from clearline.v1 import block_pb2, ledger_api_pb2, peer_pb2, receipt_pb2, tx_pb2
from node import blocks, crypto, txs, wire
from node.consensus import Proposal, Vote, VoteType

if TYPE_CHECKING:
    from node.runtime import Node

log = logging.getLogger("clearline.byzantine")

MODES = (
    "equivocate",
    "double-vote",
    "bad-state-root",
    "forged-tx",
    "garbage",
    "silent",
    "collude",
    "fake-ack",
    "lying-status",
    "stall-sync",
    "tamper-sync",
    "out-of-turn",
)
# How far ahead of its real height a stall-sync or tamper-sync node claims to be.
CLAIM_AHEAD = 3
LIE_HEIGHT = 2**64 - 1


class ByzantineRefused(Exception):
    """--byzantine on a network that was not created for fault testing, or an unknown mode."""


class Byzantine:
    def __init__(self, node: Node, mode: str) -> None:
        if mode not in MODES:
            raise ByzantineRefused(f"unknown Byzantine mode {mode!r} (modes: {', '.join(MODES)})")
        if not node.genesis.fault_testing:
            raise ByzantineRefused(
                "--byzantine is refused: this network was not created for fault testing (clearline init --faults)"
            )
        self.node = node
        self.mode = mode
        self._colluded: set[tuple[int, int, bytes, bytes]] = set()
        log.warning("BYZANTINE MODE %s: this validator misbehaves on purpose (fault testing)", mode)

    # --- proposals ----------------------------------------------------------------------------------

    def tamper_block(self, block: block_pb2.Block) -> block_pb2.Block:
        """Applied to our own proposals before they are hashed and signed."""
        if self.mode == "bad-state-root":
            block.header.state_root = os.urandom(32)
        elif self.mode == "forged-tx":
            body = tx_pb2.TxBody(
                chain_id=self.node.chain_id, signer=os.urandom(20), nonce=0, client_ref="forged"
            )
            body.transfer.to = os.urandom(20)
            body.transfer.amount = 1
            forged = tx_pb2.SignedTx(body=body.SerializeToString())
            forged.signatures.add(public_key=os.urandom(32), signature=os.urandom(64))
            block.body.txs.append(forged.SerializeToString())
            block.header.tx_root = blocks.tx_root([txs.wire_hash(raw) for raw in block.body.txs])
        return block

    # --- sending ------------------------------------------------------------------------------------

    def intercept(self, message: object, pm: peer_pb2.PeerMessage) -> bool:
        """Called before an own message is broadcast; True if this hook sent (or suppressed) it."""
        node = self.node
        if self.mode == "silent":
            return True
        if self.mode == "double-vote" and isinstance(message, Vote) and message.block_id is not None:
            node.network.broadcast(pm)
            node.network.broadcast(
                peer_pb2.PeerMessage(vote=wire.vote_to_pb(self._conflicting_vote(message)))
            )
            return True
        if self.mode in ("equivocate", "collude") and isinstance(message, Proposal):
            self._equivocate(message, pm)
            return True
        # Colluders vote only through targeted votes (on_vote).
        return self.mode == "collude" and isinstance(message, Vote)

    def _conflicting_vote(self, vote: Vote, block_id: bytes | None = None) -> Vote:
        other = block_id or blocks.block_hash(
            block_pb2.Header(chain_id="conflict", height=vote.height, time_ms=vote.round)
        )
        unsigned = Vote(vote.type, vote.height, vote.round, other, vote.validator)
        signer = self.node.signer
        return Vote(vote.type, vote.height, vote.round, other, vote.validator, signer.sign_vote(unsigned))

    def _equivocate(self, proposal: Proposal, pm: peer_pb2.PeerMessage) -> None:
        node = self.node
        assert isinstance(proposal.block, block_pb2.Block)
        twin = block_pb2.Block()
        twin.CopyFrom(proposal.block)
        twin.header.time_ms += 1
        # Re-execute so the twin is a valid block in its own right (the state root covers the time).
        vtxs = [node.mempool.verified(txs.wire_hash(raw)) for raw in twin.body.txs]
        if all(v is not None for v in vtxs):
            result = node.ledger.execute_block([v for v in vtxs if v is not None], twin.header.height,
                                               twin.header.time_ms)  # fmt: skip
            twin.header.state_root = result.state_root
            twin.header.receipts_root = blocks.receipts_root(result.receipts)
        twin_id = blocks.block_hash(twin.header)
        unsigned = Proposal(
            proposal.height, proposal.round, proposal.pol_round, twin_id, twin, proposal.proposer
        )
        signed = Proposal(
            proposal.height, proposal.round, proposal.pol_round, twin_id, twin, proposal.proposer,
            node.signer.sign_proposal(unsigned),
        )  # fmt: skip
        twin_pm = peer_pb2.PeerMessage(proposal=wire.proposal_to_pb(signed))
        peers = node.network.connected
        half = len(peers) // 2
        for i, peer in enumerate(peers):
            node.network.send(peer, pm if i < half else twin_pm)
        if self.mode == "collude":
            return
        # Prevote for the twin too, to everyone: a double vote that honest nodes must turn into evidence.
        prevote = Vote(VoteType.PREVOTE, proposal.height, proposal.round, twin_id, node.key.address)
        node.network.broadcast(
            peer_pb2.PeerMessage(vote=wire.vote_to_pb(self._conflicting_vote(prevote, twin_id)))
        )

    def on_proposal(self, proposal: Proposal) -> None:
        """Hook for proposals received from peers (no behaviour yet beyond the vote hook)."""

    def on_vote(self, vote: Vote) -> None:
        """collude: answer each honest validator's vote for X with our prevote and precommit for X,
        sent to that validator only. With more than f colluders, honest validators that were shown
        different blocks each see a quorum for their own block: a fork the checker must report."""
        if self.mode != "collude" or vote.block_id is None or vote.validator == self.node.key.address:
            return
        key = (vote.height, vote.round, vote.block_id, vote.validator)
        if key in self._colluded:
            return
        self._colluded.add(key)
        peer = self.node.names_by_address.get(vote.validator)
        if peer is None:
            return
        for vote_type in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            unsigned = Vote(vote_type, vote.height, vote.round, vote.block_id, self.node.key.address)
            signed = Vote(vote_type, vote.height, vote.round, vote.block_id, unsigned.validator,
                          self.node.signer.sign_vote(unsigned))  # fmt: skip
            self.node.network.send(peer, peer_pb2.PeerMessage(vote=wire.vote_to_pb(signed)))

    async def fake_ack(self, raws: list[bytes]) -> list[ledger_api_pb2.SubmitTxResult]:
        """fake-ack: answer every submission as committed OK, and drop it (never gossiped or proposed)."""
        results = []
        for item in await self.node.mempool.verify_many(raws):
            if isinstance(item, txs.TxRejected):
                results.append(
                    ledger_api_pb2.SubmitTxResult(
                        accepted=False,
                        status=receipt_pb2.TxStatus.ValueType(item.status),
                        message=item.message,
                    )
                )
                continue
            receipt = receipt_pb2.Receipt(
                tx_hash=item.tx_hash, status=receipt_pb2.TX_STATUS_OK, height=self.node.height + 1
            )
            results.append(ledger_api_pb2.SubmitTxResult(tx_hash=item.tx_hash, accepted=True, receipt=receipt,
                                                         height=self.node.height + 1))  # fmt: skip
        return results

    # --- status and block sync -------------------------------------------------------------------

    def status(self, pm: peer_pb2.PeerMessage) -> peer_pb2.PeerMessage:
        """The status this node sends peers (lying-status, stall-sync and tamper-sync claim more)."""
        if self.mode == "lying-status":
            pm.status.last_committed = LIE_HEIGHT
            pm.status.height = LIE_HEIGHT
        elif self.mode in ("stall-sync", "tamper-sync"):
            pm.status.last_committed += CLAIM_AHEAD
            pm.status.height += CLAIM_AHEAD
        return pm

    async def serve_blocks(
        self, honest: AsyncIterator[peer_pb2.SyncBlock]
    ) -> AsyncIterator[peer_pb2.SyncBlock]:
        """What a block-sync request gets: nothing for ever (lying-status, stall-sync), tampered
        bodies (tamper-sync), else the honest answer."""
        if self.mode in ("lying-status", "stall-sync"):
            await asyncio.Event().wait()  # hold the request open until the peer gives up
        async for sb in honest:
            if self.mode == "tamper-sync":
                self._tamper_body(sb.block)
            yield sb

    def _tamper_body(self, block: block_pb2.Block) -> None:
        """Change the body and leave the certified header: a junk transaction replaces the last one."""
        body = tx_pb2.TxBody(
            chain_id=self.node.chain_id, signer=os.urandom(20), nonce=0, client_ref="tampered"
        )
        body.transfer.to = os.urandom(20)
        body.transfer.amount = 1
        junk = tx_pb2.SignedTx(body=body.SerializeToString())
        junk.signatures.add(public_key=os.urandom(32), signature=os.urandom(64))
        if block.body.txs:
            block.body.txs[-1] = junk.SerializeToString()
        else:
            block.body.txs.append(junk.SerializeToString())

    # --- proposals out of turn --------------------------------------------------------------------

    async def propose_out_of_turn(self, txs_per_block: int = 200, per_second: float = 5.0) -> None:
        """out-of-turn: every 1/per_second s, sign a proposal for the current height and a round this
        validator is not the proposer of, carrying a block of freshly signed transactions."""
        node = self.node
        keys = [crypto.SigningKey.generate() for _ in range(16)]
        serial = 0
        while True:
            await asyncio.sleep(1 / per_second)
            core = node.core
            if core is None:
                continue
            height = node.height + 1
            vs = core.validators
            round_ = next(
                r
                for r in range(core.round, core.round + 64)
                if vs.proposer(height, r).address != node.key.address
            )
            raws = []
            for _ in range(txs_per_block):
                serial += 1
                key = keys[serial % len(keys)]
                body = tx_pb2.TxBody(
                    chain_id=node.chain_id,
                    signer=key.address,
                    nonce=serial,
                    client_ref=f"out-of-turn-{serial}",
                )
                body.transfer.to = os.urandom(20)
                body.transfer.amount = 1
                raws.append(txs.sign_tx(body, [key]))
            header = block_pb2.Header(
                chain_id=node.chain_id,
                height=height,
                time_ms=node.last_header.time_ms + 1 if node.last_header is not None else 1,
                prev_block_hash=node.last_block_hash,
                tx_root=blocks.tx_root([txs.wire_hash(r) for r in raws]),
                proposer=node.key.address,
            )
            block = block_pb2.Block(header=header, body=block_pb2.BlockBody(txs=raws))
            block_id = blocks.block_hash(header)
            unsigned = Proposal(height, round_, -1, block_id, block, node.key.address)
            signed = Proposal(
                height, round_, -1, block_id, block, node.key.address, node.signer.sign_proposal(unsigned)
            )
            node.network.broadcast(peer_pb2.PeerMessage(proposal=wire.proposal_to_pb(signed)))

    # --- garbage ------------------------------------------------------------------------------------

    async def flood(self) -> None:
        """Send malformed messages to every peer, forever (mode garbage)."""
        n = 0
        while True:
            n += 1
            height = self.node.height + 1
            junk = [
                peer_pb2.PeerMessage(txs=peer_pb2.TxBatch(txs=[os.urandom(64) for _ in range(50)])),
                peer_pb2.PeerMessage(
                    vote=block_pb2.Vote(
                        type=block_pb2.VoteType.ValueType(9), height=height, signature=os.urandom(64)
                    )
                ),
                peer_pb2.PeerMessage(proposal=block_pb2.Proposal(height=height, round=0)),
                peer_pb2.PeerMessage(evidence=block_pb2.Evidence()),
                peer_pb2.PeerMessage(
                    status=peer_pb2.PeerStatus(height=height, last_committed=self.node.height)
                ),
            ]
            for msg in junk:
                self.node.network.broadcast(msg)
            await asyncio.sleep(0.02)
