"""The mempool: admission, deduplication, per-sender ordering, gossip batches and reaping.

Admission of a batch: decode and size-check each transaction, verify the signatures of the new ones
in a thread pool (libsodium releases the GIL; a verified tx hash is cached so nothing is verified
twice), check the nonce and client reference against committed state and what is already pending,
then run the ledger's dry-run. Accepted transactions are queued for gossip to peers in batches.

Per sender, pending transactions are kept by nonce; a proposer reaps them in arrival order, taking
a sender's transaction only when all its lower nonces are taken. After each commit the committed
transactions are removed and the senders they touched are re-checked, so the mempool never proposes
stale transactions.

Gap transactions (a nonce ahead of the sender's next one with the nonces between missing) are
*parked*: kept so a client may send its nonces out of order, but never gossiped, never proposed,
and never a reason to produce a block (pacing asks `has_ready`). A sender may park at most
`max_gap_per_sender` of them and each waits at most `gap_max_age_s`. Gap transactions are not
gossiped because they are useless to every proposer until the gap fills, and when it does the node
that receives the missing nonce gossips it together with the ones it unparks; a gossiped gap
transaction would cost every validator a signature check and memory for nothing (the flood the
hardening issue measured).

Limits: total count and bytes, count per sender, parked per sender; when full, admission fails with
`MempoolFull` (the API maps it to RESOURCE_EXHAUSTED with a reason). A rejected transaction leaves
only a count behind. The verified-signature cache is bounded in count and bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from clearline.v1 import receipt_pb2, tx_pb2
from node import crypto, txs
from node.config import MempoolConfig
from node.errors import BadInput
from node.txs import DecodedTx, TxRejected, VerifiedTx

log = logging.getLogger("clearline.mempool")

# How far ahead of a sender's committed nonce a transaction may be admitted.
NONCE_WINDOW = 1024
# Batches at least this large are verified in the thread pool, off the event loop (libsodium releases
# the GIL, so the pool also uses the second core); tiny batches are cheaper to verify inline.
VERIFY_OFFLOAD_MIN = 4
# Offloaded batches are split over the pool's threads in chunks of at least this many signatures:
# every chunk is one more hand-off and wake-up of the event loop (about 2 ms of work per chunk).
VERIFY_CHUNK_MIN = 32

CheckFn = Callable[[VerifiedTx, int], receipt_pb2.Receipt]
ReadAheadFn = Callable[[list[tx_pb2.TxBody]], Any]  # runs in the pool: reads state for these
AbsorbFn = Callable[[Any], object]  # runs on the loop: keeps what ReadAheadFn read
NonceFn = Callable[[bytes], int]
RefSeenFn = Callable[[bytes, str], bool]


class MempoolFull(BadInput):
    """The mempool (or one sender's share of it) is full; retry later."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Admitted:
    """The outcome of admitting one transaction."""

    tx_hash: bytes
    accepted: bool
    status: int = receipt_pb2.TX_STATUS_OK
    message: str = ""
    receipt: receipt_pb2.Receipt | None = None
    duplicate: bool = False  # already pending (accepted before)

    @property
    def reason(self) -> str:
        return receipt_pb2.TxStatus.Name(receipt_pb2.TxStatus.ValueType(self.status)).removeprefix(
            "TX_STATUS_"
        )


@dataclass(slots=True)
class _Entry:
    tx: VerifiedTx
    sender: bytes
    nonce: int
    ref: str  # client reference ("" for none), kept here: reading it from the body copies it


class _LRU:
    """A bounded map of envelope hash -> transaction whose signatures verified, by count and by raw
    bytes: a flood of large transactions evicts old entries instead of growing the node."""

    __slots__ = ("_bytes", "_data", "_max", "_max_bytes")

    def __init__(self, max_size: int, max_bytes: int) -> None:
        self._data: OrderedDict[bytes, VerifiedTx] = OrderedDict()
        self._max = max_size
        self._max_bytes = max_bytes
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, key: bytes) -> VerifiedTx | None:
        return self._data.get(key)

    def put(self, key: bytes, value: VerifiedTx) -> None:
        if key in self._data:
            return
        self._data[key] = value
        self._bytes += len(value.raw)
        while len(self._data) > self._max or self._bytes > self._max_bytes:
            _, old = self._data.popitem(last=False)
            self._bytes -= len(old.raw)

    def discard(self, key: bytes) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self._bytes -= len(old.raw)


class Mempool:
    def __init__(
        self,
        config: MempoolConfig,
        chain_id: str,
        *,
        check: CheckFn,
        committed_nonce: NonceFn,
        ref_committed: RefSeenFn,
        executor: Executor | None,
        read_ahead: tuple[ReadAheadFn, AbsorbFn] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = config
        self._chain_id = chain_id
        self._check = check
        self._committed_nonce = committed_nonce
        self._ref_committed = ref_committed
        self._executor = executor
        self._read_ahead = read_ahead
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()  # tx id -> entry, arrival order
        self._by_wire: dict[bytes, VerifiedTx] = {}  # envelope hash -> pending transaction
        self._by_sender: dict[bytes, dict[int, bytes]] = {}  # sender -> nonce -> tx id
        self._refs: dict[tuple[bytes, str], bytes] = {}  # (sender, client_ref) -> tx id
        self._bytes = 0
        # Gap transactions (a lower nonce of the sender is neither committed nor pending): tx id ->
        # when parked, oldest first; how many each sender has parked.
        self._parked: OrderedDict[bytes, float] = OrderedDict()
        self._parked_per_sender: dict[bytes, int] = {}
        # Senders whose next nonce is pending: the mempool has something a proposer can take.
        self._ready_senders: set[bytes] = set()
        self._verified = _LRU(config.cache_size, config.cache_bytes)
        # envelope hash -> the future of the batch verifying it right now, whose result maps
        # envelope hash -> outcome
        self._verifying: dict[bytes, asyncio.Future[dict[bytes, VerifiedTx | TxRejected]]] = {}
        self._gossip: list[bytes] = []
        self.rejections: dict[str, int] = {}
        self.expired_gaps = 0
        self.on_verified: Callable[[int, float], None] | None = None  # (signatures, seconds), for metrics
        self.new_tx_event = asyncio.Event()  # consumed by the gossip loop
        self.tx_arrived = asyncio.Event()  # an executable tx arrived (consumed by empty-block pacing)

    # --- introspection ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def parked(self) -> int:
        """Pending transactions waiting for a lower nonce (not gossiped, not proposable)."""
        return len(self._parked)

    @property
    def cache_len(self) -> int:
        return len(self._verified)

    @property
    def cache_bytes(self) -> int:
        return self._verified.size_bytes

    def has_ready(self) -> bool:
        """True if a proposer could take a transaction now (some sender's next nonce is pending)."""
        return bool(self._ready_senders)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._entries

    def get(self, tx_hash: bytes) -> VerifiedTx | None:
        entry = self._entries.get(tx_hash)
        return entry.tx if entry else None

    def verified(self, wire_hash: bytes) -> VerifiedTx | None:
        """The envelope with this hash if this node verified its signatures (pending or recently seen)."""
        vtx = self._by_wire.get(wire_hash)
        return vtx if vtx is not None else self._verified.get(wire_hash)

    # --- admission --------------------------------------------------------------------------------

    async def verify_many(self, raws: Sequence[bytes]) -> list[VerifiedTx | TxRejected]:
        """Decode and verify (in the thread pool, using the cache); no admission.

        The cache and the in-flight table are keyed by the envelope's exact bytes, never by the
        transaction id: an envelope with a bad signature added must not be answered with the result
        of the good one (or the other way round). A transaction whose signatures another call is
        verifying right now (a proposal carrying transactions of a gossip batch still in the pool)
        waits for that result instead of being verified twice."""
        out: list[VerifiedTx | TxRejected | None] = [None] * len(raws)
        pending: list[tuple[int, DecodedTx]] = []
        waits: list[tuple[int, bytes, asyncio.Future[dict[bytes, VerifiedTx | TxRejected]]]] = []
        by_wire, recent, verifying = self._by_wire, self._verified, self._verifying
        sha256 = crypto.sha256
        for i, raw in enumerate(raws):
            wire = sha256(raw)
            # Hash first: a known envelope is not decoded again (what verified() does, inlined: this
            # loop runs for every transaction of every gossip batch and proposal).
            cached = by_wire.get(wire)
            if cached is None:
                cached = recent.get(wire)
            if cached is not None:
                out[i] = cached
                continue
            in_flight = verifying.get(wire)
            if in_flight is not None:
                waits.append((i, wire, in_flight))
                continue
            try:
                decoded = txs.decode_tx(raw, self._chain_id, self._cfg.max_tx_bytes, wire)
            except TxRejected as exc:
                out[i] = exc
                continue
            pending.append((i, decoded))
        if pending:
            await self._verify_pending(pending, out)
        for i, waited, fut in waits:
            try:
                out[i] = (await asyncio.shield(fut))[waited]
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # The call verifying it was cancelled (its peer went away): verify it here.
                out[i] = (await self.verify_many([raws[i]]))[0]
        return [o for o in out if o is not None]

    async def _verify_pending(
        self, pending: list[tuple[int, DecodedTx]], out: list[VerifiedTx | TxRejected | None]
    ) -> None:
        items: list[tuple[bytes, bytes, bytes]] = []
        for _, decoded in pending:
            items.extend(decoded.sign_items())
        started = time.perf_counter()
        # One future for the batch, not one per transaction: each future is event-loop work on
        # admission's hot path.
        batch: asyncio.Future[dict[bytes, VerifiedTx | TxRejected]] | None = None
        mine: list[bytes] = []
        try:
            if self._executor is not None and len(items) >= VERIFY_OFFLOAD_MIN:
                loop = asyncio.get_running_loop()
                batch = loop.create_future()
                verifying = self._verifying
                for _, decoded in pending:  # others asking meanwhile wait for these results
                    if decoded.wire_hash not in verifying:
                        verifying[decoded.wire_hash] = batch
                        mine.append(decoded.wire_hash)
                # Split over the pool's threads directly (never through the loop's default executor,
                # which the runtime keeps free for persistence).
                workers = max(1, getattr(self._executor, "_max_workers", 2))
                size = max(VERIFY_CHUNK_MIN, -(-len(items) // workers))
                chunks = [items[i : i + size] for i in range(0, len(items), size)]
                jobs = [loop.run_in_executor(self._executor, crypto.verify_batch, chunk) for chunk in chunks]
                ahead = None
                read_ahead = self._read_ahead
                if read_ahead is not None:
                    # Meanwhile read the state these transactions will need (disk reads off the loop).
                    bodies = [decoded.body for _, decoded in pending]
                    ahead = loop.run_in_executor(self._executor, read_ahead[0], bodies)
                parts = await asyncio.gather(*jobs)
                results = [ok for part in parts for ok in part]
                if read_ahead is not None and ahead is not None:
                    try:
                        got = await ahead
                        # Kept only for a batch whose signatures all verified: forged transactions
                        # must not fill the state cache with the keys they name.
                        if all(results):
                            read_ahead[1](got)
                    except Exception as exc:  # an optimization only: execution reads what it needs
                        log.warning("reading state ahead failed: %s", exc)
            else:
                results = crypto.verify_batch(items)
            if self.on_verified is not None:
                self.on_verified(len(items), time.perf_counter() - started)
            pos = 0
            outcomes: dict[bytes, VerifiedTx | TxRejected] = {}
            for i, decoded in pending:
                n = len(decoded.public_keys)
                outcome: VerifiedTx | TxRejected
                try:
                    outcome = txs.accept_verified(decoded, results[pos : pos + n])
                    self._verified.put(outcome.wire_hash, outcome)
                except TxRejected as exc:
                    outcome = exc
                out[i] = outcome
                outcomes[decoded.wire_hash] = outcome
                pos += n
            if batch is not None and not batch.done():
                batch.set_result(outcomes)
        finally:
            if batch is not None:
                verifying = self._verifying
                for wire in mine:
                    if verifying.get(wire) is batch:
                        del verifying[wire]
                if not batch.done():
                    batch.cancel()  # waiters verify for themselves

    async def admit(
        self, raws: Sequence[bytes], *, gossip: bool = True, dry_run: bool = True
    ) -> list[Admitted]:
        """Admit a batch of raw transactions; one result per input, in order.

        dry_run=False (transactions gossiped by validator peers, which dry-ran them on admission)
        keeps every check but the ledger's dry run: size, signatures, nonce window and gap rules,
        duplicates. A transaction that would fail still cannot do harm: its block receipt records
        the failure.

        A rejected transaction leaves nothing behind but a count: its entry in the verified-signature
        cache is dropped too (a flood of throwaway-key transactions must not fill the cache).

        Raises MempoolFull only for a single-transaction batch; in a larger batch a full mempool
        rejects the individual transactions with reason MEMPOOL_FULL.
        """
        verified = await self.verify_many(raws)
        results: list[Admitted] = []
        for raw, item in zip(raws, verified, strict=True):
            if isinstance(item, TxRejected):
                self._count(item.status)
                results.append(Admitted(txs.tx_hash(raw), False, item.status, item.message))
                continue
            try:
                admitted = self._admit_one(item, gossip, dry_run)
            except MempoolFull:
                self._forget(item)
                if len(raws) == 1:
                    raise
                admitted = Admitted(
                    item.tx_hash,
                    False,
                    receipt_pb2.TX_STATUS_MEMPOOL_FULL,
                    "the mempool is full; retry later",
                )
            if not admitted.accepted:
                self._forget(item)
            results.append(admitted)
        if self._gossip:
            self.new_tx_event.set()
        return results

    def _forget(self, vtx: VerifiedTx) -> None:
        """Drop a rejected transaction's cached verification (unless it is pending after all)."""
        if vtx.wire_hash not in self._by_wire:
            self._verified.discard(vtx.wire_hash)

    def _count(self, status: int) -> None:
        name = receipt_pb2.TxStatus.Name(receipt_pb2.TxStatus.ValueType(status)).removeprefix("TX_STATUS_")
        self.rejections[name] = self.rejections.get(name, 0) + 1

    def _reject(self, vtx: VerifiedTx, status: int, message: str) -> Admitted:
        self._count(status)
        return Admitted(vtx.tx_hash, False, status, message)

    def _admit_one(self, vtx: VerifiedTx, gossip: bool, dry_run: bool = True) -> Admitted:
        if vtx.tx_hash in self._entries:
            return Admitted(vtx.tx_hash, True, duplicate=True)
        body = vtx.body
        sender, nonce, ref = body.signer, body.nonce, body.client_ref  # protobuf fields, read once
        committed = self._committed_nonce(sender)
        if nonce < committed:
            return self._reject(
                vtx, receipt_pb2.TX_STATUS_BAD_NONCE, f"nonce {nonce} already used (next is {committed})"
            )
        if nonce >= committed + NONCE_WINDOW:
            return self._reject(
                vtx,
                receipt_pb2.TX_STATUS_BAD_NONCE,
                f"nonce {nonce} too far ahead (next is {committed})",
            )
        pending = self._by_sender.get(sender)
        if pending is not None and nonce in pending:
            return self._reject(vtx, receipt_pb2.TX_STATUS_BAD_NONCE, f"nonce {nonce} is already pending")
        # A gap: the nonce before this one is neither committed nor pending and executable.
        gap = nonce != committed and (
            pending is None or (nonce - 1) not in pending or pending[nonce - 1] in self._parked
        )
        if gap and self._parked_per_sender.get(sender, 0) >= self._cfg.max_gap_per_sender:
            return self._reject(
                vtx,
                receipt_pb2.TX_STATUS_NONCE_GAP_LIMIT,
                f"nonce {nonce} leaves a gap (next is {committed}) and the sender already has "
                f"{self._cfg.max_gap_per_sender} transactions waiting for missing nonces",
            )
        if ref and ((sender, ref) in self._refs or self._ref_committed(sender, ref)):
            return self._reject(
                vtx,
                receipt_pb2.TX_STATUS_DUPLICATE_CLIENT_REF,
                f"client reference {ref[:64]!r} was already used",
            )
        if len(self._entries) >= self._cfg.max_txs:
            self._count(receipt_pb2.TX_STATUS_MEMPOOL_FULL)
            raise MempoolFull("MEMPOOL_FULL", f"mempool holds {len(self._entries)} transactions (limit)")
        if self._bytes + vtx.size > self._cfg.max_bytes:
            raise MempoolFull("MEMPOOL_FULL", f"mempool holds {self._bytes} bytes (limit)")
        waiting = len(pending) if pending is not None else 0
        if waiting >= self._cfg.max_per_sender:
            raise MempoolFull("SENDER_LIMIT", f"sender has {waiting} pending transactions (limit)")
        receipt = self._check(vtx, nonce) if dry_run else None
        if receipt is not None and receipt.status != receipt_pb2.TX_STATUS_OK:
            self._count(receipt.status)
            return Admitted(vtx.tx_hash, False, receipt.status, receipt.message, receipt)
        self._insert(vtx, sender, nonce, ref, gap, committed, gossip)
        return Admitted(vtx.tx_hash, True, receipt=receipt)

    def _insert(
        self, vtx: VerifiedTx, sender: bytes, nonce: int, ref: str, gap: bool, committed: int, gossip: bool
    ) -> None:
        self._entries[vtx.tx_hash] = _Entry(vtx, sender, nonce, ref)
        self._by_wire[vtx.wire_hash] = vtx
        by_nonce = self._by_sender.get(sender)
        if by_nonce is None:
            by_nonce = self._by_sender[sender] = {}
        by_nonce[nonce] = vtx.tx_hash
        if ref:
            self._refs[(sender, ref)] = vtx.tx_hash
        self._bytes += len(vtx.raw)
        if gap:
            # Parked: not gossiped and not proposable until the missing nonces arrive; expires.
            self._parked[vtx.tx_hash] = self._clock()
            self._parked_per_sender[sender] = self._parked_per_sender.get(sender, 0) + 1
            return
        if nonce == committed:
            self._ready_senders.add(sender)
        self.tx_arrived.set()
        if gossip:
            self._gossip.append(vtx.raw)
        if sender in self._parked_per_sender:
            self._unpark_after(sender, by_nonce, nonce + 1, gossip)

    def _unpark_after(self, sender: bytes, by_nonce: dict[int, bytes], nonce: int, gossip: bool) -> None:
        """The sender's transactions from nonce on, while contiguous, are executable now: gossip them."""
        while nonce in by_nonce:
            tx_hash = by_nonce[nonce]
            if self._parked.pop(tx_hash, None) is not None:
                self._unpark_count(sender)
                if gossip:
                    self._gossip.append(self._entries[tx_hash].tx.raw)
            nonce += 1

    def _unpark_count(self, sender: bytes) -> None:
        left = self._parked_per_sender.get(sender, 0) - 1
        if left > 0:
            self._parked_per_sender[sender] = left
        else:
            self._parked_per_sender.pop(sender, None)

    def _remove(self, tx_hash: bytes) -> None:
        entry = self._entries.pop(tx_hash, None)
        if entry is None:
            return
        sender = entry.sender
        self._by_wire.pop(entry.tx.wire_hash, None)
        by_nonce = self._by_sender.get(sender)
        if by_nonce is not None:
            by_nonce.pop(entry.nonce, None)
            if not by_nonce:
                del self._by_sender[sender]
                self._ready_senders.discard(sender)
        if entry.ref:
            self._refs.pop((sender, entry.ref), None)
        if self._parked.pop(tx_hash, None) is not None:
            self._unpark_count(sender)
        self._bytes -= len(entry.tx.raw)

    def expire_gaps(self) -> int:
        """Evict parked transactions older than [mempool] gap_max_age_s; returns how many."""
        deadline = self._clock() - self._cfg.gap_max_age_s
        expired = 0
        while self._parked:
            tx_hash, parked_at = next(iter(self._parked.items()))
            if parked_at > deadline:
                break
            self._remove(tx_hash)
            expired += 1
        self.expired_gaps += expired
        return expired

    # --- gossip -----------------------------------------------------------------------------------

    def take_gossip(self, max_count: int) -> list[bytes]:
        """Executable transactions accepted since the last call, up to max_count, to send to peers."""
        batch, self._gossip = self._gossip[:max_count], self._gossip[max_count:]
        return batch

    # --- proposals and commits --------------------------------------------------------------------

    def reap(self, max_bytes: int, max_count: int) -> list[VerifiedTx]:
        """Transactions for a proposal: arrival order, each sender's nonces contiguous."""
        out: list[VerifiedTx] = []
        size = 0
        seen: set[bytes] = set()
        for entry in self._entries.values():
            if len(out) >= max_count:
                break
            sender = entry.sender
            if sender in seen:
                continue
            seen.add(sender)
            run = self._by_sender[sender]
            expected = self._committed_nonce(sender)
            while expected in run and len(out) < max_count:
                tx = self._entries[run[expected]].tx
                if size + tx.size > max_bytes:
                    return out
                out.append(tx)
                size += tx.size
                expected += 1
        return out

    def update(self, committed: Iterable[bytes], touched_senders: Iterable[bytes]) -> int:
        """Remove committed transactions and re-check the senders they touched; returns evictions.

        Every pending transaction of a touched sender whose nonce is now used is evicted; the next
        one (the only one a proposer could take first) is dry-run again against the new state and
        evicted if it now fails (the ones behind it wait for a resubmitted nonce, parked). Re-running
        the dry run for a sender's whole queue after every block would cost O(mempool) per block (the
        recheck starvation CometBFT operators hit), so later transactions are checked when they come
        up. Parked transactions past their maximum age are evicted here too.
        """
        for tx_hash in committed:
            self._remove(tx_hash)
        evicted = 0
        for sender in set(touched_senders):
            by_nonce = self._by_sender.get(sender)
            if not by_nonce:
                continue
            floor = self._committed_nonce(sender)
            for nonce in sorted(by_nonce):
                if nonce >= floor:
                    break
                self._remove(by_nonce[nonce])
                evicted += 1
            by_nonce = self._by_sender.get(sender, {})
            head = by_nonce.get(floor)
            if head is not None:
                receipt = self._check(self._entries[head].tx, floor)
                if receipt.status != receipt_pb2.TX_STATUS_OK:
                    self._count(receipt.status)
                    self._remove(head)
                    evicted += 1
                    head = None
            if head is None:
                self._ready_senders.discard(sender)
                self._repark(sender, by_nonce)
            else:
                self._ready_senders.add(sender)
                if sender in self._parked_per_sender:
                    self._unpark_after(sender, by_nonce, floor, gossip=True)
        if self._gossip:
            self.new_tx_event.set()
        return evicted + self.expire_gaps()

    def _repark(self, sender: bytes, by_nonce: dict[int, bytes]) -> None:
        """The sender's next nonce is missing: everything it has pending waits (parked) again."""
        now = self._clock()
        for tx_hash in by_nonce.values():
            if tx_hash not in self._parked:
                self._parked[tx_hash] = now
                self._parked_per_sender[sender] = self._parked_per_sender.get(sender, 0) + 1
