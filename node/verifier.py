"""Signature verification of transactions, for the mempool and for proposals' blocks.

Verification runs in a thread pool (libsodium releases the GIL, so the pool also uses the second
core); a transaction whose signatures verified is cached by the hash of its exact envelope, bounded
in count and bytes, so nothing is verified twice and a flood of large transactions evicts old
entries instead of growing the node. A transaction another call is verifying right now waits for
that result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

from clearline.v1 import tx_pb2
from node import crypto, txs
from node.txs import DecodedTx, TxRejected, VerifiedTx

log = logging.getLogger("clearline.mempool")

# Batches at least this large are verified in the thread pool, off the event loop (libsodium releases
# the GIL, so the pool also uses the second core); tiny batches are cheaper to verify inline.
VERIFY_OFFLOAD_MIN = 4
# Offloaded batches are split over the pool's threads in chunks of at least this many signatures:
# every chunk is one more hand-off and wake-up of the event loop (about 2 ms of work per chunk).
VERIFY_CHUNK_MIN = 32

ReadAheadFn = Callable[[list[tx_pb2.TxBody]], Any]  # runs in the pool: reads state for these
AbsorbFn = Callable[[Any], object]  # runs on the loop: keeps what ReadAheadFn read


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


class SignatureVerifier:
    """Verifies transactions' signatures in a pool, with a bounded cache of the verified ones."""

    def __init__(
        self,
        chain_id: str,
        max_tx_bytes: int,
        *,
        cache_size: int,
        cache_bytes: int,
        executor: Executor | None,
        read_ahead: tuple[ReadAheadFn, AbsorbFn] | None = None,
        pending: Mapping[bytes, VerifiedTx] | None = None,
    ) -> None:
        self._chain_id = chain_id
        self._max_tx_bytes = max_tx_bytes
        self._executor = executor
        self._read_ahead = read_ahead
        self._pending: Mapping[bytes, VerifiedTx] = pending if pending is not None else {}
        self._verified = _LRU(cache_size, cache_bytes)
        # envelope hash -> the future of the batch verifying it right now, whose result maps
        # envelope hash -> outcome
        self._verifying: dict[bytes, asyncio.Future[dict[bytes, VerifiedTx | TxRejected]]] = {}
        self.on_verified: Callable[[int, float], None] | None = None  # (signatures, seconds), for metrics

    @property
    def cache_len(self) -> int:
        return len(self._verified)

    @property
    def cache_bytes(self) -> int:
        return self._verified.size_bytes

    @property
    def in_flight(self) -> int:
        """Envelopes being verified right now."""
        return len(self._verifying)

    def cached(self, wire_hash: bytes) -> VerifiedTx | None:
        return self._verified.get(wire_hash)

    def forget(self, wire_hash: bytes) -> None:
        self._verified.discard(wire_hash)

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
        by_wire, recent, verifying = self._pending, self._verified, self._verifying
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
                decoded = txs.decode_tx(raw, self._chain_id, self._max_tx_bytes, wire)
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
