"""One validator process: the parts of the node, wired together, and their lifecycle.

    peers ──► PeerNetwork ──► PeerRouter ──► ConsensusDriver ──► Tendermint (the pure core)
                               │   │  ▲             │  ▲
                  tx batches ──┘   │  └ BlockSync ──┘  └─ BlockExecutor ─► Ledger, NodeStore
                                   ▼                        │
    clients ──► ApiServer ──► ClientService ◄── commits ────┘ (listeners of the driver)

- node/router.py: everything a peer sends is checked there and handed to its owner;
- node/driver.py: the one task that owns the consensus core (typed events, WAL, timers, persist
  before broadcast);
- node/execution.py: propose, validate, execute and commit blocks; node/validation.py is the one
  block-validation path; node/chain.py the committed tip and the validator-set schedule;
- node/blocksync.py: fetch blocks from peers that are ahead, serve blocks to peers that are behind;
- node/evidence.py: equivocation evidence until a block carries it;
- node/service.py: the client API, fed by commit notifications.

The node runs its tasks in one TaskGroup. A task that fails with anything but a peer's or client's
bad input (which the edges catch) stops the node with the reason, after an orderly shutdown: the
API stops serving, the tasks are cancelled, the network closes, and the WAL, sign state and store
close last. Test-only Byzantine behaviour is a `Behaviour` chosen at construction (node/byzantine.py
builds one); the honest node's code never asks which it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
from collections.abc import Coroutine
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from clearline.v1 import block_pb2, state_pb2
from node import blocks, budget, crypto
from node import evidence as evidence_mod
from node import execution as execution_mod
from node import router as router_mod
from node import snapshot as snapshot_mod
from node.admission import MAX_OBSERVER_PEERS, PeerNames
from node.backup import BackupService
from node.blocksync import BlockSync
from node.chain import Chain
from node.clock import Clock, SystemClock, now_ms
from node.config import NodeConfig
from node.consensus import Application, Proposal, Signer, Vote
from node.driver import MAX_LATER_EVENTS, ConsensusDriver
from node.errors import CannotStart, InvariantBroken
from node.evidence import EvidencePool
from node.execution import BlockExecutor, Committed
from node.gctune import PauseWatch
from node.ledger import Ledger, merkle, parse_genesis
from node.ledger.state import INSTR
from node.mempool import Mempool
from node.network.api import ApiServer, NodeApi
from node.network.limits import ClientLimits
from node.network.peers import PeerHandler, PeerNetwork
from node.pruning import Pruner
from node.router import PeerRouter, Transport
from node.service import ClientService
from node.snapshot import ENTRY_PREFIX, SnapshotService, SnapshotStore
from node.statesync import SnapshotSource, StateSync, StateSyncFailed, Trust
from node.storage import WAL, NodeStore, SignStateFile, keys, staggered_write_buffer
from node.storage.wal import WalReplay
from node.threadname import name_this_thread
from node.txs import VerifiedTx

log = logging.getLogger("clearline.node")

# The WAL appends end-of-height markers up to this size, then starts a fresh file (bounded replay).
WAL_ROTATE_BYTES = 4 << 20


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


class ObserverSigner:
    """The consensus Signer of an observer (`observer = true`): it holds no key and its address is
    no validator's, so the core never asks it to sign (node/consensus/tendermint.py `_is_member`);
    if it ever did, the node stops rather than sign. An observer's node key is used for its peer
    Hello only."""

    address: bytes = b""

    def sign_vote(self, vote: Vote) -> bytes:
        raise InvariantBroken("an observer was asked to sign a vote", vote.height)

    def sign_proposal(self, proposal: Proposal) -> bytes:
        raise InvariantBroken("an observer was asked to sign a proposal", proposal.height)


class Behaviour(Protocol):
    """How the node's parts are wrapped at construction. `Honest` wraps nothing; node/byzantine.py
    makes the test-only misbehaving ones (a tampering executor, a lying transport, ...)."""

    def attach(self, node: Node) -> None:
        """Called once the node's state is open; may refuse (node/byzantine.ByzantineRefused)."""
        ...

    def app(self, executor: BlockExecutor) -> Application: ...

    def transport(self, network: PeerNetwork) -> Transport: ...

    def peer_handler(self, router: PeerRouter) -> PeerHandler: ...

    def client_api(self, service: ClientService) -> NodeApi: ...

    def tasks(self) -> list[Coroutine[Any, Any, None]]: ...


class Storage(Protocol):
    """Where the node keeps its state: LevelDB and files (`FileStorage`), or the node simulation's
    in-memory disk."""

    def open_store(self, path: Path, chain_id: str, address: bytes) -> NodeStore: ...

    def open_sign_state(self, path: Path) -> SignStateFile: ...

    def open_wal(self, path: Path, rotate_bytes: int) -> tuple[WAL, WalReplay]: ...


class FileStorage:
    def open_store(self, path: Path, chain_id: str, address: bytes) -> NodeStore:
        return NodeStore.open(path, chain_id=chain_id, write_buffer_size=staggered_write_buffer(address))

    def open_sign_state(self, path: Path) -> SignStateFile:
        return SignStateFile.open(path)

    def open_wal(self, path: Path, rotate_bytes: int) -> tuple[WAL, WalReplay]:
        return WAL.open(path, rotate_bytes=rotate_bytes)


class Honest:
    def attach(self, node: Node) -> None:
        pass

    def app(self, executor: BlockExecutor) -> Application:
        return executor

    def transport(self, network: PeerNetwork) -> Transport:
        return network

    def peer_handler(self, router: PeerRouter) -> PeerHandler:
        return router

    def client_api(self, service: ClientService) -> NodeApi:
        return service

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        return []


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with the node's height and round."""

    def __init__(self, node: Node) -> None:
        super().__init__()
        self._node = node

    def format(self, record: logging.LogRecord) -> str:
        node = self._node
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "node": node.cfg.moniker,
            "height": node.height + 1,
            "round": node.driver.round if node.driver is not None else 0,
        }
        fields = getattr(record, "fields", None)  # structured fields of the message (log(..., extra=))
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def genesis_validator_set(genesis: state_pb2.Genesis) -> block_pb2.ValidatorSet:
    """The set that signs height 1, as the block store keeps it (sorted by address)."""
    vs = block_pb2.ValidatorSet()
    for v in sorted(genesis.validators, key=lambda g: crypto.address_of(g.public_key)):
        vs.validators.add(
            address=crypto.address_of(v.public_key), public_key=v.public_key, power=v.power, name=v.name
        )
    return vs


class Node:
    """One validator. `await Node(cfg).run()` until SIGTERM/SIGINT or `stop()`."""

    def __init__(
        self,
        cfg: NodeConfig,
        behaviour: Behaviour | None = None,
        clock: Clock | None = None,
        storage: Storage | None = None,
        pools: tuple[Executor, Executor] | None = None,
    ) -> None:
        self.cfg = cfg
        self.storage: Storage = storage or FileStorage()
        self.chain_id = cfg.chain_id
        self.behaviour: Behaviour = behaviour or Honest()
        self.clock: Clock = clock or SystemClock()
        self.driver: ConsensusDriver | None = None
        self.chain: Chain | None = None
        self.metrics: Any = None
        self._stop = asyncio.Event()
        self._failure: BaseException | None = None
        self._closers: list[Any] = []
        self._gc_watch = PauseWatch(log.warning)
        self._snapshotting = False
        if pools is not None:
            self.verify_pool, self.io_pool = pools
            self.snapshot_pool: Executor = self.io_pool
        else:
            self.verify_pool = ThreadPoolExecutor(
                max_workers=cfg.mempool.verify_threads,
                thread_name_prefix="verify",
                initializer=name_this_thread,
                initargs=("verify",),
            )
            # Persistence (block batches) has its own thread: it never queues behind verification.
            self.io_pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="io", initializer=name_this_thread, initargs=("io",)
            )
            # Snapshots are cut in a thread of their own, so a long one never delays a block's write.
            self.snapshot_pool = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="snapshot",
                initializer=name_this_thread,
                initargs=("snapshot",),
            )

    @property
    def height(self) -> int:
        """The last committed height."""
        return self.chain.height if self.chain is not None else 0

    def holdings(self) -> list[Holding]:
        """Each structure others can fill (clients, peers, one validator with its key), what it holds
        now and its bound: the parts of the memory budget (node/budget.py) counted in the structures
        themselves. The node simulation checks every one of them while it floods the node."""
        cfg = self.cfg
        peers = max(len(cfg.p2p.peers), len(self.names_by_address)) + MAX_OBSERVER_PEERS
        out = [
            Holding("mempool bytes", self.mempool.size_bytes, cfg.mempool.max_bytes),
            Holding("mempool transactions", len(self.mempool), cfg.mempool.max_txs),
            Holding("verified-signature cache bytes", self.mempool.cache_bytes, cfg.mempool.cache_bytes),
            Holding("pending evidence", len(self.evidence), evidence_mod.MAX_PENDING_EVIDENCE),
            Holding(
                "executed proposals", self.executor.executed_count, execution_mod.MAX_EXECUTED_PER_HEIGHT
            ),
            Holding("replayed-message filter", len(self.router.seen), router_mod.MAX_SEEN_MESSAGES),
            Holding(
                "gossip batches in verification, bytes",
                self.router.gossip_bytes,
                budget.GOSSIP_INFLIGHT_BYTES + peers * cfg.p2p.max_message_bytes,
            ),
        ]
        if self.driver is not None:
            out.append(
                Holding("messages held for the next height", self.driver.later_count, MAX_LATER_EVENTS)
            )
            out.append(
                Holding("bytes held for the next height", self.driver.later_bytes, budget.LATER_EVENTS_BYTES)
            )
        return out

    # --- opening the state --------------------------------------------------------------------------

    def open(self) -> None:
        """Read the key and genesis files, then open the state (`open_with`)."""
        cfg = self.cfg
        key = crypto.load_key_file(cfg.path(cfg.keys.validator_key))
        genesis_path = cfg.path(cfg.genesis)
        try:
            genesis_text = genesis_path.read_text()
        except FileNotFoundError:
            raise CannotStart(f"genesis file {genesis_path} does not exist") from None
        self.open_with(key, genesis_text)

    def open_with(self, key: crypto.SigningKey, genesis_text: str) -> None:
        """Open the store, ledger, sign state and WAL through `storage`, and build the parts."""
        cfg = self.cfg
        self.key = key
        self.genesis = parse_genesis(genesis_text)
        if self.genesis.chain_id != cfg.chain_id:
            raise CannotStart(
                f"genesis chain id {self.genesis.chain_id!r} differs from config {cfg.chain_id!r}"
            )
        data_dir = cfg.path(cfg.storage.data_dir)
        self.store = self.storage.open_store(data_dir / "blockstore", cfg.chain_id, self.key.address)
        self._closers.append(self.store.close)
        if not self.store.is_initialized():
            writes, _root = Ledger.genesis_writes(self.genesis)
            vs = genesis_validator_set(self.genesis)
            self.store.save_genesis(genesis_text.encode(), writes, vs, cfg.chain_id)
        self.ledger = Ledger.open(self.store.state)
        self.chain = Chain(self.store, cfg.chain_id, self.genesis.genesis_time * 1000)
        if self.ledger.height != self.chain.height:
            raise InvariantBroken(
                f"the ledger is at height {self.ledger.height} but the block store is not", self.chain.height
            )
        self.names_by_address: dict[bytes, str] = {
            crypto.address_of(v.public_key): v.name for v in self.genesis.validators
        }
        self.peer_names = PeerNames(self.names_by_address, self.ledger.get_account_record)
        self.evidence = EvidencePool(self.chain)
        self.evidence.load_committed(self.store)
        self.sign_state = self.storage.open_sign_state(data_dir / "sign_state.bin")
        self._closers.append(self.sign_state.close)
        self.wal, wal_replay = self.storage.open_wal(data_dir / "consensus.wal", WAL_ROTATE_BYTES)
        self._closers.append(self.wal.close)
        if wal_replay.repaired:
            log.warning("WAL repaired: %s", wal_replay.repaired)
        self._build(wal_replay)
        self.behaviour.attach(self)

    def close(self) -> None:
        """Close what `open` opened (the store, sign state, WAL), newest first."""
        for close in reversed(self._closers):
            close()
        self._closers.clear()

    def _build(self, wal_replay: Any) -> None:
        cfg, chain, ledger, clock = self.cfg, self.chain, self.ledger, self.clock
        assert chain is not None

        def check(vtx: VerifiedTx, nonce: int) -> Any:
            return ledger.check_tx(vtx, expected_nonce=nonce, time_ms=now_ms(clock))

        def committed_nonce(sender: bytes) -> int:
            account = ledger.get_account_record(sender)  # the decoded record: no protobuf copy
            return account.nonce if account is not None else 0

        self.mempool = Mempool(
            cfg.mempool,
            self.chain_id,
            check=check,
            committed_nonce=committed_nonce,
            ref_committed=lambda _s, _r: False,
            executor=self.verify_pool,
            read_ahead=(ledger.read_ahead, ledger.absorb),
            clock=clock.monotonic,
        )
        self.executor = BlockExecutor(
            limits=cfg.consensus,
            max_tx_bytes=cfg.mempool.max_tx_bytes,
            chain=chain,
            ledger=ledger,
            store=self.store,
            mempool=self.mempool,
            evidence=self.evidence,
            proposer=self.key.address,
            io=self.io_pool,
            clock=clock,
        )
        self.signer: Signer = ObserverSigner() if cfg.observer else NodeSigner(self.key, self.chain_id)
        self.driver = ConsensusDriver(
            consensus=cfg.consensus,
            chain=chain,
            executor=self.executor,
            app=self.behaviour.app(self.executor),
            signer=self.signer,
            sign_state=self.sign_state,
            wal=self.wal,
            wal_replay=wal_replay,
            evidence=self.evidence,
            mempool=self.mempool,
            clock=clock,
        )
        self.blocksync = BlockSync(
            self.driver_host(), source=self.store, clock=clock, on_fault=self._on_sync_fault
        )
        self.router = PeerRouter(
            cfg=cfg,
            key=self.key,
            names=self.peer_names,
            chain=chain,
            driver=self.driver,
            executor=self.executor,
            evidence=self.evidence,
            mempool=self.mempool,
            blocksync=self.blocksync,
            clock=clock,
        )
        self.router.on_fatal = self._fail
        data_dir = cfg.path(cfg.storage.data_dir)
        self.snapshots = SnapshotStore(data_dir / "snapshots", keep=cfg.snapshots.keep)
        self.router.snapshots = SnapshotService(self.store, self.snapshots)
        driver = self.driver
        self.service = ClientService(
            cfg=cfg.api,
            moniker=cfg.moniker,
            key=self.key,
            chain=chain,
            ledger=ledger,
            store=self.store,
            mempool=self.mempool,
            clock=clock,
            consensus_state=lambda: (driver.round, driver.step_name),
            peers=lambda: len(self.network.connected),
            syncing=lambda: self.blocksync.active,
        )
        driver.commit_listeners += [self.service.on_commit, self.router.on_commit, self._on_commit]
        driver.decide_listeners.append(self._on_decide)
        self.backups = BackupService(cfg, self.key.address, self.store, self.sign_state, clock)
        self._closers.append(self.backups.close)  # closers run newest first: before the store closes
        self.pruner = Pruner(
            self.store,
            retain_blocks=cfg.storage.retain_blocks,
            batch_keys=cfg.storage.prune_batch_keys,
            io=self.io_pool,
            floor=self._prune_floor,
        )
        self.pruner.on_fatal = self._fail
        self._closers.append(self.pruner.wait)  # closers run newest first: before the store closes
        driver.commit_listeners.append(self.pruner.on_commit)  # after _on_commit: a snapshot starts first

    def driver_host(self) -> _SyncHost:
        return _SyncHost(self)

    # --- running ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Start everything, run until stopped (or a part fails), then shut down in order."""
        self._setup_logging()
        gc.callbacks.append(self._gc_watch)
        try:
            if self.cfg.statesync.enable:
                await self.state_sync_if_empty()
            self.open()
            await self._serve()
        finally:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(self._gc_watch)
            self.close()
            self.verify_pool.shutdown(wait=False, cancel_futures=True)
            self.io_pool.shutdown(wait=True)
            self.snapshot_pool.shutdown(wait=True)
        if self._failure is not None:
            raise self._failure

    async def _serve(self) -> None:
        from node import metrics  # imported late: a prometheus registry per process

        cfg = self.cfg
        self.metrics = metrics.NodeMetrics(cfg.metrics.listen)
        self._closers.append(self.metrics.close)
        self.mempool.on_verified = lambda _n, seconds: self.metrics.verify_seconds.observe(seconds)
        self.pruner.on_batch = lambda _pruned, seconds: self.metrics.prune_seconds.observe(seconds)
        self.metrics.on_supply(self._supplies())
        self.network = PeerNetwork(cfg, self.peer_handler(), self.peer_names)
        self.network.on_fatal = self._fail
        self.attach_transport(self.network)
        self.api = ApiServer(
            self.behaviour.client_api(self.service),
            cfg.api.listen,
            max_message_bytes=cfg.api.max_message_bytes,
            max_request_bytes=cfg.api.max_request_bytes,
            max_concurrent_rpcs=cfg.api.max_concurrent_rpcs,
            max_batch=cfg.api.max_batch_txs,
            limits=ClientLimits(
                requests_per_s=cfg.api.client_requests_per_s,
                burst=cfg.api.client_burst,
                max_streams=cfg.api.client_max_streams,
                auth_failures_per_s=cfg.api.auth_failures_per_s,
            ),
            tls=self._api_tls(),
            admin=self.backups,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        await self.network.start()
        try:
            await self.api.start()
            log.info("node %s starting at height %d (chain %s)", cfg.moniker, self.height + 1, self.chain_id)
            await self._run_tasks()
        finally:
            with contextlib.suppress(Exception):
                await self.api.set_serving(False)
            await self.api.stop(0.5)
            await self.network.stop()

    def _api_tls(self) -> tuple[bytes, bytes] | None:
        """The client API's (key, certificate) PEM: the node's own, from the network CA."""
        cfg = self.cfg
        if cfg.api.plaintext:
            log.warning(
                "[api] plaintext = true: the client API at %s serves WITHOUT TLS (development only)",
                cfg.api.listen,
            )
            return None
        try:
            return cfg.path(cfg.tls.key).read_bytes(), cfg.path(cfg.tls.cert).read_bytes()
        except OSError as exc:
            raise CannotStart(
                f"[tls] key/cert: cannot read the certificate the client API serves ({exc}); "
                "set [api] plaintext = true only for development"
            ) from None

    def peer_handler(self) -> PeerHandler:
        """What the peer network hands peers' messages to (the router, or the behaviour's wrapper)."""
        return self.behaviour.peer_handler(self.router)

    def attach_transport(self, network: Any) -> None:
        """Give the parts that send to peers the network (through the behaviour's wrapper)."""
        transport = self.behaviour.transport(network)
        self.router.transport = transport
        assert self.driver is not None
        self.driver.outbox = transport

    def coroutines(self) -> list[tuple[str, Coroutine[Any, Any, None]]]:
        """The node's tasks, by name: the consensus driver, gossip, status, block sync (and a
        behaviour's own)."""
        assert self.driver is not None
        coros: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("consensus", self.driver.run()),
            ("gossip", self.router.gossip_loop()),
            ("status", self.router.status_loop(self._on_tick)),
            ("blocksync", self.blocksync.run()),
        ]
        return coros + [("byzantine", c) for c in self.behaviour.tasks()]

    async def _run_tasks(self) -> None:
        coros = self.coroutines()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(coro, name=name) for name, coro in coros]
                await self.api.set_serving(True)
                self.service.started = True
                await self._stop.wait()
                log.info("shutting down")
                for task in tasks:
                    task.cancel()
        except BaseExceptionGroup as group_error:
            failure = next(
                (e for e in group_error.exceptions if not isinstance(e, asyncio.CancelledError)), group_error
            )
            self._fail(failure)
        finally:
            for task in list(self.router.gossip_admits):
                task.cancel()

    def stop(self) -> None:
        self._stop.set()

    def _fail(self, exc: BaseException) -> None:
        """A part failed with this node's own error: stop, and let run() raise it."""
        if self._failure is None:
            self._failure = exc
            log.error("stopping: %s", exc, exc_info=exc)
        self._stop.set()

    # --- what the parts tell the node ---------------------------------------------------------------

    def _on_decide(self, decide: Any, height_s: float) -> None:
        if self.metrics is not None:
            self.metrics.height_duration.observe(height_s)
            self.metrics.rounds.observe(decide.round + 1)

    def _on_commit(self, committed: Committed) -> None:
        interval = self.cfg.snapshots.interval
        if interval and committed.height % interval == 0:
            self._take_snapshot(committed.height, committed.block.header.state_root)
        if self.metrics is not None:
            self.metrics.on_commit(
                committed.height, len(committed.receipts), committed.persist_s, len(self.mempool)
            )
            assert self.chain is not None  # opened before any commit
            signed = {s.validator for s in committed.certificate.signatures}
            members = self.chain.validator_set(committed.height).validators
            self.metrics.on_certificate(
                [v.name or v.address.hex() for v in members if v.address not in signed],
                len(committed.block.body.evidence),
            )
            if any(e.kind in ("mint", "redeem") for r in committed.receipts for e in r.events):
                self.metrics.on_supply(self._supplies())

    # --- snapshots and state sync --------------------------------------------------------------------

    def _take_snapshot(self, height: int, state_root: bytes) -> None:
        """Snapshot the state of `height`, just committed: a LevelDB snapshot now (on the loop, before
        the next commit), cut into chunks in the snapshot thread. One at a time: a height that comes
        while one is being cut is skipped."""
        if self._snapshotting:
            log.warning("snapshot of height %d skipped: the previous one is still being taken", height)
            return
        view = self.store.snapshot()
        if view.latest_height != height:
            view.close()
            return
        self._snapshotting = True
        started = self.clock.monotonic()

        def cut() -> Any:
            try:
                root_node = merkle.ChunkedNodes(view.state).get(merkle.NODE_PREFIX) or b""
                manifest, chunks = snapshot_mod.take(
                    view.state.items(ENTRY_PREFIX), root_node, height, state_root
                )
                self.snapshots.write(manifest, chunks)
                return manifest
            finally:
                view.close()

        def done(fut: Any) -> None:
            self._snapshotting = False
            exc = fut.exception()
            if exc is not None:  # the node keeps running: peers can use another node's snapshot
                log.error("snapshot of height %d failed: %s", height, exc, exc_info=exc)
                return
            manifest = fut.result()
            took = self.clock.monotonic() - started
            log.info(
                "snapshot of height %d: %d chunks, %d entries, %.2f s",
                height, len(manifest.chunks), sum(c.entries for c in manifest.chunks), took,
                extra={"fields": {"event": "snapshot", "snapshot_height": height, "seconds": round(took, 3)}},
            )  # fmt: skip
            if self.metrics is not None:
                self.metrics.snapshot_seconds.observe(took)

        future = self.snapshot_pool.submit(cut)
        if future.done():  # an inline pool (the node simulation)
            done(future)
        else:
            loop = asyncio.get_running_loop()
            future.add_done_callback(lambda fut: loop.call_soon_threadsafe(done, fut))

    async def state_sync_if_empty(self, source: SnapshotSource | None = None, attempts: int = 5) -> bool:
        """Before the node opens: if its store is empty, join from a peer's snapshot (node/statesync.py)
        and write it; True if it did. No snapshot offered: False (the node starts from genesis and
        block-syncs). Offered but none verifiable after `attempts` tries: CannotStart."""
        cfg = self.cfg
        key = crypto.load_key_file(cfg.path(cfg.keys.validator_key))
        try:
            genesis_text = cfg.path(cfg.genesis).read_text()
        except FileNotFoundError:
            raise CannotStart(f"genesis file {cfg.path(cfg.genesis)} does not exist") from None
        return await self.state_sync_with(key, genesis_text, source, attempts)

    async def state_sync_with(
        self, key: crypto.SigningKey, genesis_text: str, source: SnapshotSource | None, attempts: int = 5
    ) -> bool:
        """state_sync_if_empty with the key and genesis given (the node simulation's nodes have no
        files for them)."""
        cfg = self.cfg
        genesis = parse_genesis(genesis_text)
        data_dir = cfg.path(cfg.storage.data_dir)
        store = self.storage.open_store(data_dir / "blockstore", cfg.chain_id, key.address)
        network: PeerNetwork | None = None
        try:
            if store.is_initialized():
                return False
            if source is None:
                names: dict[bytes, str] = {
                    crypto.address_of(v.public_key): v.name for v in genesis.validators
                }
                network = PeerNetwork(cfg, _NoPeers(), PeerNames(names, lambda _a: None))
                source = network
            ss = cfg.statesync
            trust = Trust(
                genesis_validator_set(genesis),
                ss.trust_height,
                bytes.fromhex(ss.trust_hash) if ss.trust_hash else b"",
            )
            for attempt in range(1, attempts + 1):
                sync = self.make_state_sync(source, trust)
                try:
                    synced = await sync.run()
                except StateSyncFailed as exc:
                    log.warning("state sync attempt %d of %d failed: %s", attempt, attempts, exc)
                    await asyncio.sleep(min(30.0, 2.0**attempt))
                    continue
                if synced is None:
                    log.info("state sync: no snapshot offered; starting from genesis")
                    return False
                sets = {1: genesis_validator_set(genesis), **synced.validator_sets}
                store.save_state_sync(
                    genesis_text.encode(), cfg.chain_id, synced.state_writes, synced.block,
                    synced.block_hash, synced.commit, sets,
                )  # fmt: skip
                log.info(
                    "state sync: joined at height %d (%d chunks, %d entries); block sync continues from %d",
                    synced.height, synced.chunks, synced.entries, synced.height + 1,
                    extra={"fields": {"event": "state_synced", "synced_height": synced.height}},
                )  # fmt: skip
                return True
            raise CannotStart(f"state sync: no snapshot could be verified and fetched in {attempts} attempts")
        finally:
            store.close()
            if network is not None:
                await network.stop()

    def make_state_sync(self, source: SnapshotSource, trust: Trust) -> StateSync:
        ss = self.cfg.statesync
        return StateSync(
            source,
            chain_id=self.cfg.chain_id,
            trust=trust,
            clock=self.clock,
            fetchers=ss.fetchers,
            chunk_timeout_s=ss.chunk_timeout_s,
            discovery_s=ss.discovery_s,
        )

    def _prune_floor(self) -> int | None:
        """The lowest height pruning keeps: the oldest snapshot's (its block anchors a joining node);
        None while a snapshot is being cut (its block must stay too)."""
        if self._snapshotting:
            return None
        heights = self.snapshots.heights()
        return heights[0] if heights else keys.MAX_HEIGHT

    def _supplies(self) -> dict[str, int]:
        """Each instrument's supply, from the committed state ("issuer hex:SYMBOL" -> minor units)."""
        out = {}
        for _key, raw in self.store.state.items(INSTR):
            inst = state_pb2.Instrument.FromString(raw)
            out[f"{inst.id.issuer.hex()}:{inst.id.symbol}"] = inst.supply
        return out

    def _on_tick(self) -> None:
        if self.metrics is not None:
            self.metrics.on_status(self)

    def _on_sync_fault(self, peer: str, reason: str) -> None:
        self.router.count_fault(peer, f"sync_{reason}")

    # --- read by metrics ----------------------------------------------------------------------------

    @property
    def core(self) -> Any:
        return self.driver.core if self.driver is not None else None

    @property
    def peer_fault_counts(self) -> dict[tuple[str, str], int]:
        return self.router.faults.counts

    def _setup_logging(self) -> None:
        handler = logging.FileHandler(self.cfg.path(self.cfg.log.file))
        handler.setFormatter(JsonLogFormatter(self))
        root = logging.getLogger("clearline")
        root.handlers = [handler]
        root.setLevel(self.cfg.log.level.upper())
        root.propagate = False


class _NoPeers:
    """The peer handler of the network state sync uses as a client only (it serves nothing)."""

    def make_hello(self) -> Any:
        raise CannotStart("state sync serves no peer")

    def check_hello(self, hello: Any, expected_name: str | None, cert_address: bytes | None) -> str | None:
        return "joining by state sync"

    async def on_peer_message(self, peer: str, msg: Any) -> None:
        return None

    def on_peer_connected(self, peer: str) -> None:
        return None

    def on_peer_disconnected(self, peer: str) -> None:
        return None

    def serve_blocks(self, request: Any) -> Any:
        raise CannotStart("state sync serves no peer")

    def sync_status(self) -> Any:
        raise CannotStart("state sync serves no peer")

    def list_snapshots(self) -> Any:
        raise CannotStart("state sync serves no peer")

    async def snapshot_chunk(self, request: Any) -> Any:
        raise CannotStart("state sync serves no peer")

    def light_block(self, request: Any) -> Any:
        raise CannotStart("state sync serves no peer")


@dataclass(frozen=True, slots=True)
class Holding:
    what: str
    held: int
    bound: int


class _SyncHost:
    """Block sync's view of the node: the committed height, peers' blocks, the driver's hand-off."""

    def __init__(self, node: Node) -> None:
        self._node = node

    @property
    def height(self) -> int:
        return self._node.height

    def fetch_blocks(self, peer: str, from_height: int, to_height: int, max_bytes: int) -> Any:
        transport = self._node.router.transport
        assert transport is not None
        return transport.fetch_blocks(peer, from_height, to_height, max_bytes)

    async def apply_synced(self, peer: str, block: Any) -> bool:
        assert self._node.driver is not None
        return await self._node.driver.apply_synced(peer, block)
