"""The valid case of every operation: its effect on balances, records and events."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from clearline.v1 import receipt_pb2 as R
from clearline.v1 import state_pb2
from clearline.v1 import tx_pb2 as T
from node.ledger.ops import compute_kyc
from node.ledger.state import MS_PER_DAY
from tests.unit.ledger.helpers import (
    ADMIN,
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
    VAL1,
    Key,
    World,
    genesis,
    key,
)
from tests.unit.ledger.helpers import ALICE as A
from tests.unit.ledger.test_rejections import dvp, forced, hold, limits, mint, recover, set_kyc, transfer


def ok(w: World, *txs: object, time_ms: int | None = None) -> list[R.Receipt]:
    receipts = w.run(*txs, time_ms=time_ms)  # type: ignore[arg-type]
    for r in receipts:
        assert r.status == R.TX_STATUS_OK, r.message
    return receipts


def supply(w: World, inst: T.InstrumentId = USD) -> tuple[int, int, int]:
    i = w.ledger.get_instrument(inst)
    assert i is not None
    return i.supply, i.minted, i.redeemed


def test_transfer_moves_funds_and_bumps_nonce() -> None:
    w = World.create()
    (r,) = ok(w, transfer(w, 100))
    assert w.balance(A) == (900, 0, 0) and w.balance(BOB) == (600, 0, 0)
    assert w.nonce(A) == 1 and r.height == 1 and r.index == 0
    assert r.events[0].kind == "transfer" and r.events[0].amount == 100
    assert list(r.events[0].accounts) == [A.address, BOB.address]


def test_transfer_whole_balance_removes_the_entry() -> None:
    w = World.create()
    ok(w, transfer(w, 1000))
    acct = w.ledger.get_account(A.address)
    assert acct is not None and len(acct.balances) == 0


def test_daily_limit_resets_next_utc_day() -> None:
    w = World.create()
    ok(w, limits(w, A.address, per_day=150), transfer(w, 100))
    assert w.run1(transfer(w, 100)).status == R.TX_STATUS_LIMIT_PER_DAY_EXCEEDED
    next_day = (T0_MS // MS_PER_DAY + 1) * MS_PER_DAY
    ok(w, transfer(w, 150), time_ms=next_day)
    assert w.balance(A) == (750, 0, 0)


def test_mint_and_redeem_track_supply() -> None:
    w = World.create()
    assert supply(w) == (1500, 1500, 0)
    (r,) = ok(w, mint(w, 250, ref="wire-1"))
    assert r.events[0].kind == "mint"
    assert w.balance(A) == (1250, 0, 0) and supply(w) == (1750, 1750, 0)
    ok(w, w.tx(A, "redeem", T.Redeem(instrument=USD, amount=50, redemption_ref="out-1")))
    assert w.balance(A) == (1200, 0, 0) and supply(w) == (1700, 1750, 50)


def test_set_kyc_creates_and_updates_accounts() -> None:
    w = World.create()
    dave = key("dave")
    ok(
        w,
        w.tx(
            BANK,
            "set_kyc",
            T.SetKyc(
                account=dave.address,
                public_key=dave.public_key,
                status=T.KYC_STATUS_APPROVED,
                expires_at=T0 + 3600,
            ),
        ),
    )
    acct = w.ledger.get_account(dave.address)
    assert acct is not None and acct.kyc_status == T.KYC_STATUS_APPROVED and acct.kyc_expires_at == T0 + 3600
    assert approvals(w, dave) == {BANK.address: (T.KYC_STATUS_APPROVED, T0 + 3600)}
    ok(w, transfer(w, 5, to=dave.address))
    (r,) = ok(w, set_kyc(w, dave.address, T.KYC_STATUS_REVOKED))
    assert attributes(r.events[0]) == {
        "approver": BANK.address.hex(),
        "expires_at": "0",
        "status": "KYC_STATUS_REVOKED",
    }
    assert w.run1(transfer(w, 5, to=dave.address)).status == R.TX_STATUS_KYC_NOT_APPROVED


def approvals(w: World, who: Key) -> dict[bytes, tuple[int, int]]:
    acct = w.ledger.get_account(who.address)
    assert acct is not None
    return {a.approver: (a.status, a.expires_at) for a in acct.kyc_approvals}


def kyc_of(w: World, who: Key) -> tuple[int, int]:
    acct = w.ledger.get_account(who.address)
    assert acct is not None
    return acct.kyc_status, acct.kyc_expires_at


def attributes(event: R.Event) -> dict[str, str]:
    return {a.key: a.value for a in event.attributes}


APPROVED, REVOKED = T.KYC_STATUS_APPROVED, T.KYC_STATUS_REVOKED


@pytest.mark.parametrize(
    ("entries", "derived"),
    [
        ({}, (0, 0)),
        ({b"": (T.KYC_STATUS_PENDING, 5)}, (T.KYC_STATUS_PENDING, 0)),
        ({b"a": (T.KYC_STATUS_PENDING, 0), b"b": (T.KYC_STATUS_REJECTED, 0)}, (T.KYC_STATUS_REJECTED, 0)),
        ({b"a": (T.KYC_STATUS_REJECTED, 0), b"b": (REVOKED, 0)}, (REVOKED, 0)),
        ({b"a": (REVOKED, 0), b"b": (APPROVED, 7)}, (APPROVED, 7)),
        ({b"a": (APPROVED, 7), b"b": (APPROVED, 9), b"": (REVOKED, 99)}, (APPROVED, 9)),
        ({b"a": (APPROVED, 7), b"b": (APPROVED, 0)}, (APPROVED, 0)),
        ({b"a": (APPROVED, 0), b"b": (REVOKED, 0), b"": (T.KYC_STATUS_PENDING, 0)}, (APPROVED, 0)),
    ],
)
def test_compute_kyc(entries: dict[bytes, tuple[int, int]], derived: tuple[int, int]) -> None:
    assert compute_kyc(MappingProxyType(entries)) == derived


def test_genesis_writes_each_accounts_kyc_approver() -> None:
    w = World.create()
    assert approvals(w, A) == {BANK.address: (APPROVED, 0)}
    assert approvals(w, CAROL) == {BANK2.address: (APPROVED, 0)}
    assert approvals(w, NOTARY) == {b"": (APPROVED, 0)}
    assert approvals(w, MALLORY) == {b"": (T.KYC_STATUS_PENDING, 0)}
    assert approvals(w, BANK) == {} and kyc_of(w, BANK) == (0, 0)


def test_an_issuer_changes_only_its_own_kyc_approval() -> None:
    """bank2 cannot revoke or change bank's client: its SetKyc adds or changes bank2's own entry."""
    w = World.create()
    bank_entry = approvals(w, A)[BANK.address]
    (r,) = ok(w, set_kyc(w, A.address, REVOKED, signer=BANK2))
    assert attributes(r.events[0])["approver"] == BANK2.address.hex()
    assert approvals(w, A) == {BANK.address: bank_entry, BANK2.address: (REVOKED, 0)}
    assert kyc_of(w, A) == (APPROVED, 0)
    ok(w, transfer(w, 1), mint(w, 1))  # still sends and receives
    ok(w, set_kyc(w, A.address, APPROVED, expires_at=T0 + 5, signer=BANK2))
    ok(w, set_kyc(w, A.address, T.KYC_STATUS_REJECTED, signer=BANK2))
    assert approvals(w, A) == {BANK.address: bank_entry, BANK2.address: (T.KYC_STATUS_REJECTED, 0)}
    ok(w, transfer(w, 1))


def test_approved_by_two_banks_revoked_by_one_still_transfers() -> None:
    w = World.create()
    ok(w, set_kyc(w, A.address, signer=BANK2))
    ok(w, set_kyc(w, A.address, REVOKED))  # alice's home bank drops her
    assert approvals(w, A) == {BANK.address: (REVOKED, 0), BANK2.address: (APPROVED, 0)}
    ok(w, transfer(w, 1), w.tx(BOB, "transfer", T.Transfer(instrument=USD, to=A.address, amount=1)))
    ok(w, set_kyc(w, A.address, REVOKED, signer=BANK2))
    assert kyc_of(w, A) == (REVOKED, 0)
    assert w.run1(transfer(w, 1)).status == R.TX_STATUS_KYC_NOT_APPROVED
    ok(w, set_kyc(w, A.address, signer=BANK2))  # either bank can approve her again
    ok(w, transfer(w, 1))


def test_renewal_sets_a_new_expiry() -> None:
    w = World.create()
    ok(w, set_kyc(w, A.address, expires_at=T0 + 10))
    assert w.ledger.check_tx(transfer(w, 1), time_ms=T0_MS + 10_000).status == R.TX_STATUS_KYC_EXPIRED
    ok(w, set_kyc(w, A.address, expires_at=T0 + 100))  # the bank renews its approval
    assert approvals(w, A) == {BANK.address: (APPROVED, T0 + 100)}
    assert w.ledger.check_tx(transfer(w, 1), time_ms=T0_MS + 10_000).status == R.TX_STATUS_OK
    assert w.ledger.check_tx(transfer(w, 1), time_ms=T0_MS + 100_000).status == R.TX_STATUS_KYC_EXPIRED


def test_an_expired_approval_beside_a_live_one_still_transacts() -> None:
    w = World.create()
    ok(w, set_kyc(w, A.address, expires_at=T0 + 10), set_kyc(w, A.address, expires_at=T0 + 50, signer=BANK2))
    assert kyc_of(w, A) == (APPROVED, T0 + 50)
    assert w.ledger.check_tx(transfer(w, 1), time_ms=T0_MS + 20_000).status == R.TX_STATUS_OK
    assert w.ledger.check_tx(transfer(w, 1), time_ms=T0_MS + 50_000).status == R.TX_STATUS_KYC_EXPIRED
    ok(w, set_kyc(w, A.address, signer=COMPLIANCE))  # no expiry: the network's approval
    assert kyc_of(w, A) == (APPROVED, 0)
    ok(w, transfer(w, 1), time_ms=T0_MS + 60_000)


def test_compliance_sets_the_networks_approval_apart_from_the_issuers() -> None:
    w = World.create()
    (r,) = ok(w, set_kyc(w, A.address, signer=COMPLIANCE))
    assert attributes(r.events[0])["approver"] == ""
    ok(w, set_kyc(w, A.address, REVOKED))  # the bank's revocation leaves the network's approval
    assert approvals(w, A) == {BANK.address: (REVOKED, 0), b"": (APPROVED, 0)}
    ok(w, transfer(w, 1))
    ok(w, set_kyc(w, A.address, APPROVED), set_kyc(w, A.address, REVOKED, signer=COMPLIANCE))
    assert approvals(w, A) == {BANK.address: (APPROVED, 0), b"": (REVOKED, 0)}
    ok(w, transfer(w, 1))  # and compliance's revocation leaves the bank's
    # An issuer that also holds compliance sets its own (issuer) approval, not the network's.
    ok(w, w.tx(ADMIN, "grant_role", T.GrantRole(account=BANK2.address, role=T.ROLE_COMPLIANCE)))
    ok(w, set_kyc(w, A.address, REVOKED, signer=BANK2))
    assert approvals(w, A) == {BANK.address: (APPROVED, 0), BANK2.address: (REVOKED, 0), b"": (REVOKED, 0)}
    ok(w, transfer(w, 1))


def test_create_instrument_then_mint_it() -> None:
    w = World.create()
    eur = T.InstrumentId(issuer=BANK.address, symbol="EUR")
    op = T.CreateInstrument(
        instrument=eur,
        name="Euro",
        currency="EUR",
        decimals=2,
        supply_cap=100,
        kind=T.INSTRUMENT_KIND_DEPOSIT_TOKEN,
    )
    ok(w, w.tx(ADMIN, "create_instrument", op))
    inst = w.ledger.get_instrument(eur)
    assert inst is not None and inst.supply_cap == 100 and inst.supply == 0 and not inst.paused
    ok(w, mint(w, 100, inst=eur))
    assert w.run1(mint(w, 1, inst=eur, ref="dep-2")).status == R.TX_STATUS_SUPPLY_CAP_EXCEEDED


def test_freeze_and_unfreeze_account() -> None:
    w = World.create()
    (r,) = ok(w, w.tx(COMPLIANCE, "freeze_account", T.FreezeAccount(account=A.address, reason="fraud")))
    assert r.events[0].flagged
    assert w.run1(transfer(w, 1)).status == R.TX_STATUS_ACCOUNT_FROZEN
    ok(w, w.tx(COMPLIANCE, "unfreeze_account", T.UnfreezeAccount(account=A.address)))
    ok(w, transfer(w, 1))


def test_partial_freeze_limits_available() -> None:
    w = World.create()
    ok(w, w.tx(COMPLIANCE, "freeze_amount", T.FreezeAmount(account=A.address, instrument=USD, amount=900)))
    assert w.balance(A) == (1000, 900, 0)
    ok(w, transfer(w, 100))
    assert w.run1(transfer(w, 1)).status == R.TX_STATUS_INSUFFICIENT_FUNDS
    ok(
        w,
        w.tx(COMPLIANCE, "unfreeze_amount", T.UnfreezeAmount(account=A.address, instrument=USD, amount=400)),
    )
    assert w.balance(A) == (900, 500, 0)
    ok(w, transfer(w, 400))


def test_pause_and_unpause() -> None:
    w = World.create()
    ok(w, w.tx(COMPLIANCE, "pause_instrument", T.PauseInstrument(instrument=USD, reason="x")))
    inst = w.ledger.get_instrument(USD)
    assert inst is not None and inst.paused
    ok(w, w.tx(COMPLIANCE, "unpause_instrument", T.UnpauseInstrument(instrument=USD)))
    ok(w, transfer(w, 1))


def test_hold_execute_in_parts() -> None:
    w = World.create()
    ok(w, hold(w, "h1", 300))
    assert w.balance(A) == (1000, 0, 300)
    assert [h.hold_id for h in w.ledger.list_holds(A.address)] == ["h1"]
    assert w.run1(transfer(w, 701)).status == R.TX_STATUS_INSUFFICIENT_FUNDS
    ok(w, w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1", amount=100)))
    assert w.balance(A) == (900, 0, 200) and w.balance(BOB) == (600, 0, 0)
    ok(w, w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1")))
    assert w.balance(A) == (700, 0, 0) and w.balance(BOB) == (800, 0, 0)
    h = w.ledger.get_hold("h1")
    assert h is not None and h.state == state_pb2.HOLD_STATE_EXECUTED and h.executed == 300 and h.amount == 0
    assert w.ledger.list_holds(A.address) == []


def test_hold_release_by_payee_and_by_notary() -> None:
    w = World.create()
    ok(w, hold(w, "h1", 300), hold(w, "h2", 200, nonce=1))
    ok(w, w.tx(BOB, "release_hold", T.ReleaseHold(hold_id="h1")))
    ok(w, w.tx(NOTARY, "release_hold", T.ReleaseHold(hold_id="h2")))
    assert w.balance(A) == (1000, 0, 0)
    h = w.ledger.get_hold("h1")
    assert h is not None and h.state == state_pb2.HOLD_STATE_RELEASED and h.released == 300


def test_hold_expires_by_height_at_block_start() -> None:
    w = World.create()
    ok(w, hold(w, "h1", 300, height=3))  # block 1
    w.run()  # block 2: still active
    assert w.balance(A) == (1000, 0, 300)
    result = w.execute()  # block 3: expired before any transaction
    w.commit(result)
    assert [e.kind for e in result.events] == ["hold_expired"]
    (event,) = result.events
    assert list(event.accounts) == [A.address, BOB.address]  # the payer sees it (and the payee)
    assert event.instrument == USD and event.amount == 300
    assert [(a.key, a.value) for a in event.attributes] == [("hold_id", "h1")]
    assert all(not r.events for r in result.receipts)  # not in a transaction's receipt
    assert w.balance(A) == (1000, 0, 0)
    h = w.ledger.get_hold("h1")
    assert h is not None and h.state == state_pb2.HOLD_STATE_EXPIRED and h.amount == 0
    assert h.released == 300


def test_hold_expires_by_time() -> None:
    w = World.create()
    ok(w, hold(w, "h1", 300, time_s=T0 + 150))
    w.run(time_ms=(T0 + 149) * 1000)
    assert w.balance(A) == (1000, 0, 300)
    result = w.execute(time_ms=(T0 + 150) * 1000)
    w.commit(result)
    assert [e.kind for e in result.events] == ["hold_expired"] and w.balance(A) == (1000, 0, 0)


def test_hold_on_behalf_by_compliance() -> None:
    w = World.create()
    (r,) = ok(w, hold(w, "gov", 100, signer=COMPLIANCE, payer=A.address))
    assert r.events[0].flagged and w.balance(A) == (1000, 0, 100)


def test_settlement_dvp_moves_both_legs() -> None:
    w = World.create()
    (r,) = ok(w, dvp(w, 100, 10))
    assert w.balance(A) == (900, 0, 0) and w.balance(A, BOND) == (10, 0, 0)
    assert w.balance(CAROL) == (100, 0, 0) and w.balance(CAROL, BOND) == (90, 0, 0)
    assert [e.kind for e in r.events] == ["settlement_leg", "settlement_leg", "settled"]
    assert w.nonce(A) == 1 and w.nonce(CAROL) == 0


def test_settlement_by_third_party_signer() -> None:
    """An agent submits (its nonce), every paying party co-signs."""
    w = World.create()
    op = T.Settle(settlement_ref="pvp")
    leg = op.legs.add(instrument=USD, to=CAROL.address, amount=5)
    setattr(leg, "from", A.address)
    ok(w, w.tx(NOTARY, "settle", op, cosigners=[A]))
    assert w.balance(CAROL) == (5, 0, 0) and w.nonce(NOTARY) == 1 and w.nonce(A) == 0


def test_forced_transfer_can_take_frozen_funds() -> None:
    w = World.create()
    ok(w, w.tx(COMPLIANCE, "freeze_amount", T.FreezeAmount(account=A.address, instrument=USD, amount=1000)))
    (r,) = ok(w, forced(w, 600))
    assert r.events[0].flagged and r.events[0].reason == "court order"
    assert w.balance(A) == (400, 400, 0) and w.balance(BOB) == (1100, 0, 0)


def test_forced_transfer_takes_frozen_funds_first() -> None:
    # The incident: 5,136,600 with 5,000,000 frozen; a court order takes 5,000,000 and left all
    # 136,600 frozen. Frozen funds go first: nothing remains frozen.
    w = World.create(genesis(alice_usd=5_136_600))
    freeze = T.FreezeAmount(account=A.address, instrument=USD, amount=5_000_000, reason="garnish")
    ok(w, w.tx(COMPLIANCE, "freeze_amount", freeze))
    ok(w, forced(w, 5_000_000))
    assert w.balance(A) == (136_600, 0, 0)
    assert w.run1(transfer(w, 136_600)).status == R.TX_STATUS_OK


def test_forced_transfer_of_less_than_the_frozen_part_leaves_the_rest_frozen() -> None:
    w = World.create()
    ok(w, hold(w, "h1", 300))
    ok(w, w.tx(COMPLIANCE, "freeze_amount", T.FreezeAmount(account=A.address, instrument=USD, amount=500)))
    ok(w, forced(w, 200))  # 1000 = 500 frozen + 300 held + 200 free
    assert w.balance(A) == (800, 300, 300)
    ok(w, forced(w, 400))
    assert w.balance(A) == (400, 0, 300)


def test_recovery_moves_everything_to_the_new_key() -> None:
    w = World.create()
    ok(w, limits(w, A.address, per_tx=500), set_kyc(w, A.address, REVOKED, signer=BANK2))
    new = key("alice-new")
    (r,) = ok(w, recover(w))
    assert r.events[0].flagged
    old = w.ledger.get_account(A.address)
    acct = w.ledger.get_account(new.address)
    assert old is not None and old.closed and old.recovered_to == new.address and not old.balances
    assert acct is not None and acct.public_key == new.public_key and acct.kyc_status == T.KYC_STATUS_APPROVED
    assert approvals(w, new) == {BANK.address: (APPROVED, 0), BANK2.address: (REVOKED, 0)}
    assert w.balance(new) == (1000, 0, 0) and len(acct.limits) == 1
    ok(w, w.tx(new, "transfer", T.Transfer(instrument=USD, to=BOB.address, amount=10)))
    ok(w, set_kyc(w, new.address, REVOKED))  # the approvals moved: revoked by both, the new key stops
    assert w.run1(w.tx(new, "transfer", T.Transfer(instrument=USD, to=BOB.address, amount=1))).status == (
        R.TX_STATUS_KYC_NOT_APPROVED
    )


def test_grant_and_revoke_role() -> None:
    w = World.create()
    ok(w, w.tx(ADMIN, "grant_role", T.GrantRole(account=BOB.address, role=T.ROLE_COMPLIANCE)))
    ok(w, w.tx(BOB, "freeze_account", T.FreezeAccount(account=A.address)))
    ok(w, w.tx(ADMIN, "revoke_role", T.RevokeRole(account=BOB.address, role=T.ROLE_COMPLIANCE)))
    assert (
        w.run1(w.tx(BOB, "unfreeze_account", T.UnfreezeAccount(account=A.address))).status
        == R.TX_STATUS_UNAUTHORIZED
    )


def test_grant_role_creates_account() -> None:
    w = World.create()
    aud = key("auditor")
    ok(
        w,
        w.tx(
            ADMIN,
            "grant_role",
            T.GrantRole(account=aud.address, role=T.ROLE_AUDITOR, public_key=aud.public_key),
        ),
    )
    acct = w.ledger.get_account(aud.address)
    assert acct is not None and list(acct.roles) == [T.ROLE_AUDITOR]


def test_change_validator_recorded_for_consensus() -> None:
    w = World.create()
    new = key("validator3")
    tx_add = w.tx(ADMIN, "change_validator", T.ChangeValidator(public_key=new.public_key, power=5))
    result = w.execute(tx_add)
    assert result.validator_updates == ((new.public_key, 5),)
    w.commit(result)
    assert (new.public_key, 5) in w.ledger.validators()
    result = w.execute(
        w.tx(ADMIN, "change_validator", T.ChangeValidator(public_key=VAL1.public_key, power=0))
    )
    w.commit(result)
    assert result.validator_updates == ((VAL1.public_key, 0),)
    assert [pk for pk, _ in w.ledger.validators()] == sorted([new.public_key, key("validator2").public_key])


def test_holds_in_one_minute_bucket_expire_at_their_own_second() -> None:
    w = World.create()
    base = (T0 // 60 + 2) * 60  # a minute boundary in the future
    ok(w, hold(w, "a", 10, time_s=base + 10), hold(w, "b", 20, time_s=base + 40, nonce=1))
    w.run(time_ms=(base + 10) * 1000)  # "a" expires, "b" stays in the same bucket
    assert w.balance(A) == (1000, 0, 20)
    assert [h.hold_id for h in w.ledger.list_holds(A.address)] == ["b"]
    result = w.execute(time_ms=(base + 3600) * 1000)  # a long gap: the bucket is still visited
    w.commit(result)
    assert [e.kind for e in result.events] == ["hold_expired"] and w.balance(A) == (1000, 0, 0)
    b = w.ledger.get_hold("b")
    assert b is not None and b.state == state_pb2.HOLD_STATE_EXPIRED


def test_executed_hold_is_skipped_by_expiry() -> None:
    w = World.create()
    ok(w, hold(w, "h", 10, height=3))
    ok(w, w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h")))
    result = w.execute()  # height 3: the bucket holds an executed hold, nothing to release
    w.commit(result)
    assert not result.events and w.balance(A) == (990, 0, 0)


# --- a freeze and pending holds ----------------------------------------------------------------------


def freeze_a(w: World) -> object:
    return w.tx(COMPLIANCE, "freeze_account", T.FreezeAccount(account=A.address, reason="order"))


def test_frozen_payers_hold_released_returns_funds_to_it() -> None:
    w = World.create()
    ok(w, hold(w, "h1", 300), hold(w, "h2", 200, nonce=1))
    ok(w, freeze_a(w))
    (r1,) = ok(w, w.tx(NOTARY, "release_hold", T.ReleaseHold(hold_id="h1")))
    (r2,) = ok(w, w.tx(BOB, "release_hold", T.ReleaseHold(hold_id="h2")))
    assert r1.events[0].kind == r2.events[0].kind == "hold_released"
    assert w.balance(A) == (1000, 0, 0) and w.balance(BOB) == (500, 0, 0)
    acct = w.ledger.get_account(A.address)
    assert acct is not None and acct.frozen  # the value is back, and still frozen
    assert w.run1(transfer(w, 1)).status == R.TX_STATUS_ACCOUNT_FROZEN


def test_frozen_payers_hold_expires_back_to_it() -> None:
    w = World.create()
    ok(w, hold(w, "h1", 300, height=3))  # block 1
    ok(w, freeze_a(w))  # block 2
    result = w.execute()  # block 3: the hold expires at the block's start
    w.commit(result)
    assert [e.kind for e in result.events] == ["hold_expired"]
    assert w.balance(A) == (1000, 0, 0) and w.balance(BOB) == (500, 0, 0)


def test_hold_executes_once_the_payer_is_unfrozen() -> None:
    w = World.create()
    ok(w, hold(w, "h1", 300))
    ok(w, freeze_a(w))
    assert (
        w.run1(w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1"))).status == R.TX_STATUS_ACCOUNT_FROZEN
    )
    h = w.ledger.get_hold("h1")
    assert h is not None and h.state == state_pb2.HOLD_STATE_ACTIVE and h.amount == 300
    ok(w, w.tx(COMPLIANCE, "unfreeze_account", T.UnfreezeAccount(account=A.address)))
    ok(w, w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1")))
    assert w.balance(A) == (700, 0, 0) and w.balance(BOB) == (800, 0, 0)


def test_hold_execution_never_takes_the_frozen_part() -> None:
    """Held and frozen are disjoint parts of a balance: a partial freeze leaves a hold made before it
    executable, and the execution takes only the held part."""
    w = World.create()
    ok(w, hold(w, "h1", 300))
    freeze = T.FreezeAmount(account=A.address, instrument=USD, amount=700)
    ok(w, w.tx(COMPLIANCE, "freeze_amount", freeze))  # all that is not held
    assert w.balance(A) == (1000, 700, 300)
    ok(w, w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1")))
    assert w.balance(A) == (700, 700, 0) and w.balance(BOB) == (800, 0, 0)
    assert w.run1(transfer(w, 1)).status == R.TX_STATUS_INSUFFICIENT_FUNDS


def test_forced_transfer_out_of_a_frozen_account() -> None:
    w = World.create()
    ok(w, hold(w, "h1", 300))
    ok(w, freeze_a(w))
    (r,) = ok(w, forced(w, 700))  # everything not held: a court order may take frozen funds
    assert r.events[0].kind == "forced_transfer" and r.events[0].flagged
    assert w.balance(A) == (300, 0, 300) and w.balance(BOB) == (1200, 0, 0)


def test_recovery_of_a_frozen_account_keeps_the_freeze() -> None:
    w = World.create()
    freeze = T.FreezeAmount(account=A.address, instrument=USD, amount=100)
    ok(w, w.tx(COMPLIANCE, "freeze_amount", freeze))
    ok(w, freeze_a(w))
    new = key("alice-new")
    ok(w, recover(w))
    acct = w.ledger.get_account(new.address)
    assert acct is not None and acct.frozen and w.balance(new) == (1000, 100, 0)
    tx = w.tx(new, "transfer", T.Transfer(instrument=USD, to=BOB.address, amount=1))
    assert w.run1(tx).status == R.TX_STATUS_ACCOUNT_FROZEN


# --- role separation ---------------------------------------------------------------------------------


def test_admin_rotates_a_privileged_key() -> None:
    """Privileged keys are rotated by the admin, not recovered by compliance: grant the role to the
    new key, revoke it from the old one. The new admin can then retire the old admin."""
    w = World.create()
    admin2 = key("admin-new")
    compliance2 = key("compliance-new")
    grant = T.GrantRole(account=admin2.address, role=T.ROLE_ADMIN, public_key=admin2.public_key)
    ok(w, w.tx(ADMIN, "grant_role", grant))
    ok(w, w.tx(admin2, "revoke_role", T.RevokeRole(account=ADMIN.address, role=T.ROLE_ADMIN)))
    grant = T.GrantRole(
        account=compliance2.address, role=T.ROLE_COMPLIANCE, public_key=compliance2.public_key
    )
    ok(w, w.tx(admin2, "grant_role", grant))
    ok(w, w.tx(admin2, "revoke_role", T.RevokeRole(account=COMPLIANCE.address, role=T.ROLE_COMPLIANCE)))
    old_admin = w.tx(ADMIN, "grant_role", T.GrantRole(account=BOB.address, role=T.ROLE_ADMIN))
    assert w.run1(old_admin).status == R.TX_STATUS_UNAUTHORIZED
    old_compliance = w.tx(COMPLIANCE, "freeze_account", T.FreezeAccount(account=A.address))
    assert w.run1(old_compliance).status == R.TX_STATUS_UNAUTHORIZED
    ok(w, w.tx(compliance2, "freeze_account", T.FreezeAccount(account=A.address)))


def test_account_stripped_of_its_roles_by_the_admin_can_be_recovered() -> None:
    """A privileged account that also holds funds: the admin revokes its roles, then compliance
    recovers its funds to a new key (two parties, each acting within its own role)."""
    w = World.create()
    ok(w, w.tx(ADMIN, "grant_role", T.GrantRole(account=A.address, role=T.ROLE_ISSUER)))
    assert w.run1(recover(w)).status == R.TX_STATUS_UNAUTHORIZED
    ok(w, w.tx(ADMIN, "revoke_role", T.RevokeRole(account=A.address, role=T.ROLE_ISSUER)))
    new = key("alice-new")
    ok(w, recover(w, new_name="alice-new"))
    acct = w.ledger.get_account(new.address)
    assert acct is not None and list(acct.roles) == [T.ROLE_PARTICIPANT] and w.balance(new) == (1000, 0, 0)
