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
    replay          replay the validly signed votes and proposals it has heard (anyone's) to every
                    peer, again and again: copies that cost nothing to send and must cost little
                    to drop

Each mode is a wrapper chosen when the node is built (`ByzantineBehaviour`, a `node.runtime.Behaviour`):
a tampering block executor (bad-state-root, forged-tx), a transport that lies, withholds or
duplicates what the node sends (silent, double-vote, equivocate, collude, lying-status, stall-sync,
tamper-sync), a peer handler that serves block sync badly or colludes with what it hears, a client
API that acknowledges without committing (fake-ack), and extra tasks (garbage, out-of-turn). The
honest node's code never asks whether it is Byzantine; this module imports the node's types, the
node never imports this module (node/__main__.py picks the behaviour).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

from clearline.v1 import block_pb2, ledger_api_pb2, peer_pb2, receipt_pb2, tx_pb2
from node import blocks, crypto, txs, wire
from node.consensus import Proposal, Vote, VoteType

if TYPE_CHECKING:
    from node.consensus import Application
    from node.execution import BlockExecutor
    from node.network.api import NodeApi
    from node.network.peers import PeerHandler, PeerNetwork
    from node.router import PeerRouter, Transport
    from node.runtime import Node
    from node.service import ClientService

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
    "replay",
)
# replay: how many copies of each message heard are sent to every peer.
REPLAY_COPIES = 16
# How far ahead of its real height a stall-sync or tamper-sync node claims to be.
CLAIM_AHEAD = 3
LIE_HEIGHT = 2**64 - 1


class ByzantineRefused(Exception):
    """--byzantine on a network that was not created for fault testing, or an unknown mode."""


class ByzantineBehaviour:
    """The parts of a misbehaving validator (see the module docstring for the modes)."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise ByzantineRefused(f"unknown Byzantine mode {mode!r} (modes: {', '.join(MODES)})")
        self.mode = mode
        self._node: Node | None = None
        self._colluded: set[tuple[int, int, bytes | None, bytes]] = set()
        self._replayed: set[bytes] = set()  # signatures of the messages replayed at _replayed_height
        self._replayed_height = 0
        self._net: Transport | None = None
        self._listings = 0  # tamper-sync: snapshot listings served
        self._light_blocks = 0  # tamper-sync: light blocks served

    @property
    def node(self) -> Node:
        assert self._node is not None
        return self._node

    @property
    def net(self) -> Transport:
        assert self._net is not None
        return self._net

    # --- the Behaviour ----------------------------------------------------------------------------

    def attach(self, node: Node) -> None:
        if not node.genesis.fault_testing:
            raise ByzantineRefused(
                "--byzantine is refused: this network was not created for fault testing (clearline init --faults)"
            )
        self._node = node
        log.warning("BYZANTINE MODE %s: this validator misbehaves on purpose (fault testing)", self.mode)

    def app(self, executor: BlockExecutor) -> Application:
        if self.mode in ("bad-state-root", "forged-tx"):
            return _TamperingApp(executor, self)
        return executor

    def transport(self, network: PeerNetwork) -> Transport:
        self._net = network
        return _LyingTransport(network, self)

    def peer_handler(self, router: PeerRouter) -> PeerHandler:
        return _ByzantineHandler(router, self)

    def client_api(self, service: ClientService) -> NodeApi:
        return _FakeAckApi(service, self) if self.mode == "fake-ack" else service

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        if self.mode == "garbage":
            return [self.flood()]
        if self.mode == "out-of-turn":
            return [self.propose_out_of_turn()]
        return []

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

    def withheld(self, pm: peer_pb2.PeerMessage) -> bool:
        """silent sends no consensus message; colluders vote only through targeted votes (on_vote)."""
        kind = pm.WhichOneof("msg")
        if self.mode == "silent":
            return kind in ("vote", "proposal", "evidence")
        return self.mode == "collude" and kind == "vote" and pm.vote.validator == self.node.key.address

    def intercept(self, pm: peer_pb2.PeerMessage) -> bool:
        """Called for each broadcast; True if this hook sent (or withheld) it."""
        if self.withheld(pm):
            return True
        kind = pm.WhichOneof("msg")
        own = self.node.key.address
        if kind == "status":
            self.net.broadcast(self.status(pm))
            return True
        if self.mode == "double-vote" and kind == "vote" and pm.vote.validator == own and pm.vote.block_id:
            self.net.broadcast(pm)
            conflicting = self._conflicting_vote(wire.vote_from_pb(pm.vote))
            self.net.broadcast(peer_pb2.PeerMessage(vote=wire.vote_to_pb(conflicting)))
            return True
        if self.mode in ("equivocate", "collude") and kind == "proposal" and pm.proposal.proposer == own:
            self._equivocate(wire.proposal_from_pb(pm.proposal), pm)
            return True
        return False

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
        peers = self.net.connected
        half = len(peers) // 2
        for i, peer in enumerate(peers):
            self.net.send(peer, pm if i < half else twin_pm)
        if self.mode == "collude":
            return
        # Prevote for the twin too, to everyone: a double vote that honest nodes must turn into evidence.
        prevote = Vote(VoteType.PREVOTE, proposal.height, proposal.round, twin_id, node.key.address)
        self.net.broadcast(
            peer_pb2.PeerMessage(vote=wire.vote_to_pb(self._conflicting_vote(prevote, twin_id)))
        )

    def on_vote(self, vote: Vote) -> None:
        """collude: answer each honest validator's vote for X with our prevote and precommit for X,
        sent to that validator only. With more than f colluders, honest validators that were shown
        different blocks each see a quorum for their own block: a fork the checker must report.
        A nil vote is answered with nil votes: colluders never vote in the open, so without this an
        honest validator that timed out on a proposal would wait for a prevote quorum forever and
        the round (and the next colluder's proposal, the fork) would never come."""
        if self.mode != "collude" or vote.validator == self.node.key.address:
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
            self.net.send(peer, peer_pb2.PeerMessage(vote=wire.vote_to_pb(signed)))

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
        if pm.WhichOneof("msg") != "status":
            return pm
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

    def serve_snapshots(self, honest: peer_pb2.ListSnapshotsResponse) -> peer_pb2.ListSnapshotsResponse:
        """tamper-sync: every third listing's manifests carry a forged root node (the manifest no
        longer matches the certified state root), the others forged chunk hashes (and its chunks
        are tampered: serve_chunk)."""
        if self.mode != "tamper-sync":
            return honest
        self._listings += 1
        for manifest in honest.snapshots:
            if self._listings % 3 == 1:
                manifest.root_node = os.urandom(len(manifest.root_node) or 66)
            for info in manifest.chunks:
                info.hash = os.urandom(32)
        return honest

    def serve_light_block(self, honest: peer_pb2.LightBlock | None) -> peer_pb2.LightBlock | None:
        """tamper-sync: every third light block claims another state root (its certificate no
        longer signs it)."""
        if honest is not None and self.mode == "tamper-sync":
            self._light_blocks += 1
            if self._light_blocks % 3 == 1:
                honest.header.state_root = os.urandom(32)
        return honest

    async def serve_chunk(self, honest: peer_pb2.SnapshotChunk | None) -> peer_pb2.SnapshotChunk | None:
        """A snapshot chunk: never sent (stall-sync, lying-status), an entry left out (tamper-sync)."""
        if self.mode in ("lying-status", "stall-sync"):
            await asyncio.Event().wait()
        if honest is not None and self.mode == "tamper-sync":
            # Leave an entry out (an account that "does not exist"): every record still parses.
            entries = peer_pb2.SnapshotEntries.FromString(honest.data)
            if entries.keys:
                del entries.keys[-1]
                del entries.values[-1]
            honest.data = entries.SerializeToString()
        return honest

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
            core = node.driver.core if node.driver is not None else None
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
                time_ms=node.chain.last_time_ms + 1 if node.chain is not None else 1,
                prev_block_hash=node.chain.last_block_hash if node.chain is not None else b"",
                tx_root=blocks.tx_root([txs.wire_hash(r) for r in raws]),
                proposer=node.key.address,
            )
            block = block_pb2.Block(header=header, body=block_pb2.BlockBody(txs=raws))
            block_id = blocks.block_hash(header)
            unsigned = Proposal(height, round_, -1, block_id, block, node.key.address)
            signed = Proposal(
                height, round_, -1, block_id, block, node.key.address, node.signer.sign_proposal(unsigned)
            )
            self.net.broadcast(peer_pb2.PeerMessage(proposal=wire.proposal_to_pb(signed)))

    # --- replay -------------------------------------------------------------------------------------

    def heard(self, msg: peer_pb2.PeerMessage) -> None:
        """replay: every vote and proposal heard for the height being decided goes back out to every
        peer REPLAY_COPIES times at once (a validly signed copy, at no cost to this validator)."""
        if self.mode != "replay" or msg.WhichOneof("msg") not in ("vote", "proposal"):
            return
        body = msg.vote if msg.WhichOneof("msg") == "vote" else msg.proposal
        if body.height <= self.node.height:
            return
        # Each message once: two replaying validators would otherwise replay each other's copies
        # without end (and flood only themselves in the end, as TCP would).
        key = body.signature
        if key in self._replayed:
            return
        if body.height != self._replayed_height:
            self._replayed_height, self._replayed = body.height, set()
        self._replayed.add(key)
        for _ in range(REPLAY_COPIES):
            self.net.broadcast(msg)

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
                self.net.broadcast(msg)
            await asyncio.sleep(0.02)


# --- the wrappers ---------------------------------------------------------------------------------


class _TamperingApp:
    """The block executor as the core sees it, with this node's proposals tampered with."""

    def __init__(self, executor: BlockExecutor, byz: ByzantineBehaviour) -> None:
        self._executor = executor
        self._byz = byz

    def propose_block(self, height: int, round: int) -> tuple[bytes, object]:
        block_id, block = self._executor.propose_block(height, round)
        assert isinstance(block, block_pb2.Block)
        tampered = self._byz.tamper_block(block)
        tampered_id = blocks.block_hash(tampered.header)
        # This node takes its own block as valid (its honest execution), as a liar would.
        self._executor.remember(tampered_id, self._executor.result_of(block_id), tampered)
        return tampered_id, tampered

    def validate_block(self, height: int, block_id: bytes, block: object) -> bool:
        return self._executor.validate_block(height, block_id, block)


class _LyingTransport:
    """The peer network as the node's parts see it: what they send is withheld, duplicated, split
    or changed according to the mode."""

    def __init__(self, network: PeerNetwork, byz: ByzantineBehaviour) -> None:
        self._net = network
        self._byz = byz

    @property
    def connected(self) -> list[str]:
        return self._net.connected

    def broadcast(self, msg: peer_pb2.PeerMessage) -> None:
        if not self._byz.intercept(msg):
            self._net.broadcast(msg)

    def send(self, peer: str, msg: peer_pb2.PeerMessage) -> bool:
        if self._byz.withheld(msg):
            return False
        return self._net.send(peer, self._byz.status(msg))

    def ban(self, peer: str, seconds: float, reason: str) -> None:
        self._net.ban(peer, seconds, reason)

    def fetch_blocks(
        self, peer: str, from_height: int, to_height: int, max_bytes: int
    ) -> AsyncIterator[peer_pb2.SyncBlock]:
        return self._net.fetch_blocks(peer, from_height, to_height, max_bytes)


class _ByzantineHandler:
    """The peer router as the network sees it: block sync served badly, votes heard by colluders."""

    def __init__(self, router: PeerRouter, byz: ByzantineBehaviour) -> None:
        self._router = router
        self._byz = byz

    def make_hello(self) -> peer_pb2.Hello:
        return self._router.make_hello()

    def check_hello(
        self, hello: peer_pb2.Hello, expected_name: str | None, cert_address: bytes | None
    ) -> str | None:
        return self._router.check_hello(hello, expected_name, cert_address)

    async def on_peer_message(self, peer: str, msg: peer_pb2.PeerMessage) -> None:
        await self._router.on_peer_message(peer, msg)
        self._byz.heard(msg)
        if msg.WhichOneof("msg") == "vote":
            with contextlib.suppress(wire.WireError):
                self._byz.on_vote(wire.vote_from_pb(msg.vote))

    def on_peer_connected(self, peer: str) -> None:
        self._router.on_peer_connected(peer)

    def on_peer_disconnected(self, peer: str) -> None:
        self._router.on_peer_disconnected(peer)

    def serve_blocks(self, request: peer_pb2.GetBlocksRequest) -> AsyncIterator[peer_pb2.SyncBlock]:
        return self._byz.serve_blocks(self._router.serve_blocks(request))

    def sync_status(self) -> peer_pb2.SyncStatusResponse:
        return self._router.sync_status()

    def list_snapshots(self) -> peer_pb2.ListSnapshotsResponse:
        return self._byz.serve_snapshots(self._router.list_snapshots())

    async def snapshot_chunk(self, request: peer_pb2.SnapshotChunkRequest) -> peer_pb2.SnapshotChunk | None:
        return await self._byz.serve_chunk(await self._router.snapshot_chunk(request))

    def light_block(self, request: peer_pb2.LightBlockRequest) -> peer_pb2.LightBlock | None:
        return self._byz.serve_light_block(self._router.light_block(request))


class _FakeAckApi:
    """The client service with SubmitTx answered as committed and nothing submitted (fake-ack)."""

    def __init__(self, service: ClientService, byz: ByzantineBehaviour) -> None:
        self._service = service
        self._byz = byz

    async def submit(
        self, raws: list[bytes], wait: int, timeout_s: float | None
    ) -> list[ledger_api_pb2.SubmitTxResult]:
        return await self._byz.fake_ack(raws)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)
