"""The validator runtime: the one asyncio driver that wires consensus, ledger, storage and network.

One task (`_consensus_loop`) owns the consensus core and reads one queue; everything that changes
consensus state goes through it, in order. The core returns actions that are carried out in list
order: `Persist` (sign state, fsync) always completes before the `Broadcast` of the message it
protects. Peer messages are validated (signature, membership, height window) before they are
queued; a proposal's transactions are verified in the thread pool and the block executed before the
core is asked about it, so `validate_block` is a cache lookup on the hot path.

Commit path (crash-safe, one batch): block, certificate, receipts, indexes, state entries and Merkle
nodes go to LevelDB in one synced write batch; then the ledger makes the result its committed state,
the WAL ends the height, the mempool drops what was committed, and waiters and subscribers hear of
it. After kill -9 a node is at height H or H+1, never between; on restart it opens the store in
O(1), restores its last-signed state (so it never signs a conflicting message) and replays the WAL
of the height in progress.

A node that is behind (peers report a higher committed height) fetches blocks with their commit
certificates in the background (node/blocksync.py) while consensus goes on; each fetched block is
verified here by the same rules as a proposal (header chain, body against header, certificate
against the validator set of its height) before any of its transactions is taken as verified, then
applied. A block that does not verify is the serving peer's fault, never the node's.

Whatever a peer or client can make the node hold is bounded in count and bytes (node/budget.py
adds the bounds up). Cheap checks come before expensive ones: a proposal's proposer, round and
signature are checked before its transactions' signatures, and a peer that sends invalid proposals
or votes is counted and, past a limit, banned for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from clearline.v1 import (
    block_pb2,
    ledger_api_pb2,
    peer_pb2,
    receipt_pb2,
    wal_pb2,
)
from node import blocks, budget, crypto, txs, wire
from node.blockserve import blocks_to_serve
from node.blocksync import SYNC_BATCH, BlockSync, PeerFault
from node.byzantine import Byzantine
from node.config import BLOCK_OVERHEAD_BYTES, NodeConfig
from node.consensus import (
    Broadcast,
    CommitCertificate,
    Decide,
    DuplicateVoteEvidence,
    Persist,
    Proposal,
    ProposalReceived,
    RecordEvidence,
    ScheduleTimeout,
    SignState,
    StartHeight,
    Step,
    Tendermint,
    TimeoutConfig,
    TimeoutFired,
    Validator,
    ValidatorSet,
    Vote,
    VoteReceived,
)
from node.errors import ApiError, quote
from node.gctune import PauseWatch
from node.ledger import BlockResult, Ledger, parse_genesis
from node.mempool import Mempool, MempoolFull
from node.network.api import ApiServer
from node.network.peers import PeerNetwork
from node.storage import (
    WAL,
    BlockCommit,
    NodeStore,
    SignStateFile,
    account_touches_of,
    staggered_write_buffer,
)
from node.storage.crash import crash_point
from node.threadname import name_this_thread
from node.txs import TxRejected, VerifiedTx

log = logging.getLogger("clearline.node")

VERSION = "0.1.0"
MAX_CLOCK_DRIFT_MS = 10_000
MAX_EVIDENCE_PER_BLOCK = 64
# Evidence waiting to be included: per equivocating validator and in all (one proof per validator
# is enough to hold it accountable; a Byzantine validator can sign any number of conflicting votes).
MAX_PENDING_EVIDENCE = 256
MAX_PENDING_EVIDENCE_PER_VALIDATOR = 4
# A proposal for a round further than this beyond the current one is not verified (its proposer
# sends it again; f+1 votes of a later round move this node there first).
PROPOSAL_ROUND_WINDOW = 4
# Proposals executed per height at most (each costs an execution and holds a block and its result).
MAX_EXECUTED_PER_HEIGHT = 16
# A peer that sent this many invalid proposals or votes within PEER_FAULT_WINDOW_S is banned for
# PEER_BAN_S (its stream closed and its reconnections refused).
PEER_FAULT_LIMIT = 20
PEER_FAULT_WINDOW_S = 60.0
PEER_BAN_S = 30.0
# A decided block of at most this many transactions is written on the event loop (a few ms): the
# hand-off to the io thread and back costs more than that when the loop is busy (the io thread
# waits for the GIL; at 1000 tx/s decide -> persisted went from 7 to 3.4 ms). A bigger block is
# written in the io thread while the loop goes on admitting transactions.
INLINE_COMMIT_MAX_TXS = 256
# After a commit, tell peers the new height at most this often (the status loop also does, each second):
# at tens of blocks per second a status per block per peer would be a fifth of all peer writes.
STATUS_MIN_INTERVAL_S = 0.2
# The status loop's period (a status goes out only if none did for this long).
STATUS_INTERVAL_S = 0.25
# Peers' messages for two heights on, held until this node starts the next height (bounded).
MAX_LATER_EVENTS = 1000
# Transaction batches from peers are verified and admitted in the background, so a peer's votes and
# proposals do not wait behind the signature checks of the transactions it sent just before them
# (at --max, shorter queues at the same throughput; at 1000 tx/s no measurable change). Beyond this
# many batches in flight, a peer's stream waits for its admission (back-pressure).
MAX_GOSSIP_ADMITS = 8
# The WAL appends end-of-height markers up to this size, then starts a fresh file (bounded replay).
WAL_ROTATE_BYTES = 4 << 20


class FatalError(Exception):
    """A broken invariant: the node stops rather than continue from a wrong state."""


def now_ms() -> int:
    return int(time.time() * 1000)


def _event_size(event: object) -> int:
    """About how many bytes a held consensus event keeps alive."""
    if isinstance(event, ProposalReceived) and isinstance(event.proposal.block, block_pb2.Block):
        return event.proposal.block.ByteSize() + 256
    return 256


def _event_height(event: object) -> int:
    """The height a peer's consensus message is for (0 for anything else)."""
    if isinstance(event, VoteReceived):
        return event.vote.height
    if isinstance(event, ProposalReceived):
        return event.proposal.height
    return 0


def _duplicate_problem(vtxs: Sequence[VerifiedTx]) -> str | None:
    """Two envelopes of one transaction (same id) in a block."""
    ids = {t.tx_hash for t in vtxs}
    return "duplicate transaction in block" if len(ids) != len(vtxs) else None


class NodeSigner:
    """The consensus Signer: Ed25519 over the domain-separated canonical sign bytes."""

    def __init__(self, key: crypto.SigningKey, chain_id: str) -> None:
        self._key = key
        self._chain_id = chain_id
        self.address: bytes = key.address

    def sign_vote(self, vote: Vote) -> bytes:
        msg = blocks.vote_sign_bytes(
            self._chain_id, int(vote.type), vote.height, vote.round, vote.block_id or b""
        )
        return self._key.sign_raw(msg)

    def sign_proposal(self, proposal: Proposal) -> bytes:
        msg = blocks.proposal_sign_bytes(
            self._chain_id, proposal.height, proposal.round, proposal.pol_round, proposal.block_id
        )
        return self._key.sign_raw(msg)


def to_core_set(vs: block_pb2.ValidatorSet) -> ValidatorSet:
    return ValidatorSet(
        [Validator(address=v.address, public_key=v.public_key, power=v.power) for v in vs.validators]
    )


def apply_validator_updates(
    vs: block_pb2.ValidatorSet, updates: Sequence[tuple[bytes, int]]
) -> block_pb2.ValidatorSet:
    """The set after ChangeValidator updates (power 0 removes), sorted by address."""
    by_key = {v.public_key: (v.power, v.name) for v in vs.validators}
    for public_key, power in updates:
        if power == 0:
            by_key.pop(public_key, None)
        else:
            by_key[public_key] = (power, by_key.get(public_key, (0, ""))[1])
    out = block_pb2.ValidatorSet()
    for public_key, (power, name) in sorted(by_key.items(), key=lambda kv: crypto.address_of(kv[0])):
        out.validators.add(
            address=crypto.address_of(public_key), public_key=public_key, power=power, name=name
        )
    return out


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with the node's height and round."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self._node = node

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "node": self._node.cfg.moniker,
            "height": self._node.height + 1,
            "round": self._node.core.round if self._node.core is not None else 0,
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class Node:
    """One validator. `await Node(cfg).run()` until SIGTERM/SIGINT or `stop()`."""

    def __init__(self, cfg: NodeConfig, byzantine: str = "") -> None:
        self.cfg = cfg
        self.byzantine_mode = byzantine or cfg.byzantine
        self.byz: Byzantine | None = None
        self.chain_id = cfg.chain_id
        self.core: Tendermint | None = None
        self.height = 0  # last committed height
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(
            max_workers=cfg.mempool.verify_threads,
            thread_name_prefix="verify",
            initializer=name_this_thread,
            initargs=("verify",),
        )
        # Persistence (sign state, block batches) has its own thread: it never queues behind verification.
        self._io = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="io", initializer=name_this_thread, initargs=("io",)
        )
        self._executed: dict[bytes, BlockResult | None] = {}  # block id -> result (None = invalid)
        self._blocks_by_id: dict[bytes, block_pb2.Block] = {}
        self._own_messages: list[peer_pb2.PeerMessage] = []
        self._timers: list[asyncio.TimerHandle] = []  # the current height's scheduled timeouts
        self._gossip_admits: set[asyncio.Task[None]] = set()  # peers' tx batches being admitted
        self._later: list[ProposalReceived | VoteReceived] = []  # peers' messages two heights on
        # (round, block id, block) of a proposal signed before a restart: proposed again as it was.
        self._restored_proposal: tuple[int, bytes, block_pb2.Block] | None = None
        self._pending_evidence: OrderedDict[tuple[bytes, int, int, int], DuplicateVoteEvidence] = (
            OrderedDict()
        )
        self._committed_evidence: set[tuple[bytes, int, int, int]] = set()
        self._waiters: dict[bytes, list[asyncio.Future[tuple[receipt_pb2.Receipt, int]]]] = {}
        self._block_listeners: set[asyncio.Queue[int]] = set()
        self._later_bytes = 0
        self._gossip_bytes = 0  # raw bytes of peers' batches being admitted
        self._peer_faults: dict[str, list[float]] = {}  # peer -> times of its recent invalid messages
        self.peer_fault_counts: dict[tuple[str, str], int] = {}  # (peer, kind) -> count, for metrics
        self._core_stale = False  # block sync moved the height on: the core restarts before its next event
        self.blocksync = BlockSync(self, on_fault=self._on_sync_fault)
        self._tasks: list[asyncio.Task[Any]] = []
        self._vs_cache: dict[int, block_pb2.ValidatorSet] = {}
        self._member_cache: dict[int, dict[bytes, bytes]] = {}
        self._side_tasks: set[asyncio.Task[Any]] = set()
        self._round_started = time.monotonic()
        self._proposal_at: tuple[int, float] | None = None  # (height, when its proposal was ready)
        self._decided_at: float | None = None
        self._status_sent = 0.0
        self._last_block_time = 0.0
        self.started = False
        self.metrics: Any = None
        self._gc_watch = PauseWatch(log.warning)

    # --- startup ----------------------------------------------------------------------------------

    def _setup_logging(self) -> None:
        handler = logging.FileHandler(self.cfg.path(self.cfg.log.file))
        handler.setFormatter(JsonLogFormatter(self))
        root = logging.getLogger("clearline")
        root.handlers = [handler]
        root.setLevel(self.cfg.log.level.upper())
        root.propagate = False

    def _open_state(self) -> None:
        cfg = self.cfg
        self.key = crypto.load_key_file(cfg.path(cfg.keys.validator_key))
        genesis_path = cfg.path(cfg.genesis)
        try:
            genesis_text = genesis_path.read_text()
        except FileNotFoundError:
            raise FatalError(f"genesis file {genesis_path} does not exist") from None
        self.genesis = parse_genesis(genesis_text)
        if self.genesis.chain_id != cfg.chain_id:
            raise FatalError(
                f"genesis chain id {self.genesis.chain_id!r} differs from config {cfg.chain_id!r}"
            )
        data_dir = cfg.path(cfg.storage.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = NodeStore.open(
            data_dir / "blockstore",
            chain_id=cfg.chain_id,
            write_buffer_size=staggered_write_buffer(self.key.address),
        )
        if not self.store.is_initialized():
            writes, _root = Ledger.genesis_writes(self.genesis)
            vs = block_pb2.ValidatorSet()
            for v in sorted(self.genesis.validators, key=lambda g: crypto.address_of(g.public_key)):
                vs.validators.add(
                    address=crypto.address_of(v.public_key),
                    public_key=v.public_key,
                    power=v.power,
                    name=v.name,
                )
            self.store.save_genesis(genesis_text.encode(), writes, vs, cfg.chain_id)
        self.ledger = Ledger.open(self.store.state)
        self.height = self.store.latest_height()
        if self.ledger.height != self.height:
            raise FatalError(f"ledger is at height {self.ledger.height} but the block store at {self.height}")
        self.names_by_address: dict[bytes, str] = {}
        for v in self.genesis.validators:
            self.names_by_address[crypto.address_of(v.public_key)] = v.name
        self._load_tip()
        for _h, ev in self.store.load_evidence(0, 100_000):
            with contextlib.suppress(wire.WireError):
                self._committed_evidence.add(wire.evidence_key(wire.evidence_from_pb(ev)))
        self.sign_state = SignStateFile.open(data_dir / "sign_state.bin")
        self.signer = NodeSigner(self.key, self.chain_id)
        if self.byzantine_mode:
            self.byz = Byzantine(self, self.byzantine_mode)
        self.wal, self._wal_replay = WAL.open(data_dir / "consensus.wal", rotate_bytes=WAL_ROTATE_BYTES)
        if self._wal_replay.repaired:
            log.warning("WAL repaired: %s", self._wal_replay.repaired)

    def _load_tip(self) -> None:
        if self.height == 0:
            self.last_header: block_pb2.Header | None = None
            self.last_block_hash = b""
            self.last_commit_pb = block_pb2.CommitCertificate()
        else:
            block = self.store.load_block(self.height)
            commit = self.store.load_commit(self.height)
            if block is None or commit is None:
                raise FatalError(f"block store lacks block or commit of its latest height {self.height}")
            self.last_header = block.header
            self.last_block_hash = blocks.block_hash(block.header)
            self.last_commit_pb = commit

    def validator_set(self, height: int) -> block_pb2.ValidatorSet:
        vs = self.known_validator_set(height)
        if vs is None:
            raise FatalError(f"no validator set known for height {height}")
        return vs

    def known_validator_set(self, height: int) -> block_pb2.ValidatorSet | None:
        """The set that signs `height`, cached: sets up to the last committed height + 2 are final."""
        vs = self._vs_cache.get(height)
        if vs is None:
            vs = self.store.load_validator_set(height)
            if vs is not None and height <= self.height + 2:
                if len(self._vs_cache) > 64:
                    self._vs_cache.clear()
                self._vs_cache[height] = vs
        return vs

    def validator_key(self, height: int, address: bytes) -> bytes | None:
        """The public key of validator `address` at `height`, or None if it is not a member."""
        cache = self._member_cache.get(height)
        if cache is None:
            vs = self.known_validator_set(height)
            if vs is None:
                return None
            cache = {v.address: v.public_key for v in vs.validators}
            if height <= self.height + 2:
                if len(self._member_cache) > 64:
                    self._member_cache.clear()
                self._member_cache[height] = cache
        return cache.get(address)

    def _new_core(self, height: int) -> Tendermint:
        vs = to_core_set(self.validator_set(height))
        restored: SignState | None = None
        locked_block = valid_block = None
        self._restored_proposal = None
        stored = self.sign_state.load_state()
        if stored is not None and stored.last_signed.height == height:
            restored = wire.sign_state_from_pb(stored.last_signed)
            if stored.locked_block:
                locked_block = block_pb2.Block.FromString(stored.locked_block)
            if stored.valid_block:
                valid_block = block_pb2.Block.FromString(stored.valid_block)
            if stored.proposal_block and restored.step == Step.PROPOSE and restored.block_id:
                proposed = block_pb2.Block.FromString(stored.proposal_block)
                if blocks.block_hash(proposed.header) == restored.block_id:
                    self._restored_proposal = (restored.round, restored.block_id, proposed)
        elif stored is not None and stored.last_signed.height > height:
            log.warning(
                "sign state is at height %d, ahead of the chain (%d): block sync will catch up",
                stored.last_signed.height,
                height,
            )
        c = self.cfg.consensus
        timeouts = TimeoutConfig(
            propose_ms=c.timeout_propose_ms,
            propose_delta_ms=c.timeout_propose_delta_ms,
            prevote_ms=c.timeout_prevote_ms,
            prevote_delta_ms=c.timeout_prevote_delta_ms,
            precommit_ms=c.timeout_precommit_ms,
            precommit_delta_ms=c.timeout_precommit_delta_ms,
        )
        self._executed.clear()
        self._blocks_by_id.clear()
        self._own_messages.clear()
        for b in (locked_block, valid_block):
            if b is not None:
                self._blocks_by_id[blocks.block_hash(b.header)] = b
        return Tendermint(
            validators=vs,
            signer=self.signer,
            app=self,
            timeouts=timeouts,
            height=height,
            restored=restored,
            locked_block=locked_block,
            valid_block=valid_block,
        )

    async def run(self) -> None:
        """Start everything, run until stopped, then shut down gracefully."""
        self._setup_logging()
        gc.callbacks.append(self._gc_watch)
        self._open_state()
        self.mempool = Mempool(
            self.cfg.mempool,
            self.chain_id,
            check=self._check_tx,
            committed_nonce=self._committed_nonce,
            ref_committed=lambda _s, _r: False,
            executor=self._executor,
            read_ahead=(lambda bodies: self.ledger.read_ahead(bodies), lambda got: self.ledger.absorb(got)),
        )
        from node import metrics  # imported late: prometheus registry per process

        self.metrics = metrics.NodeMetrics(self.cfg.metrics.listen)
        self.mempool.on_verified = lambda _n, seconds: self.metrics.verify_seconds.observe(seconds)
        self.network = PeerNetwork(self.cfg, self, self.names_by_address)
        self.api = ApiServer(
            self,
            self.cfg.api.listen,
            max_message_bytes=self.cfg.api.max_message_bytes,
            max_request_bytes=self.cfg.api.max_request_bytes,
            max_concurrent_rpcs=self.cfg.api.max_concurrent_rpcs,
            max_batch=self.cfg.api.max_batch_txs,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        await self.network.start()
        await self.api.start()
        self.core = self._new_core(self.height + 1)
        log.info("node %s starting at height %d (chain %s)", self.cfg.moniker, self.height + 1, self.chain_id)
        self._tasks = [
            asyncio.create_task(self._consensus_loop(), name="consensus"),
            asyncio.create_task(self._gossip_loop(), name="gossip"),
            asyncio.create_task(self._status_loop(), name="status"),
            asyncio.create_task(self.blocksync.run(), name="blocksync"),
        ]
        if self.byz is not None and self.byz.mode == "garbage":
            self._tasks.append(asyncio.create_task(self.byz.flood(), name="byzantine"))
        if self.byz is not None and self.byz.mode == "out-of-turn":
            self._tasks.append(asyncio.create_task(self.byz.propose_out_of_turn(), name="byzantine"))
        await self._queue.put(("start", None))
        await self.api.set_serving(True)
        self.started = True
        stop_wait = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stop_wait, *self._tasks], return_when=asyncio.FIRST_COMPLETED)
        failure: BaseException | None = None
        for task in done:
            if task is not stop_wait and not task.cancelled() and task.exception() is not None:
                failure = task.exception()
        await self._shutdown()
        if failure is not None:
            raise failure

    def stop(self) -> None:
        self._stop.set()

    async def _shutdown(self) -> None:
        log.info("shutting down")
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._gc_watch)
        with contextlib.suppress(Exception):
            await self.api.set_serving(False)
        tasks = [*self._tasks, *self._side_tasks, *self._gossip_admits]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.api.stop(0.5)
        await self.network.stop()
        self.wal.close()
        self.sign_state.close()
        self.store.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._io.shutdown(wait=True)
        if self.metrics is not None:
            self.metrics.close()

    # --- the consensus task -------------------------------------------------------------------------

    async def _consensus_loop(self) -> None:
        while True:
            kind, payload = await self._queue.get()
            assert self.core is not None
            if kind == "synced":
                peer, sb, fut = payload
                try:
                    applied = await self._apply_synced_block(peer, sb)
                except PeerFault as exc:
                    if not fut.done():
                        fut.set_exception(exc)
                    continue
                if not fut.done():
                    fut.set_result(applied)
                if applied and self._queue.empty():
                    await self._restart_core()
                continue
            if self._core_stale:
                await self._restart_core()
            if kind == "start":
                await self._execute(self.core.start())
                await self._replay_wal()
            elif kind == "event":
                if isinstance(payload, TimeoutFired) and payload.height != self.core.height:
                    continue
                if _event_height(payload) > self.core.height + 1:
                    # The core keeps only the next height's messages; peers that are two heights on
                    # (this node is finishing a commit) would not send these again: hold them
                    # (bounded in count and bytes).
                    size = _event_size(payload)
                    if (
                        len(self._later) < MAX_LATER_EVENTS
                        and self._later_bytes + size <= budget.LATER_EVENTS_BYTES
                    ):
                        self._later.append(payload)
                        self._later_bytes += size
                    continue
                await self._execute(self.core.step(payload))
            elif kind == "start_height":
                height = payload
                if height != self.height + 1 or self.core.height == height:
                    continue
                self._new_height_bookkeeping()
                await self._execute(
                    self.core.step(StartHeight(height, to_core_set(self.validator_set(height))))
                )
                later, self._later = self._later, []
                self._later_bytes = 0
                for ev in later:  # back in line: now within reach (or held again)
                    if _event_height(ev) >= height:
                        self._queue.put_nowait(("event", ev))

    async def _restart_core(self) -> None:
        """Start consensus afresh at the height after the last committed one (after block sync)."""
        self._core_stale = False
        self.core = self._new_core(self.height + 1)
        self._new_height_bookkeeping()
        await self._execute(self.core.start())

    def _new_height_bookkeeping(self) -> None:
        """Forget the finished height. A proposal for the new height that arrived (and was executed)
        between the commit and now is kept: the core gets it next and must not execute it twice."""
        height = self.height + 1
        self._executed = {k: r for k, r in self._executed.items() if r is not None and r.height == height}
        self._blocks_by_id = {k: b for k, b in self._blocks_by_id.items() if b.header.height == height}
        self._own_messages.clear()
        for timer in self._timers:  # the finished height's timeouts would only wake the loop
            timer.cancel()
        self._timers.clear()
        self._round_started = time.monotonic()
        if self._proposal_at is not None and self._proposal_at[0] != height:
            self._proposal_at = None
        self._decided_at = None

    def _note_proposal(self, height: int) -> None:
        """Remember when the first proposal of `height` was ready (the commit log's timeline)."""
        if self._proposal_at is None or self._proposal_at[0] != height:
            self._proposal_at = (height, time.monotonic())

    async def _replay_wal(self) -> None:
        """Feed the WAL of the height in progress back into the core (after a restart)."""
        assert self.core is not None
        replayed = 0
        for record in self._wal_replay.records:
            if record.WhichOneof("record") != "message":
                continue
            msg = record.message
            try:
                if msg.HasField("vote"):
                    vote = wire.vote_from_pb(msg.vote)
                    if vote.height == self.core.height:
                        await self._execute(self.core.step(VoteReceived(vote)))
                        replayed += 1
                elif msg.HasField("proposal"):
                    proposal = wire.proposal_from_pb(msg.proposal)
                    if proposal.height == self.core.height:
                        self._blocks_by_id[proposal.block_id] = msg.proposal.block
                        await self._execute(self.core.step(ProposalReceived(proposal)))
                        replayed += 1
            except wire.WireError as exc:
                log.warning("skipping a bad WAL record: %s", exc)
        self._wal_replay.records.clear()
        if replayed:
            log.info("replayed %d consensus messages from the WAL", replayed)

    def _enqueue(self, event: Any) -> None:
        self._queue.put_nowait(("event", event))

    async def _execute(self, actions: Sequence[Any]) -> None:
        for action in actions:
            match action:
                case Persist(sign_state=state, block=block):
                    self._persist(state, block)
                case Broadcast(message=message):
                    self._broadcast(message)
                case ScheduleTimeout(height=h, round=r, step=step, delay_ms=delay):
                    loop = asyncio.get_running_loop()
                    self._timers.append(
                        loop.call_later(delay / 1000, self._enqueue, TimeoutFired(h, r, step))
                    )
                case Decide(height=h, block_id=block_id, block=block, certificate=cert):
                    await self._commit(h, block_id, block, cert)
                case RecordEvidence(evidence=evidence):
                    self._add_evidence(evidence, gossip=True)
                case _:
                    log.debug("ignoring action %r", action)

    def _persist(self, state: SignState, block: object | None) -> None:
        """Save the sign state before the message it guards leaves the node. On the event loop, not
        the io thread: the message waits for the save either way, and the two thread hand-offs
        cost more CPU than the save itself (at 100 tx/s: 9.2 -> 7.8 ms of CPU per height per
        node, heights 22 -> 21 ms). The loop is blocked for one pwrite and fdatasync of a slot
        file (~0.25 ms, see storage/signstate.py)."""
        if isinstance(block, block_pb2.Block):
            self._blocks_by_id[blocks.block_hash(block.header)] = block
        locked = self._blocks_by_id.get(state.locked_block_id) if state.locked_block_id else None
        valid = self._blocks_by_id.get(state.valid_block_id) if state.valid_block_id else None
        proposed = block if state.step == Step.PROPOSE and isinstance(block, block_pb2.Block) else None
        pb = wire.sign_state_to_pb(state)
        self.sign_state.save(
            pb,
            locked.SerializeToString() if locked is not None else None,
            valid.SerializeToString() if valid is not None else None,
            proposed.SerializeToString() if proposed is not None else None,
        )
        if proposed is not None:
            crash_point("runtime:after-sign-proposal")

    def _broadcast(self, message: Proposal | Vote | DuplicateVoteEvidence) -> None:
        if isinstance(message, Vote):
            pm = peer_pb2.PeerMessage(vote=wire.vote_to_pb(message))
            self._own_messages.append(pm)
        elif isinstance(message, Proposal):
            pm = peer_pb2.PeerMessage(proposal=wire.proposal_to_pb(message))
            self._own_messages.append(pm)
            self._blocks_by_id[message.block_id] = pm.proposal.block
            # In the WAL too: after a crash the node gets its own proposal back instead of waiting
            # for the propose timeout (it never signs a second proposal for the round).
            self.wal.append(wal_pb2.WalRecord(message=wal_pb2.WalMessage(proposal=pm.proposal)))
        else:
            pm = peer_pb2.PeerMessage(evidence=wire.evidence_to_pb(message))
        if self.byz is not None and self.byz.intercept(message, pm):
            return
        self.network.broadcast(pm)

    # --- the Application the core calls -------------------------------------------------------------

    def propose_block(self, height: int, round: int) -> tuple[bytes, object]:
        restored, self._restored_proposal = self._restored_proposal, None
        if restored is not None and restored[0] == round and restored[2].header.height == height:
            # Signed before a crash, perhaps never sent: the same block gets the same signature back
            # from the core (a different one would be refused as a double sign, losing the round).
            _round, block_id, block = restored
            if self.validate_block(height, block_id, block):
                log.info(
                    "proposing again the block signed before the restart (height %d, round %d)", height, round
                )
                self._note_proposal(height)
                return block_id, block
        c = self.cfg.consensus
        vtxs = self.mempool.reap(c.max_block_bytes, c.max_block_txs)
        prev_time = (
            self.last_header.time_ms if self.last_header is not None else self.genesis.genesis_time * 1000
        )
        time_ms = max(now_ms(), prev_time + 1)
        result = self.ledger.execute_block(vtxs, height, time_ms)
        evidence = [
            wire.evidence_to_pb(e) for e in list(self._pending_evidence.values())[:MAX_EVIDENCE_PER_BLOCK]
        ]
        header = block_pb2.Header(
            chain_id=self.chain_id,
            height=height,
            time_ms=time_ms,
            prev_block_hash=self.last_block_hash,
            tx_root=blocks.tx_root([t.wire_hash for t in vtxs]),
            state_root=result.state_root,
            validator_set_hash=blocks.validator_set_hash(self.validator_set(height)),
            next_validator_set_hash=blocks.validator_set_hash(self.validator_set(height + 1)),
            proposer=self.key.address,
            last_commit_hash=blocks.commit_hash(self.last_commit_pb if height > 1 else None),
            receipts_root=blocks.receipts_root(result.receipts),
            evidence_root=blocks.merkle_root([e.SerializeToString(deterministic=True) for e in evidence]),
        )
        block = block_pb2.Block(
            header=header, body=block_pb2.BlockBody(txs=[t.raw for t in vtxs], evidence=evidence)
        )
        if height > 1:
            block.last_commit.CopyFrom(self.last_commit_pb)
        if self.byz is not None:
            block = self.byz.tamper_block(block)
        block_id = blocks.block_hash(block.header)
        self._executed[block_id] = result
        self._blocks_by_id[block_id] = block
        self._note_proposal(height)
        log.debug("proposing block %d with %d txs", height, len(vtxs))
        return block_id, block

    def validate_block(self, height: int, block_id: bytes, block: object) -> bool:
        """The core asks whether a proposed block is valid. Normally a cache lookup: peers'
        proposals are verified and executed before the core sees them (_on_proposal)."""
        if block_id in self._executed:
            return self._executed[block_id] is not None
        if not isinstance(block, block_pb2.Block):
            return False
        vtxs: list[VerifiedTx] = []
        for raw in block.body.txs:
            vtx = self.mempool.verified(txs.wire_hash(raw))
            if vtx is None:
                try:
                    vtx = txs.verify_tx(raw, self.chain_id, self.cfg.mempool.max_tx_bytes)
                except TxRejected as exc:
                    log.warning("block %d: invalid transaction: %s", height, exc)
                    self._executed[block_id] = None
                    return False
            vtxs.append(vtx)
        return self._check_block(height, block_id, block, vtxs)

    def _check_block(
        self, height: int, block_id: bytes, block: block_pb2.Block, vtxs: list[VerifiedTx]
    ) -> bool:
        """Validate a proposed block and execute it; the result is cached by block id."""
        problem = self.block_problem(height, block, live=True) or _duplicate_problem(vtxs)
        if problem is None:
            result = self.ledger.execute_block(vtxs, height, block.header.time_ms)
            if result.state_root != block.header.state_root:
                problem = "state root differs from re-execution"
            elif blocks.receipts_root(result.receipts) != block.header.receipts_root:
                problem = "receipts root differs from re-execution"
            else:
                self._remember_executed(block_id, result, block)
                return True
        log.warning("block %d (%s) is invalid: %s", height, block_id.hex()[:16], problem)
        self._remember_executed(block_id, None, None)
        return False

    def _remember_executed(
        self, block_id: bytes, result: BlockResult | None, block: block_pb2.Block | None
    ) -> None:
        if len(self._executed) >= MAX_EXECUTED_PER_HEIGHT:
            # Forget an invalid verdict first (it is recomputed if asked again), else the oldest.
            victim = next((k for k, r in self._executed.items() if r is None), next(iter(self._executed)))
            self._executed.pop(victim, None)
            if self._blocks_by_id.get(victim) is not None and not self._is_core_block(victim):
                self._blocks_by_id.pop(victim, None)
        self._executed[block_id] = result
        if block is not None:
            self._blocks_by_id[block_id] = block

    def _is_core_block(self, block_id: bytes) -> bool:
        core = self.core
        return core is not None and block_id in (core.locked[1], core.valid[1])

    def block_problem(self, height: int, block: block_pb2.Block, *, live: bool) -> str | None:
        """The one block-validation path, for proposals (live) and block sync: None if `block` may
        follow the last committed block, else what is wrong. Header chain (chain id, height,
        previous hash, strictly increasing time, validator sets, proposer), size limits, and the
        body against the header (transaction root over the exact envelopes, last commit and its
        certificate, evidence). Execution (state and receipts roots) is the caller's. Only a live
        proposal is held to this node's clock: a certified block was accepted by the network."""
        h = block.header
        c = self.cfg.consensus
        if h.chain_id != self.chain_id or h.height != height:
            return "wrong chain id or height"
        if height != self.height + 1:
            return f"not the next height (at {self.height})"
        if h.prev_block_hash != self.last_block_hash:
            return "previous block hash does not match"
        prev_time = (
            self.last_header.time_ms if self.last_header is not None else self.genesis.genesis_time * 1000
        )
        if h.time_ms <= prev_time:
            return "time does not increase"
        if live and h.time_ms > now_ms() + MAX_CLOCK_DRIFT_MS:
            return "time is too far in the future"
        vs = self.validator_set(height)
        if h.validator_set_hash != blocks.validator_set_hash(vs):
            return "validator set hash does not match"
        if h.next_validator_set_hash != blocks.validator_set_hash(self.validator_set(height + 1)):
            return "next validator set hash does not match"
        if not any(v.address == h.proposer for v in vs.validators):
            return "proposer is not a validator"
        if (
            len(block.body.txs) > c.max_block_txs
            or block.ByteSize() > c.max_block_bytes + BLOCK_OVERHEAD_BYTES
        ):
            return "block too large"
        if h.tx_root != blocks.tx_root([crypto.sha256(raw) for raw in block.body.txs]):
            return "tx root does not match the body"
        if height > 1:
            if h.last_commit_hash != blocks.commit_hash(block.last_commit):
                return "last commit hash does not match"
            try:
                blocks.verify_commit(
                    self.chain_id,
                    self.validator_set(height - 1),
                    block.last_commit,
                    height=height - 1,
                    block_hash=self.last_block_hash,
                )
            except blocks.CommitError as exc:
                return f"last commit invalid: {exc}"
        elif h.last_commit_hash != blocks.commit_hash(None) or block.HasField("last_commit"):
            return "the first block carries a last commit"
        if len(block.body.evidence) > MAX_EVIDENCE_PER_BLOCK:
            return "too much evidence"
        ev_bytes = [e.SerializeToString(deterministic=True) for e in block.body.evidence]
        if h.evidence_root != blocks.merkle_root(ev_bytes):
            return "evidence root does not match"
        for ev in block.body.evidence:
            problem = self._evidence_problem(ev)
            if problem is not None:
                return f"invalid evidence: {problem}"
        return None

    def _evidence_problem(self, pb: block_pb2.Evidence) -> str | None:
        try:
            ev = wire.evidence_from_pb(pb)
        except wire.WireError as exc:
            return str(exc)
        if wire.evidence_key(ev) in self._committed_evidence:
            return "already committed"
        if self.known_validator_set(ev.vote_a.height) is None:
            return "unknown height"
        member_key = self.validator_key(ev.vote_a.height, ev.validator)
        if member_key is None:
            return "not a validator"
        for vote in (ev.vote_a, ev.vote_b):
            msg = blocks.vote_sign_bytes(
                self.chain_id, int(vote.type), vote.height, vote.round, vote.block_id or b""
            )
            if not crypto.verify_raw(member_key, vote.signature, msg):
                return "bad vote signature"
        return None

    def _add_evidence(self, evidence: DuplicateVoteEvidence, *, gossip: bool) -> None:
        key = wire.evidence_key(evidence)
        if key in self._committed_evidence or key in self._pending_evidence:
            return
        if len(self._pending_evidence) >= MAX_PENDING_EVIDENCE:
            return
        same = sum(1 for k in self._pending_evidence if k[0] == key[0])
        if same >= MAX_PENDING_EVIDENCE_PER_VALIDATOR:
            return
        self._pending_evidence[key] = evidence
        log.warning("equivocation by %s at height %d round %d", evidence.validator.hex()[:16], key[1], key[2])
        if gossip:
            self.network.broadcast(peer_pb2.PeerMessage(evidence=wire.evidence_to_pb(evidence)))

    # --- commit -----------------------------------------------------------------------------------

    async def _commit(self, height: int, block_id: bytes, block: object, cert: CommitCertificate) -> None:
        if not isinstance(block, block_pb2.Block):
            raise FatalError(f"decided value at height {height} is not a block")
        self._decided_at = time.monotonic()
        if self.metrics is not None:
            self.metrics.height_duration.observe(time.monotonic() - self._round_started)
            self.metrics.rounds.observe(cert.round + 1)
        await self._apply_block(height, block_id, block, wire.cert_to_pb(cert))
        self._schedule_next_height()

    def _schedule_next_height(self) -> None:
        """Start the next height after timeout_commit; with nothing to do, wait (bounded) for a tx."""
        height = self.height + 1
        delay = self.cfg.consensus.timeout_commit_ms / 1000
        idle = self.cfg.consensus.create_empty_blocks_interval_ms / 1000
        self.mempool.tx_arrived.clear()

        async def start_later() -> None:
            await asyncio.sleep(delay)
            # Only a transaction a proposer could take counts: parked gap transactions never make
            # the network produce heights.
            if not self.mempool.has_ready() and not self._pending_evidence and idle > delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.mempool.tx_arrived.wait(), timeout=idle - delay)
            self._queue.put_nowait(("start_height", height))

        task = asyncio.create_task(start_later())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _apply_block(
        self,
        height: int,
        block_id: bytes,
        block: block_pb2.Block,
        cert: block_pb2.CommitCertificate,
    ) -> None:
        """Execute (or take the cached execution of) a decided or verified synced block and commit it
        durably."""
        if height != self.height + 1:
            raise FatalError(f"asked to commit height {height} at height {self.height}")
        result = self._executed.get(block_id)
        if result is None or result.base_root != self.ledger.state_root or result.height != height:
            result = self.ledger.execute_block(
                self._certified_txs(height, block), height, block.header.time_ms
            )
        if result.state_root != block.header.state_root:
            raise FatalError(
                f"state root mismatch at height {height}: block says {block.header.state_root.hex()}, "
                f"execution gives {result.state_root.hex()} (non-determinism or a corrupt state)"
            )
        current_next = self.validator_set(height + 1)
        next_sets = {height + 2: apply_validator_updates(current_next, result.validator_updates)}
        commit = BlockCommit(
            height=height,
            block=block,
            block_hash=block_id,
            commit=cert,
            receipts=result.receipts,
            state_writes=result.writes,
            account_touches=account_touches_of(result.receipts),
            next_validator_sets=next_sets,
            evidence=list(block.body.evidence),
        )
        crash_point("runtime:before-commit")
        started = time.perf_counter()
        if len(block.body.txs) <= INLINE_COMMIT_MAX_TXS:
            self.store.commit_block(commit)
        else:
            await asyncio.get_running_loop().run_in_executor(self._io, self.store.commit_block, commit)
        persist_s = time.perf_counter() - started
        crash_point("runtime:after-commit")
        self.ledger.commit(result)
        self.wal.end_height(height)
        crash_point("runtime:after-end-height")
        self.height = height
        self.last_header = block.header
        self.last_block_hash = block_id
        self.last_commit_pb = cert
        for ev in block.body.evidence:
            with contextlib.suppress(wire.WireError):
                key = wire.evidence_key(wire.evidence_from_pb(ev))
                self._committed_evidence.add(key)
                self._pending_evidence.pop(key, None)
        tx_hashes = [r.tx_hash for r in result.receipts]
        senders = {r.signer for r in result.receipts}
        self.mempool.update(tx_hashes, senders)
        for receipt in result.receipts:
            for fut in self._waiters.pop(receipt.tx_hash, []):
                if not fut.done():
                    fut.set_result((receipt, height))
        for q in list(self._block_listeners):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(height)
        self._last_block_time = time.time()
        if self.metrics is not None:
            self.metrics.on_commit(height, len(tx_hashes), time.perf_counter() - started, len(self.mempool))
        if height % 100 == 0 or tx_hashes:
            start = self._round_started

            def since_start(t: float | None) -> str:
                return "-" if t is None else f"{(t - start) * 1000:.0f}"

            log.info(
                "committed block %d with %d txs (height took %.0f ms: proposal at %s ms, decided at %s ms,"
                " round %d; persisting %.0f ms)",
                height,
                len(tx_hashes),
                (time.monotonic() - start) * 1000,
                since_start(self._proposal_at[1] if self._proposal_at is not None else None),
                since_start(self._decided_at),
                cert.round,
                persist_s * 1000,
            )
        if time.monotonic() - self._status_sent >= STATUS_MIN_INTERVAL_S:
            self._broadcast_status()

    def _certified_txs(self, height: int, block: block_pb2.Block) -> list[VerifiedTx]:
        """The transactions of a block whose body was checked against a certified header: the
        certificate's quorum verified their signatures and the header's tx root fixes every byte of
        the envelopes, so they are decoded, not verified again. A certified block this node cannot
        decode is not a peer's fault (the body matches the header): more than a third of the
        validators signed garbage, or this node's code differs from theirs."""
        vtxs: list[VerifiedTx] = []
        for raw in block.body.txs:
            vtx = self.mempool.verified(txs.wire_hash(raw))
            if vtx is None:
                try:
                    decoded = txs.decode_tx(raw, self.chain_id, max_bytes=len(raw) + 1)
                    vtx = txs.accept_verified(decoded, [True] * len(decoded.public_keys))
                except TxRejected as exc:
                    raise FatalError(
                        f"certified block {height} carries a transaction this node rejects: {exc}"
                    ) from None
            vtxs.append(vtx)
        if _duplicate_problem(vtxs) is not None:
            raise FatalError(f"certified block {height} carries one transaction twice")
        return vtxs

    # --- block sync (the reactor is node/blocksync.py) -----------------------------------------------

    def fetch_blocks(
        self, peer: str, from_height: int, to_height: int, max_bytes: int
    ) -> AsyncIterator[peer_pb2.SyncBlock]:
        return self.network.fetch_blocks(peer, from_height, to_height, max_bytes)

    async def apply_synced(self, peer: str, block: peer_pb2.SyncBlock) -> bool:
        """Hand a fetched block to the consensus task; True once it is applied, False if the node
        already has its height. Raises PeerFault if it does not verify."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(("synced", (peer, block, fut)))
        return await fut

    async def _apply_synced_block(self, peer: str, sb: peer_pb2.SyncBlock) -> bool:
        """Verify a fetched block by the rules every block meets, then apply it (consensus task)."""
        block, cert = sb.block, sb.commit
        height = block.header.height
        if height <= self.height:
            return False
        if height != self.height + 1:
            raise PeerFault("wrong_height", f"sent height {height}, expected {self.height + 1}")
        block_id = blocks.block_hash(block.header)
        try:
            blocks.verify_commit(
                self.chain_id, self.validator_set(height), cert, height=height, block_hash=block_id
            )
        except blocks.CommitError as exc:
            raise PeerFault("bad_certificate", f"block {height}: {exc}") from None
        problem = self.block_problem(height, block, live=False)
        if problem is not None:
            raise PeerFault("bad_block", f"block {height}: {problem}")
        await self._apply_block(height, block_id, block, cert)
        self._core_stale = True
        return True

    def _on_sync_fault(self, peer: str, reason: str) -> None:
        self._count_peer_fault(peer, f"sync_{reason}")

    # --- peers ------------------------------------------------------------------------------------

    def make_hello(self) -> peer_pb2.Hello:
        payload = self.key.address + self.key.public_key
        return peer_pb2.Hello(
            chain_id=self.chain_id,
            validator=self.key.address,
            public_key=self.key.public_key,
            signature=self.key.sign(crypto.Domain.PEER_HELLO, self.chain_id, payload),
            height=self.height,
            version=VERSION,
        )

    def check_hello(
        self, hello: peer_pb2.Hello, expected_name: str | None, cert_address: bytes | None
    ) -> str | None:
        if hello.chain_id != self.chain_id:
            return f"peer is on chain {quote(hello.chain_id)}"
        if len(hello.public_key) != 32 or crypto.address_of(hello.public_key) != hello.validator:
            return "hello validator does not match its public key"
        if not crypto.verify(
            hello.public_key,
            hello.signature,
            crypto.Domain.PEER_HELLO,
            self.chain_id,
            hello.validator + hello.public_key,
        ):
            return "hello signature does not verify"
        name = self.names_by_address.get(hello.validator)
        if name is None:
            return "peer is not a validator of this network"
        if expected_name is not None and name != expected_name:
            return f"expected {expected_name}, peer is {name}"
        if cert_address is not None and cert_address != hello.validator:
            return "TLS certificate is bound to another validator"
        if hello.validator == self.key.address:
            return "connected to myself"
        return None

    def on_peer_connected(self, peer: str) -> None:
        self.network.send(peer, self._status_message())
        for msg in self._own_messages[-8:]:
            self.network.send(peer, msg)

    def on_peer_disconnected(self, peer: str) -> None:
        self.blocksync.on_disconnected(peer)

    async def on_peer_message(self, peer: str, msg: peer_pb2.PeerMessage) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "vote":
            self._on_vote(peer, msg.vote)
        elif kind == "proposal":
            await self._on_proposal(peer, msg.proposal)
        elif kind == "txs":
            raws = list(msg.txs.txs)
            if len(raws) > 10 * self.cfg.p2p.tx_gossip_batch:
                self._count_peer_fault(peer, "oversized_batch", f"a batch of {len(raws)} transactions")
                return
            size = sum(len(r) for r in raws)
            admission = self._admit_gossip(raws, size)
            self._gossip_bytes += size
            if (
                len(self._gossip_admits) >= MAX_GOSSIP_ADMITS
                or self._gossip_bytes > budget.GOSSIP_INFLIGHT_BYTES
            ):
                await admission  # back-pressure: the peer's stream waits
                return
            task = asyncio.create_task(admission)
            self._gossip_admits.add(task)
            task.add_done_callback(self._gossip_admits.discard)
        elif kind == "evidence":
            problem = self._evidence_problem(msg.evidence)
            if problem is None:
                self._add_evidence(wire.evidence_from_pb(msg.evidence), gossip=False)
            elif problem not in ("already committed", "unknown height"):
                self._count_peer_fault(peer, "invalid_evidence", problem)
        elif kind == "status":
            self._on_status(peer, msg.status)
        elif kind is None:
            return
        else:
            log.debug("peer %s sent unexpected %s", peer, kind)

    def _count_peer_fault(self, peer: str, kind: str, detail: str = "") -> None:
        """A peer sent something invalid: count it (metric), log it (the first few), and ban the
        peer for PEER_BAN_S once it sent PEER_FAULT_LIMIT within PEER_FAULT_WINDOW_S. Block-sync
        faults are counted here but penalized by block sync itself (the peer is not asked again)."""
        key = (peer, kind)
        self.peer_fault_counts[key] = self.peer_fault_counts.get(key, 0) + 1
        if kind.startswith("sync_"):
            return
        now = time.monotonic()
        recent = [t for t in self._peer_faults.get(peer, []) if now - t < PEER_FAULT_WINDOW_S]
        recent.append(now)
        self._peer_faults[peer] = recent
        if len(recent) <= 3:
            log.warning("peer %s sent an invalid message (%s): %s", peer, kind, detail)
        if len(recent) >= PEER_FAULT_LIMIT:
            self._peer_faults.pop(peer, None)
            self.network.ban(peer, PEER_BAN_S, f"{len(recent)} invalid messages, the last: {kind}")

    def _in_window(self, height: int) -> bool:
        return self.height < height <= self.height + 2

    def _signed_by_member(
        self, peer: str, what: str, height: int, signer: bytes, signature: bytes, message: bytes
    ) -> bool:
        """True if signer is a validator at height and signed message; else count the fault and drop it."""
        public_key = self.validator_key(height, signer)
        if public_key is None:
            self._count_peer_fault(peer, f"{what}_not_a_validator", f"signer {signer.hex()[:16]}")
            return False
        if not crypto.verify_raw(public_key, signature, message):
            self._count_peer_fault(peer, f"{what}_bad_signature", f"height {height}")
            return False
        return True

    def _on_vote(self, peer: str, pb: block_pb2.Vote) -> None:
        try:
            vote = wire.vote_from_pb(pb)
        except wire.WireError as exc:
            self._count_peer_fault(peer, "malformed_vote", str(exc))
            return
        if not self._in_window(vote.height):
            return
        msg = blocks.vote_sign_bytes(
            self.chain_id, int(vote.type), vote.height, vote.round, vote.block_id or b""
        )
        if not self._signed_by_member(peer, "vote", vote.height, vote.validator, vote.signature, msg):
            return
        if self.byz is not None:
            self.byz.on_vote(vote)
        self.wal.append(wal_pb2.WalRecord(message=wal_pb2.WalMessage(vote=pb)))
        self.mempool.tx_arrived.set()  # peers are working on the next height: do not idle
        self._enqueue(VoteReceived(vote))

    def _proposal_problem(self, proposal: Proposal, block: block_pb2.Block) -> str | None:
        """The cheap checks of a peer's proposal, before any of its transactions' signatures: it is
        from the round's proposer, its block is for this height (its header may name an earlier
        round's proposer: a valid value is proposed again), on this chain's last block, within the
        size limits, with a body that matches its header. None if the expensive checks are worth
        doing. Each failure is the sender's own doing, so it counts against the peer."""
        height = proposal.height
        vs = to_core_set(self.validator_set(height))
        expected = vs.proposer(height, proposal.round).address
        if proposal.proposer != expected:
            return f"from {proposal.proposer.hex()[:16]}, not the proposer of round {proposal.round}"
        if not -1 <= proposal.pol_round < proposal.round:
            return f"pol_round {proposal.pol_round} for round {proposal.round}"
        h = block.header
        # The block's own proposer may differ: a later round's proposer re-proposes its valid value.
        if h.height != height or h.chain_id != self.chain_id:
            return "its block's height or chain differs from the proposal's"
        if blocks.block_hash(h) != proposal.block_id:
            return "its block does not hash to the proposal's block id"
        c = self.cfg.consensus
        if (
            len(block.body.txs) > c.max_block_txs
            or block.ByteSize() > c.max_block_bytes + BLOCK_OVERHEAD_BYTES
        ):
            return "its block is too large"
        if height == self.height + 1:
            if h.prev_block_hash != self.last_block_hash:
                return "its block does not follow the last committed block"
            if h.tx_root != blocks.tx_root([crypto.sha256(raw) for raw in block.body.txs]):
                return "its block's transactions do not match the header's tx root"
        return None

    async def _on_proposal(self, peer: str, pb: block_pb2.Proposal) -> None:
        try:
            proposal = wire.proposal_from_pb(pb)
        except wire.WireError as exc:
            self._count_peer_fault(peer, "malformed_proposal", str(exc))
            return
        if not self._in_window(proposal.height):
            return
        msg = blocks.proposal_sign_bytes(
            self.chain_id, proposal.height, proposal.round, proposal.pol_round, proposal.block_id
        )
        if not self._signed_by_member(
            peer, "proposal", proposal.height, proposal.proposer, proposal.signature, msg
        ):
            return
        problem = self._proposal_problem(proposal, pb.block)
        if problem is not None:
            self._count_peer_fault(peer, "invalid_proposal", problem)
            return
        core = self.core
        current_round = core.round if core is not None and core.height == proposal.height else 0
        if proposal.round > current_round + PROPOSAL_ROUND_WINDOW:
            log.debug(
                "proposal %d/%d is beyond this node's round %d; dropped",
                proposal.height,
                proposal.round,
                current_round,
            )
            return
        if proposal.height == self.height + 1 and proposal.block_id not in self._executed:
            # Verify the block's transactions in the thread pool and execute it before the core asks.
            verified = await self.mempool.verify_many(list(pb.block.body.txs))
            if proposal.height == self.height + 1 and proposal.block_id not in self._executed:
                bad = next((v for v in verified if isinstance(v, TxRejected)), None)
                if bad is not None:
                    self._count_peer_fault(
                        peer,
                        "invalid_proposal",
                        f"{proposal.height}/{proposal.round} carries an invalid transaction: {bad}",
                    )
                    self._remember_executed(proposal.block_id, None, None)
                else:
                    vtxs = [v for v in verified if isinstance(v, VerifiedTx)]
                    if not self._check_block(proposal.height, proposal.block_id, pb.block, vtxs):
                        self._count_peer_fault(
                            peer, "invalid_proposal", f"{proposal.height}/{proposal.round}: invalid block"
                        )
        if self.byz is not None:
            self.byz.on_proposal(proposal)
        self.wal.append(wal_pb2.WalRecord(message=wal_pb2.WalMessage(proposal=pb)))
        self.mempool.tx_arrived.set()  # peers are working on the next height: do not idle
        if proposal.height == self.height + 1:
            self._note_proposal(proposal.height)
        self._enqueue(ProposalReceived(proposal))

    async def _admit_gossip(self, raws: list[bytes], size: int) -> None:
        try:
            # Peers dry-ran these on admission; signatures, nonces and duplicates are checked here.
            await self.mempool.admit(raws, gossip=False, dry_run=False)
        except MempoolFull:
            pass
        except Exception:  # a bad batch must never stop the node
            log.exception("error admitting transactions from a peer")
        finally:
            self._gossip_bytes -= size

    def _status_message(self) -> peer_pb2.PeerMessage:
        core = self.core
        pm = peer_pb2.PeerMessage(
            status=peer_pb2.PeerStatus(
                height=self.height + 1, round=core.round if core else 0, last_committed=self.height
            )
        )
        return pm if self.byz is None else self.byz.status(pm)

    def _broadcast_status(self) -> None:
        self._status_sent = time.monotonic()
        self.network.broadcast(self._status_message())

    def _on_status(self, peer: str, status: peer_pb2.PeerStatus) -> None:
        self.blocksync.on_status(peer, status.last_committed)

    def serve_blocks(self, request: peer_pb2.GetBlocksRequest) -> AsyncIterator[peer_pb2.SyncBlock]:
        honest = self._serve_blocks(request)
        return honest if self.byz is None else self.byz.serve_blocks(honest)

    async def _serve_blocks(self, request: peer_pb2.GetBlocksRequest) -> AsyncIterator[peer_pb2.SyncBlock]:
        for item in blocks_to_serve(
            request, self.height, self.store.load_block, self.store.load_commit, SYNC_BATCH
        ):
            yield item

    def sync_status(self) -> peer_pb2.SyncStatusResponse:
        return peer_pb2.SyncStatusResponse(base_height=1 if self.height else 0, height=self.height)

    # --- background loops -------------------------------------------------------------------------

    async def _gossip_loop(self) -> None:
        interval = self.cfg.p2p.tx_gossip_interval_ms / 1000
        batch = self.cfg.p2p.tx_gossip_batch
        while True:
            await self.mempool.new_tx_event.wait()
            self.mempool.new_tx_event.clear()
            await asyncio.sleep(interval)
            while True:
                raws = self.mempool.take_gossip(batch)
                if not raws:
                    break
                self.network.broadcast(peer_pb2.PeerMessage(txs=peer_pb2.TxBatch(txs=raws)))

    async def _status_loop(self) -> None:
        """Every STATUS_INTERVAL_S: tell peers our height (a peer that missed a decision learns it is
        behind and block-syncs), and when a height has made no progress for a second, re-send our
        own messages of it and relay the votes the core names (peers may have missed them, or lost
        them in a restart)."""
        last_height = -1
        progress_at = time.monotonic()
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            if time.monotonic() - self._status_sent >= STATUS_INTERVAL_S:
                self._broadcast_status()
            now = time.monotonic()
            if self.height != last_height:
                last_height, progress_at = self.height, now
            elif now - progress_at >= 1.0:
                progress_at = now
                for msg in self._own_messages[-8:]:
                    self.network.broadcast(msg)
                if self.core is not None and self.core.height == self.height + 1:
                    for vote in self.core.relay_votes():
                        self.network.broadcast(peer_pb2.PeerMessage(vote=wire.vote_to_pb(vote)))
            self.blocksync.poke()
            if self.metrics is not None:
                self.metrics.on_status(self)

    # --- the client API (NodeApi) -----------------------------------------------------------------

    def _check_tx(self, vtx: VerifiedTx, nonce: int) -> receipt_pb2.Receipt:
        return self.ledger.check_tx(vtx, expected_nonce=nonce, time_ms=now_ms())

    def _committed_nonce(self, sender: bytes) -> int:
        account = self.ledger.get_account_record(sender)  # the decoded record: no protobuf copy
        return account.nonce if account is not None else 0

    def _committed_result(self, tx_hash: bytes) -> ledger_api_pb2.SubmitTxResult | None:
        loc = self.store.tx_location(tx_hash)
        if loc is None:
            return None
        receipt = self.store.load_receipt(tx_hash)
        return ledger_api_pb2.SubmitTxResult(tx_hash=tx_hash, accepted=True, receipt=receipt, height=loc[0])

    async def submit(
        self, raws: list[bytes], wait: int, timeout_s: float | None
    ) -> list[ledger_api_pb2.SubmitTxResult]:
        if not self.started:
            raise ApiError("UNAVAILABLE", "STARTING", "the node is starting")
        if self.byz is not None and self.byz.mode == "fake-ack":
            return await self.byz.fake_ack(raws)
        try:
            admitted = await self.mempool.admit(raws)
        except MempoolFull as exc:
            raise ApiError("RESOURCE_EXHAUSTED", exc.reason, exc.message) from None
        results: list[ledger_api_pb2.SubmitTxResult] = []
        waits: list[tuple[int, asyncio.Future[tuple[receipt_pb2.Receipt, int]]]] = []
        loop = asyncio.get_running_loop()
        for i, a in enumerate(admitted):
            if not a.accepted:
                committed = self._committed_result(a.tx_hash)
                if committed is not None:  # a resubmission of a committed transaction: idempotent
                    results.append(committed)
                    continue
                results.append(
                    ledger_api_pb2.SubmitTxResult(
                        tx_hash=a.tx_hash,
                        accepted=False,
                        status=receipt_pb2.TxStatus.ValueType(a.status),
                        message=a.message,
                        receipt=a.receipt,
                    )
                )
                continue
            result = ledger_api_pb2.SubmitTxResult(
                tx_hash=a.tx_hash, accepted=True, status=receipt_pb2.TX_STATUS_OK
            )
            if wait == ledger_api_pb2.WAIT_FOR_CHECKED and a.receipt is not None:
                result.receipt.CopyFrom(a.receipt)
            if wait == ledger_api_pb2.WAIT_FOR_COMMITTED:
                fut: asyncio.Future[tuple[receipt_pb2.Receipt, int]] = loop.create_future()
                self._waiters.setdefault(a.tx_hash, []).append(fut)
                waits.append((i, fut))
            results.append(result)
        if waits:
            timeout = timeout_s if timeout_s is not None else self.cfg.api.default_commit_timeout_s
            done, _pending = await asyncio.wait([f for _, f in waits], timeout=max(0.0, timeout - 0.05))
            timed_out = False
            for i, fut in waits:
                if fut in done:
                    receipt, height = fut.result()
                    results[i].receipt.CopyFrom(receipt)
                    results[i].height = height
                    results[i].status = receipt.status
                else:
                    timed_out = True
                    fut.cancel()
                    waiters = self._waiters.get(results[i].tx_hash, [])
                    if fut in waiters:
                        waiters.remove(fut)
                    if not waiters:
                        self._waiters.pop(results[i].tx_hash, None)
            if timed_out and len(raws) == 1:
                raise ApiError(
                    "DEADLINE_EXCEEDED",
                    "COMMIT_TIMEOUT",
                    "accepted but not committed before the deadline; query GetTx",
                )
        return results

    async def check_tx(self, raw: bytes) -> ledger_api_pb2.SubmitTxResponse:
        verified = await self.mempool.verify_many([raw])
        item = verified[0]
        if isinstance(item, TxRejected):
            raise ApiError.for_status(item.status, item.message)
        receipt = self.ledger.check_tx(item, time_ms=now_ms())
        return ledger_api_pb2.SubmitTxResponse(
            tx_hash=item.tx_hash, accepted=receipt.status == receipt_pb2.TX_STATUS_OK, receipt=receipt
        )

    def get_tx(self, tx_hash: bytes) -> ledger_api_pb2.GetTxResponse:
        loc = self.store.tx_location(tx_hash)
        if loc is not None:
            return ledger_api_pb2.GetTxResponse(
                state=ledger_api_pb2.TX_STATE_COMMITTED,
                receipt=self.store.load_receipt(tx_hash),
                height=loc[0],
                index=loc[1],
                tx=self.store.load_tx(tx_hash) or b"",
            )
        pending = self.mempool.get(tx_hash)
        if pending is not None:
            return ledger_api_pb2.GetTxResponse(state=ledger_api_pb2.TX_STATE_PENDING, tx=pending.raw)
        raise ApiError(
            "NOT_FOUND", "UNKNOWN_TX", f"transaction {tx_hash.hex()} is neither committed nor pending here"
        )

    def get_account(self, address: bytes, prove: bool) -> ledger_api_pb2.GetAccountResponse:
        account = self.ledger.get_account(address)
        resp = ledger_api_pb2.GetAccountResponse(exists=account is not None, height=self.height)
        if account is not None:
            resp.account.CopyFrom(account)
            resp.holds.extend(self.ledger.list_holds(address))
        elif not prove:
            raise ApiError("NOT_FOUND", "UNKNOWN_ACCOUNT", f"no account {address.hex()}")
        if prove:
            if self.height == 0:
                raise ApiError("UNAVAILABLE", "NO_BLOCKS", "no block committed yet to prove against")
            resp.proof.CopyFrom(self.ledger.prove_account(address))
            assert self.last_header is not None
            resp.header.CopyFrom(self.last_header)
            resp.commit.CopyFrom(self.last_commit_pb)
            resp.validators.CopyFrom(self.validator_set(self.height))
        return resp

    def get_instrument(
        self, req: ledger_api_pb2.GetInstrumentRequest
    ) -> ledger_api_pb2.GetInstrumentResponse:
        inst = self.ledger.get_instrument(req.instrument)
        if inst is None:
            raise ApiError(
                "NOT_FOUND",
                "UNKNOWN_INSTRUMENT",
                f"no instrument {quote(req.instrument.symbol)} of issuer {quote(req.instrument.issuer)}",
            )
        return ledger_api_pb2.GetInstrumentResponse(exists=True, instrument=inst, height=self.height)

    def get_hold(self, hold_id: str) -> ledger_api_pb2.GetHoldResponse:
        hold = self.ledger.get_hold(hold_id)
        if hold is None:
            raise ApiError("NOT_FOUND", "UNKNOWN_HOLD", f"no hold {quote(hold_id)}")
        return ledger_api_pb2.GetHoldResponse(exists=True, hold=hold, height=self.height)

    def get_validators(self, height: int) -> ledger_api_pb2.GetValidatorsResponse:
        h = height or self.height + 1
        vs = self.store.load_validator_set(h)
        if vs is None:
            raise ApiError("NOT_FOUND", "UNKNOWN_HEIGHT", f"no validator set for height {h}")
        return ledger_api_pb2.GetValidatorsResponse(height=h, validators=vs)

    def _block_response(self, height: int) -> ledger_api_pb2.GetBlockResponse | None:
        block = self.store.load_block(height)
        if block is None:
            return None
        return ledger_api_pb2.GetBlockResponse(
            block=block,
            commit=self.store.load_commit(height),
            block_hash=self.store.load_block_hash(height) or blocks.block_hash(block.header),
            receipts=self.store.load_block_receipts(height),
        )

    def get_block(self, req: ledger_api_pb2.GetBlockRequest) -> ledger_api_pb2.GetBlockResponse:
        if req.WhichOneof("by") == "hash":
            height = self.store.height_of_hash(req.hash)
            if height is None:
                raise ApiError("NOT_FOUND", "UNKNOWN_BLOCK", f"no block {quote(req.hash)}")
        else:
            height = req.height or self.height
        resp = self._block_response(height) if height else None
        if resp is None:
            raise ApiError(
                "NOT_FOUND", "UNKNOWN_BLOCK", f"no block at height {height} (latest {self.height})"
            )
        return resp

    def status(self) -> ledger_api_pb2.GetStatusResponse:
        core = self.core
        return ledger_api_pb2.GetStatusResponse(
            chain_id=self.chain_id,
            height=self.height,
            round=core.round if core else 0,
            step=Step(core.current_step).name.lower() if core else "",
            latest_block_hash=self.last_block_hash,
            latest_block_time_ms=self.last_header.time_ms if self.last_header else 0,
            state_root=self.ledger.state_root,
            validators=self.validator_set(self.height + 1),
            peers=len(self.network.connected),
            mempool_size=len(self.mempool),
            syncing=self.blocksync.active,
            node_address=self.key.address,
            version=VERSION,
            name=self.cfg.moniker,
        )

    async def stream_blocks(self, from_height: int) -> AsyncIterator[ledger_api_pb2.GetBlockResponse]:
        if len(self._block_listeners) >= self.cfg.api.max_streams:
            raise ApiError(
                "RESOURCE_EXHAUSTED",
                "TOO_MANY_STREAMS",
                f"this node serves {self.cfg.api.max_streams} block and event streams already; retry later",
            )
        q: asyncio.Queue[int] = asyncio.Queue(maxsize=10_000)
        self._block_listeners.add(q)
        try:
            next_height = max(1, from_height or self.height)
            while True:
                while next_height <= self.height:
                    resp = self._block_response(next_height)
                    if resp is None:
                        break
                    yield resp
                    next_height += 1
                await q.get()
        finally:
            self._block_listeners.discard(q)

    async def subscribe_events(
        self, req: ledger_api_pb2.SubscribeEventsRequest
    ) -> AsyncIterator[ledger_api_pb2.EventEnvelope]:
        has_instrument = req.HasField("instrument") and bool(req.instrument.symbol)
        async for block in self.stream_blocks(req.from_height):
            height = block.block.header.height
            for index, receipt in enumerate(block.receipts):
                for event in receipt.events:
                    if req.account and req.account not in event.accounts:
                        continue
                    if has_instrument and event.instrument != req.instrument:
                        continue
                    yield ledger_api_pb2.EventEnvelope(
                        height=height, tx_hash=receipt.tx_hash, tx_index=index, event=event
                    )
