"""Hypothesis: random operation sequences keep the ledger's invariants.

- per instrument: supply = Σ balances (held included) = minted − redeemed;
- no negative amount, and frozen + held ≤ balance for every balance;
- each payer's held amount = Σ of its active holds;
- a settlement applies all its legs or none;
- two independent replays give identical state roots (and receipts);
- reopening from the kv gives the same root and answers;
- account proofs verify against the root for present and absent accounts, and fail when tampered.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearline.v1 import receipt_pb2 as R
from clearline.v1 import state_pb2
from clearline.v1 import tx_pb2 as T
from node import statement
from node.ledger import Ledger, account_key, verify_proof
from node.ledger.merkle import CHUNK_PREFIX, NODE_PREFIX, WHOLE_MAX
from node.ledger.ops import compute_kyc
from node.ledger.state import ACCOUNT, HOLD, INSTR, AccountRec, decode_account
from node.txs import VerifiedTx
from tests.unit.ledger.helpers import (
    ALICE,
    BANK,
    BANK2,
    BOB,
    BOND,
    CAROL,
    COMPLIANCE,
    MALLORY,
    NOTARY,
    T0,
    T0_MS,
    USD,
    World,
    key,
)

PEOPLE = [ALICE, BOB, CAROL, NOTARY, MALLORY]
INSTRUMENTS = [USD, BOND]
ISSUER_OF = {USD.symbol: BANK, BOND.symbol: BANK2}

person = st.sampled_from(PEOPLE)
instrument = st.sampled_from(INSTRUMENTS)
amount = st.one_of(st.integers(0, 400), st.sampled_from([1, 2**64 - 1]))
ref = st.sampled_from(["r1", "r2", "r3"])
hold_id = st.sampled_from(["h1", "h2", "h3"])

Op = tuple[Any, ...]

ops = st.one_of(
    st.tuples(st.just("transfer"), person, person, instrument, amount),
    st.tuples(st.just("mint"), person, instrument, amount, ref),
    st.tuples(st.just("redeem"), person, instrument, amount, ref),
    st.tuples(st.just("freeze"), person, st.booleans()),
    st.tuples(st.just("freeze_amount"), person, instrument, st.integers(1, 300), st.booleans()),
    st.tuples(st.just("pause"), instrument, st.booleans()),
    st.tuples(st.just("hold"), person, person, hold_id, instrument, amount, st.integers(0, 4)),
    st.tuples(st.just("execute_hold"), hold_id, st.integers(0, 200)),
    st.tuples(st.just("release_hold"), hold_id, st.booleans()),
    st.tuples(
        st.just("settle"),
        st.lists(st.tuples(person, person, instrument, amount), min_size=1, max_size=4),
        st.booleans(),
        ref,
    ),
    st.tuples(st.just("forced"), person, person, instrument, amount),
    st.tuples(st.just("limits"), person, instrument, st.integers(0, 300), st.integers(0, 600)),
    st.tuples(
        st.just("kyc"),
        person,
        st.sampled_from([T.KYC_STATUS_APPROVED, T.KYC_STATUS_REVOKED]),
        st.sampled_from([BANK, BANK2, COMPLIANCE]),  # each its own approval (ops.py "KYC")
        st.sampled_from([0, T0 + 60, T0 + 600]),
    ),
)
blocks = st.lists(
    st.tuples(st.lists(ops, min_size=1, max_size=6), st.integers(0, 90_000)), min_size=1, max_size=8
)


class Nonces:
    """Tracks each signer's next nonce within a block being built."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.pending: dict[bytes, int] = {}

    def tx(self, signer: Any, op: str, msg: Any, **kw: Any) -> VerifiedTx:
        n = self.pending.get(signer.address, self.w.nonce(signer))
        self.pending[signer.address] = n + 1
        return self.w.tx(signer, op, msg, nonce=n, **kw)


def build_tx(n: Nonces, op: Op, height: int) -> VerifiedTx:
    kind = op[0]
    if kind == "transfer":
        _, a, b, inst, amt = op
        return n.tx(a, "transfer", T.Transfer(instrument=inst, to=b.address, amount=amt))
    if kind == "mint":
        _, to, inst, amt, r = op
        return n.tx(
            ISSUER_OF[inst.symbol], "mint", T.Mint(instrument=inst, to=to.address, amount=amt, deposit_ref=r)
        )
    if kind == "redeem":
        _, who, inst, amt, r = op
        return n.tx(who, "redeem", T.Redeem(instrument=inst, amount=amt, redemption_ref=r))
    if kind == "freeze":
        _, who, on = op
        if on:
            return n.tx(COMPLIANCE, "freeze_account", T.FreezeAccount(account=who.address))
        return n.tx(COMPLIANCE, "unfreeze_account", T.UnfreezeAccount(account=who.address))
    if kind == "freeze_amount":
        _, who, inst, amt, on = op
        if on:
            return n.tx(
                COMPLIANCE, "freeze_amount", T.FreezeAmount(account=who.address, instrument=inst, amount=amt)
            )
        return n.tx(
            COMPLIANCE, "unfreeze_amount", T.UnfreezeAmount(account=who.address, instrument=inst, amount=amt)
        )
    if kind == "pause":
        _, inst, on = op
        if on:
            return n.tx(COMPLIANCE, "pause_instrument", T.PauseInstrument(instrument=inst))
        return n.tx(COMPLIANCE, "unpause_instrument", T.UnpauseInstrument(instrument=inst))
    if kind == "hold":
        _, payer, payee, hid, inst, amt, ttl = op
        msg = T.CreateHold(
            hold_id=hid,
            instrument=inst,
            payee=payee.address,
            notary=NOTARY.address,
            amount=amt,
            expires_at_height=height + ttl,
        )
        return n.tx(payer, "create_hold", msg)
    if kind == "execute_hold":
        _, hid, amt = op
        return n.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id=hid, amount=amt))
    if kind == "release_hold":
        _, hid, by_notary = op
        h = n.w.ledger.get_hold(hid)
        payee = next((p for p in PEOPLE if h is not None and p.address == h.payee), BOB)
        return n.tx(NOTARY if by_notary else payee, "release_hold", T.ReleaseHold(hold_id=hid))
    if kind == "settle":
        _, legs, all_sign, r = op
        msg = T.Settle(settlement_ref=r)
        payers = []
        for a, b, inst, amt in legs:
            leg = msg.legs.add(instrument=inst, to=b.address, amount=amt)
            setattr(leg, "from", a.address)
            payers.append(a)
        cosigners = [p for p in {p.name: p for p in payers}.values() if p is not payers[0]]
        return n.tx(payers[0], "settle", msg, cosigners=cosigners if all_sign else [])
    if kind == "forced":
        _, a, b, inst, amt = op
        msg = T.ForcedTransfer(instrument=inst, to=b.address, amount=amt, reason="order")
        setattr(msg, "from", a.address)
        return n.tx(COMPLIANCE, "forced_transfer", msg)
    if kind == "limits":
        _, who, inst, per_tx, per_day = op
        return n.tx(
            COMPLIANCE,
            "set_limits",
            T.SetLimits(account=who.address, instrument=inst, max_per_tx=per_tx, max_per_day=per_day),
        )
    if kind == "kyc":
        _, who, status, approver, expires_at = op
        return n.tx(approver, "set_kyc", T.SetKyc(account=who.address, status=status, expires_at=expires_at))
    raise AssertionError(kind)


def balances_of(w: World) -> dict[tuple[bytes, tuple[bytes, str]], tuple[int, int, int]]:
    out = {}
    for k, v in w.kv.items():
        if k.startswith(ACCOUNT):
            rec = decode_account(v)
            for ik, bal in rec.balances.items():
                out[(rec.address, ik)] = bal
    return out


def overlay(bals: dict[Any, tuple[int, int, int]], records: Any) -> dict[Any, tuple[int, int, int]]:
    """bals with the accounts changed in a block's records replaced."""
    out = dict(bals)
    for k, rec in records.items():
        if k.startswith(ACCOUNT) and isinstance(rec, AccountRec):
            for key_ in [x for x in out if x[0] == rec.address]:
                del out[key_]
            for ik, bal in rec.balances.items():
                out[(rec.address, ik)] = bal
    return out


def check_invariants(w: World) -> None:
    bals = balances_of(w)
    totals: dict[tuple[bytes, str], int] = defaultdict(int)
    for (_, ik), (amt, frozen, held) in bals.items():
        assert amt >= 0 and frozen >= 0 and held >= 0
        assert frozen + held <= amt
        totals[ik] += amt
    for k, v in w.kv.items():
        if k.startswith(INSTR):
            inst = state_pb2.Instrument.FromString(v)
            ik = (inst.id.issuer, inst.id.symbol)
            assert inst.supply == totals.get(ik, 0) == inst.minted - inst.redeemed
            assert not inst.supply_cap or inst.supply <= inst.supply_cap
    held: dict[tuple[bytes, tuple[bytes, str]], int] = defaultdict(int)
    for k, v in w.kv.items():
        if k.startswith(HOLD):
            h = state_pb2.Hold.FromString(v)
            if h.state == state_pb2.HOLD_STATE_ACTIVE:
                assert h.amount > 0
                held[(h.payer, (h.instrument.issuer, h.instrument.symbol))] += h.amount
            else:
                assert h.amount == 0
    assert {k: b[2] for k, b in bals.items() if b[2]} == dict(held)
    for k, v in w.kv.items():
        if k.startswith(ACCOUNT):
            rec = decode_account(v)  # the KYC fields are always those derived from the approvals
            assert (rec.kyc_status, rec.kyc_expires_at) == compute_kyc(rec.kyc_approvals)


def check_statements(
    w: World, receipts: Sequence[R.Receipt], expected: dict[tuple[bytes, tuple[bytes, str]], int]
) -> None:
    """Add the block's movements (node/statement.py) to expected and compare with every balance."""
    instruments = {ik for _, ik in expected} | {ik for _, ik in balances_of(w)}
    for r in receipts:
        for p in PEOPLE:
            for ik in instruments:
                inst = T.InstrumentId(issuer=ik[0], symbol=ik[1])
                for mv in statement.movements(r, p.address, inst):
                    expected[(p.address, ik)] = expected.get((p.address, ik), 0) + mv.signed
    actual = {k: bal[0] for k, bal in balances_of(w).items()}
    assert {k: v for k, v in expected.items() if v} == {k: v for k, v in actual.items() if v}


def run(sequence: list[tuple[list[Op], int]]) -> tuple[World, list[bytes], list[list[bytes]]]:
    """Replay blocks; a settlement goes in a block of its own so all-or-nothing can be checked."""
    w = World.create()
    roots = []
    receipts = []
    # Statements tie out: each balance is its genesis amount plus the movements its receipts show.
    expected = {k: bal[0] for k, bal in balances_of(w).items()}
    t = T0_MS + 1000
    for block_ops, dt in sequence:
        t += dt
        groups: list[list[Op]] = [[]]
        for op in block_ops:
            if op[0] == "settle":
                groups += [[op], []]
            else:
                groups[-1].append(op)
        for group in (g for g in groups if g):
            n = Nonces(w)
            txs = [build_tx(n, op, w.ledger.height + 1) for op in group]
            # Balances as an empty block would leave them (holds may expire at the block's start).
            before = overlay(balances_of(w), w.execute(time_ms=t).records)
            result = w.execute(*txs, time_ms=t)
            w.commit(result)
            roots.append(result.state_root)
            receipts.append([r.SerializeToString() for r in result.receipts])
            if group[0][0] == "settle":
                check_settlement(before, balances_of(w), group[0], result.receipts[0])
            check_invariants(w)
            check_statements(w, result.receipts, expected)
    return w, roots, receipts


def check_settlement(
    before: dict[Any, tuple[int, int, int]],
    after: dict[Any, tuple[int, int, int]],
    op: Op,
    receipt: R.Receipt,
) -> None:
    if receipt.status != R.TX_STATUS_OK:
        assert before == after, "a failed settlement changed balances"
        return
    expected: dict[Any, int] = defaultdict(int)
    for a, b, inst, amt in op[1]:
        ik = (inst.issuer, inst.symbol)
        expected[(a.address, ik)] -= amt
        expected[(b.address, ik)] += amt
    for k in set(before) | set(after) | set(expected):
        assert after.get(k, (0, 0, 0))[0] - before.get(k, (0, 0, 0))[0] == expected.get(k, 0)


SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(blocks)
def test_random_sequences_keep_invariants_and_replay_identically(
    sequence: list[tuple[list[Op], int]],
) -> None:
    w1, roots1, receipts1 = run(sequence)
    _w2, roots2, receipts2 = run(sequence)
    assert roots1 == roots2 and receipts1 == receipts2
    reopened = Ledger.open(w1.kv)
    assert reopened.state_root == w1.ledger.state_root == roots1[-1]
    for p in PEOPLE:
        assert reopened.get_account(p.address) == w1.ledger.get_account(p.address)
        assert reopened.list_holds(p.address) == w1.ledger.list_holds(p.address)


@SETTINGS
@given(blocks, st.lists(st.sampled_from([*PEOPLE, key("ghost1"), key("ghost2")]), min_size=1, max_size=4))
def test_account_proofs_after_random_sequences(sequence: list[tuple[list[Op], int]], who: list[Any]) -> None:
    w, _, _ = run(sequence)
    root = w.ledger.state_root
    for p in who:
        k = account_key(p.address)
        value = w.kv.get(k)
        proof = w.ledger.prove_account(p.address)
        assert verify_proof(root, k, value, proof)
        if value is not None:
            assert not verify_proof(root, k, value + b"\x00", proof)
            assert not verify_proof(root, k, None, proof)
        else:
            assert not verify_proof(root, k, b"\x0a\x00", proof)
        assert not verify_proof(bytes(32), k, value, proof)
    # Small nodes are stored whole, big ones as chunks; nothing empty is kept.
    assert not any(k.startswith(NODE_PREFIX) and not 0 < len(v) <= WHOLE_MAX for k, v in w.kv.items())
    assert not any(k.startswith(CHUNK_PREFIX) and not v for k, v in w.kv.items())


long_blocks = st.lists(
    st.tuples(st.lists(ops, min_size=1, max_size=12), st.integers(0, 200_000)), min_size=5, max_size=25
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(long_blocks)
def test_long_random_sequences_keep_invariants(sequence: list[tuple[list[Op], int]]) -> None:
    """The same invariants over longer histories (excluded from the CI subset)."""
    w1, roots1, _ = run(sequence)
    _, roots2, _ = run(sequence)
    assert roots1 == roots2
    assert Ledger.open(w1.kv).state_root == roots1[-1]
