"""node.mempool: admission, per-sender ordering, limits, reaping and recheck after commit."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from clearline.v1 import receipt_pb2, tx_pb2
from node import txs
from node.config import MempoolConfig
from node.crypto import SigningKey
from node.mempool import CancelRefused, Mempool, MempoolFull
from node.txs import VerifiedTx

CHAIN = "mempool-test"


class FakeLedger:
    """Committed nonces and a dry-run that rejects amounts above a balance."""

    def __init__(self) -> None:
        self.nonces: dict[bytes, int] = {}
        self.balance = 1_000
        self.checked = 0

    def check(self, vtx: VerifiedTx, nonce: int) -> receipt_pb2.Receipt:
        self.checked += 1
        status = receipt_pb2.TX_STATUS_OK
        if vtx.body.transfer.amount > self.balance:
            status = receipt_pb2.TX_STATUS_INSUFFICIENT_FUNDS
        return receipt_pb2.Receipt(
            tx_hash=vtx.tx_hash, status=status, message="" if status == 1 else "too much"
        )

    def nonce(self, sender: bytes) -> int:
        return self.nonces.get(sender, 0)


def tx(key: SigningKey, nonce: int, amount: int = 1, ref: str = "", chain: str = CHAIN) -> bytes:
    body = tx_pb2.TxBody(chain_id=chain, signer=key.address, nonce=nonce, client_ref=ref or f"r{nonce}")
    body.transfer.instrument.issuer = b"\x01" * 20
    body.transfer.instrument.symbol = "USD"
    body.transfer.to = b"\x02" * 20
    body.transfer.amount = amount
    return txs.sign_tx(body, [key])


def make(ledger: FakeLedger, **limits: int) -> Mempool:
    cfg = MempoolConfig(**limits) if limits else MempoolConfig()
    return Mempool(
        cfg,
        CHAIN,
        check=ledger.check,
        committed_nonce=ledger.nonce,
        ref_committed=lambda s, r: False,
        executor=None,
    )


async def test_admits_valid_and_rejects_each_invalid_kind_with_its_reason() -> None:
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger)
    good = tx(key, 0)
    tampered = bytearray(tx(key, 1))
    tampered[-1] ^= 1
    results = await pool.admit(
        [good, bytes(tampered), b"garbage", tx(key, 1, chain="other"), tx(key, 1, amount=5000)]
    )
    assert [r.accepted for r in results] == [True, False, False, False, False]
    assert [r.reason for r in results[1:]] == [
        "BAD_SIGNATURE",
        "MALFORMED",
        "WRONG_CHAIN",
        "INSUFFICIENT_FUNDS",
    ]
    assert len(pool) == 1 and good in [t.raw for t in pool.reap(10**6, 100)]


async def test_replayed_nonce_and_reference_are_rejected_and_leave_the_pool_unchanged() -> None:
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger)
    (first,) = await pool.admit([tx(key, 0, ref="pay-1")])
    assert first.accepted
    ledger.nonces[key.address] = 5
    (old,) = await pool.admit([tx(key, 3, ref="x")])
    assert not old.accepted and old.reason == "BAD_NONCE"
    (dup_ref,) = await pool.admit([tx(key, 6, ref="pay-1")])
    assert not dup_ref.accepted and dup_ref.reason == "DUPLICATE_CLIENT_REF"
    assert len(pool) == 1


async def test_same_tx_twice_is_idempotent_and_verified_once() -> None:
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger)
    raw = tx(key, 0)
    (a,) = await pool.admit([raw])
    checks = ledger.checked
    (b,) = await pool.admit([raw])
    assert a.accepted and b.accepted and b.duplicate
    assert ledger.checked == checks  # no second dry run
    assert len(pool) == 1


async def test_reap_keeps_each_senders_nonces_contiguous() -> None:
    ledger, a, b = FakeLedger(), SigningKey.generate(), SigningKey.generate()
    pool = make(ledger)
    # a's nonce 1 arrives before nonce 0; b has a gap at 1.
    await pool.admit([tx(a, 1), tx(b, 0), tx(a, 0), tx(b, 2)])
    reaped = pool.reap(10**6, 100)
    order = [(t.body.signer, t.body.nonce) for t in reaped]
    assert order.index((a.address, 0)) < order.index((a.address, 1))
    assert (b.address, 0) in order and (b.address, 2) not in order
    assert len(pool.reap(10**6, 2)) == 2


async def test_limits_raise_mempool_full_with_a_reason() -> None:
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger, max_per_sender=2)
    await pool.admit([tx(key, 0), tx(key, 1)])
    with pytest.raises(MempoolFull) as info:
        await pool.admit([tx(key, 2)])
    assert info.value.reason == "SENDER_LIMIT"
    pool2 = make(FakeLedger(), max_txs=1)
    await pool2.admit([tx(SigningKey.generate(), 0)])
    with pytest.raises(MempoolFull) as info2:
        await pool2.admit([tx(SigningKey.generate(), 0)])
    assert info2.value.reason == "MEMPOOL_FULL"
    assert len(pool2) == 1


async def test_update_removes_committed_and_rechecks_touched_senders() -> None:
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger)
    results = await pool.admit([tx(key, 0, amount=10), tx(key, 1, amount=600), tx(key, 2, amount=10)])
    hashes = [r.tx_hash for r in results]
    ledger.nonces[key.address] = 1
    ledger.balance = 500  # the pending 600 no longer passes the dry run
    evicted = pool.update([hashes[0]], [key.address])
    assert evicted == 1
    assert hashes[0] not in pool and hashes[1] not in pool and hashes[2] in pool
    assert pool.rejections.get("INSUFFICIENT_FUNDS") == 1


async def test_gossip_batches_only_new_local_transactions() -> None:
    ledger = FakeLedger()
    pool = make(ledger)
    keys = [SigningKey.generate() for _ in range(5)]
    await pool.admit([tx(k, 0) for k in keys[:3]])
    await pool.admit([tx(k, 0) for k in keys[3:]], gossip=False)
    assert len(pool.take_gossip(2)) == 2
    assert len(pool.take_gossip(10)) == 1
    assert pool.take_gossip(10) == []


async def test_verification_in_a_thread_pool_matches() -> None:
    ledger = FakeLedger()
    with ThreadPoolExecutor(2) as pool_exec:
        pool = Mempool(
            MempoolConfig(), CHAIN, check=ledger.check, committed_nonce=ledger.nonce,
            ref_committed=lambda s, r: False, executor=pool_exec,
        )  # fmt: skip
        keys = [SigningKey.generate() for _ in range(100)]
        raws = [tx(k, 0) for k in keys]
        bad = bytearray(raws[7])
        bad[-2] ^= 1
        raws[7] = bytes(bad)
        results = await pool.admit(raws)
    assert [r.accepted for r in results].count(True) == 99
    assert results[7].reason == "BAD_SIGNATURE"


async def test_peer_gossip_skips_only_the_dry_run() -> None:
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger)
    too_big = tx(key, 0, amount=5000)
    (client,) = await pool.admit([too_big])
    assert not client.accepted and client.reason == "INSUFFICIENT_FUNDS"
    checks = ledger.checked
    tampered = bytearray(tx(key, 1))
    tampered[-1] ^= 1
    peer = await pool.admit(
        [too_big, bytes(tampered), tx(key, 0, amount=1, ref="other")], gossip=False, dry_run=False
    )
    assert [r.accepted for r in peer] == [True, False, False]
    assert peer[1].reason == "BAD_SIGNATURE" and peer[2].reason == "BAD_NONCE"  # nonce 0 is already pending
    assert ledger.checked == checks and len(pool) == 1


async def test_state_is_read_ahead_in_the_pool_while_signatures_verify() -> None:
    """The read-ahead hook gets the bodies of the transactions being verified, runs off the event
    loop thread, and its result reaches the absorb hook; a failing read-ahead costs no admission."""
    import threading

    ledger, loop_thread = FakeLedger(), threading.get_ident()
    seen: list[tuple[int, list[bytes]]] = []
    absorbed: list[object] = []

    def read_ahead(bodies: list[tx_pb2.TxBody]) -> object:
        seen.append((threading.get_ident(), [b.signer for b in bodies]))
        return ("read", len(bodies))

    keys = [SigningKey.generate() for _ in range(8)]
    with ThreadPoolExecutor(2) as pool_exec:
        pool = Mempool(
            MempoolConfig(), CHAIN, check=ledger.check, committed_nonce=ledger.nonce,
            ref_committed=lambda s, r: False, executor=pool_exec, read_ahead=(read_ahead, absorbed.append),
        )  # fmt: skip
        results = await pool.admit([tx(k, 0) for k in keys])
        assert all(r.accepted for r in results)
        assert len(seen) == 1 and seen[0][0] != loop_thread
        assert sorted(seen[0][1]) == sorted(k.address for k in keys)
        assert absorbed == [("read", 8)]

        def broken(bodies: list[tx_pb2.TxBody]) -> object:
            raise OSError("store closed")

        pool = Mempool(
            MempoolConfig(), CHAIN, check=ledger.check, committed_nonce=ledger.nonce,
            ref_committed=lambda s, r: False, executor=pool_exec, read_ahead=(broken, absorbed.append),
        )  # fmt: skip
        results = await pool.admit([tx(k, 1) for k in keys])
        assert all(r.accepted for r in results) and absorbed == [("read", 8)]

        # A batch with a forged signature: admitted as it should be, but nothing read is kept.
        pool = Mempool(
            MempoolConfig(), CHAIN, check=ledger.check, committed_nonce=ledger.nonce,
            ref_committed=lambda s, r: False, executor=pool_exec, read_ahead=(read_ahead, absorbed.append),
        )  # fmt: skip
        raws = [tx(k, 2) for k in keys]
        forged = bytearray(raws[3])
        forged[-1] ^= 1
        raws[3] = bytes(forged)
        results = await pool.admit(raws)
        assert [r.accepted for r in results].count(False) == 1 and results[3].reason == "BAD_SIGNATURE"
        assert len(seen) == 2 and absorbed == [("read", 8)]  # read, not kept


class GatedVerify:
    """Wraps crypto.verify_batch: counts the signatures checked; checks in the pool wait for open()."""

    def __init__(self, real: object) -> None:
        import threading

        self.real = real
        self.gate = threading.Event()
        self.loop_thread = threading.get_ident()
        self.checked = 0

    def __call__(self, items: list[tuple[bytes, bytes, bytes]]) -> list[bool]:
        import threading

        if threading.get_ident() != self.loop_thread:
            assert self.gate.wait(10)
        self.checked += len(items)
        return self.real(items)  # type: ignore[operator]


def _pool_with(executor: ThreadPoolExecutor) -> Mempool:
    ledger = FakeLedger()
    return Mempool(
        MempoolConfig(), CHAIN, check=ledger.check, committed_nonce=ledger.nonce,
        ref_committed=lambda s, r: False, executor=executor,
    )  # fmt: skip


async def test_a_transaction_being_verified_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proposal carrying transactions of a gossip batch still in the pool waits for that batch's
    result (the same outcome, forged ones rejected) instead of checking the signatures twice."""
    import asyncio

    from node import crypto

    gated = GatedVerify(crypto.verify_batch)
    monkeypatch.setattr(crypto, "verify_batch", gated)
    keys = [SigningKey.generate() for _ in range(8)]
    batch = [tx(k, 0) for k in keys]
    forged = bytearray(batch[2])
    forged[-1] ^= 1
    batch[2] = bytes(forged)
    newcomer = tx(SigningKey.generate(), 0)
    with ThreadPoolExecutor(2) as executor:
        pool = _pool_with(executor)
        gossip = asyncio.create_task(pool.verify_many(batch))
        await asyncio.sleep(0.05)  # the batch is in the pool, waiting at the gate
        proposal = asyncio.create_task(pool.verify_many([batch[5], batch[2], newcomer, batch[0]]))
        await asyncio.sleep(0.05)
        assert not proposal.done() and gated.checked == 1  # only the newcomer (inline) so far
        gated.gate.set()
        first, second = await gossip, await proposal
    assert gated.checked == 9  # eight in the batch, one newcomer: none twice
    assert second[0] is first[5] and second[3] is first[0]
    assert isinstance(second[1], txs.TxRejected) and second[1] is first[2]
    assert isinstance(second[2], VerifiedTx) and second[2].raw == newcomer
    assert pool.verifier.in_flight == 0  # nothing left in flight


async def test_waiters_verify_for_themselves_when_the_verifying_call_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from node import crypto

    gated = GatedVerify(crypto.verify_batch)
    monkeypatch.setattr(crypto, "verify_batch", gated)
    batch = [tx(SigningKey.generate(), 0) for _ in range(6)]
    with ThreadPoolExecutor(2) as executor:
        pool = _pool_with(executor)
        gossip = asyncio.create_task(pool.verify_many(batch))
        await asyncio.sleep(0.05)
        waiter = asyncio.create_task(pool.verify_many([batch[1]]))
        await asyncio.sleep(0.05)
        gossip.cancel()  # its peer went away
        with pytest.raises(asyncio.CancelledError):
            await gossip
        gated.gate.set()
        (result,) = await asyncio.wait_for(waiter, timeout=10)
    assert isinstance(result, VerifiedTx) and result.raw == batch[1]
    assert pool.verified(result.wire_hash) is not None
    assert pool.verifier.in_flight == 0


# --- hardening: what a stranger can make the pool hold ------------------------------------------


def make_clocked(ledger: FakeLedger, now: list[float], **limits: object) -> Mempool:
    return Mempool(
        MempoolConfig(**limits),  # type: ignore[arg-type]
        CHAIN,
        check=ledger.check,
        committed_nonce=ledger.nonce,
        ref_committed=lambda s, r: False,
        executor=None,
        clock=lambda: now[0],
    )


async def test_rejected_transactions_leave_nothing_but_a_count() -> None:
    """Throwaway keys, large memos, rejected by the dry run: the verified cache keeps none of them."""
    ledger = FakeLedger()
    ledger.balance = 0  # every transfer fails the dry run, as an unknown sender's does
    pool = make(ledger)
    raws = []
    for i in range(50):
        key = SigningKey.generate()
        body = tx_pb2.TxBody(chain_id=CHAIN, signer=key.address, nonce=0, memo="x" * 60_000)
        body.transfer.to = b"\x02" * 20
        body.transfer.amount = 1 + i
        raws.append(txs.sign_tx(body, [key]))
    results = await pool.admit(raws)
    assert not any(r.accepted for r in results)
    assert {r.reason for r in results} == {"INSUFFICIENT_FUNDS"}
    assert pool.cache_len == 0 and pool.cache_bytes == 0
    assert len(pool) == 0 and pool.size_bytes == 0
    assert pool.rejections["INSUFFICIENT_FUNDS"] == 50


async def test_the_verified_cache_is_bounded_in_bytes() -> None:
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger, cache_bytes=200_000)
    raws = []
    for n in range(20):
        body = tx_pb2.TxBody(chain_id=CHAIN, signer=key.address, nonce=n, memo="y" * 30_000)
        body.transfer.to = b"\x02" * 20
        body.transfer.amount = 1
        raws.append(txs.sign_tx(body, [key]))
    verified = await pool.verify_many(raws)  # a proposal's transactions: verified and cached
    assert all(isinstance(v, VerifiedTx) for v in verified)
    assert pool.cache_bytes <= 200_000 and 0 < pool.cache_len < 20


async def test_a_gap_transaction_is_parked_not_gossiped_not_ready_and_unparked_by_its_missing_nonce() -> None:
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger)
    (r,) = await pool.admit([tx(key, 2)])
    assert r.accepted and pool.parked == 1
    assert pool.take_gossip(100) == [] and not pool.has_ready()
    assert not pool.tx_arrived.is_set(), "a gap transaction must not wake empty-block pacing"
    assert pool.reap(10**6, 100) == []
    await pool.admit([tx(key, 0)])
    assert pool.parked == 1 and pool.has_ready()  # nonce 1 still missing
    assert len(pool.take_gossip(100)) == 1
    await pool.admit([tx(key, 1)])
    assert pool.parked == 0
    assert pool.take_gossip(100) == [tx(key, 1), tx(key, 2)]  # nonce 2 goes out once executable
    assert [t.body.nonce for t in pool.reap(10**6, 100)] == [0, 1, 2]


async def test_gap_transactions_are_capped_per_sender_and_expire() -> None:
    now = [100.0]
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make_clocked(ledger, now, max_gap_per_sender=3, gap_max_age_s=30.0)
    results = await pool.admit([tx(key, n) for n in (5, 7, 9, 11)])
    assert [r.accepted for r in results] == [True, True, True, False]
    assert results[3].reason == "NONCE_GAP_LIMIT" and "missing nonces" in results[3].message
    assert pool.parked == 3 and len(pool) == 3
    now[0] += 29.0
    assert pool.expire_gaps() == 0
    now[0] += 2.0
    assert pool.expire_gaps() == 3
    assert len(pool) == 0 and pool.parked == 0 and pool.size_bytes == 0
    # Expiry runs after every commit too.
    await pool.admit([tx(key, 20)])
    now[0] += 31.0
    pool.update([], [])
    assert len(pool) == 0


async def test_a_failed_head_parks_its_followers_again() -> None:
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger)
    await pool.admit([tx(key, 0), tx(key, 1), tx(key, 2)])
    assert pool.parked == 0 and pool.has_ready()
    ledger.balance = 0  # the head now fails its recheck after a commit of someone else's
    pool.update([], [key.address])
    assert len(pool) == 2 and pool.parked == 2 and not pool.has_ready()


async def test_an_envelope_with_a_bad_extra_signature_does_not_poison_the_good_one() -> None:
    """The cache and in-flight table are keyed by the envelope's bytes: a third party's variant of a
    transaction (same id) with a bad signature added is refused, and the original still verifies."""
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger)
    good = tx(key, 0)
    envelope = tx_pb2.SignedTx.FromString(good)
    envelope.signatures.add(public_key=SigningKey.generate().public_key, signature=b"\x00" * 64)
    bad = envelope.SerializeToString()
    assert txs.tx_hash(bad) == txs.tx_hash(good)
    results = await pool.admit([bad, good])
    assert [r.accepted for r in results] == [False, True]
    assert results[0].reason == "BAD_SIGNATURE"
    assert results[0].tx_hash == results[1].tx_hash


# --- replace and cancel ------------------------------------------------------------------------------


def drops(pool: Mempool) -> list[tuple[bytes, str]]:
    seen: list[tuple[bytes, str]] = []
    pool.on_dropped = lambda tx_hash, why: seen.append((tx_hash, why.reason))
    return seen


async def test_the_signer_replaces_a_waiting_transaction_by_sending_its_nonce_again() -> None:
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger, max_gap_per_sender=1)
    seen = drops(pool)
    first, second = tx(key, 3, amount=5, ref="a"), tx(key, 3, amount=7, ref="a")  # same reference too
    (a,) = await pool.admit([first], from_client=True)
    (b,) = await pool.admit([second], from_client=True)
    assert a.accepted and b.accepted and b.replaced == a.tx_hash
    assert len(pool) == 1 and pool.parked == 1 and pool.size_bytes == len(second)
    assert pool.get(a.tx_hash) is None and pool.get(b.tx_hash) is not None
    gone = pool.dropped(a.tx_hash)
    assert gone is not None and gone.reason == "REPLACED" and gone.replaced_by == b.tx_hash
    assert key.address in gone.signers and seen == [(a.tx_hash, "REPLACED")]
    assert pool.drops == {"REPLACED": 1}
    # The replacement is the one that runs once the gap fills.
    await pool.admit([tx(key, n) for n in (0, 1, 2)], from_client=True)
    assert [t.body.transfer.amount for t in pool.reap(10**6, 100)] == [1, 1, 1, 7]


async def test_a_replacement_is_checked_like_any_transaction_and_a_failed_one_keeps_the_original() -> None:
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger)
    (a,) = await pool.admit([tx(key, 2, amount=5)], from_client=True)
    (bad,) = await pool.admit([tx(key, 2, amount=5_000)], from_client=True)  # fails the dry run
    assert not bad.accepted and bad.reason == "INSUFFICIENT_FUNDS"
    assert pool.get(a.tx_hash) is not None and pool.dropped(a.tx_hash) is None
    # Another pending transaction's reference cannot be taken over by a replacement.
    await pool.admit([tx(key, 4, ref="other")], from_client=True)
    (dup,) = await pool.admit([tx(key, 2, ref="other")], from_client=True)
    assert not dup.accepted and dup.reason == "DUPLICATE_CLIENT_REF"
    assert pool.get(a.tx_hash) is not None and len(pool) == 2


async def test_a_ready_transaction_cannot_be_replaced_and_gossip_never_replaces() -> None:
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger)
    (ready,) = await pool.admit([tx(key, 0, amount=5)], from_client=True)
    (late,) = await pool.admit([tx(key, 0, amount=6)], from_client=True)
    assert not late.accepted and late.reason == "BAD_NONCE" and "cannot be replaced" in late.message
    (parked,) = await pool.admit([tx(key, 5, amount=5)], from_client=True)
    (gossiped,) = await pool.admit([tx(key, 5, amount=6)], dry_run=False)  # a peer's version
    assert not gossiped.accepted and gossiped.reason == "BAD_NONCE"
    assert {t.tx_hash for t in pool.reap(10**6, 100)} == {ready.tx_hash}
    assert pool.get(parked.tx_hash) is not None and pool.drops == {}


async def test_the_signer_cancels_waiting_transactions_all_or_nothing() -> None:
    ledger, key, other = FakeLedger(), SigningKey.generate(), SigningKey.generate()
    pool = make(ledger)
    seen = drops(pool)
    ready, w4, w6 = await pool.admit([tx(key, 0), tx(key, 4), tx(key, 6)], from_client=True)
    (theirs,) = await pool.admit([tx(other, 4)], from_client=True)
    with pytest.raises(CancelRefused) as info:
        pool.cancel(key.address, [4, 0])
    assert info.value.reason == "TX_READY" and "nonce 0" in info.value.message
    with pytest.raises(CancelRefused) as info:
        pool.cancel(key.address, [4, 5])
    assert info.value.reason == "NOT_PENDING" and "nonce 5" in info.value.message
    assert len(pool) == 4 and seen == []  # nothing was cancelled by the refused requests
    assert pool.cancel(key.address, [4]) == [w4.tx_hash]
    assert pool.cancel(key.address, []) == [w6.tx_hash]  # every waiting one that is left
    assert pool.cancel(key.address, []) == []
    assert seen == [(w4.tx_hash, "CANCELLED"), (w6.tx_hash, "CANCELLED")]
    assert pool.get(ready.tx_hash) is not None and pool.get(theirs.tx_hash) is not None
    assert pool.parked == 1 and len(pool) == 2  # the other sender's is untouched
    # A cancelled transaction submitted here again is refused; its nonce is free for another.
    (again,) = await pool.admit([tx(key, 4)], from_client=True)
    assert not again.accepted and again.reason == "CANCELLED"
    (fresh,) = await pool.admit([tx(key, 4, amount=2)], from_client=True)
    assert fresh.accepted


async def test_every_way_out_of_the_pool_uncommitted_is_recorded_with_why() -> None:
    now = [100.0]
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make_clocked(ledger, now, gap_max_age_s=30.0)
    seen = drops(pool)
    head, follower, waiting = await pool.admit(
        [tx(key, 0, amount=5), tx(key, 1), tx(key, 9)], from_client=True
    )
    # Another transaction with nonce 0 committed (from another node): ours is dropped, NONCE_USED.
    ledger.nonces[key.address] = 1
    ledger.balance = 0  # and nonce 1 now fails its re-check: INVALID
    pool.update([], [key.address])
    now[0] += 31.0
    pool.expire_gaps()
    reasons = {h: pool.dropped(h) for h in (head.tx_hash, follower.tx_hash, waiting.tx_hash)}
    assert {h: d.reason for h, d in reasons.items() if d} == {
        head.tx_hash: "NONCE_USED",
        follower.tx_hash: "INVALID",
        waiting.tx_hash: "EXPIRED",
    }
    assert "INSUFFICIENT_FUNDS" in reasons[follower.tx_hash].message  # type: ignore[union-attr]
    assert "for nonce 1" in reasons[waiting.tx_hash].message  # type: ignore[union-attr]
    assert len(seen) == 3 and len(pool) == 0 and pool.size_bytes == 0


async def test_the_memory_of_dropped_transactions_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("node.mempool.DROPPED_MEMORY", 3)
    ledger, key = FakeLedger(), SigningKey.generate()
    pool = make(ledger)
    hashes = []
    for amount in range(1, 7):
        (a,) = await pool.admit([tx(key, 5, amount=amount)], from_client=True)
        hashes.append(a.tx_hash)
    assert [pool.dropped(h) is not None for h in hashes] == [False, False, True, True, True, False]
    assert pool.drops == {"REPLACED": 5}
