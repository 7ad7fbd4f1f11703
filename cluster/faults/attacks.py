"""Client attacks against a running network's client API, and the RSS probe that measures them.

Anyone who can reach a node's client API can send it transactions; these floods are what a hostile
client sends (the Byzantine-hardening issue), used by tests/faults/test_attacks.py and by
`clearline chaos` (fault kind `flood`):

    throwaway_flood   transfers signed by fresh Ed25519 keys, each with a large memo: the signatures
                      verify, the sender does not exist (UNKNOWN_ACCOUNT)
    gap_flood         several clients, each a known account sending transactions whose nonces are
                      ahead of its next one (a gap that is never filled), with large memos
    oversized_flood   transactions above the node's [mempool] max_tx_bytes (TOO_LARGE), sent alone
                      and packed into SubmitTxs batches just under the API's request limit, plus
                      batches just over it (refused by gRPC itself: RESOURCE_EXHAUSTED)

Every flood is bounded in count (MAX_COUNT) and in time (max_seconds, at most MAX_SECONDS; a call in
flight when time is up ends within CALL_TIMEOUT_S), talks only to nodes on the loopback interface,
and returns a FloodSummary: transactions sent, accepted, rejected by reason code, failed calls, time.

`rss_bytes(pid)` reads a process's resident set size from /proc; `RssSampler` records every node's
RSS in a background thread. By hand, against a network started with `clearline up`:

    python -m cluster.faults.attacks --home ./net --attack throwaway --count 2500

prints one JSON object: the flood's summary and, per node, its RSS before, at peak and after the
flood next to its memory budget (node/budget.py).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import grpc
import grpc.aio

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc, tx_pb2
from cluster.client import Client, ClientError, builders
from cluster.client.errors import reason_of
from cluster.client.values import status_reason
from cluster.netgen import Network, NodeInfo
from node import crypto, txs
from node.budget import memory_budget_bytes
from node.config import ConfigError, load_config
from node.crypto import SigningKey

MIB = 1 << 20
ATTACKS = ("throwaway", "gap", "oversized")
DEFAULT_MEMO_BYTES = 60_000
MAX_COUNT = 20_000  # transactions per flood
MAX_SECONDS = 300.0  # per flood
CALL_TIMEOUT_S = 15.0  # one SubmitTx(s) call
# A SubmitTxs message carries each transaction as a length-delimited field: tag + length varint.
FIELD_OVERHEAD = 6
# How far below (above) the API's message limit a "near the limit" ("over the limit") batch ends.
LIMIT_MARGIN = 8 * 1024
_LOOPBACK_NAMES = {"localhost"}
# The attacker's own limits are far above the node's: the node's limits are what is being tested.
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 256 * MIB),
    ("grpc.max_receive_message_length", 256 * MIB),
]


class AttackError(Exception):
    """An attack cannot run as asked (a target off this machine, bounds exceeded, unknown node);
    nothing was sent."""


@dataclass
class FloodSummary:
    """What one flood sent and what the node answered.

    rejected counts transactions by reason code: the TxStatus name of a batch entry, the node's
    `clearline-reason` of a failed call, else the gRPC status name (all the transactions of a failed
    batch call carry its reason; NO_RESULT: a batch answered without a result for them). call_errors
    counts failed calls by the same reason.
    """

    attack: str
    target: str
    clients: int
    sent: int = 0
    bytes_sent: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    call_errors: dict[str, int] = field(default_factory=dict)
    largest_answered_bytes: int = 0  # the largest request the node read and answered
    duration_s: float = 0.0
    stopped_by: str = "count"  # "count": everything was sent; "time": max_seconds ran out

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "target": self.target,
            "clients": self.clients,
            "sent": self.sent,
            "bytes_sent": self.bytes_sent,
            "accepted": self.accepted,
            "rejected": dict(sorted(self.rejected.items())),
            "calls": self.calls,
            "call_errors": dict(sorted(self.call_errors.items())),
            "largest_answered_bytes": self.largest_answered_bytes,
            "duration_s": self.duration_s,
            "stopped_by": self.stopped_by,
        }


# --- transactions ---------------------------------------------------------------------------------


def make_memo(nbytes: int) -> str:
    """nbytes of random printable text (hex), so no two memos are alike."""
    return os.urandom((nbytes + 1) // 2).hex()[:nbytes]


def throwaway_tx(chain_id: str, memo_bytes: int) -> bytes:
    """A transfer signed by a fresh key whose account does not exist, carrying a memo_bytes memo."""
    key = SigningKey.generate()
    body = tx_pb2.TxBody(
        chain_id=chain_id,
        signer=key.address,
        nonce=0,
        client_ref=uuid.uuid4().hex,
        memo=make_memo(memo_bytes),
    )
    body.transfer.instrument.issuer = os.urandom(crypto.ADDRESS_LEN)
    body.transfer.instrument.symbol = "USD"
    body.transfer.to = os.urandom(crypto.ADDRESS_LEN)
    body.transfer.amount = 1
    return txs.sign_tx(body, [key])


def oversized_tx(chain_id: str, max_tx_bytes: int, excess_bytes: int) -> bytes:
    """A throwaway transfer whose envelope is about max_tx_bytes + excess_bytes (> max_tx_bytes)."""
    base = len(throwaway_tx(chain_id, 0))
    raw = throwaway_tx(chain_id, max_tx_bytes + excess_bytes - base)
    assert len(raw) > max_tx_bytes
    return raw


def gap_tx(
    chain_id: str,
    key: SigningKey,
    nonce: int,
    instrument: tx_pb2.InstrumentId,
    to: bytes,
    memo_bytes: int,
) -> bytes:
    """key's transfer of 1 unit at nonce (ahead of its next one), with a memo_bytes memo."""
    body = tx_pb2.TxBody(
        chain_id=chain_id,
        signer=key.address,
        nonce=nonce,
        client_ref=f"gap-{uuid.uuid4().hex}",
        memo=make_memo(memo_bytes),
    )
    body.transfer.CopyFrom(builders.transfer(instrument, to, 1))
    return txs.sign_tx(body, [key])


def batch_bytes(raws: Sequence[bytes]) -> int:
    """About the size of a SubmitTxs request carrying raws."""
    return sum(len(r) + FIELD_OVERHEAD for r in raws) + 2


# --- the flood engine -----------------------------------------------------------------------------

# A client's batches, built lazily (in a worker thread: signing releases the GIL). A batch of one
# goes out as SubmitTx, larger ones as SubmitTxs.
Batches = Iterator[list[bytes]]


def _check_bounds(count: int, max_seconds: float) -> None:
    if not 0 < count <= MAX_COUNT:
        raise AttackError(f"count must be 1..{MAX_COUNT}, got {count}")
    if not 0 < max_seconds <= MAX_SECONDS:
        raise AttackError(f"max_seconds must be in (0, {MAX_SECONDS:.0f}], got {max_seconds}")


def target_node(network: Network, name: str) -> NodeInfo:
    """The named node, if its client API is on this machine's loopback interface."""
    try:
        node = network.node(name)
    except KeyError as exc:
        raise AttackError(str(exc)) from None
    host = node.host.strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in _LOOPBACK_NAMES
    if not loopback:
        raise AttackError(f"{node.name} listens on {node.host}: attacks only target 127.0.0.1")
    return node


async def _send(
    stub: ledger_api_pb2_grpc.LedgerStub, batch: list[bytes], summary: FloodSummary, timeout_s: float
) -> None:
    summary.calls += 1
    summary.sent += len(batch)
    summary.bytes_sent += sum(len(r) for r in batch)
    wait = ledger_api_pb2.WAIT_FOR_NONE
    request: ledger_api_pb2.SubmitTxRequest | ledger_api_pb2.SubmitTxsRequest
    try:
        if len(batch) == 1:
            request = ledger_api_pb2.SubmitTxRequest(tx=batch[0], wait=wait)
            await stub.SubmitTx(request, timeout=timeout_s)
            summary.accepted += 1
            summary.largest_answered_bytes = max(summary.largest_answered_bytes, request.ByteSize())
            return
        request = ledger_api_pb2.SubmitTxsRequest(txs=batch, wait=wait)
        resp = await stub.SubmitTxs(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        node_reason = reason_of(exc)  # set: the node read the request and refused it
        reason = node_reason or exc.code().name
        summary.call_errors[reason] = summary.call_errors.get(reason, 0) + 1
        summary.rejected[reason] = summary.rejected.get(reason, 0) + len(batch)
        if node_reason is not None:
            summary.largest_answered_bytes = max(summary.largest_answered_bytes, request.ByteSize())
        return
    summary.largest_answered_bytes = max(summary.largest_answered_bytes, request.ByteSize())
    for result in resp.results:
        if result.accepted:
            summary.accepted += 1
        else:
            reason = status_reason(result.status)
            summary.rejected[reason] = summary.rejected.get(reason, 0) + 1
    missing = len(batch) - len(resp.results)
    if missing > 0:  # the node answered for fewer transactions than it was sent
        summary.rejected["NO_RESULT"] = summary.rejected.get("NO_RESULT", 0) + missing


# The attacker: a client of the network with an account of its own (since the client API requires an
# identity, a stranger cannot submit at all; tests/cluster/test_access.py shows that): chaos
# networks' first hostile client, else a demo client.
ATTACKERS: Final = ("mallory0", "alice")


def attacker(network: Network) -> str:
    """The account name the floods call as."""
    for name in ATTACKERS:
        if name in network.accounts:
            return name
    raise AttackError(f"the network has none of the accounts {', '.join(ATTACKERS)} to attack as")


async def _flood(
    summary: FloodSummary, network: Network, target: str, clients: Sequence[Batches], max_seconds: float
) -> FloodSummary:
    """Run every client's batches against target, each client on its own channel, until they are
    all sent or max_seconds have passed."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + max_seconds
    timed_out = False
    identity = attacker(network)

    async def run_client(batches: Batches) -> None:
        nonlocal timed_out
        async with network.aio_channel(target, identity, options=_CHANNEL_OPTIONS) as channel:
            stub = ledger_api_pb2_grpc.LedgerStub(channel)
            while True:
                batch = await asyncio.to_thread(next, batches, None)
                if batch is None:
                    return
                left = deadline - loop.time()
                if left <= 0:
                    timed_out = True
                    return
                await _send(stub, batch, summary, min(CALL_TIMEOUT_S, max(left, 1.0)))

    await asyncio.gather(*(run_client(b) for b in clients))
    summary.duration_s = round(loop.time() - started, 2)
    summary.stopped_by = "time" if timed_out else "count"
    return summary


def _chunks(total: int, parts: int) -> list[int]:
    """total split into parts shares that differ by at most one (no empty share)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _batches(make: Callable[[], bytes], count: int, batch: int) -> Batches:
    left = count
    while left > 0:
        n = min(batch, left)
        left -= n
        yield [make() for _ in range(n)]


# --- the attacks ----------------------------------------------------------------------------------


def throwaway_flood(
    network: Network,
    node: str = "node0",
    *,
    count: int = 2500,
    memo_bytes: int = DEFAULT_MEMO_BYTES,
    clients: int = 4,
    batch: int = 16,
    max_seconds: float = 60.0,
) -> FloodSummary:
    """count transfers from fresh keys (unknown senders, each tx signed and about memo_bytes
    large), from `clients` concurrent connections in SubmitTxs batches of `batch` (1: SubmitTx)."""
    _check_bounds(count, max_seconds)
    info = target_node(network, node)
    chain_id = network.chain_id
    streams = [
        _batches(lambda: throwaway_tx(chain_id, memo_bytes), share, max(1, batch))
        for share in _chunks(count, clients)
    ]
    summary = FloodSummary("throwaway", info.name, clients=len(streams))
    return asyncio.run(_flood(summary, network, info.api_target, streams, max_seconds))


@dataclass(frozen=True, slots=True)
class GapSender:
    """A gap flood's client: its key, its next nonce as the node reported it, what it transfers."""

    key: SigningKey
    next_nonce: int
    instrument: tx_pb2.InstrumentId
    to: bytes


async def _gap_senders(
    network: Network, target: str, keys: Sequence[SigningKey], fallback: tx_pb2.InstrumentId
) -> list[GapSender]:
    senders = []
    options = network.client_options(None)
    async with await Client.connect(
        target,
        chain_id=network.chain_id,
        timeout_s=CALL_TIMEOUT_S,
        **options,
    ) as client:
        for i, key in enumerate(keys):
            try:
                account = (await client.get_account(key.address, as_=key)).account
            except ClientError as exc:
                if exc.reason not in ("UNKNOWN_ACCOUNT", "AUTH_UNKNOWN_IDENTITY"):
                    raise
                account = None
            funded = [b for b in account.balances if b.amount > 0] if account is not None else []
            instrument = funded[0].instrument if funded else fallback
            to = keys[(i + 1) % len(keys)].address
            senders.append(GapSender(key, account.nonce if account is not None else 0, _copy(instrument), to))
    return senders


def gap_flood(
    network: Network,
    node: str,
    senders: Sequence[SigningKey],
    *,
    per_sender: int = 1022,
    gap: int = 1,
    memo_bytes: int = DEFAULT_MEMO_BYTES,
    batch: int = 16,
    max_seconds: float = 60.0,
) -> FloodSummary:
    """Each sender (one client each) sends per_sender transfers of 1 unit (of an instrument it
    holds) with nonces next+gap, next+gap+1, ...: the nonces next..next+gap-1 never come, so none of
    them can ever commit. Senders that exist and hold funds pass the ledger's dry run."""
    if not senders:
        raise AttackError("a gap flood needs at least one sender")
    if gap < 1:
        raise AttackError(f"gap must be at least 1 (a nonce ahead of the next one), got {gap}")
    _check_bounds(per_sender * len(senders), max_seconds)
    info = target_node(network, node)
    chain_id = network.chain_id
    fallback = tx_pb2.InstrumentId(issuer=os.urandom(crypto.ADDRESS_LEN), symbol="USD")
    parties = asyncio.run(_gap_senders(network, info.api_target, senders, fallback))

    def stream(s: GapSender) -> Batches:
        nonces = iter(range(s.next_nonce + gap, s.next_nonce + gap + per_sender))
        yield from _batches(
            lambda: gap_tx(chain_id, s.key, next(nonces), s.instrument, s.to, memo_bytes),
            per_sender,
            max(1, batch),
        )

    summary = FloodSummary("gap", info.name, clients=len(parties))
    return asyncio.run(_flood(summary, network, info.api_target, [stream(s) for s in parties], max_seconds))


def oversized_flood(
    network: Network,
    node: str = "node0",
    *,
    count: int = 200,
    excess_bytes: int = 1024,
    over_limit_batches: int = 1,
    max_seconds: float = 60.0,
    max_tx_bytes: int | None = None,
    request_limit: int | None = None,
) -> FloodSummary:
    """count transactions excess_bytes above the node's max_tx_bytes: a third sent one by one
    (SubmitTx), the rest packed into SubmitTxs batches just under the API's request limit; then
    over_limit_batches batches just over that limit. Two clients. The limits are read from the
    node's config.toml ([mempool] max_tx_bytes, [api] max_request_bytes) unless given."""
    _check_bounds(count, max_seconds)
    info = target_node(network, node)
    if max_tx_bytes is None or request_limit is None:
        cfg = load_config(info.home)
        max_tx_bytes = cfg.mempool.max_tx_bytes if max_tx_bytes is None else max_tx_bytes
        request_limit = cfg.api.max_request_bytes if request_limit is None else request_limit
    chain_id = network.chain_id
    max_tx, api_limit = max_tx_bytes, request_limit

    def make() -> bytes:
        return oversized_tx(chain_id, max_tx, excess_bytes)

    tx_size = len(make()) + FIELD_OVERHEAD
    near = max(1, (api_limit - LIMIT_MARGIN) // tx_size)
    over = (api_limit + LIMIT_MARGIN) // tx_size + 1
    singles = max(1, count // 3) if count > 1 else count

    def packed() -> Batches:
        yield from _batches(make, count - singles, near)
        for _ in range(over_limit_batches):
            yield [make() for _ in range(over)]

    summary = FloodSummary("oversized", info.name, clients=2)
    streams = [_batches(make, singles, 1), packed()]
    return asyncio.run(_flood(summary, network, info.api_target, streams, max_seconds))


def _copy(inst: tx_pb2.InstrumentId) -> tx_pb2.InstrumentId:
    out = tx_pb2.InstrumentId()
    out.CopyFrom(inst)
    return out


# --- memory --------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """The resident set size of process pid (VmRSS in /proc/<pid>/status), or None if it is gone
    (or a zombie, which has no VmRSS line)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", line
            return int(value) * 1024
    return None


@dataclass(frozen=True, slots=True)
class RssSample:
    node: str
    at_s: float  # time.time()
    rss: int


class RssSampler:
    """Samples the RSS of every node every interval_s in a daemon thread, from start() to stop().

    pid_of(name) gives a node's pid (None while it is not running: no sample). Keeps each node's
    peak (and when it was seen) and the last value; samples are not kept beyond that."""

    def __init__(
        self, names: Sequence[str], pid_of: Callable[[str], int | None], interval_s: float = 1.0
    ) -> None:
        self.names = tuple(names)
        self.pid_of = pid_of
        self.interval_s = interval_s
        self.peak: dict[str, RssSample] = {}
        self.last: dict[str, RssSample] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._lock = threading.Lock()

    def sample(self) -> dict[str, int]:
        """Sample every running node now; returns {node: rss bytes}."""
        now = time.time()
        seen: dict[str, int] = {}
        for name in self.names:
            pid = self.pid_of(name)
            rss = rss_bytes(pid) if pid is not None else None
            if rss is None:
                continue
            seen[name] = rss
            sample = RssSample(name, now, rss)
            with self._lock:
                self.last[name] = sample
                if name not in self.peak or rss > self.peak[name].rss:
                    self.peak[name] = sample
        with self._lock:
            self.samples += 1
        return seen

    def peak_bytes(self) -> dict[str, int]:
        with self._lock:
            return {name: s.rss for name, s in self.peak.items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def node_budgets(network: Network) -> dict[str, int]:
    """Each node's memory budget in bytes (node/budget.py, from its config.toml)."""
    return {n.name: memory_budget_bytes(load_config(n.home)) for n in network.nodes}


# --- the command ----------------------------------------------------------------------------------


def run_attack(
    network: Network,
    attack: str,
    node: str,
    *,
    count: int,
    max_seconds: float,
    senders: Sequence[SigningKey] = (),
    memo_bytes: int = DEFAULT_MEMO_BYTES,
    clients: int = 4,
    batch: int = 16,
    limits: dict[str, int] | None = None,
) -> FloodSummary:
    """One attack by name (ATTACKS); for "gap", count is split over the senders; limits are
    oversized_flood's max_tx_bytes and request_limit (default: from the node's config)."""
    if attack == "throwaway":
        return throwaway_flood(
            network, node, count=count, memo_bytes=memo_bytes, clients=clients, batch=batch,
            max_seconds=max_seconds,
        )  # fmt: skip
    if attack == "gap":
        per_sender = max(1, count // max(1, len(senders)))
        return gap_flood(
            network, node, senders, per_sender=per_sender, memo_bytes=memo_bytes, batch=batch,
            max_seconds=max_seconds,
        )  # fmt: skip
    if attack == "oversized":
        return oversized_flood(network, node, count=count, max_seconds=max_seconds, **(limits or {}))
    raise AttackError(f"unknown attack {attack!r} (attacks: {', '.join(ATTACKS)})")


def load_senders(network: Network, names: Sequence[str]) -> list[SigningKey]:
    keys = []
    for name in names:
        if name not in network.accounts:
            raise AttackError(
                f"no account {name!r} in {network.home} (accounts: {', '.join(network.accounts)})"
            )
        keys.append(crypto.load_key_file(Path(network.accounts[name])))
    return keys


def _mib(value: int | None) -> float | None:
    return None if value is None else round(value / MIB, 1)


def main(argv: list[str] | None = None) -> int:
    from cluster.launcher import Launcher, node_height

    p = argparse.ArgumentParser(prog="python -m cluster.faults.attacks", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", default=os.environ.get("CLEARLINE_HOME", "./net"))
    p.add_argument("--attack", choices=ATTACKS, required=True)
    p.add_argument("--node", default="node0", help="the node whose client API is flooded")
    p.add_argument("--count", type=int, default=2500, help="transactions (gap: over all senders)")
    p.add_argument("--seconds", type=float, default=60.0, help="time bound of the flood")
    p.add_argument("--memo-bytes", type=int, default=DEFAULT_MEMO_BYTES)
    p.add_argument("--clients", type=int, default=4, help="concurrent connections (throwaway)")
    p.add_argument("--batch", type=int, default=16, help="transactions per SubmitTxs call (1: SubmitTx)")
    p.add_argument("--senders", default="alice,bob,carol", help="gap: accounts (names in the network)")
    p.add_argument("--max-tx-bytes", type=int, help="oversized: the node's limit (default: its config)")
    p.add_argument(
        "--request-limit", type=int, help="oversized: the API's request limit (default: its config)"
    )
    p.add_argument(
        "--settle", type=float, default=2.0, help="seconds after the flood before RSS is read again"
    )
    args = p.parse_args(argv)
    try:
        network = Network.load(args.home)
        launcher = Launcher(network)
        senders = (
            load_senders(network, [s for s in args.senders.split(",") if s]) if args.attack == "gap" else []
        )
        limits = {
            k: v for k, v in (("max_tx_bytes", args.max_tx_bytes), ("request_limit", args.request_limit))
            if v is not None
        }  # fmt: skip
        names = [n.name for n in network.nodes]
        budgets: dict[str, int | None] = {}
        for node in network.nodes:
            try:
                budgets[node.name] = memory_budget_bytes(load_config(node.home))
            except ConfigError as exc:  # a config this code cannot read: report RSS without a budget
                print(f"no memory budget for {node.name}: {exc}", file=sys.stderr)
                budgets[node.name] = None
        sampler = RssSampler(names, launcher.pid, interval_s=0.5)
        before = sampler.sample()
        if not before:
            raise AttackError(f"no node of {network.home} is running (clearline up --home {args.home})")
        heights_before = {n.name: node_height(n.api_target, tls=network.client_tls()) for n in network.nodes}
        with sampler:
            summary = run_attack(
                network, args.attack, args.node, count=args.count, max_seconds=args.seconds, senders=senders,
                memo_bytes=args.memo_bytes, clients=args.clients, batch=args.batch, limits=limits,
            )  # fmt: skip
            right_after = sampler.sample()
            time.sleep(args.settle)  # a fixed pause by design: RSS once the node has settled
        after = sampler.sample()
    except (AttackError, FileNotFoundError, ClientError, ConfigError) as exc:
        print(f"attack failed: {exc}", file=sys.stderr)
        return 2
    peaks = sampler.peak_bytes()
    out = summary.as_dict()
    out["nodes"] = {
        name: {
            "pid": launcher.pid(name),
            "rss_before_mib": _mib(before.get(name)),
            "rss_right_after_mib": _mib(right_after.get(name)),
            "rss_after_mib": _mib(after.get(name)),
            "rss_peak_mib": _mib(peaks.get(name)),
            "budget_mib": _mib(budgets[name]),
            "height_before": heights_before[name],
            "height_after": node_height(network.node(name).api_target, tls=network.client_tls()),
        }
        for name in names
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
