"""One seed of the whole node under simulation: real nodes (node.runtime.Node and all its parts) on
a simulated network, disk and clock, with a seeded adversary, a workload of signed transactions
from several clients, and the properties checked at the end.

Everything runs on one SimLoop: time jumps to the next event, the thread pools are inline, the block
store is a MemDB per node, and the sign state and WAL are real files in a scratch directory (kept
across a node's restarts, like its disk). The seed fixes the keys, the chain id, the faults, the
latencies and the workload, so a failing seed replays exactly.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from clearline.v1 import ledger_api_pb2, tx_pb2
from cluster.checker import count_balances, expected_supply, supply_mismatch
from cluster.client import builders
from cluster.netgen import build_genesis
from cluster.simnode.loop import SimClock, SimLoop
from cluster.simnode.memdb import MemDB
from cluster.simnode.mutants import MUTANTS
from cluster.simnode.net import SimNet, SimSnapshotSource, SimTransport
from node import crypto, txs
from node.byzantine import ByzantineBehaviour
from node.config import (
    BYZANTINE_MODES,
    ConsensusConfig,
    MempoolConfig,
    NodeConfig,
    SnapshotsConfig,
    StateSyncConfig,
    StorageConfig,
)
from node.crypto import SigningKey
from node.errors import ApiError, CannotStart
from node.execution import Committed
from node.runtime import Behaviour, Node
from node.storage import WAL, NodeStore, SignStateFile
from node.storage.wal import WalReplay

# The Byzantine strategies the adversary draws from are node.config.BYZANTINE_MODES (the chaos
# campaign's): node/byzantine.py modes, run as the real wrappers.
FUNDS = 10**12
# The verified-signature cache of a simulated node (small, so a flood would overflow an unbounded one).
SIM_CACHE_BYTES = 256 * 1024
FLOOD_TXS = 2500
SNAPSHOT_INTERVAL = 10


class InlineExecutor(concurrent.futures.Executor):
    """A 'thread pool' that runs each job at once, on the simulation's one thread."""

    _max_workers = 2

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to whoever awaits the job, as a real pool does
            fut.set_exception(exc)
        return fut


class SimStorage:
    """A node's disk: its MemDB (the block store) and files for the sign state and the WAL."""

    def __init__(self, db: MemDB) -> None:
        self.db = db

    def open_store(self, path: Path, chain_id: str, address: bytes) -> NodeStore:
        return NodeStore.open_on(self.db.reopen(), path, chain_id=chain_id)

    def open_sign_state(self, path: Path) -> SignStateFile:
        return SignStateFile.open(path)

    def open_wal(self, path: Path, rotate_bytes: int) -> tuple[WAL, WalReplay]:
        return WAL.open(path, rotate_bytes=rotate_bytes)


@dataclass
class Settings:
    validators: int = 4
    byzantine: int = 1
    seed: int = 0
    duration_s: float = 60.0  # simulated
    clients: int = 4
    tx_interval_s: float = 0.2  # per client
    faults: bool = True
    liveness_bound_s: float = 10.0
    mutant: str = ""
    trace: bool = False  # record every message delivered, commit and client call (slower)
    byzantine_mode: str = ""  # every Byzantine validator runs this mode (else drawn per seed)
    # The adversary may also wipe an honest node's disk (all but its sign state): it rejoins by
    # state sync from its peers' snapshots (taken every SNAPSHOT_INTERVAL heights).
    state_sync: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the trace: when, what, which nodes it concerns, and the height it is about."""

    at: float
    text: str
    nodes: tuple[str, ...] = ()
    height: int | None = None
    tx: bytes = b""
    detail: bool = False  # a message, a commit or a client call (recorded only with Settings.trace)

    def line(self) -> str:
        return f"{self.at:9.3f} {self.text}"


@dataclass(frozen=True, slots=True)
class Violation:
    """A property that failed, and where to look: a height, a node over a time span, a transaction."""

    text: str
    height: int | None = None
    node: str | None = None
    since: float | None = None
    until: float | None = None
    tx: bytes = b""


FOCUSED_TRACE_LINES = 400


@dataclass
class Outcome:
    seed: int
    heights: dict[str, int]
    simulated_seconds: float
    acknowledged: int
    violations: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    modes: dict[str, str] = field(default_factory=dict)
    max_commit_gap_s: float = 0.0
    peak_holdings: dict[str, float] = field(default_factory=dict)  # share of each bound, highest seen
    # With Settings.trace: the events that led to the first violation, and every event.
    focused_trace: list[str] = field(default_factory=list)
    full_trace: list[str] = field(default_factory=list)


def _key(seed: int, name: str) -> SigningKey:
    return SigningKey.from_seed(hashlib.sha256(f"clearline-sim:{seed}:{name}".encode()).digest())


class _Slot:
    """One validator: its settings and disk (kept across restarts) and its running node, if up."""

    def __init__(self, name: str, key: SigningKey, cfg: NodeConfig, mode: str) -> None:
        self.name = name
        self.key = key
        self.cfg = cfg
        self.mode = mode
        self.db = MemDB()
        self.node: Node | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.failure: BaseException | None = None
        self.skew = 0.0
        self.clock: SimClock | None = None
        self.commits: list[float] = []  # simulated times of this node's commits

    @property
    def honest(self) -> bool:
        return not self.mode


class World:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.s = settings
        self.rng = random.Random(settings.seed)
        self.loop = SimLoop()
        self.workdir = workdir
        self.events: list[Event] = []
        n, f = settings.validators, settings.byzantine
        self.names = [f"node{i}" for i in range(n)]
        self.net = SimNet(self.loop, random.Random(self.rng.random()), self.names)
        if settings.trace:
            self.net.tracer = self._delivered
        self.chain_id = f"sim-{settings.seed}"
        validator_keys = [_key(settings.seed, name) for name in self.names]
        account_names = (
            "admin",
            "compliance",
            "bank-a",
            "bank-b",
            *(f"c{i}" for i in range(settings.clients)),
            "flooder",
        )
        self.accounts = {name: _key(settings.seed, name) for name in account_names}
        funded = {f"c{i}": [("bank-a", "USD", FUNDS)] for i in range(settings.clients)}
        funded["flooder"] = [("bank-a", "USD", FUNDS)]  # a real, KYC-approved client turned hostile
        genesis = build_genesis(self.chain_id, validator_keys, self.accounts, funded=funded)
        genesis.fault_testing = True
        self.genesis = genesis
        self.genesis_text = json_format.MessageToJson(genesis)
        self.usd = builders.instrument(self.accounts["bank-a"].address, "USD")
        consensus = ConsensusConfig(timeout_commit_ms=50)
        byz = set(self.names[n - f :])
        self.slots: dict[str, _Slot] = {}
        self.mutant = MUTANTS[settings.mutant] if settings.mutant else None
        for i, name in enumerate(self.names):
            mode = self.rng.choice(BYZANTINE_MODES) if name in byz else ""
            if mode and settings.byzantine_mode:
                mode = settings.byzantine_mode
            if mode and self.mutant is not None and self.mutant.adversary:
                mode = self.mutant.adversary
            cfg = NodeConfig(
                home=workdir / name,
                chain_id=self.chain_id,
                moniker=name,
                consensus=consensus,
                mempool=MempoolConfig(cache_bytes=SIM_CACHE_BYTES),
                storage=StorageConfig(),
                snapshots=SnapshotsConfig(interval=SNAPSHOT_INTERVAL),
            )
            self.slots[name] = _Slot(name, validator_keys[i], cfg, mode)
        self.acked: dict[bytes, int] = {}  # tx hash -> height acknowledged
        self.last_fault_end = 0.0
        self.heights_at_heal: dict[str, int] = {}
        self.max_gap = 0.0
        self.memory_violations: dict[str, Violation] = {}  # node -> its first memory violation
        self.peak: dict[str, float] = {}  # structure -> the highest share of its bound seen
        self.state_synced: dict[str, list[int]] = {}  # node -> the heights it joined at by state sync

    def log(self, text: str, *nodes: str) -> None:
        """A fault, a restart, a failure: always in the trace."""
        self.events.append(Event(self.loop.time(), text, nodes))

    def detail(self, text: str, *nodes: str, height: int | None = None, tx: bytes = b"") -> None:
        self.events.append(Event(self.loop.time(), text, nodes, height, tx, detail=True))

    def _delivered(self, what: str, src: str, dst: str, height: int | None) -> None:
        self.detail(f"{src} -> {dst}: {what}", src, dst, height=height)

    # --- nodes ------------------------------------------------------------------------------------

    def start(self, slot: _Slot) -> None:
        behaviour: Behaviour | None = ByzantineBehaviour(slot.mode) if slot.mode else None
        clock = slot.clock = SimClock(self.loop, skew=slot.skew)
        pool = InlineExecutor()
        node = Node(
            slot.cfg, behaviour=behaviour, clock=clock, storage=SimStorage(slot.db), pools=(pool, pool)
        )
        node.open_with(slot.key, self.genesis_text)
        if self.mutant is not None and slot.honest:
            self.mutant.apply(node)
        node.attach_transport(SimTransport(self.net, slot.name))
        node.service.started = True
        assert node.driver is not None
        node.driver.commit_listeners.append(functools.partial(self._committed, slot))
        slot.node = node
        slot.tasks = []
        for task_name, coro in node.coroutines():
            task = self.loop.create_task(coro, name=f"{slot.name}:{task_name}")
            task.add_done_callback(functools.partial(self._ended, slot))
            slot.tasks.append(task)
        self.net.up(slot.name, node.peer_handler())
        self.log(
            f"{slot.name} up at height {node.height}{' (' + slot.mode + ')' if slot.mode else ''}", slot.name
        )

    async def rejoin(self, slot: _Slot) -> None:
        """Start a node whose disk is empty by state sync from its peers, then as usual."""
        cfg = dataclasses.replace(
            slot.cfg, statesync=StateSyncConfig(enable=True, discovery_s=5.0, chunk_timeout_s=2.0)
        )
        pool = InlineExecutor()
        joining = Node(
            cfg, clock=SimClock(self.loop, skew=slot.skew), storage=SimStorage(slot.db), pools=(pool, pool)
        )
        if self.mutant is not None and self.mutant.joining is not None:
            self.mutant.joining(joining)
        try:
            joined = await joining.state_sync_with(
                slot.key, self.genesis_text, SimSnapshotSource(self.net, slot.name)
            )
        except CannotStart as exc:
            slot.failure = exc
            self.log(f"{slot.name} FAILED to rejoin: {exc}", slot.name)
            return
        if joined:
            with NodeStore.open_on(slot.db.reopen(), slot.cfg.home, chain_id=self.chain_id) as store:
                height = store.latest_height()
            self.state_synced.setdefault(slot.name, []).append(height)
            self.log(f"{slot.name} state-synced at height {height}", slot.name)
        else:
            self.log(f"{slot.name} found no snapshot: starts from genesis", slot.name)
        self.start(slot)

    def wipe(self, slot: _Slot) -> None:
        """The node's disk is lost but for its sign state (kept apart, as a validator's should be)."""
        self.crash(slot, power_loss=False)
        slot.db = MemDB()
        data = slot.cfg.home / "data"
        if data.exists():
            for path in data.iterdir():
                if path.name.startswith("sign_state"):
                    continue
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
        self.log(f"{slot.name} loses its disk (its sign state kept)", slot.name)

    def _committed(self, slot: _Slot, committed: Committed) -> None:
        slot.commits.append(self.loop.time())
        if self.s.trace:
            self.detail(
                f"{slot.name} commits {committed.height} (round {committed.certificate.round}, block "
                f"{committed.block_id.hex()[:8]}, {len(committed.block.body.txs)} txs)",
                slot.name,
                height=committed.height,
            )
            for r in committed.receipts:
                self.detail(
                    f"{slot.name} applies tx {r.tx_hash.hex()[:12]}",
                    slot.name,
                    height=committed.height,
                    tx=r.tx_hash,
                )

    def _ended(self, slot: _Slot, task: asyncio.Task[None]) -> None:
        if task.cancelled() or slot.failure is not None:
            return
        exc = task.exception()
        slot.failure = exc if exc is not None else RuntimeError(f"task {task.get_name()} returned")
        self.log(f"{slot.name} FAILED: {slot.failure!r}", slot.name)
        self.crash(slot, power_loss=False, failed=True)

    def crash(self, slot: _Slot, *, power_loss: bool, failed: bool = False) -> None:
        node = slot.node
        if node is None:
            return
        self.net.down(slot.name)
        for task in slot.tasks:
            task.cancel()
        for task in list(node.router.gossip_admits):
            task.cancel()
        slot.node = None
        node.close()
        if power_loss:
            slot.db.power_loss()
            wal = slot.cfg.home / "data" / "consensus.wal"
            if wal.exists() and wal.stat().st_size > 0:  # a torn tail of what was not yet synced
                with wal.open("r+b") as f:
                    f.truncate(max(0, wal.stat().st_size - self.rng.randint(0, 48)))
        if not failed:
            self.log(
                f"{slot.name} crashed{' (power loss)' if power_loss else ''} at height {node.height}",
                slot.name,
            )

    # --- the workload -----------------------------------------------------------------------------

    async def client(self, index: int) -> None:
        key = self.accounts[f"c{index}"]
        home = self.names[index % (self.s.validators - self.s.byzantine)]
        nonce = 0
        raw: bytes | None = None
        while self.loop.time() < self.s.duration_s - 5:
            await asyncio.sleep(self.s.tx_interval_s * (0.5 + self.rng.random()))
            if raw is None:
                to = self.accounts[f"c{(index + 1 + nonce % (self.s.clients - 1)) % self.s.clients}"].address
                body = builders.make_body(
                    self.chain_id,
                    key.address,
                    nonce,
                    f"c{index}-{nonce}",
                    builders.transfer(self.usd, to, 1 + nonce % 7),
                )
                raw = txs.sign_tx(body, [key])
            node = self.slots[home].node
            if node is None:
                continue
            if self.s.trace:
                self.detail(f"c{index} submits nonce {nonce} to {home}", home, tx=txs.wire_hash(raw))
            try:
                (result,) = await node.service.submit([raw], ledger_api_pb2.WAIT_FOR_COMMITTED, 5.0)
            except ApiError as exc:
                if self.s.trace:
                    self.detail(f"c{index} nonce {nonce}: {exc}", home, tx=txs.wire_hash(raw))
                continue  # not committed in time, or the node refused for now: the same tx again
            if result.accepted and result.height:
                self.acked[result.tx_hash] = result.height
                if self.s.trace:
                    self.detail(
                        f"c{index} nonce {nonce} acknowledged by {home} at height {result.height}",
                        home,
                        height=result.height,
                        tx=result.tx_hash,
                    )
                nonce += 1
                raw = None
            elif not result.accepted:
                self.log(f"c{index} nonce {nonce} refused for now: {result.message}", home)

    # --- faults -----------------------------------------------------------------------------------

    async def adversary(self) -> None:
        """A seeded schedule of faults on honest nodes and links, each healed before the next."""
        honest = [s for s in self.slots.values() if s.honest]
        end = self.s.duration_s - self.s.liveness_bound_s - 5
        await asyncio.sleep(2.0)
        while self.loop.time() < end:
            kinds = ("crash", "power", "partition", "links", "skew", "one-way", "flood")
            kind = self.rng.choice((*kinds, "wipe", "wipe") if self.s.state_sync else kinds)
            hold = self.rng.uniform(0.5, 5.0)
            victim = self.rng.choice(honest)
            if kind == "wipe":
                self.wipe(victim)
                await asyncio.sleep(hold)
                await self.rejoin(victim)
            elif kind in ("crash", "power"):
                self.crash(victim, power_loss=kind == "power")
                await asyncio.sleep(hold)
                if victim.failure is None:
                    self.start(victim)
            elif kind == "partition":
                self.log(f"partition {victim.name} from the rest for {hold:.1f} s", *self.names)
                self.net.partition([victim.name], [n for n in self.names if n != victim.name])
                await asyncio.sleep(hold)
                self.net.heal()
            elif kind == "one-way":
                other = self.rng.choice([n for n in self.names if n != victim.name])
                self.log(f"one-way cut {victim.name} -> {other} for {hold:.1f} s", victim.name, other)
                self.net.cut_one_way(victim.name, other)
                await asyncio.sleep(hold)
                self.net.heal()
            elif kind == "links":
                self.net.links.loss = self.rng.uniform(0, 0.2)
                self.net.links.duplicate = self.rng.uniform(0, 0.1)
                self.net.links.jitter_ms = self.rng.uniform(0, 200)
                self.log(
                    f"links: loss {self.net.links.loss:.2f} dup {self.net.links.duplicate:.2f} "
                    f"jitter {self.net.links.jitter_ms:.0f} ms for {hold:.1f} s",
                    *self.names,
                )
                await asyncio.sleep(hold)
                self.net.heal()
            elif kind == "flood":
                await self.flood(victim)
            else:
                # The wall clock steps (a bad time source), sometimes past the drift a block's time
                # may have (node/validation.py), and is corrected after `hold`; timers and timeouts
                # run on the monotonic clock, which does not step.
                victim.skew = self.rng.uniform(-15.0, 15.0)
                if victim.clock is not None:
                    victim.clock.skew = victim.skew
                self.log(
                    f"{victim.name} wall clock steps to {victim.skew:+.2f} s off for {hold:.1f} s",
                    victim.name,
                )
                await asyncio.sleep(hold)
                victim.skew = 0.0
                if victim.clock is not None:
                    victim.clock.skew = 0.0
            self.last_fault_end = self.loop.time()
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        self.heights_at_heal = {s.name: s.node.height for s in honest if s.node is not None}
        self.log(f"last fault healed; heights {self.heights_at_heal}", *self.names)

    async def flood(self, victim: _Slot) -> None:
        """A client floods one node (each kind costs the node a signature check or a lookup per
        transaction, and must leave it live and within its bounds):
            throwaway    validly signed transactions from accounts that do not exist
            nonce-gaps   a funded client's transactions far ahead of its nonce (parked, then refused)
            forged       transactions whose signature does not verify
            duplicates   one valid transaction submitted again and again"""
        node = victim.node
        if node is None:
            return
        kind = self.rng.choice(("throwaway", "nonce-gaps", "forged", "duplicates"))
        flooder = self.accounts["flooder"]
        key = _key(self.s.seed, f"flood-{self.loop.time()}") if kind == "throwaway" else flooder
        base = 1_000_000 + int(self.loop.time() * 1000) if kind == "nonce-gaps" else 0

        def one(i: int) -> bytes:
            nonce = base + i if kind != "duplicates" else 10**9
            body = builders.make_body(
                self.chain_id, key.address, nonce, f"f{i}", builders.transfer(self.usd, key.address[::-1], 1)
            )
            raw = txs.sign_tx(body, [key])
            if kind == "forged":
                signed = tx_pb2.SignedTx.FromString(raw)
                signed.signatures[0].signature = bytes(64)
                raw = signed.SerializeToString()
            return raw

        count = FLOOD_TXS if kind != "duplicates" else 1
        raws = [one(i) for i in range(count)]
        if kind == "duplicates":
            raws = raws * FLOOD_TXS
        self.log(f"flood of {len(raws)} transactions ({kind}) at {victim.name}", victim.name)
        for i in range(0, len(raws), 250):
            if victim.node is not node:
                return  # crashed meanwhile
            with contextlib.suppress(ApiError):
                await node.service.submit(raws[i : i + 250], ledger_api_pb2.WAIT_FOR_NONE, None)
            await asyncio.sleep(0.01)

    async def ticker(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.net.refresh()  # bans expire
            self.check_memory()

    def check_memory(self) -> None:
        """What others can make a node hold is bounded: every structure Node.holdings() names (the
        mempool, the verified cache, evidence, proposals, messages held for the next height, ...)
        within its bound, sampled while the adversary floods."""
        for s in self.slots.values():
            node = s.node
            if node is None or not s.honest or s.name in self.memory_violations:
                continue
            for h in node.holdings():
                self.peak[h.what] = max(self.peak.get(h.what, 0.0), h.held / h.bound if h.bound else 0.0)
                if h.held > h.bound:
                    now = self.loop.time()
                    self.memory_violations[s.name] = Violation(
                        f"{s.name}: {h.what} {h.held} > bound {h.bound}",
                        node=s.name,
                        since=now - 5,
                        until=now,
                    )
                    break

    # --- the run ----------------------------------------------------------------------------------

    async def main(self) -> None:
        for slot in self.slots.values():
            self.start(slot)
        side = [self.loop.create_task(self.ticker())]
        if self.s.faults:
            side.append(self.loop.create_task(self.adversary()))
        clients = [self.loop.create_task(self.client(i)) for i in range(self.s.clients)]
        await asyncio.sleep(self.s.duration_s)
        for task in side + clients:
            task.cancel()
        await asyncio.gather(*side, *clients, return_exceptions=True)

    def run(self) -> Outcome:
        try:
            self.loop.run_until_complete(self.main())
            outcome = self.check()
        finally:
            for slot in self.slots.values():
                with contextlib.suppress(Exception):
                    self.crash(slot, power_loss=False)
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.close()
        return outcome

    # --- the properties ---------------------------------------------------------------------------

    def _supply_problems(self, name: str, node: Node, full: NodeStore) -> list[Violation]:
        """full: a store with every block (a state-synced one lacks those below its snapshot), whose
        receipts up to this node's height say what was minted and which accounts exist."""
        store = full
        receipts = (r for h in range(1, node.height + 1) for r in store.load_block_receipts(h))
        expected, accounts = expected_supply(self.genesis, receipts)
        balances: Counter[tuple[bytes, str]] = Counter()
        problems: list[str] = []
        for address in sorted(accounts):
            account = node.ledger.get_account(address)
            if account is not None:
                problems += count_balances(address, account.balances, balances)
        for inst in self.genesis.instruments:
            record = node.ledger.get_instrument(inst.id)
            problem = supply_mismatch(
                inst.id, record.supply if record is not None else -1, expected, balances
            )
            if problem is not None:
                problems.append(problem)
        return [Violation(f"{name}: {p}", node=name, height=node.height) for p in problems]

    def check(self) -> Outcome:
        found: list[Violation] = [self.memory_violations[n] for n in sorted(self.memory_violations)]
        honest = [s for s in self.slots.values() if s.honest]
        for s in honest:
            if s.failure is not None:
                found.append(Violation(f"{s.name} stopped: {s.failure!r}", node=s.name))
        up = [s for s in honest if s.node is not None]
        heights = {s.name: s.node.height for s in self.slots.values() if s.node is not None}
        stores = {s.name: s.node.store for s in up if s.node is not None}
        top = min((st.latest_height() for st in stores.values()), default=0)
        # Agreement: one block per height on every honest node.
        # (A state-synced store starts at its base height: it has no blocks below its snapshot.)
        bases = {name: st.base_height() for name, st in stores.items()}
        for h in range(1, top + 1):
            hashes = {name: st.load_block_hash(h) for name, st in stores.items() if bases[name] <= h}
            if len(set(hashes.values())) > 1:
                shown = {k: (v or b"").hex()[:12] for k, v in hashes.items()}
                found.append(Violation(f"fork at height {h}: {shown}", height=h))
                break
        # Acknowledged transactions are committed, once, everywhere.
        for name, st in stores.items():
            for tx_hash, height in self.acked.items():
                if bases[name] <= height <= st.latest_height() and st.tx_location(tx_hash) is None:
                    found.append(
                        Violation(
                            f"{name} lost acknowledged tx {tx_hash.hex()[:16]} (height {height})",
                            height=height,
                            tx=tx_hash,
                        )
                    )
                    break
            seen: dict[bytes, int] = {}
            for h in range(bases[name], st.latest_height() + 1):
                for r in st.load_block_receipts(h):
                    if r.tx_hash in seen:
                        found.append(
                            Violation(
                                f"{name}: tx {r.tx_hash.hex()[:16]} committed twice (heights {seen[r.tx_hash]}, {h})",
                                height=h,
                                tx=r.tx_hash,
                            )
                        )
                    seen[r.tx_hash] = h
        # Supply conserved per instrument: genesis balances + minted - redeemed = the instrument's
        # supply = the sum of every balance (the accounts of genesis and of every committed receipt).
        full = [st for name, st in stores.items() if bases[name] == 1]
        for s in up:
            assert s.node is not None
            if full and max(st.latest_height() for st in full) >= s.node.height:
                reference = max(full, key=lambda st: st.latest_height())
                found += self._supply_problems(s.name, s.node, reference)
        # Client money conserved: clients only pay each other.
        for s in up:
            assert s.node is not None
            total = 0
            for i in range(self.s.clients):
                account = s.node.ledger.get_account(self.accounts[f"c{i}"].address)
                if account is not None:
                    total += sum(b.amount for b in account.balances if b.instrument == self.usd)
            if total != FUNDS * self.s.clients:
                found.append(
                    Violation(
                        f"{s.name}: client USD sums to {total}, not {FUNDS * self.s.clients}",
                        node=s.name,
                        height=s.node.height,
                    )
                )
        # Equal heights, equal state.
        by_height: dict[int, set[bytes]] = {}
        for s in up:
            assert s.node is not None
            by_height.setdefault(s.node.height, set()).add(s.node.ledger.state_root)
        for h, roots in by_height.items():
            if len(roots) > 1:
                found.append(Violation(f"different state roots at height {h}", height=h))
        # Liveness: from the last fault's healing on, every honest node commits at least every
        # liveness_bound_s of simulated time (with the Byzantine validators still at work).
        end = self.loop.time()
        healed = self.last_fault_end
        for s in up:
            times = [healed, *(t for t in s.commits if t > healed), end]
            gap, since = max((b - a, a) for a, b in itertools.pairwise(times))
            if gap > self.s.liveness_bound_s:
                found.append(
                    Violation(
                        f"{s.name} went {gap:.1f} s without a commit after the last fault healed at {healed:.1f} s",
                        node=s.name,
                        since=since,
                        until=since + gap,
                    )
                )
        gaps = [
            max((b - a for a, b in itertools.pairwise(s.commits) if a >= healed), default=0.0) for s in up
        ]
        self.max_gap = max(gaps, default=0.0)
        outcome = Outcome(
            seed=self.s.seed,
            heights=heights,
            simulated_seconds=self.loop.time(),
            acknowledged=len(self.acked),
            violations=[v.text for v in found],
            trace=[e.line() for e in self.events if not e.detail][-200:],
            modes={s.name: s.mode for s in self.slots.values() if s.mode},
            max_commit_gap_s=round(self.max_gap, 3),
            peak_holdings={k: round(v, 4) for k, v in sorted(self.peak.items())},
        )
        if self.s.trace:
            outcome.full_trace = [e.line() for e in self.events]
            if found:
                outcome.focused_trace = focus(self.events, found[0])
        return outcome


def focus(events: list[Event], v: Violation) -> list[str]:
    """The events that led to a violation: for a height (a fork, a lost or doubled transaction,
    different state), every message and commit of that height and the faults while it was decided,
    and the transaction's own story; for a node over a time span (a stall, a memory bound), what
    that node sent, received and did from a second before the span to its end; for a stopped
    node, its last events. Faults and restarts are always shown. The last FOCUSED_TRACE_LINES."""
    if v.height is not None and v.node is None:
        about = [e.at for e in events if e.height == v.height]
        lo, hi = (min(about) - 1.0, max(about)) if about else (0.0, 0.0)
        chosen = [
            e for e in events
            if e.height == v.height or (v.tx and e.tx == v.tx) or (not e.detail and lo <= e.at <= hi)
        ]  # fmt: skip
    elif v.node is not None:
        lo = (v.since if v.since is not None else 0.0) - 1.0
        hi = v.until if v.until is not None else float("inf")
        chosen = [e for e in events if (v.node in e.nodes or not e.detail) and lo <= e.at <= hi]
    else:
        chosen = list(events)
    lines = [e.line() for e in chosen]
    if len(lines) > FOCUSED_TRACE_LINES:
        omitted = len(lines) - FOCUSED_TRACE_LINES
        lines = [f"({omitted} earlier events omitted)", *lines[-FOCUSED_TRACE_LINES:]]
    return [f"violation: {v.text}", *lines]


@contextlib.contextmanager
def _memoized_signatures() -> Iterator[None]:
    """Every node verifies every vote: in one process the same (key, signature, message) is checked
    by each of them. Ed25519 verification is a pure function, so the simulation remembers answers
    (bounded) instead of paying for them n times; what the nodes decide is unchanged."""
    real = crypto.verify_raw
    memo: dict[tuple[bytes, bytes, bytes], bool] = {}

    def verify_raw(public_key: bytes, signature: bytes, message: bytes) -> bool:
        key = (public_key, signature, message)
        known = memo.get(key)
        if known is None:
            if len(memo) >= 200_000:
                memo.clear()
            known = memo[key] = real(public_key, signature, message)
        return known

    crypto.verify_raw = verify_raw
    try:
        yield
    finally:
        crypto.verify_raw = real


def run_seed(settings: Settings) -> Outcome:
    logging.getLogger("clearline").setLevel(logging.CRITICAL)
    root = Path(
        tempfile.mkdtemp(
            prefix=f"simnode-{settings.seed}-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None
        )
    )
    try:
        with _memoized_signatures():
            return World(settings, root).run()
    finally:
        shutil.rmtree(root, ignore_errors=True)


__all__ = ["Outcome", "Settings", "World", "run_seed", "tx_pb2"]
