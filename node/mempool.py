"""The mempool: admission, deduplication, per-sender ordering, gossip batches and reaping.

Admission of a batch: decode and size-check each transaction, verify the signatures of the new ones
in a thread pool (libsodium releases the GIL; a verified tx hash is cached so nothing is verified
twice), check the nonce and client reference against committed state and what is already pending,
then run the ledger's dry-run. Accepted transactions are queued for gossip to peers in batches.

Per sender, pending transactions are kept by nonce; a proposer reaps them in arrival order, taking
a sender's transaction only when all its lower nonces are taken (a short gap waits for the missing
nonce instead of being rejected). After each commit the committed transactions are removed and the
senders they touched are re-checked, so the mempool never proposes stale transactions.

Limits: total count and bytes and count per sender; when full, admission fails with
`MempoolFull` (the API maps it to RESOURCE_EXHAUSTED with a reason).
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


class MempoolFull(Exception):
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
    """A bounded set of tx hashes whose signatures verified."""

    __slots__ = ("_data", "_max")

    def __init__(self, max_size: int) -> None:
        self._data: OrderedDict[bytes, VerifiedTx] = OrderedDict()
        self._max = max_size

    def get(self, key: bytes) -> VerifiedTx | None:
        return self._data.get(key)

    def put(self, key: bytes, value: VerifiedTx) -> None:
        self._data[key] = value
        if len(self._data) > self._max:
            self._data.popitem(last=False)


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
    ) -> None:
        self._cfg = config
        self._chain_id = chain_id
        self._check = check
        self._committed_nonce = committed_nonce
        self._ref_committed = ref_committed
        self._executor = executor
        self._read_ahead = read_ahead
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()  # arrival order
        self._by_sender: dict[bytes, dict[int, bytes]] = {}  # sender -> nonce -> tx hash
        self._refs: dict[tuple[bytes, str], bytes] = {}  # (sender, client_ref) -> tx hash
        self._bytes = 0
        self._verified = _LRU(config.cache_size)
        # tx hash -> the future of the batch verifying it right now, whose result maps hash -> outcome
        self._verifying: dict[bytes, asyncio.Future[dict[bytes, VerifiedTx | TxRejected]]] = {}
        self._gossip: list[bytes] = []
        self.rejections: dict[str, int] = {}
        self.on_verified: Callable[[int, float], None] | None = None  # (signatures, seconds), for metrics
        self.new_tx_event = asyncio.Event()  # consumed by the gossip loop
        self.tx_arrived = asyncio.Event()  # consumed by the runtime (empty-block pacing)

    # --- introspection ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._entries

    def get(self, tx_hash: bytes) -> VerifiedTx | None:
        entry = self._entries.get(tx_hash)
        return entry.tx if entry else None

    def verified(self, tx_hash: bytes) -> VerifiedTx | None:
        """A transaction whose signatures this node already verified (pending or recently seen)."""
        entry = self._entries.get(tx_hash)
        return entry.tx if entry else self._verified.get(tx_hash)

    # --- admission --------------------------------------------------------------------------------

    async def verify_many(self, raws: Sequence[bytes]) -> list[VerifiedTx | TxRejected]:
        """Decode and verify (in the thread pool, using the cache); no admission.

        A transaction whose signatures another call is verifying right now (a proposal carrying
        transactions of a gossip batch still in the pool) waits for that result instead of being
        verified twice."""
        out: list[VerifiedTx | TxRejected | None] = [None] * len(raws)
        pending: list[tuple[int, DecodedTx]] = []
        waits: list[tuple[int, bytes, asyncio.Future[dict[bytes, VerifiedTx | TxRejected]]]] = []
        entries, recent, verifying = self._entries, self._verified, self._verifying
        for i, raw in enumerate(raws):
            tx_hash = txs.tx_hash(raw)
            # Hash first: a known tx is not decoded again (what verified() does, inlined: this loop
            # runs for every transaction of every gossip batch and proposal).
            entry = entries.get(tx_hash)
            cached = entry.tx if entry is not None else recent.get(tx_hash)
            if cached is not None:
                out[i] = cached
                continue
            in_flight = verifying.get(tx_hash)
            if in_flight is not None:
                waits.append((i, tx_hash, in_flight))
                continue
            try:
                decoded = txs.decode_tx(raw, self._chain_id, self._cfg.max_tx_bytes, tx_hash)
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
        # One future for the batch (one per transaction cost a tenth of admission's own CPU at --max).
        batch: asyncio.Future[dict[bytes, VerifiedTx | TxRejected]] | None = None
        mine: list[bytes] = []
        try:
            if self._executor is not None and len(items) >= VERIFY_OFFLOAD_MIN:
                loop = asyncio.get_running_loop()
                batch = loop.create_future()
                verifying = self._verifying
                for _, decoded in pending:  # others asking meanwhile wait for these results
                    if decoded.tx_hash not in verifying:
                        verifying[decoded.tx_hash] = batch
                        mine.append(decoded.tx_hash)
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
                    self._verified.put(outcome.tx_hash, outcome)
                except TxRejected as exc:
                    outcome = exc
                out[i] = outcome
                outcomes[decoded.tx_hash] = outcome
                pos += n
            if batch is not None and not batch.done():
                batch.set_result(outcomes)
        finally:
            if batch is not None:
                verifying = self._verifying
                for tx_hash in mine:
                    if verifying.get(tx_hash) is batch:
                        del verifying[tx_hash]
                if not batch.done():
                    batch.cancel()  # waiters verify for themselves

    async def admit(
        self, raws: Sequence[bytes], *, gossip: bool = True, dry_run: bool = True
    ) -> list[Admitted]:
        """Admit a batch of raw transactions; one result per input, in order.

        dry_run=False (transactions gossiped by validator peers, which dry-ran them on admission)
        keeps every check but the ledger's dry run: size, signatures, nonce window, duplicates. A
        transaction that would fail still cannot do harm: its block receipt records the failure.

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
                results.append(self._admit_one(item, gossip, dry_run))
            except MempoolFull:
                if len(raws) == 1:
                    raise
                results.append(Admitted(item.tx_hash, False, receipt_pb2.TX_STATUS_INTERNAL, "mempool full"))
        if any(r.accepted and not r.duplicate for r in results):
            self.new_tx_event.set()
            self.tx_arrived.set()
        return results

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
        if ref and ((sender, ref) in self._refs or self._ref_committed(sender, ref)):
            return self._reject(
                vtx,
                receipt_pb2.TX_STATUS_DUPLICATE_CLIENT_REF,
                f"client reference {ref!r} was already used",
            )
        if len(self._entries) >= self._cfg.max_txs:
            self._count(receipt_pb2.TX_STATUS_INTERNAL)
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
        self._insert(vtx, sender, nonce, ref)
        if gossip:
            self._gossip.append(vtx.raw)
        return Admitted(vtx.tx_hash, True, receipt=receipt)

    def _insert(self, vtx: VerifiedTx, sender: bytes, nonce: int, ref: str) -> None:
        self._entries[vtx.tx_hash] = _Entry(vtx, sender, nonce, ref)
        by_nonce = self._by_sender.get(sender)
        if by_nonce is None:
            by_nonce = self._by_sender[sender] = {}
        by_nonce[nonce] = vtx.tx_hash
        if ref:
            self._refs[(sender, ref)] = vtx.tx_hash
        self._bytes += len(vtx.raw)

    def _remove(self, tx_hash: bytes) -> None:
        entry = self._entries.pop(tx_hash, None)
        if entry is None:
            return
        sender = entry.sender
        by_nonce = self._by_sender.get(sender)
        if by_nonce is not None:
            by_nonce.pop(entry.nonce, None)
            if not by_nonce:
                del self._by_sender[sender]
        if entry.ref:
            self._refs.pop((sender, entry.ref), None)
        self._bytes -= len(entry.tx.raw)

    # --- gossip -----------------------------------------------------------------------------------

    def take_gossip(self, max_count: int) -> list[bytes]:
        """Transactions accepted since the last call, up to max_count, to send to peers."""
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
        evicted if it now fails (the ones behind it wait for a resubmitted nonce). Re-running the dry run
        for a sender's whole queue after every block would cost O(mempool) per block (the recheck
        starvation CometBFT operators hit), so later transactions are checked when they come up.
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
            head = self._by_sender.get(sender, {}).get(floor)
            if head is None:
                continue
            receipt = self._check(self._entries[head].tx, floor)
            if receipt.status != receipt_pb2.TX_STATUS_OK:
                self._count(receipt.status)
                self._remove(head)
                evicted += 1
        return evicted
