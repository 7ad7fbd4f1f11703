"""Hypothesis: a forced transfer takes frozen funds first and never grows the frozen part.

For any balance split into frozen, held and free parts (a partial freeze, a hold, optionally a whole
account freeze) and any forced transfer out of it, after the transfer:

- frozen did not increase, and is exactly max(0, frozen_before - amount) (frozen funds go first);
- held is unchanged (a forced transfer never takes held funds);
- frozen + held <= balance;
- a forced transfer of more than the unheld part is refused and changes nothing.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from clearline.v1 import receipt_pb2 as R
from clearline.v1 import tx_pb2 as T
from tests.unit.ledger.helpers import ALICE, BOB, COMPLIANCE, NOTARY, USD, World, genesis


@st.composite
def setups(draw: st.DrawFn) -> tuple[int, int, int, bool, int]:
    """(balance, frozen, held, whole-account freeze, forced amount)."""
    balance = draw(st.integers(1, 6_000_000))
    held = draw(st.integers(0, balance))
    frozen = draw(st.integers(0, balance - held))
    amount = draw(st.one_of(st.integers(1, balance), st.integers(1, 6_000_000)))
    return balance, frozen, held, draw(st.booleans()), amount


@settings(max_examples=150, deadline=None)
@given(setups())
def test_a_forced_transfer_never_increases_frozen(setup: tuple[int, int, int, bool, int]) -> None:
    balance, frozen, held, whole, amount = setup
    w = World.create(genesis(alice_usd=balance))
    if held:
        op = T.CreateHold(
            hold_id="h", instrument=USD, payee=BOB.address, notary=NOTARY.address, amount=held,
            expires_at_height=1_000,
        )  # fmt: skip
        assert w.run1(w.tx(ALICE, "create_hold", op)).status == R.TX_STATUS_OK
    if frozen:
        freeze = T.FreezeAmount(account=ALICE.address, instrument=USD, amount=frozen, reason="order")
        assert w.run1(w.tx(COMPLIANCE, "freeze_amount", freeze)).status == R.TX_STATUS_OK
    if whole:
        freeze_all = T.FreezeAccount(account=ALICE.address, reason="order")
        assert w.run1(w.tx(COMPLIANCE, "freeze_account", freeze_all)).status == R.TX_STATUS_OK
    assert w.balance(ALICE) == (balance, frozen, held)

    op = T.ForcedTransfer(instrument=USD, to=BOB.address, amount=amount, reason="court order")
    setattr(op, "from", ALICE.address)
    receipt = w.run1(w.tx(COMPLIANCE, "forced_transfer", op))

    after, frozen_after, held_after = w.balance(ALICE)
    if amount > balance - held:
        assert receipt.status == R.TX_STATUS_INSUFFICIENT_FUNDS
        assert (after, frozen_after, held_after) == (balance, frozen, held)
        return
    assert receipt.status == R.TX_STATUS_OK, receipt.message
    assert after == balance - amount
    assert held_after == held
    assert frozen_after <= frozen
    assert frozen_after == max(0, frozen - amount)
    assert frozen_after + held_after <= after
