"""The peer router: every message a peer sends comes in here, is checked, and goes to its owner.

Votes and proposals are checked cheaply first (not a copy of one already accepted, in the height
window, signed by a member of that height, a proposal from its round's proposer), then a proposal's transactions are verified in the
thread pool and its block executed (node/execution.py) before the consensus driver gets it.
Transaction batches are admitted to the mempool in the background, bounded (a peer's votes do not
wait behind the signature checks of the transactions it sent just before them; beyond the bound,
its stream waits). Evidence goes to the evidence pool, height claims to block sync.

Peers are validators or observers (node/admission.py). An observer's votes and proposals are
checked like anyone's, against the validator set of their height, so they are dropped and counted
as faults; its height claims are not passed to block sync (this node never fetches from an
observer, so a false claim cannot make it believe it is behind).

A peer's invalid message is its fault (`PeerFault`): counted by kind (a metric), logged (the first
few), and past PEER_FAULT_LIMIT within PEER_FAULT_WINDOW_S the peer is banned for PEER_BAN_S. Only
`BadInput` is caught here; anything else is this node's own failure and stops it.

The router also tells peers this node's height (after a commit, at most every STATUS_MIN_INTERVAL_S,
and every STATUS_INTERVAL_S), and, when a height makes no progress for a second, sends its own
messages of the height again and relays the votes the core names.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from clearline.v1 import block_pb2, peer_pb2, wal_pb2
from node import blocks, budget, crypto, validation, wire
from node.admission import PeerNames
from node.blocksync import BlockSync
from node.chain import Chain
from node.clock import Clock
from node.config import NodeConfig
from node.consensus import Proposal, ProposalReceived, VoteReceived
from node.driver import ConsensusDriver, PeerInput
from node.errors import BadInput, BlockFromTheFuture, InvalidBlock, PeerFault, quote
from node.evidence import EvidencePool
from node.execution import BlockExecutor, Committed
from node.mempool import Mempool
from node.snapshot import SnapshotService
from node.txs import TxRejected, VerifiedTx

log = logging.getLogger("clearline.router")

VERSION = "0.1.0"
# A proposal for a round further than this beyond the current one is not verified (its proposer
# sends it again; f+1 votes of a later round move this node there first).
PROPOSAL_ROUND_WINDOW = 4
PEER_FAULT_LIMIT = 20
PEER_FAULT_WINDOW_S = 60.0
PEER_BAN_S = 30.0
# Beyond this many transaction batches in flight, a peer's stream waits for its admission.
MAX_GOSSIP_ADMITS = 8
# After a commit, tell peers the new height at most this often: at tens of blocks per second a
# status per block per peer would be a large share of all peer writes.
STATUS_MIN_INTERVAL_S = 0.2
STATUS_INTERVAL_S = 0.25
# A height without progress for this long has its messages sent again.
STALL_S = 1.0
# Votes and proposals of the current height already accepted, remembered so that a replayed copy
# (anyone's signed vote, sent again and again by one validator) is dropped before its signature
# check and WAL write. Bounded: past the limit, copies are checked as if new.
MAX_SEEN_MESSAGES = 16_384

SeenKey = tuple[int, int, int, bytes, bytes, bytes]


class SeenMessages:
    """The signed consensus messages of one height that went to the core (a set of small keys)."""

    __slots__ = ("_height", "_keys")

    def __init__(self) -> None:
        self._height = 0
        self._keys: set[SeenKey] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, item: tuple[int, SeenKey]) -> bool:
        height, key = item
        return height == self._height and key in self._keys

    def add(self, height: int, key: SeenKey) -> None:
        if height != self._height:
            self._height, self._keys = height, set()
        if len(self._keys) < MAX_SEEN_MESSAGES:
            self._keys.add(key)


class Transport(Protocol):
    """What the router (and the driver) need of the peer network (node/network/peers.py)."""

    @property
    def connected(self) -> list[str]: ...

    def broadcast(self, msg: peer_pb2.PeerMessage) -> None: ...

    def send(self, peer: str, msg: peer_pb2.PeerMessage) -> bool: ...

    def ban(self, peer: str, seconds: float, reason: str) -> None: ...

    def fetch_blocks(
        self, peer: str, from_height: int, to_height: int, max_bytes: int
    ) -> AsyncIterator[peer_pb2.SyncBlock]: ...


def _reraise(exc: BaseException) -> None:
    raise exc


class PeerFaults:
    """Counts peers' invalid messages by (peer, kind) and says when a peer has sent too many."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._recent: dict[str, list[float]] = {}
        self.counts: dict[tuple[str, str], int] = {}

    def record(self, peer: str, kind: str) -> int:
        """Count one; returns how many the peer sent within the window (0 for block-sync faults,
        which block sync penalizes itself: the peer is not asked again)."""
        self.counts[(peer, kind)] = self.counts.get((peer, kind), 0) + 1
        if kind.startswith("sync_"):
            return 0
        now = self._clock.monotonic()
        recent = [t for t in self._recent.get(peer, []) if now - t < PEER_FAULT_WINDOW_S]
        recent.append(now)
        self._recent[peer] = recent
        return len(recent)

    def forgive(self, peer: str) -> None:
        self._recent.pop(peer, None)


class PeerRouter:
    """The PeerHandler of the peer network."""

    def __init__(
        self,
        *,
        cfg: NodeConfig,
        key: crypto.SigningKey,
        names: PeerNames,
        chain: Chain,
        driver: ConsensusDriver,
        executor: BlockExecutor,
        evidence: EvidencePool,
        mempool: Mempool,
        blocksync: BlockSync,
        clock: Clock,
    ) -> None:
        self._cfg = cfg
        self._key = key
        self._names = names
        self._chain = chain
        self._driver = driver
        self._executor = executor
        self._evidence = evidence
        self.mempool = mempool
        self._blocksync = blocksync
        self._clock = clock
        self.transport: Transport | None = None
        self.faults = PeerFaults(clock)
        self.gossip_admits: set[asyncio.Task[None]] = set()
        self._gossip_bytes = 0
        self.seen = SeenMessages()
        self._status_sent = -1e9
        # This node's own failure in a background admission (not a peer's fault): the node stops.
        self.on_fatal: Callable[[BaseException], None] = _reraise

    @property
    def gossip_bytes(self) -> int:
        """Bytes of peers' transaction batches being verified."""
        return self._gossip_bytes

    def _net(self) -> Transport:
        assert self.transport is not None, "the router is used before its transport is attached"
        return self.transport

    # --- connections ------------------------------------------------------------------------------

    def make_hello(self) -> peer_pb2.Hello:
        chain_id = self._chain.chain_id
        payload = self._key.address + self._key.public_key
        return peer_pb2.Hello(
            chain_id=chain_id,
            validator=self._key.address,
            public_key=self._key.public_key,
            signature=self._key.sign(crypto.Domain.PEER_HELLO, chain_id, payload),
            height=self._chain.height,
            version=VERSION,
        )

    def check_hello(
        self, hello: peer_pb2.Hello, expected_name: str | None, cert_address: bytes | None
    ) -> str | None:
        chain_id = self._chain.chain_id
        if hello.chain_id != chain_id:
            return f"peer is on chain {quote(hello.chain_id)}"
        if len(hello.public_key) != 32 or crypto.address_of(hello.public_key) != hello.validator:
            return "hello validator does not match its public key"
        if not crypto.verify(
            hello.public_key,
            hello.signature,
            crypto.Domain.PEER_HELLO,
            chain_id,
            hello.validator + hello.public_key,
        ):
            return "hello signature does not verify"
        name = self._names.name_of(hello.validator)
        if name is None:
            return "peer is neither a validator of this network nor an admitted observer"
        if expected_name is not None and name != expected_name:
            return f"expected {expected_name}, peer is {name}"
        if cert_address is not None and cert_address != hello.validator:
            return "TLS certificate is bound to another validator"
        if hello.validator == self._key.address:
            return "connected to myself"
        return None

    def on_peer_connected(self, peer: str) -> None:
        net = self._net()
        net.send(peer, self.status_message())
        for msg in self._driver.own_messages():
            net.send(peer, msg)

    def on_peer_disconnected(self, peer: str) -> None:
        self._blocksync.on_disconnected(peer)

    def serve_blocks(self, request: peer_pb2.GetBlocksRequest) -> AsyncIterator[peer_pb2.SyncBlock]:
        return self._blocksync.serve(request)

    def sync_status(self) -> peer_pb2.SyncStatusResponse:
        return self._blocksync.sync_status()

    # State sync serving (node/snapshot.SnapshotService, set by the node once its store is open).
    snapshots: SnapshotService | None = None

    def list_snapshots(self) -> peer_pb2.ListSnapshotsResponse:
        if self.snapshots is None:
            return peer_pb2.ListSnapshotsResponse()
        return self.snapshots.list_snapshots()

    async def snapshot_chunk(self, request: peer_pb2.SnapshotChunkRequest) -> peer_pb2.SnapshotChunk | None:
        return None if self.snapshots is None else self.snapshots.snapshot_chunk(request)

    def light_block(self, request: peer_pb2.LightBlockRequest) -> peer_pb2.LightBlock | None:
        return None if self.snapshots is None else self.snapshots.light_block(request)

    # --- messages ---------------------------------------------------------------------------------

    async def on_peer_message(self, peer: str, msg: peer_pb2.PeerMessage) -> None:
        """The edge for a peer's input: its faults are counted here, nothing else is caught."""
        try:
            await self._route(peer, msg)
        except PeerFault as fault:
            self.count_fault(peer, fault.kind, fault.message)

    async def _route(self, peer: str, msg: peer_pb2.PeerMessage) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "vote":
            self._on_vote(msg.vote)
        elif kind == "proposal":
            await self._on_proposal(msg.proposal)
        elif kind == "txs":
            await self._on_txs(list(msg.txs.txs))
        elif kind == "evidence":
            if self._evidence.is_known(msg.evidence):
                return
            problem = self._evidence.problem(msg.evidence)
            if problem is None:
                self._evidence.add(wire.evidence_from_pb(msg.evidence))
            elif problem not in ("already committed", "unknown height", "too old"):
                raise PeerFault("invalid_evidence", problem)
        elif kind == "status":
            if self._names.is_validator(peer):
                self._blocksync.on_status(peer, msg.status.last_committed)
        elif kind is not None:
            log.debug("peer %s sent unexpected %s", peer, kind)

    def count_fault(self, peer: str, kind: str, detail: str = "") -> None:
        """A peer sent something invalid: count it, log the first few, ban past the limit."""
        recent = self.faults.record(peer, kind)
        if 0 < recent <= 3:
            log.warning("peer %s sent an invalid message (%s): %s", peer, kind, detail)
        if recent >= PEER_FAULT_LIMIT:
            self.faults.forgive(peer)
            self._net().ban(peer, PEER_BAN_S, f"{recent} invalid messages, the last: {kind}")

    def _in_window(self, height: int) -> bool:
        return self._chain.height < height <= self._chain.height + 2

    def _check_signed(self, what: str, height: int, signer: bytes, signature: bytes, message: bytes) -> None:
        public_key = self._chain.validator_key(height, signer)
        if public_key is None:
            raise PeerFault(f"{what}_not_a_validator", f"signer {signer.hex()[:16]}")
        if not crypto.verify_raw(public_key, signature, message):
            raise PeerFault(f"{what}_bad_signature", f"height {height}")

    def _on_vote(self, pb: block_pb2.Vote) -> None:
        try:
            vote = wire.vote_from_pb(pb)
        except wire.WireError as exc:
            raise PeerFault("malformed_vote", str(exc)) from None
        if not self._in_window(vote.height):
            return
        seen = (vote.height, (0, int(vote.type), vote.round, vote.validator, pb.block_id, vote.signature))
        if seen in self.seen:
            return
        msg = blocks.vote_sign_bytes(
            self._chain.chain_id, int(vote.type), vote.height, vote.round, vote.block_id or b""
        )
        self._check_signed("vote", vote.height, vote.validator, vote.signature, msg)
        self.mempool.tx_arrived.set()  # peers are working on the next height: do not idle
        self._driver.put(PeerInput(VoteReceived(vote), wal_pb2.WalMessage(vote=pb)))
        self._remember(*seen)

    def _remember(self, height: int, key: SeenKey) -> None:
        """Only the current height's: a message for the next one may be held and dropped by the
        driver's bound, and a copy sent again must then get through."""
        if height == self._chain.height + 1:
            self.seen.add(height, key)

    async def _on_proposal(self, pb: block_pb2.Proposal) -> None:
        try:
            proposal = wire.proposal_from_pb(pb)
        except wire.WireError as exc:
            raise PeerFault("malformed_proposal", str(exc)) from None
        if not self._in_window(proposal.height):
            return
        seen = (
            proposal.height,
            (1, proposal.round, proposal.pol_round, proposal.proposer, proposal.block_id, proposal.signature),
        )
        if seen in self.seen:
            return
        msg = blocks.proposal_sign_bytes(
            self._chain.chain_id, proposal.height, proposal.round, proposal.pol_round, proposal.block_id
        )
        self._check_signed("proposal", proposal.height, proposal.proposer, proposal.signature, msg)
        try:
            validation.check_proposal(self._chain, proposal, pb.block, self._cfg.consensus)
        except InvalidBlock as exc:
            raise PeerFault("invalid_proposal", exc.reason) from None
        core = self._driver.core
        current_round = core.round if core is not None and core.height == proposal.height else 0
        if proposal.round > current_round + PROPOSAL_ROUND_WINDOW:
            log.debug(
                "proposal %d/%d is beyond round %d; dropped", proposal.height, proposal.round, current_round
            )
            return
        fault: PeerFault | None = None
        try:
            await self._pre_execute(proposal, pb.block)
        except PeerFault as exc:
            fault = exc  # counted below; the core still gets the proposal and prevotes nil on it
        self.mempool.tx_arrived.set()  # peers are working on the next height: do not idle
        self._driver.put(PeerInput(ProposalReceived(proposal), wal_pb2.WalMessage(proposal=pb)))
        if fault is not None:
            raise fault
        self._remember(*seen)

    async def _pre_execute(self, proposal: Proposal, block: block_pb2.Block) -> None:
        """Verify the block's transactions in the thread pool and execute it before the core asks;
        the verdict is cached for the core's validate_block. Raises PeerFault if it is invalid."""
        if proposal.height != self._chain.height + 1 or self._executor.is_executed(proposal.block_id):
            return
        verified = await self.mempool.verify_many(list(block.body.txs))
        if proposal.height != self._chain.height + 1 or self._executor.is_executed(proposal.block_id):
            return  # the height moved on, or another copy was executed meanwhile
        bad = next((v for v in verified if isinstance(v, TxRejected)), None)
        where = f"{proposal.height}/{proposal.round}"
        if bad is not None:
            self._executor.remember(proposal.block_id, None, None)
            raise PeerFault("invalid_proposal", f"{where} carries an invalid transaction: {bad}")
        vtxs = [v for v in verified if isinstance(v, VerifiedTx)]
        try:
            self._executor.check_proposed(proposal.block_id, block, vtxs)
        except BlockFromTheFuture:
            return  # this node's clock or the proposer's is off: not counted against the peer
        except InvalidBlock as exc:
            raise PeerFault("invalid_proposal", f"{where}: {exc.reason}") from None

    async def _on_txs(self, raws: list[bytes]) -> None:
        if len(raws) > 10 * self._cfg.p2p.tx_gossip_batch:
            raise PeerFault("oversized_batch", f"a batch of {len(raws)} transactions")
        size = sum(len(r) for r in raws)
        admission = self._admit(raws, size)
        self._gossip_bytes += size
        if len(self.gossip_admits) >= MAX_GOSSIP_ADMITS or self._gossip_bytes > budget.GOSSIP_INFLIGHT_BYTES:
            await admission  # back-pressure: the peer's stream waits
            return
        task = asyncio.create_task(admission)
        self.gossip_admits.add(task)
        task.add_done_callback(self._admitted)

    def _admitted(self, task: asyncio.Task[None]) -> None:
        self.gossip_admits.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.on_fatal(task.exception())  # type: ignore[arg-type]

    async def _admit(self, raws: list[bytes], size: int) -> None:
        try:
            # Peers dry-ran these on admission; signatures, nonces and duplicates are checked here.
            await self.mempool.admit(raws, gossip=False, dry_run=False)
        except BadInput as exc:  # a full mempool: the transactions come again
            log.debug("peer transactions not admitted: %s", exc)
        finally:
            self._gossip_bytes -= size

    # --- status -----------------------------------------------------------------------------------

    def status_message(self) -> peer_pb2.PeerMessage:
        h = self._chain.height
        return peer_pb2.PeerMessage(
            status=peer_pb2.PeerStatus(height=h + 1, round=self._driver.round, last_committed=h)
        )

    def broadcast_status(self) -> None:
        self._status_sent = self._clock.monotonic()
        self._net().broadcast(self.status_message())

    def on_commit(self, committed: Committed) -> None:
        if self._clock.monotonic() - self._status_sent >= STATUS_MIN_INTERVAL_S:
            self.broadcast_status()

    async def status_loop(self, on_tick: Callable[[], None] = lambda: None) -> None:
        """Tell peers our height (a peer that missed a decision learns it is behind and block-syncs),
        and when a height has made no progress for STALL_S, send our own messages of it again and
        relay the votes the core names (peers may have missed them, or lost them in a restart)."""
        last_height = -1
        progress_at = self._clock.monotonic()
        while True:
            await self._clock.sleep(STATUS_INTERVAL_S)
            net = self._net()
            now = self._clock.monotonic()
            if now - self._status_sent >= STATUS_INTERVAL_S:
                self.broadcast_status()
            if self._chain.height != last_height:
                last_height, progress_at = self._chain.height, now
            elif now - progress_at >= STALL_S:
                progress_at = now
                for msg in self._driver.own_messages():
                    net.broadcast(msg)
                for vote in self._driver.relay_votes():
                    net.broadcast(peer_pb2.PeerMessage(vote=wire.vote_to_pb(vote)))
            self._blocksync.poke()
            on_tick()

    async def gossip_loop(self) -> None:
        """Send newly admitted transactions to peers in batches."""
        interval = self._cfg.p2p.tx_gossip_interval_ms / 1000
        batch = self._cfg.p2p.tx_gossip_batch
        while True:
            await self.mempool.new_tx_event.wait()
            self.mempool.new_tx_event.clear()
            await self._clock.sleep(interval)
            while raws := self.mempool.take_gossip(batch):
                self._net().broadcast(peer_pb2.PeerMessage(txs=peer_pb2.TxBatch(txs=raws)))
