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
import functools
import hashlib
import itertools
import logging
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from clearline.v1 import ledger_api_pb2, tx_pb2
from cluster.client import builders
from cluster.netgen import build_genesis
from cluster.simnode.loop import SimClock, SimLoop
from cluster.simnode.memdb import MemDB
from cluster.simnode.mutants import MUTANTS
from cluster.simnode.net import SimNet, SimTransport
from node import crypto, txs
from node.byzantine import ByzantineBehaviour
from node.config import ConsensusConfig, MempoolConfig, NodeConfig, StorageConfig
from node.crypto import SigningKey
from node.errors import ApiError
from node.runtime import Behaviour, Node
from node.storage import WAL, NodeStore, SignStateFile
from node.storage.wal import WalReplay

# Byzantine strategies the adversary draws from (node/byzantine.py modes, run as real wrappers).
BYZANTINE_MODES = (
    "equivocate",
    "double-vote",
    "bad-state-root",
    "forged-tx",
    "silent",
    "lying-status",
    "stall-sync",
    "tamper-sync",
    "out-of-turn",
    "garbage",
)
FUNDS = 10**12
# The verified-signature cache of a simulated node (small, so a flood would overflow an unbounded one).
SIM_CACHE_BYTES = 256 * 1024
FLOOD_TXS = 2500


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
        self.trace: list[str] = []
        n, f = settings.validators, settings.byzantine
        self.names = [f"node{i}" for i in range(n)]
        self.net = SimNet(self.loop, random.Random(self.rng.random()), self.names)
        self.chain_id = f"sim-{settings.seed}"
        validator_keys = [_key(settings.seed, name) for name in self.names]
        account_names = (
            "admin",
            "compliance",
            "bank-a",
            "bank-b",
            *(f"c{i}" for i in range(settings.clients)),
        )
        self.accounts = {name: _key(settings.seed, name) for name in account_names}
        funded = {f"c{i}": [("bank-a", "USD", FUNDS)] for i in range(settings.clients)}
        genesis = build_genesis(self.chain_id, validator_keys, self.accounts, funded=funded)
        genesis.fault_testing = True
        self.genesis_text = json_format.MessageToJson(genesis)
        self.usd = builders.instrument(self.accounts["bank-a"].address, "USD")
        consensus = ConsensusConfig(timeout_commit_ms=50)
        byz = set(self.names[n - f :])
        self.slots: dict[str, _Slot] = {}
        self.mutant = MUTANTS[settings.mutant] if settings.mutant else None
        for i, name in enumerate(self.names):
            mode = self.rng.choice(BYZANTINE_MODES) if name in byz else ""
            if mode and self.mutant is not None and self.mutant.adversary:
                mode = self.mutant.adversary
            cfg = NodeConfig(
                home=workdir / name,
                chain_id=self.chain_id,
                moniker=name,
                consensus=consensus,
                mempool=MempoolConfig(cache_bytes=SIM_CACHE_BYTES),
                storage=StorageConfig(),
            )
            self.slots[name] = _Slot(name, validator_keys[i], cfg, mode)
        self.acked: dict[bytes, int] = {}  # tx hash -> height acknowledged
        self.last_fault_end = 0.0
        self.heights_at_heal: dict[str, int] = {}
        self.max_gap = 0.0
        self.memory_violations: dict[str, str] = {}  # node -> its first memory violation

    def log(self, text: str) -> None:
        self.trace.append(f"{self.loop.time():9.3f} {text}")

    # --- nodes ------------------------------------------------------------------------------------

    def start(self, slot: _Slot) -> None:
        behaviour: Behaviour | None = ByzantineBehaviour(slot.mode) if slot.mode else None
        clock = SimClock(self.loop, skew=slot.skew)
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
        self.log(f"{slot.name} up at height {node.height}{' (' + slot.mode + ')' if slot.mode else ''}")

    def _committed(self, slot: _Slot, _committed: object) -> None:
        slot.commits.append(self.loop.time())

    def _ended(self, slot: _Slot, task: asyncio.Task[None]) -> None:
        if task.cancelled() or slot.failure is not None:
            return
        exc = task.exception()
        slot.failure = exc if exc is not None else RuntimeError(f"task {task.get_name()} returned")
        self.log(f"{slot.name} FAILED: {slot.failure!r}")
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
            self.log(f"{slot.name} crashed{' (power loss)' if power_loss else ''} at height {node.height}")

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
            try:
                (result,) = await node.service.submit([raw], ledger_api_pb2.WAIT_FOR_COMMITTED, 5.0)
            except ApiError:
                continue  # not committed in time, or the node refused for now: the same tx again
            if result.accepted and result.height:
                self.acked[result.tx_hash] = result.height
                nonce += 1
                raw = None
            elif not result.accepted:
                self.log(f"c{index} nonce {nonce} refused for now: {result.message}")

    # --- faults -----------------------------------------------------------------------------------

    async def adversary(self) -> None:
        """A seeded schedule of faults on honest nodes and links, each healed before the next."""
        honest = [s for s in self.slots.values() if s.honest]
        end = self.s.duration_s - self.s.liveness_bound_s - 5
        await asyncio.sleep(2.0)
        while self.loop.time() < end:
            kind = self.rng.choice(("crash", "power", "partition", "links", "skew", "one-way", "flood"))
            hold = self.rng.uniform(0.5, 5.0)
            victim = self.rng.choice(honest)
            if kind in ("crash", "power"):
                self.crash(victim, power_loss=kind == "power")
                await asyncio.sleep(hold)
                if victim.failure is None:
                    self.start(victim)
            elif kind == "partition":
                self.log(f"partition {victim.name} from the rest for {hold:.1f} s")
                self.net.partition([victim.name], [n for n in self.names if n != victim.name])
                await asyncio.sleep(hold)
                self.net.heal()
            elif kind == "one-way":
                other = self.rng.choice([n for n in self.names if n != victim.name])
                self.log(f"one-way cut {victim.name} -> {other} for {hold:.1f} s")
                self.net.cut_one_way(victim.name, other)
                await asyncio.sleep(hold)
                self.net.heal()
            elif kind == "links":
                self.net.links.loss = self.rng.uniform(0, 0.2)
                self.net.links.duplicate = self.rng.uniform(0, 0.1)
                self.net.links.jitter_ms = self.rng.uniform(0, 200)
                self.log(
                    f"links: loss {self.net.links.loss:.2f} dup {self.net.links.duplicate:.2f} jitter {self.net.links.jitter_ms:.0f} ms for {hold:.1f} s"
                )
                await asyncio.sleep(hold)
                self.net.heal()
            elif kind == "flood":
                await self.flood(victim)
            else:
                victim.skew = self.rng.uniform(-2.0, 2.0)
                self.log(f"{victim.name} clock skew {victim.skew:+.2f} s (from its next restart)")
            self.last_fault_end = self.loop.time()
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        self.heights_at_heal = {s.name: s.node.height for s in honest if s.node is not None}
        self.log(f"last fault healed; heights {self.heights_at_heal}")

    async def flood(self, victim: _Slot) -> None:
        """A client floods a node with validly signed transactions from accounts that do not exist
        (each costs a signature check, and is refused)."""
        node = victim.node
        if node is None:
            return
        key = _key(self.s.seed, f"flood-{self.loop.time()}")
        raws = [
            txs.sign_tx(
                builders.make_body(
                    self.chain_id, key.address, i, f"f{i}", builders.transfer(self.usd, key.address[::-1], 1)
                ),
                [key],
            )
            for i in range(FLOOD_TXS)
        ]
        self.log(f"flood of {len(raws)} throwaway transactions at {victim.name}")
        for i in range(0, len(raws), 250):
            with contextlib.suppress(ApiError):
                await node.service.submit(raws[i : i + 250], ledger_api_pb2.WAIT_FOR_NONE, None)
            await asyncio.sleep(0.01)

    async def ticker(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.net.refresh()  # bans expire
            self.check_memory()

    def check_memory(self) -> None:
        """What a flood can fill is bounded: the verified cache and the mempool within their limits."""
        for s in self.slots.values():
            node = s.node
            if node is None or not s.honest:
                continue
            cfg = node.cfg.mempool
            cache = node.mempool.cache_bytes
            if cache > cfg.cache_bytes:
                self.memory_violations.setdefault(
                    s.name, f"{s.name}: verified cache {cache} bytes > {cfg.cache_bytes}"
                )
            if node.mempool.size_bytes > cfg.max_bytes:
                self.memory_violations.setdefault(
                    s.name, f"{s.name}: mempool {node.mempool.size_bytes} bytes > {cfg.max_bytes}"
                )

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

    def check(self) -> Outcome:
        violations: list[str] = sorted(self.memory_violations.values())
        honest = [s for s in self.slots.values() if s.honest]
        for s in honest:
            if s.failure is not None:
                violations.append(f"{s.name} stopped: {s.failure!r}")
        up = [s for s in honest if s.node is not None]
        heights = {s.name: s.node.height for s in self.slots.values() if s.node is not None}
        stores = {s.name: s.node.store for s in up if s.node is not None}
        top = min((st.latest_height() for st in stores.values()), default=0)
        # Agreement: one block per height on every honest node.
        for h in range(1, top + 1):
            hashes = {name: st.load_block_hash(h) for name, st in stores.items()}
            if len(set(hashes.values())) != 1:
                violations.append(
                    f"fork at height {h}: { ({k: (v or b'').hex()[:12] for k, v in hashes.items()}) }"
                )
                break
        # Acknowledged transactions are committed, once, everywhere.
        for name, st in stores.items():
            for tx_hash, height in self.acked.items():
                if st.latest_height() >= height and st.tx_location(tx_hash) is None:
                    violations.append(f"{name} lost acknowledged tx {tx_hash.hex()[:16]} (height {height})")
                    break
            seen: set[bytes] = set()
            for h in range(1, st.latest_height() + 1):
                for r in st.load_block_receipts(h):
                    if r.tx_hash in seen:
                        violations.append(f"{name}: tx {r.tx_hash.hex()[:16]} committed twice")
                    seen.add(r.tx_hash)
        # Supply conserved: clients only pay each other.
        for s in up:
            assert s.node is not None
            total = 0
            for i in range(self.s.clients):
                account = s.node.ledger.get_account(self.accounts[f"c{i}"].address)
                if account is not None:
                    total += sum(b.amount for b in account.balances if b.instrument == self.usd)
            if total != FUNDS * self.s.clients:
                violations.append(f"{s.name}: client USD sums to {total}, not {FUNDS * self.s.clients}")
        # Equal heights, equal state.
        by_height: dict[int, set[bytes]] = {}
        for s in up:
            assert s.node is not None
            by_height.setdefault(s.node.height, set()).add(s.node.ledger.state_root)
        for h, roots in by_height.items():
            if len(roots) > 1:
                violations.append(f"different state roots at height {h}")
        # Liveness: from the last fault's healing on, every honest node commits at least every
        # liveness_bound_s of simulated time (with the Byzantine validators still at work).
        end = self.loop.time()
        healed = self.last_fault_end
        for s in up:
            times = [healed, *(t for t in s.commits if t > healed), end]
            gap = max(b - a for a, b in itertools.pairwise(times))
            if gap > self.s.liveness_bound_s:
                violations.append(
                    f"{s.name} went {gap:.1f} s without a commit after the last fault healed at {healed:.1f} s"
                )
        gaps = [
            max((b - a for a, b in itertools.pairwise(s.commits) if a >= healed), default=0.0) for s in up
        ]
        self.max_gap = max(gaps, default=0.0)
        return Outcome(
            seed=self.s.seed,
            heights=heights,
            simulated_seconds=self.loop.time(),
            acknowledged=len(self.acked),
            violations=violations,
            trace=self.trace[-200:],
            modes={s.name: s.mode for s in self.slots.values() if s.mode},
            max_commit_gap_s=round(self.max_gap, 3),
        )


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
