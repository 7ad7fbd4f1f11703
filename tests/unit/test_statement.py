"""node/statement.py: the movements read from receipts add up, for every account and instrument, to
the change of its balance, through every operation that changes a balance total (and none of those
that only move money between a balance's parts)."""

from __future__ import annotations

from collections import defaultdict

from clearline.v1 import receipt_pb2
from clearline.v1 import tx_pb2 as T
from node import statement
from tests.unit.ledger.helpers import ALICE, BOB, BOND, CAROL, COMPLIANCE, NOTARY, USD, World, key
from tests.unit.ledger.test_rejections import dvp, forced, hold, mint, recover, transfer

PEOPLE = [ALICE, BOB, CAROL, NOTARY, key("alice-new")]
INSTRUMENTS = [USD, BOND]


def _ok(w: World, *txs: object) -> list[receipt_pb2.Receipt]:
    receipts = w.run(*txs)  # type: ignore[arg-type]
    assert all(r.status == receipt_pb2.TX_STATUS_OK for r in receipts), [r.message for r in receipts]
    return receipts


def test_movements_of_every_operation_add_up_to_the_balances() -> None:
    w = World.create()
    start = {(p.address, i.symbol): w.balance(p, i)[0] for p in PEOPLE for i in INSTRUMENTS}
    receipts: list[receipt_pb2.Receipt] = []
    receipts += _ok(w, mint(w, 50))  # + alice
    receipts += _ok(w, transfer(w, 30))  # alice -> bob
    receipts += _ok(w, hold(w, "h1", amount=40))  # alice's 40 held: no change of the total
    receipts += _ok(w, w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1", amount=15)))  # alice -> bob
    receipts += _ok(w, w.tx(NOTARY, "release_hold", T.ReleaseHold(hold_id="h1")))  # back: no change
    receipts += _ok(w, dvp(w, usd=20, bond=5))  # alice -> carol USD; carol -> alice BOND
    receipts += _ok(
        w, w.tx(COMPLIANCE, "freeze_amount", T.FreezeAmount(account=ALICE.address, instrument=USD, amount=10))
    )
    receipts += _ok(w, forced(w, 25))  # alice -> bob, by compliance
    receipts += _ok(w, w.tx(BOB, "redeem", T.Redeem(instrument=USD, amount=7, redemption_ref="r1")))
    receipts += _ok(w, recover(w))  # everything of alice's -> alice-new
    moved: dict[tuple[bytes, str], int] = defaultdict(int)
    kinds = set()
    for r in receipts:
        for p in PEOPLE:
            for inst in INSTRUMENTS:
                for mv in statement.movements(r, p.address, inst):
                    moved[(p.address, inst.symbol)] += mv.signed
                    kinds.add(mv.kind)
    for p in PEOPLE:
        for inst in INSTRUMENTS:
            k = (p.address, inst.symbol)
            assert start[k] + moved[k] == w.balance(p, inst)[0], (p.name, inst.symbol)
    assert kinds == {"mint", "transfer", "hold_executed", "settlement_leg", "forced_transfer", "redeem",
                     "balance_recovered"}  # fmt: skip
    assert w.balance(ALICE, USD)[0] == 0 and w.balance(key("alice-new"), USD)[0] > 0


def test_movements_name_the_counterparty_and_only_the_asked_instrument() -> None:
    event = receipt_pb2.Event(
        kind="transfer", accounts=[ALICE.address, BOB.address], instrument=USD, amount=9
    )
    receipt = receipt_pb2.Receipt(events=[event])
    (out,) = statement.movements(receipt, ALICE.address, USD)
    assert (out.kind, out.counterparty, out.signed) == ("transfer", BOB.address, -9)
    (into,) = statement.movements(receipt, BOB.address, USD)
    assert (into.counterparty, into.signed) == (ALICE.address, 9)
    assert list(statement.movements(receipt, ALICE.address, BOND)) == []
    assert list(statement.movements(receipt, CAROL.address, USD)) == []
    created = receipt_pb2.Event(
        kind="hold_created", accounts=[ALICE.address, BOB.address], instrument=USD, amount=9
    )
    assert list(statement.movements(receipt_pb2.Receipt(events=[created]), ALICE.address, USD)) == []
