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

Replace and cancel: a waiting (parked) transaction lives only on the node that received it, so its
signer may replace it (submit another transaction with the same nonce, `admit(from_client=True)`) or
withdraw it (`cancel`). A ready transaction cannot be: it has been gossiped to the validators and
may already be in a proposal, so a replacement could not be promised to win. Every transaction that
leaves the pool uncommitted (replaced, cancelled, expired, its nonce used by another, or invalid
after a block) is remembered with why (`dropped`, bounded), so its status can be asked and a client
waiting for it is told at once (`on_dropped`). A cancelled transaction is refused if submitted here
again: the signer said it must not run. A signed transaction stays valid until its nonce is used,
though, so a copy held elsewhere could still be submitted; to void one for good, use its nonce.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

from clearline.v1 import receipt_pb2
from node import txs
from node.config import MempoolConfig
from node.errors import BadInput
from node.txs import TxRejected, VerifiedTx
from node.verifier import AbsorbFn, ReadAheadFn, SignatureVerifier

log = logging.getLogger("clearline.mempool")

# How far ahead of a sender's committed nonce a transaction may be admitted.
NONCE_WINDOW = 1024
# How many dropped transactions are remembered (with why) for status queries: about 300 bytes each.
DROPPED_MEMORY = 10_000
CheckFn = Callable[[VerifiedTx, int], receipt_pb2.Receipt]
NonceFn = Callable[[bytes], int]
RefSeenFn = Callable[[bytes, str], bool]


class MempoolFull(BadInput):
    """The mempool (or one sender's share of it) is full; retry later."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class CancelRefused(BadInput):
    """CancelPending named a nonce that is not pending here (NOT_PENDING) or that is ready for a
    proposal and so already with the validators (TX_READY)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Dropped:
    """Why an accepted transaction left the mempool uncommitted.

    reason: REPLACED, CANCELLED, EXPIRED (waited longer than gap_max_age_s for a lower nonce),
    NONCE_USED (another transaction with its nonce committed) or INVALID (failed its re-check after
    a block). signers: for read access to this record.
    """

    reason: str
    message: str
    signers: frozenset[bytes]
    replaced_by: bytes = b""


@dataclass(frozen=True, slots=True)
class Admitted:
    """The outcome of admitting one transaction."""

    tx_hash: bytes
    accepted: bool
    status: int = receipt_pb2.TX_STATUS_OK
    message: str = ""
    receipt: receipt_pb2.Receipt | None = None
    duplicate: bool = False  # already pending (accepted before)
    replaced: bytes = b""  # the waiting transaction this one replaced

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
        self.verifier = SignatureVerifier(
            chain_id,
            config.max_tx_bytes,
            cache_size=config.cache_size,
            cache_bytes=config.cache_bytes,
            executor=executor,
            read_ahead=read_ahead,
            pending=self._by_wire,
        )
        self._gossip: list[bytes] = []
        self.rejections: dict[str, int] = {}
        self.expired_gaps = 0
        self._dropped: OrderedDict[bytes, Dropped] = OrderedDict()  # tx id -> why, oldest first
        self.drops: dict[str, int] = {}  # dropped transactions by reason, since start
        self.on_dropped: Callable[[bytes, Dropped], None] | None = None
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
        return self.verifier.cache_len

    @property
    def cache_bytes(self) -> int:
        return self.verifier.cache_bytes

    def has_ready(self) -> bool:
        """True if a proposer could take a transaction now (some sender's next nonce is pending)."""
        return bool(self._ready_senders)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._entries

    @property
    def on_verified(self) -> Callable[[int, float], None] | None:
        """Called with (signatures, seconds) after each verified batch, for metrics."""
        return self.verifier.on_verified

    @on_verified.setter
    def on_verified(self, callback: Callable[[int, float], None] | None) -> None:
        self.verifier.on_verified = callback

    def get(self, tx_hash: bytes) -> VerifiedTx | None:
        entry = self._entries.get(tx_hash)
        return entry.tx if entry else None

    def dropped(self, tx_hash: bytes) -> Dropped | None:
        """Why this transaction left the pool uncommitted, if it did recently."""
        return self._dropped.get(tx_hash)

    def verified(self, wire_hash: bytes) -> VerifiedTx | None:
        """The envelope with this hash if this node verified its signatures (pending or recently seen)."""
        vtx = self._by_wire.get(wire_hash)
        return vtx if vtx is not None else self.verifier.cached(wire_hash)

    # --- admission --------------------------------------------------------------------------------

    async def verify_many(self, raws: Sequence[bytes]) -> list[VerifiedTx | TxRejected]:
        """Decode and verify (in the thread pool, using the cache); no admission."""
        return await self.verifier.verify_many(raws)

    async def admit(
        self, raws: Sequence[bytes], *, gossip: bool = True, dry_run: bool = True, from_client: bool = False
    ) -> list[Admitted]:
        """Admit a batch of raw transactions; one result per input, in order.

        dry_run=False (transactions gossiped by validator peers, which dry-ran them on admission)
        keeps every check but the ledger's dry run: size, signatures, nonce window and gap rules,
        duplicates. A transaction that would fail still cannot do harm: its block receipt records
        the failure.

        A rejected transaction leaves nothing behind but a count: its entry in the verified-signature
        cache is dropped too (a flood of throwaway-key transactions must not fill the cache).

        from_client=True (a client's submission, not peers' gossip): a transaction with the nonce of
        one of its signer's waiting transactions replaces it, and one its signer cancelled here is
        refused. Gossip never replaces: only the signer's own submission says which version it wants.

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
                admitted = self._admit_one(item, gossip, dry_run, from_client)
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
            self.verifier.forget(vtx.wire_hash)

    def _count(self, status: int) -> None:
        name = receipt_pb2.TxStatus.Name(receipt_pb2.TxStatus.ValueType(status)).removeprefix("TX_STATUS_")
        self.rejections[name] = self.rejections.get(name, 0) + 1

    def _reject(self, vtx: VerifiedTx, status: int, message: str) -> Admitted:
        self._count(status)
        return Admitted(vtx.tx_hash, False, status, message)

    def _admit_one(
        self, vtx: VerifiedTx, gossip: bool, dry_run: bool = True, from_client: bool = False
    ) -> Admitted:
        if vtx.tx_hash in self._entries:
            return Admitted(vtx.tx_hash, True, duplicate=True)
        if (
            self._dropped
            and vtx.tx_hash in self._dropped
            and self._dropped[vtx.tx_hash].reason == "CANCELLED"
        ):
            return self._reject(
                vtx, receipt_pb2.TX_STATUS_CANCELLED, "its signer cancelled this transaction on this node"
            )
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
        old: bytes | None = None  # the waiting transaction this one replaces
        if pending is not None and nonce in pending:
            old = pending[nonce]
            if not from_client:
                return self._reject(vtx, receipt_pb2.TX_STATUS_BAD_NONCE, f"nonce {nonce} is already pending")
            if old not in self._parked:
                return self._reject(
                    vtx,
                    receipt_pb2.TX_STATUS_BAD_NONCE,
                    f"nonce {nonce} is already pending and ready for a proposal (tx {old.hex()[:16]}); it "
                    "has been sent to the validators and cannot be replaced, only a transaction waiting "
                    "for a lower nonce can",
                )
        # A gap: the nonce before this one is neither committed nor pending and executable.
        gap = nonce != committed and (
            pending is None or (nonce - 1) not in pending or pending[nonce - 1] in self._parked
        )
        if old is None and gap and self._parked_per_sender.get(sender, 0) >= self._cfg.max_gap_per_sender:
            return self._reject(
                vtx,
                receipt_pb2.TX_STATUS_NONCE_GAP_LIMIT,
                f"nonce {nonce} leaves a gap (next is {committed}) and the sender already has "
                f"{self._cfg.max_gap_per_sender} transactions waiting for missing nonces",
            )
        if ref and (self._refs.get((sender, ref), old) != old or self._ref_committed(sender, ref)):
            return self._reject(
                vtx,
                receipt_pb2.TX_STATUS_DUPLICATE_CLIENT_REF,
                f"client reference {ref[:64]!r} was already used",
            )
        if old is None:
            if len(self._entries) >= self._cfg.max_txs:
                self._count(receipt_pb2.TX_STATUS_MEMPOOL_FULL)
                raise MempoolFull("MEMPOOL_FULL", f"mempool holds {len(self._entries)} transactions (limit)")
            waiting = len(pending) if pending is not None else 0
            if waiting >= self._cfg.max_per_sender:
                raise MempoolFull("SENDER_LIMIT", f"sender has {waiting} pending transactions (limit)")
        freed = len(self._entries[old].tx.raw) if old is not None else 0
        if self._bytes - freed + vtx.size > self._cfg.max_bytes:
            raise MempoolFull("MEMPOOL_FULL", f"mempool holds {self._bytes} bytes (limit)")
        receipt = self._check(vtx, nonce) if dry_run else None
        if receipt is not None and receipt.status != receipt_pb2.TX_STATUS_OK:
            self._count(receipt.status)
            return Admitted(vtx.tx_hash, False, receipt.status, receipt.message, receipt)
        if old is not None:
            self._drop(
                old,
                "REPLACED",
                f"replaced by its signer with tx {vtx.tx_hash.hex()}",
                replaced_by=vtx.tx_hash,
            )
        self._insert(vtx, sender, nonce, ref, gap, committed, gossip)
        return Admitted(vtx.tx_hash, True, receipt=receipt, replaced=old or b"")

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

    def _drop(self, tx_hash: bytes, reason: str, message: str, replaced_by: bytes = b"") -> None:
        """Remove an uncommitted transaction and remember why (see Dropped)."""
        entry = self._entries.get(tx_hash)
        if entry is None:
            return
        self._remove(tx_hash)
        record = Dropped(reason, message, entry.tx.signers, replaced_by)
        self._dropped[tx_hash] = record
        self.drops[reason] = self.drops.get(reason, 0) + 1
        self._dropped.move_to_end(tx_hash)
        while len(self._dropped) > DROPPED_MEMORY:
            self._dropped.popitem(last=False)
        if self.on_dropped is not None:
            self.on_dropped(tx_hash, record)

    def cancel(self, sender: bytes, nonces: Sequence[int]) -> list[bytes]:
        """Withdraw sender's waiting transactions with these nonces (all of them when empty); returns
        their ids by nonce. All or nothing: raises CancelRefused naming the first nonce that is not
        pending here or is ready for a proposal."""
        by_nonce = self._by_sender.get(sender, {})
        if nonces:
            chosen = sorted(set(nonces))
            for nonce in chosen:
                tx_hash = by_nonce.get(nonce)
                if tx_hash is None:
                    raise CancelRefused("NOT_PENDING", f"no transaction with nonce {nonce} is pending here")
                if tx_hash not in self._parked:
                    raise CancelRefused(
                        "TX_READY",
                        f"nonce {nonce} is ready for a proposal (tx {tx_hash.hex()[:16]}): it has been "
                        "sent to the validators and can no longer be withdrawn",
                    )
        else:
            chosen = sorted(n for n, h in by_nonce.items() if h in self._parked)
        out = [by_nonce[n] for n in chosen]
        for tx_hash in out:
            self._drop(tx_hash, "CANCELLED", "cancelled by its signer")
        return out

    def pending_of(self, sender: bytes) -> list[tuple[int, bytes, float | None]]:
        """sender's transactions here, by nonce: (nonce, tx id, seconds parked, or None if ready)."""
        by_nonce = self._by_sender.get(sender, {})
        now = self._clock()
        out: list[tuple[int, bytes, float | None]] = []
        for nonce, tx_hash in sorted(by_nonce.items()):
            parked_at = self._parked.get(tx_hash)
            out.append((nonce, tx_hash, None if parked_at is None else max(0.0, now - parked_at)))
        return out

    @property
    def max_wait_s(self) -> float:
        """How long a parked transaction waits before it is dropped."""
        return float(self._cfg.gap_max_age_s)

    def expire_gaps(self) -> int:
        """Evict parked transactions older than [mempool] gap_max_age_s; returns how many."""
        deadline = self._clock() - self._cfg.gap_max_age_s
        expired = 0
        while self._parked:
            tx_hash, parked_at = next(iter(self._parked.items()))
            if parked_at > deadline:
                break
            entry = self._entries[tx_hash]
            self._drop(
                tx_hash,
                "EXPIRED",
                f"waited longer than {self._cfg.gap_max_age_s} s for nonce "
                f"{self._committed_nonce(entry.sender)} (the sender's next); send that one first",
            )
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
                self._drop(by_nonce[nonce], "NONCE_USED", f"another transaction with nonce {nonce} committed")
                evicted += 1
            by_nonce = self._by_sender.get(sender, {})
            head = by_nonce.get(floor)
            if head is not None:
                receipt = self._check(self._entries[head].tx, floor)
                if receipt.status != receipt_pb2.TX_STATUS_OK:
                    self._count(receipt.status)
                    status = receipt_pb2.TxStatus.Name(receipt.status).removeprefix("TX_STATUS_")
                    self._drop(
                        head, "INVALID", f"no longer valid after the last block: {status}: {receipt.message}"
                    )
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
