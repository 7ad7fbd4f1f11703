"""The consensus driver: the one task that owns the consensus core.

It reads one queue of typed events (a peer's vote or proposal, a timeout, the start of the next
height, a block fetched by block sync), writes each peer input to the WAL, steps the core, and
carries out the actions the core returns in list order: `Persist` (sign state, fsync) always
completes before the `Broadcast` of the message it protects; `Decide` commits through block
execution and then ends the height in the WAL. After a restart it restores the last-signed state
(so it never signs a conflicting message) and replays the WAL of the height in progress.

Catching up goes through the core as in the simulator: a block fetched by block sync is verified
(node/validation.py), executed, and given to the core as `CommitReceived`, which decides it; the
decision is committed by the same path as any other.

Whoever needs to hear of a commit (the client service, the peer router, metrics) registers a
listener: the commit path does not reach into their futures or queues.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from clearline.v1 import block_pb2, peer_pb2, wal_pb2
from node import blocks, budget, wire
from node.chain import Chain
from node.clock import Clock, Timer, wait_event
from node.config import ConsensusConfig
from node.consensus import (
    Application,
    Broadcast,
    CommitReceived,
    Decide,
    DuplicateVoteEvidence,
    Persist,
    Proposal,
    ProposalReceived,
    RecordEvidence,
    ScheduleTimeout,
    Signer,
    SignState,
    StartHeight,
    Step,
    Tendermint,
    TimeoutConfig,
    TimeoutFired,
    Vote,
    VoteReceived,
)
from node.errors import InvalidBlock, InvariantBroken, PeerFault
from node.evidence import EvidencePool
from node.execution import BlockExecutor, Committed
from node.mempool import Mempool
from node.resume import load as load_resume
from node.resume import save as save_resume
from node.storage import WAL, SignStateFile
from node.storage.crash import crash_point
from node.storage.wal import WalReplay

log = logging.getLogger("clearline.consensus")

# Peers' messages for two heights on, held until this node starts the next height (bounded).
MAX_LATER_EVENTS = 1000
# Own messages of the current height kept for re-sending (a reconnecting or stalled peer).
OWN_MESSAGES_KEPT = 8


class Outbox(Protocol):
    """Where the driver's messages go (the peer transport)."""

    def broadcast(self, msg: peer_pb2.PeerMessage) -> None: ...


# --- the driver's events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Start (or resume after a restart) the height after the last committed one."""


@dataclass(frozen=True, slots=True)
class PeerInput:
    """A peer's vote or proposal, already verified by the router; `record` goes to the WAL first."""

    event: ProposalReceived | VoteReceived
    record: wal_pb2.WalMessage


@dataclass(frozen=True, slots=True)
class NextHeight:
    """The pause after a commit is over: start `height`."""

    height: int


@dataclass(frozen=True, slots=True)
class Synced:
    """Block sync fetched the next block; `done` gets True once applied, False if already had."""

    peer: str
    block: peer_pb2.SyncBlock
    done: asyncio.Future[bool]


DriverEvent = Start | PeerInput | TimeoutFired | NextHeight | Synced


def _height_of(event: ProposalReceived | VoteReceived) -> int:
    return event.vote.height if isinstance(event, VoteReceived) else event.proposal.height


def _size_of(event: PeerInput) -> int:
    """About how many bytes a held event keeps alive."""
    return event.record.ByteSize() + 256


def timeouts_of(c: ConsensusConfig) -> TimeoutConfig:
    return TimeoutConfig(
        propose_ms=c.timeout_propose_ms,
        propose_delta_ms=c.timeout_propose_delta_ms,
        prevote_ms=c.timeout_prevote_ms,
        prevote_delta_ms=c.timeout_prevote_delta_ms,
        precommit_ms=c.timeout_precommit_ms,
        precommit_delta_ms=c.timeout_precommit_delta_ms,
    )


class _SittingOut:
    """The signer of a height this validator sits out (see `ConsensusDriver._sits_out`): no
    member's address, so the core never asks it to sign (node/consensus/tendermint.py
    `_is_member`); if it did, the node stops."""

    address: bytes = b""

    def sign_vote(self, vote: Any) -> bytes:
        raise InvariantBroken("asked to sign a vote at a height it sits out", vote.height)

    def sign_proposal(self, proposal: Any) -> bytes:
        raise InvariantBroken("asked to sign a proposal at a height it sits out", proposal.height)


class ConsensusDriver:
    def __init__(
        self,
        *,
        consensus: ConsensusConfig,
        chain: Chain,
        executor: BlockExecutor,
        app: Application,
        signer: Signer,
        sign_state: SignStateFile,
        wal: WAL,
        wal_replay: WalReplay,
        evidence: EvidencePool,
        mempool: Mempool,
        clock: Clock,
    ) -> None:
        self._cfg = consensus
        self._chain = chain
        self._executor = executor
        self._app = app
        self._signer = signer
        self._sign_state = sign_state
        self._wal = wal
        self._wal_replay = wal_replay
        self._evidence = evidence
        self._mempool = mempool
        self._clock = clock
        self.outbox: Outbox | None = None
        self.core: Tendermint | None = None
        self._queue: asyncio.Queue[DriverEvent] = asyncio.Queue()
        self._timers: list[Timer] = []
        self._later: list[PeerInput] = []
        self._later_bytes = 0
        self._own: list[peer_pb2.PeerMessage] = []
        self._restored_votes: list[block_pb2.Vote] = []
        self._signed_up_to = 0  # the sign state's height when it was ahead of the chain at start
        self._sitting_out = False  # the core's signer is _SittingOut
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._catching_up = False
        self.commit_listeners: list[Callable[[Committed], None]] = []
        self.decide_listeners: list[Callable[[Decide, float], None]] = []
        self.round_started = clock.monotonic()
        self.proposal_at: float | None = None
        executor.pinned = self._is_core_block

    # --- inputs (any task) ----------------------------------------------------------------------------

    def put(self, event: DriverEvent) -> None:
        self._queue.put_nowait(event)

    async def apply_synced(self, peer: str, block: peer_pb2.SyncBlock) -> bool:
        """Block sync's hand-off: True once applied, False if the height is done; raises PeerFault."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.put(Synced(peer, block, fut))
        return await fut

    # --- read by others -------------------------------------------------------------------------------

    def own_messages(self) -> list[peer_pb2.PeerMessage]:
        """This node's latest messages of the current height (for a peer that may have missed them)."""
        return list(self._own[-OWN_MESSAGES_KEPT:])

    def relay_votes(self) -> list[Vote]:
        """Votes of the current height the core would have others see again (a stalled height)."""
        core = self.core
        if core is None or core.height != self._chain.height + 1:
            return []
        return core.relay_votes()

    @property
    def later_bytes(self) -> int:
        """Bytes of peers' messages held for the next height (bounded by budget.LATER_EVENTS_BYTES)."""
        return self._later_bytes

    @property
    def later_count(self) -> int:
        return len(self._later)

    @property
    def backlog(self) -> int:
        """Events waiting for the driver: queued, and held for the next height."""
        return self._queue.qsize() + len(self._later)

    @property
    def round(self) -> int:
        return self.core.round if self.core is not None else 0

    @property
    def step_name(self) -> str:
        return Step(self.core.current_step).name.lower() if self.core is not None else ""

    # --- the task ---------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.core = self._new_core(self._chain.height + 1)
        self.put(Start())
        try:
            while True:
                await self._dispatch(await self._queue.get())
        finally:
            for timer in self._timers:
                timer.cancel()
            for task in list(self._side_tasks):
                task.cancel()

    async def _dispatch(self, event: DriverEvent) -> None:
        core = self.core
        assert core is not None
        match event:
            case Start():
                await self._execute(core.start())
                await self._restore_own_votes()
                await self._replay_wal()
            case PeerInput(event=inner, record=record):
                height = _height_of(inner)
                if height > core.height + 1:
                    self._hold(event)
                    return
                if height >= core.height:
                    self._wal.append(wal_pb2.WalRecord(message=record))
                if isinstance(inner, ProposalReceived) and height == core.height and self.proposal_at is None:
                    self.proposal_at = self._clock.monotonic()
                await self._execute(core.step(inner))
            case TimeoutFired(height=height):
                if height == core.height:
                    await self._execute(core.step(event))
            case NextHeight(height=height):
                await self._start_height(height)
            case Synced(block=sb, done=done):
                try:
                    applied = await self._apply_synced(sb)
                except PeerFault as exc:
                    if not done.done():
                        done.set_exception(exc)
                    return
                if not done.done():
                    done.set_result(applied)

    def _hold(self, event: PeerInput) -> None:
        """A message two heights on: the core keeps only the next height's, and peers that are two
        heights on (this node is finishing a commit) would not send it again. Bounded."""
        size = _size_of(event)
        if len(self._later) < MAX_LATER_EVENTS and self._later_bytes + size <= budget.LATER_EVENTS_BYTES:
            self._later.append(event)
            self._later_bytes += size

    async def _start_height(self, height: int) -> None:
        core = self.core
        assert core is not None
        if height != self._chain.height + 1 or core.height == height:
            return
        if self._sitting_out and self._sits_out(height) is None:
            # The first height this validator may sign at again: a core with its own signer,
            # resumed from the sign state as after a restart (its lock and votes if it signed at
            # this height before), given the messages of the height the old core held.
            buffered = core.take_buffered()
            self.core = core = self._new_core(height)
            await self._execute(core.start())
            await self._restore_own_votes()
            for held in buffered:
                await self._execute(core.step(held))
        else:
            self._new_height(height)
            await self._execute(core.step(StartHeight(height, self._chain.core_set(height))))
        later, self._later = self._later, []
        self._later_bytes = 0
        for ev in later:  # back in line: now within reach (or held again)
            if _height_of(ev.event) >= height:
                self.put(ev)

    def _new_height(self, height: int, restored: tuple[int, bytes, block_pb2.Block] | None = None) -> None:
        self._executor.new_height(height, restored)
        self._own.clear()
        for timer in self._timers:  # the finished height's timeouts would only wake the loop
            timer.cancel()
        self._timers.clear()
        self.round_started = self._clock.monotonic()
        self.proposal_at = None

    def _is_core_block(self, block_id: bytes) -> bool:
        core = self.core
        return core is not None and block_id in (core.locked[1], core.valid[1])

    # --- the core ---------------------------------------------------------------------------------------

    def _new_core(self, height: int) -> Tendermint:
        resume = load_resume(self._sign_state, height)
        self._restored_votes = list(resume.votes)
        self._new_height(height, resume.proposal)
        for b in (resume.locked_block, resume.valid_block):
            if b is not None:
                self._executor.keep_block(b)
        signer: Signer = self._signer
        self._signed_up_to = max(self._signed_up_to, resume.ahead_at)
        reason = self._sits_out(height)
        self._sitting_out = reason is not None
        if reason is not None:
            # It follows the heights it sits out (decides from others' votes, signs nothing) and
            # gets a core with its own signer at the first height it may sign at (_start_height).
            log.info(
                "height %d: sitting out (%s)",
                height,
                reason,
                extra={"fields": {"event": "sitting_out", "from_height": height}},
            )
            signer = _SittingOut()
        elif self._signed_up_to or self._sign_state.guard is not None:
            log.info(
                "height %d: signing", height, extra={"fields": {"event": "signing", "from_height": height}}
            )
        return Tendermint(
            validators=self._chain.core_set(height),
            signer=signer,
            app=self._app,
            timeouts=timeouts_of(self._cfg),
            height=height,
            restored=resume.state,
            locked_block=resume.locked_block,
            valid_block=resume.valid_block,
        )

    def _sits_out(self, height: int) -> str | None:
        """Why this validator signs nothing at `height`, the chain's next (None: it signs). Two
        rules, both for a validator whose chain is behind what it may have signed:

        - its sign state is ahead of the chain (a state-synced node, or one restored from an older
          backup, that kept its sign state): it signed at a later height already, so it sits the
          heights below out and signs again from that height, resumed from the sign state there
          (nothing that conflicts with what it signed);
        - it was restored without its own sign state (node/storage/signstate.py, the restore
          guard): what it signed after the backup is unknown, so it signs nothing at a height whose
          previous block is timed before the restore plus the guard's margin."""
        if not self._signer.address:
            return None  # an observer never signs anyway
        if self._signed_up_to > height:
            return f"this validator has signed up to height {self._signed_up_to}"
        guard = self._sign_state.guard
        if guard is not None and not guard.allows(self._chain.last_time_ms):
            return (
                f"restored from the backup of height {guard.backup_height} without its own sign state: "
                f"it signs from the first height after a block timed past {guard.signs_after_ms} ms"
            )
        return None

    async def _restore_own_votes(self) -> None:
        """After a restart: count this validator's earlier votes of the height again and send them
        (the sign state kept them). A prevote signed just before a crash may never have left, and
        the peers that lack it can be waiting for exactly it: the restored core re-sends only the
        last signed message."""
        core = self.core
        assert core is not None
        restored: list[Vote] = []
        for pb in self._restored_votes:
            try:
                vote = wire.vote_from_pb(pb)
            except wire.WireError as exc:
                raise InvariantBroken(
                    f"the sign state holds an own vote that does not decode: {exc}"
                ) from exc
            if vote.height == core.height and vote.validator == core.address:
                restored.append(vote)
        self._restored_votes = []
        # Ahead of the last signed message the core has just re-sent: these were signed before it.
        pms = [peer_pb2.PeerMessage(vote=wire.vote_to_pb(v)) for v in restored]
        self._own[:0] = pms
        for pm in pms:
            self._send(pm)
        for vote in restored:
            await self._execute(core.step(VoteReceived(vote)))

    async def _replay_wal(self) -> None:
        """Feed the WAL of the height in progress back into the core (after a restart)."""
        core = self.core
        assert core is not None
        replayed = 0
        for record in self._wal_replay.records:
            if record.WhichOneof("record") != "message":
                continue
            msg = record.message
            try:
                if msg.HasField("vote"):
                    vote = wire.vote_from_pb(msg.vote)
                    if vote.height == core.height:
                        await self._execute(core.step(VoteReceived(vote)))
                        replayed += 1
                elif msg.HasField("proposal"):
                    proposal = wire.proposal_from_pb(msg.proposal)
                    if proposal.height == core.height:
                        self._executor.keep_block(msg.proposal.block, proposal.block_id)
                        await self._execute(core.step(ProposalReceived(proposal)))
                        replayed += 1
            except wire.WireError as exc:
                log.warning("skipping a bad WAL record: %s", exc)
        self._wal_replay.records.clear()
        if replayed:
            log.info("replayed %d consensus messages from the WAL", replayed)

    async def _execute(self, actions: Sequence[Any]) -> None:
        for action in actions:
            match action:
                case Persist(sign_state=state, block=block):
                    self._persist(state, block)
                case Broadcast(message=message):
                    self._broadcast(message)
                case ScheduleTimeout(height=h, round=r, step=step, delay_ms=delay):
                    self._timers.append(
                        self._clock.call_later(delay / 1000, self.put, TimeoutFired(h, r, step))
                    )
                case Decide():
                    await self._commit(action)
                case RecordEvidence(evidence=evidence):
                    if self._evidence.add(evidence):
                        self._send(peer_pb2.PeerMessage(evidence=wire.evidence_to_pb(evidence)))
                case _:
                    log.debug("ignoring action %r", action)

    def _persist(self, state: SignState, block: object | None) -> None:
        """Save the sign state before the message it guards leaves the node. On the event loop, not
        the io thread: the message waits for the save either way, and the two thread hand-offs cost
        more CPU than the save itself (one pwrite and fdatasync of a slot file). A signature at a
        height this validator sits out stops the node before it leaves (a second line of defense:
        the core of such a height has no signer)."""
        if state.height == self._chain.height + 1 and self._sits_out(state.height) is not None:
            raise InvariantBroken("a signature at a height this validator sits out", state.height)
        if isinstance(block, block_pb2.Block):
            self._executor.keep_block(block)
        locked = self._executor.block(state.locked_block_id) if state.locked_block_id else None
        valid = self._executor.block(state.valid_block_id) if state.valid_block_id else None
        proposed = block if state.step == Step.PROPOSE and isinstance(block, block_pb2.Block) else None
        votes = [pm.vote for pm in self._own if pm.HasField("vote")][-OWN_MESSAGES_KEPT:]
        save_resume(self._sign_state, state, locked=locked, valid=valid, proposed=proposed, votes=votes)
        if proposed is not None:
            crash_point("runtime:after-sign-proposal")

    def _broadcast(self, message: Proposal | Vote | DuplicateVoteEvidence) -> None:
        if isinstance(message, Vote):
            pm = peer_pb2.PeerMessage(vote=wire.vote_to_pb(message))
            self._own.append(pm)
        elif isinstance(message, Proposal):
            pm = peer_pb2.PeerMessage(proposal=wire.proposal_to_pb(message))
            self._own.append(pm)
            self._executor.keep_block(pm.proposal.block, message.block_id)
            if self.proposal_at is None:
                self.proposal_at = self._clock.monotonic()
            # In the WAL too: after a crash the node gets its own proposal back instead of waiting
            # for the propose timeout (it never signs a second proposal for the round).
            self._wal.append(wal_pb2.WalRecord(message=wal_pb2.WalMessage(proposal=pm.proposal)))
        else:
            pm = peer_pb2.PeerMessage(evidence=wire.evidence_to_pb(message))
        self._send(pm)

    def _send(self, pm: peer_pb2.PeerMessage) -> None:
        if self.outbox is not None:
            self.outbox.broadcast(pm)

    # --- committing -------------------------------------------------------------------------------------

    async def _commit(self, decide: Decide) -> None:
        block = decide.block
        if not isinstance(block, block_pb2.Block):
            raise InvariantBroken("the decided value is not a block", decide.height)
        decided_at = self._clock.monotonic()
        for on_decide in self.decide_listeners:
            on_decide(decide, decided_at - self.round_started)
        committed = await self._executor.apply(decide.block_id, block, wire.cert_to_pb(decide.certificate))
        self._wal.end_height(decide.height)
        crash_point("runtime:after-end-height")
        self._log_commit(committed, decided_at)
        for on_commit in self.commit_listeners:
            on_commit(committed)
        if self._catching_up:
            self.put(NextHeight(decide.height + 1))
        else:
            self._schedule_next_height(decide.height + 1)

    def _log_commit(self, c: Committed, decided_at: float) -> None:
        if c.height % 100 and not c.receipts:
            return
        start = self.round_started

        def since_start(t: float | None) -> str:
            return "-" if t is None else f"{(t - start) * 1000:.0f}"

        took_ms = (self._clock.monotonic() - start) * 1000
        # The block timeline as fields too (the JSON log keeps them), for tools that plot it.
        fields = {
            "event": "block_committed",
            "block_height": c.height,
            "txs": len(c.receipts),
            "height_ms": round(took_ms),
            "proposal_ms": None if self.proposal_at is None else round((self.proposal_at - start) * 1000),
            "decided_ms": None if decided_at is None else round((decided_at - start) * 1000),
            "commit_round": c.certificate.round,
            "persist_ms": round(c.persist_s * 1000),
        }
        log.info(
            "committed block %d with %d txs (height took %.0f ms: proposal at %s ms, decided at %s ms,"
            " round %d; persisting %.0f ms)",
            c.height,
            len(c.receipts),
            took_ms,
            since_start(self.proposal_at),
            since_start(decided_at),
            c.certificate.round,
            c.persist_s * 1000,
            extra={"fields": fields},
        )

    def _schedule_next_height(self, height: int) -> None:
        """Start the next height after timeout_commit; with nothing to do, wait (bounded) for a tx."""
        delay = self._cfg.timeout_commit_ms / 1000
        idle = self._cfg.create_empty_blocks_interval_ms / 1000
        self._mempool.tx_arrived.clear()

        async def start_later() -> None:
            await self._clock.sleep(delay)
            # Only a transaction a proposer could take counts: parked gap transactions never make
            # the network produce heights.
            if not self._mempool.has_ready() and not len(self._evidence) and idle > delay:
                await wait_event(self._clock, self._mempool.tx_arrived, idle - delay)
            self.put(NextHeight(height))

        task = asyncio.create_task(start_later())
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # --- catching up ------------------------------------------------------------------------------------

    async def _apply_synced(self, sb: peer_pb2.SyncBlock) -> bool:
        """Verify a fetched block by the rules every block meets and let the core decide it."""
        block, cert_pb = sb.block, sb.commit
        height = block.header.height
        chain = self._chain
        if height <= chain.height:
            return False
        if height != chain.height + 1:
            raise PeerFault("wrong_height", f"sent height {height}, expected {chain.height + 1}")
        core = self.core
        assert core is not None
        if core.height == chain.height:  # decided, pausing before the next height: start it now
            await self._start_height(height)
            core = self.core
            assert core is not None
        if core.decision is not None:
            return False
        block_id = blocks.block_hash(block.header)
        try:
            self._executor.check_certified(block_id, block, cert_pb)
            cert = wire.cert_from_pb(cert_pb)
        except InvalidBlock as exc:
            kind = "bad_certificate" if exc.reason.startswith("certificate") else "bad_block"
            raise PeerFault(kind, f"block {height}: {exc.reason}") from None
        except wire.WireError as exc:
            raise PeerFault("bad_certificate", f"block {height}: {exc}") from None
        self._catching_up = True
        try:
            await self._execute(core.step(CommitReceived(cert, block)))
        finally:
            self._catching_up = False
        if chain.height < height:
            dropped = core.dropped
            raise PeerFault(
                "bad_certificate", f"block {height}: {dropped.detail if dropped else 'not decided'}"
            )
        return True
