"""Every invalid case of every operation: rejected with its reason code, state unchanged but the nonce.

Each case sets up its world with successful transactions, then builds the offending transaction;
`assert_rejected` runs it alone in a block and checks the receipt's status and that no state entry
changed except the signer's nonce (and the ledger's height record).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from clearline.v1 import receipt_pb2 as R
from clearline.v1 import tx_pb2 as T
from node.ledger.state import U64_MAX
from node.txs import VerifiedTx
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
    USD_CAP,
    VAL1,
    VAL2,
    World,
    assert_rejected,
    genesis,
    key,
)
from tests.unit.ledger.helpers import ALICE as A

Case = Callable[[World], tuple[VerifiedTx, int] | tuple[VerifiedTx, int, dict[str, Any]]]
CASES: dict[str, Case] = {}
EUR = T.InstrumentId(issuer=BANK.address, symbol="EUR")
NOBODY = key("nobody")


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


def ok(w: World, *txs: VerifiedTx) -> None:
    for tx in txs:
        r = w.run1(tx)
        assert r.status == R.TX_STATUS_OK, r.message


def transfer(
    w: World, amount: int = 100, to: bytes = BOB.address, inst: T.InstrumentId = USD, **kw: Any
) -> VerifiedTx:
    return w.tx(A, "transfer", T.Transfer(instrument=inst, to=to, amount=amount), **kw)


def freeze(w: World, who: bytes) -> VerifiedTx:
    return w.tx(COMPLIANCE, "freeze_account", T.FreezeAccount(account=who, reason="order"))


def pause(w: World, inst: T.InstrumentId = USD) -> VerifiedTx:
    return w.tx(COMPLIANCE, "pause_instrument", T.PauseInstrument(instrument=inst, reason="incident"))


def set_kyc(
    w: World, who: bytes, status: int = T.KYC_STATUS_APPROVED, expires_at: int = 0, signer: Any = BANK
) -> VerifiedTx:
    """signer's own KYC decision about who (BANK's by default: alice's and bob's home bank)."""
    return w.tx(signer, "set_kyc", T.SetKyc(account=who, status=status, expires_at=expires_at))  # type: ignore[arg-type]


def limits(w: World, who: bytes, per_tx: int = 0, per_day: int = 0) -> VerifiedTx:
    return w.tx(
        COMPLIANCE,
        "set_limits",
        T.SetLimits(account=who, instrument=USD, max_per_tx=per_tx, max_per_day=per_day),
    )


def mint(
    w: World,
    amount: int = 10,
    to: bytes = A.address,
    ref: str = "dep-1",
    signer: Any = BANK,
    inst: T.InstrumentId = USD,
) -> VerifiedTx:
    return w.tx(signer, "mint", T.Mint(instrument=inst, to=to, amount=amount, deposit_ref=ref))


def hold(
    w: World, hold_id: str = "h1", amount: int = 100, height: int = 0, time_s: int = 0, **kw: Any
) -> VerifiedTx:
    if not height and not time_s:
        height = w.ledger.height + 100
    op = T.CreateHold(
        hold_id=hold_id,
        instrument=USD,
        payee=BOB.address,
        notary=NOTARY.address,
        amount=amount,
        expires_at_height=height,
        expires_at_time=time_s,
    )
    signer = kw.pop("signer", A)
    if "payer" in kw:
        op.payer = kw.pop("payer")
    return w.tx(signer, "create_hold", op, **kw)


def dvp(w: World, usd: int = 100, bond: int = 10, ref: str = "s1", **kw: Any) -> VerifiedTx:
    op = T.Settle(settlement_ref=ref)
    op.legs.add(instrument=USD, to=CAROL.address, amount=usd).__setattr__("from", A.address)
    op.legs.add(instrument=BOND, to=A.address, amount=bond).__setattr__("from", CAROL.address)
    return w.tx(A, "settle", op, **{"cosigners": [CAROL], **kw})


# --- envelope / replay ---------------------------------------------------------------------------


@case
def replayed_nonce(w: World) -> tuple[VerifiedTx, int, dict[str, Any]]:
    ok(w, transfer(w, 1))
    return transfer(w, 1, nonce=0), R.TX_STATUS_BAD_NONCE, {"nonce_moves": False}


@case
def future_nonce(w: World) -> tuple[VerifiedTx, int, dict[str, Any]]:
    return transfer(w, 1, nonce=5), R.TX_STATUS_BAD_NONCE, {"nonce_moves": False}


@case
def duplicate_client_ref(w: World) -> tuple[VerifiedTx, int, dict[str, Any]]:
    ok(w, transfer(w, 1, client_ref="pay-1"))
    return transfer(w, 2, client_ref="pay-1"), R.TX_STATUS_DUPLICATE_CLIENT_REF, {"nonce_moves": False}


@case
def unknown_signer(w: World) -> tuple[VerifiedTx, int, dict[str, Any]]:
    tx = w.tx(NOBODY, "transfer", T.Transfer(instrument=USD, to=BOB.address, amount=1))
    return tx, R.TX_STATUS_UNKNOWN_ACCOUNT, {"nonce_moves": False}


@case
def signer_did_not_sign(w: World) -> tuple[VerifiedTx, int, dict[str, Any]]:
    return transfer(w, 1, signers=[BOB]), R.TX_STATUS_MISSING_SIGNATURE, {"nonce_moves": False}


# --- transfer --------------------------------------------------------------------------------------


@case
def transfer_unknown_instrument(w: World) -> tuple[VerifiedTx, int]:
    return transfer(w, inst=EUR), R.TX_STATUS_UNKNOWN_INSTRUMENT


@case
def transfer_zero(w: World) -> tuple[VerifiedTx, int]:
    return transfer(w, 0), R.TX_STATUS_INVALID_AMOUNT


@case
def transfer_to_self(w: World) -> tuple[VerifiedTx, int]:
    return transfer(w, 1, to=A.address), R.TX_STATUS_INVALID_ARGUMENT


@case
def transfer_insufficient(w: World) -> tuple[VerifiedTx, int]:
    return transfer(w, 1001), R.TX_STATUS_INSUFFICIENT_FUNDS


@case
def transfer_insufficient_after_partial_freeze(w: World) -> tuple[VerifiedTx, int]:
    ok(w, w.tx(COMPLIANCE, "freeze_amount", T.FreezeAmount(account=A.address, instrument=USD, amount=950)))
    return transfer(w, 100), R.TX_STATUS_INSUFFICIENT_FUNDS


@case
def transfer_insufficient_after_hold(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w, amount=950))
    return transfer(w, 100), R.TX_STATUS_INSUFFICIENT_FUNDS


@case
def transfer_unknown_payee(w: World) -> tuple[VerifiedTx, int]:
    return transfer(w, 1, to=NOBODY.address), R.TX_STATUS_UNKNOWN_ACCOUNT


@case
def transfer_payee_kyc_pending(w: World) -> tuple[VerifiedTx, int]:
    return transfer(w, 1, to=MALLORY.address), R.TX_STATUS_KYC_NOT_APPROVED


@case
def transfer_payer_kyc_revoked(w: World) -> tuple[VerifiedTx, int]:
    ok(w, set_kyc(w, A.address, T.KYC_STATUS_REVOKED))
    return transfer(w, 1), R.TX_STATUS_KYC_NOT_APPROVED


@case
def transfer_payer_kyc_expired(w: World) -> tuple[VerifiedTx, int, dict[str, Any]]:
    ok(w, set_kyc(w, A.address, expires_at=T0 + 10))
    return transfer(w, 1), R.TX_STATUS_KYC_EXPIRED, {"time_ms": T0_MS + 10_000}


@case
def transfer_payee_kyc_expired(w: World) -> tuple[VerifiedTx, int, dict[str, Any]]:
    ok(w, set_kyc(w, BOB.address, expires_at=T0 + 10))
    return transfer(w, 1), R.TX_STATUS_KYC_EXPIRED, {"time_ms": T0_MS + 99_000}


@case
def transfer_payer_kyc_revoked_by_both_banks(w: World) -> tuple[VerifiedTx, int]:
    ok(w, set_kyc(w, A.address, signer=BANK2))  # approved by two banks
    ok(
        w,
        set_kyc(w, A.address, T.KYC_STATUS_REVOKED),
        set_kyc(w, A.address, T.KYC_STATUS_REVOKED, signer=BANK2),
    )
    return transfer(w, 1), R.TX_STATUS_KYC_NOT_APPROVED


@case
def transfer_payee_kyc_revoked_by_bank_and_network(w: World) -> tuple[VerifiedTx, int]:
    ok(w, set_kyc(w, BOB.address, signer=COMPLIANCE))  # bob's bank and the network approve him
    ok(w, set_kyc(w, BOB.address, T.KYC_STATUS_REVOKED, signer=COMPLIANCE))
    ok(w, set_kyc(w, BOB.address, T.KYC_STATUS_REJECTED))
    return transfer(w, 1), R.TX_STATUS_KYC_NOT_APPROVED


@case
def transfer_payer_every_kyc_approval_expired(w: World) -> tuple[VerifiedTx, int, dict[str, Any]]:
    ok(w, set_kyc(w, A.address, expires_at=T0 + 10), set_kyc(w, A.address, expires_at=T0 + 20, signer=BANK2))
    return transfer(w, 1), R.TX_STATUS_KYC_EXPIRED, {"time_ms": T0_MS + 20_000}


@case
def transfer_payer_frozen(w: World) -> tuple[VerifiedTx, int]:
    ok(w, freeze(w, A.address))
    return transfer(w, 1), R.TX_STATUS_ACCOUNT_FROZEN


@case
def transfer_payee_frozen(w: World) -> tuple[VerifiedTx, int]:
    ok(w, freeze(w, BOB.address))
    return transfer(w, 1), R.TX_STATUS_ACCOUNT_FROZEN


@case
def transfer_paused(w: World) -> tuple[VerifiedTx, int]:
    ok(w, pause(w))
    return transfer(w, 1), R.TX_STATUS_INSTRUMENT_PAUSED


@case
def transfer_over_limit_per_tx(w: World) -> tuple[VerifiedTx, int]:
    ok(w, limits(w, A.address, per_tx=50))
    return transfer(w, 51), R.TX_STATUS_LIMIT_PER_TX_EXCEEDED


@case
def transfer_over_limit_per_day(w: World) -> tuple[VerifiedTx, int]:
    ok(w, limits(w, A.address, per_day=150), transfer(w, 100))
    return transfer(w, 51), R.TX_STATUS_LIMIT_PER_DAY_EXCEEDED


@case
def transfer_signer_closed(w: World) -> tuple[VerifiedTx, int]:
    new = key("alice-new")
    ok(
        w,
        w.tx(
            COMPLIANCE,
            "recover_account",
            T.RecoverAccount(
                lost_account=A.address, new_account=new.address, new_public_key=new.public_key, reason="lost"
            ),
        ),
    )
    return transfer(w, 1), R.TX_STATUS_ACCOUNT_CLOSED


# --- mint / redeem ----------------------------------------------------------------------------------


@case
def mint_by_non_issuer(w: World) -> tuple[VerifiedTx, int]:
    return mint(w, signer=ADMIN), R.TX_STATUS_UNAUTHORIZED


@case
def mint_by_other_issuer(w: World) -> tuple[VerifiedTx, int]:
    return mint(w, signer=BANK2), R.TX_STATUS_UNAUTHORIZED


@case
def mint_duplicate_deposit_ref(w: World) -> tuple[VerifiedTx, int]:
    ok(w, mint(w, ref="d-7"))
    return mint(w, ref="d-7", to=BOB.address), R.TX_STATUS_DUPLICATE_DEPOSIT_REF


@case
def mint_over_cap(w: World) -> tuple[VerifiedTx, int]:
    return mint(w, amount=USD_CAP - 1500 + 1), R.TX_STATUS_SUPPLY_CAP_EXCEEDED


@case
def mint_recipient_not_approved(w: World) -> tuple[VerifiedTx, int]:
    return mint(w, to=MALLORY.address), R.TX_STATUS_KYC_NOT_APPROVED


@case
def mint_recipient_unknown(w: World) -> tuple[VerifiedTx, int]:
    return mint(w, to=NOBODY.address), R.TX_STATUS_UNKNOWN_ACCOUNT


@case
def mint_recipient_frozen(w: World) -> tuple[VerifiedTx, int]:
    ok(w, freeze(w, A.address))
    return mint(w), R.TX_STATUS_ACCOUNT_FROZEN


@case
def mint_paused(w: World) -> tuple[VerifiedTx, int]:
    ok(w, pause(w))
    return mint(w), R.TX_STATUS_INSTRUMENT_PAUSED


@case
def mint_zero(w: World) -> tuple[VerifiedTx, int]:
    return mint(w, amount=0), R.TX_STATUS_INVALID_AMOUNT


@case
def mint_without_ref(w: World) -> tuple[VerifiedTx, int]:
    return mint(w, ref=""), R.TX_STATUS_INVALID_ARGUMENT


@case
def mint_supply_overflow(w: World) -> tuple[VerifiedTx, int]:
    return mint(w, amount=10, to=A.address, signer=BANK2, inst=BOND), R.TX_STATUS_INVALID_AMOUNT


@case
def mint_unknown_instrument(w: World) -> tuple[VerifiedTx, int]:
    return mint(w, inst=EUR), R.TX_STATUS_UNKNOWN_INSTRUMENT


def redeem(w: World, amount: int = 10, ref: str = "r-1") -> VerifiedTx:
    return w.tx(A, "redeem", T.Redeem(instrument=USD, amount=amount, redemption_ref=ref))


@case
def redeem_insufficient(w: World) -> tuple[VerifiedTx, int]:
    return redeem(w, 1001), R.TX_STATUS_INSUFFICIENT_FUNDS


@case
def redeem_duplicate_ref(w: World) -> tuple[VerifiedTx, int]:
    ok(w, redeem(w, 1, "r-9"))
    return redeem(w, 1, "r-9"), R.TX_STATUS_DUPLICATE_REDEMPTION_REF


@case
def redeem_frozen(w: World) -> tuple[VerifiedTx, int]:
    ok(w, freeze(w, A.address))
    return redeem(w), R.TX_STATUS_ACCOUNT_FROZEN


@case
def redeem_paused(w: World) -> tuple[VerifiedTx, int]:
    ok(w, pause(w))
    return redeem(w), R.TX_STATUS_INSTRUMENT_PAUSED


# --- KYC, instruments, roles, validators ---------------------------------------------------------


@case
def kyc_by_participant(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(
        A, "set_kyc", T.SetKyc(account=BOB.address, status=T.KYC_STATUS_REVOKED)
    ), R.TX_STATUS_UNAUTHORIZED


@case
def kyc_by_admin(w: World) -> tuple[VerifiedTx, int]:
    return set_kyc(w, A.address, T.KYC_STATUS_REVOKED, signer=ADMIN), R.TX_STATUS_UNAUTHORIZED


@case
def kyc_by_participant_with_an_approval(w: World) -> tuple[VerifiedTx, int]:
    # Being approved by a bank gives no say over anyone's KYC (not even one's own).
    return set_kyc(w, A.address, T.KYC_STATUS_APPROVED, signer=A), R.TX_STATUS_UNAUTHORIZED


@case
def kyc_of_closed_account(w: World) -> tuple[VerifiedTx, int]:
    ok(w, recover(w))
    return set_kyc(w, A.address, T.KYC_STATUS_REVOKED, signer=BANK2), R.TX_STATUS_ACCOUNT_CLOSED


@case
def kyc_unknown_status(w: World) -> tuple[VerifiedTx, int]:
    return set_kyc(w, A.address, 9, signer=COMPLIANCE), R.TX_STATUS_INVALID_ARGUMENT


@case
def kyc_new_account_without_key(w: World) -> tuple[VerifiedTx, int]:
    return set_kyc(w, NOBODY.address), R.TX_STATUS_INVALID_ARGUMENT


@case
def kyc_new_account_wrong_key(w: World) -> tuple[VerifiedTx, int]:
    tx = w.tx(
        BANK,
        "set_kyc",
        T.SetKyc(account=NOBODY.address, public_key=BOB.public_key, status=T.KYC_STATUS_APPROVED),
    )
    return tx, R.TX_STATUS_INVALID_ARGUMENT


@case
def kyc_without_status(w: World) -> tuple[VerifiedTx, int]:
    return set_kyc(w, BOB.address, T.KYC_STATUS_UNSPECIFIED), R.TX_STATUS_INVALID_ARGUMENT


def create_instrument(
    w: World,
    signer: Any = ADMIN,
    issuer: bytes = BANK.address,
    symbol: str = "EUR",
    kind: int = T.INSTRUMENT_KIND_DEPOSIT_TOKEN,
) -> VerifiedTx:
    op = T.CreateInstrument(
        instrument=T.InstrumentId(issuer=issuer, symbol=symbol),
        name="Euro",
        currency="EUR",
        decimals=2,
        kind=kind,
    )  # type: ignore[arg-type]
    return w.tx(signer, "create_instrument", op)


@case
def create_instrument_by_non_admin(w: World) -> tuple[VerifiedTx, int]:
    return create_instrument(w, signer=BANK), R.TX_STATUS_UNAUTHORIZED


@case
def create_instrument_exists(w: World) -> tuple[VerifiedTx, int]:
    return create_instrument(w, symbol="USD"), R.TX_STATUS_INSTRUMENT_EXISTS


@case
def create_instrument_issuer_without_role(w: World) -> tuple[VerifiedTx, int]:
    return create_instrument(w, issuer=BOB.address), R.TX_STATUS_UNAUTHORIZED


@case
def create_instrument_issuer_unknown(w: World) -> tuple[VerifiedTx, int]:
    return create_instrument(w, issuer=NOBODY.address), R.TX_STATUS_UNKNOWN_ACCOUNT


@case
def create_instrument_empty_symbol(w: World) -> tuple[VerifiedTx, int]:
    return create_instrument(w, symbol=""), R.TX_STATUS_INVALID_ARGUMENT


@case
def create_instrument_without_kind(w: World) -> tuple[VerifiedTx, int]:
    return create_instrument(w, kind=T.INSTRUMENT_KIND_UNSPECIFIED), R.TX_STATUS_INVALID_ARGUMENT


@case
def grant_role_by_non_admin(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(
        COMPLIANCE, "grant_role", T.GrantRole(account=BOB.address, role=T.ROLE_ISSUER)
    ), R.TX_STATUS_UNAUTHORIZED


@case
def grant_unknown_role(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(
        ADMIN, "grant_role", T.GrantRole(account=BOB.address, role=T.ROLE_UNSPECIFIED)
    ), R.TX_STATUS_INVALID_ARGUMENT


@case
def grant_role_new_account_without_key(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(
        ADMIN, "grant_role", T.GrantRole(account=NOBODY.address, role=T.ROLE_AUDITOR)
    ), R.TX_STATUS_INVALID_ARGUMENT


@case
def grant_role_to_self(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(
        ADMIN, "grant_role", T.GrantRole(account=ADMIN.address, role=T.ROLE_COMPLIANCE)
    ), R.TX_STATUS_UNAUTHORIZED


@case
def grant_held_role_to_self(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(
        ADMIN, "grant_role", T.GrantRole(account=ADMIN.address, role=T.ROLE_ADMIN)
    ), R.TX_STATUS_UNAUTHORIZED


@case
def revoke_missing_role(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(
        ADMIN, "revoke_role", T.RevokeRole(account=BOB.address, role=T.ROLE_ISSUER)
    ), R.TX_STATUS_INVALID_ARGUMENT


@case
def revoke_own_admin(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(
        ADMIN, "revoke_role", T.RevokeRole(account=ADMIN.address, role=T.ROLE_ADMIN)
    ), R.TX_STATUS_INVALID_ARGUMENT


@case
def revoke_role_by_non_admin(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(
        BANK, "revoke_role", T.RevokeRole(account=A.address, role=T.ROLE_PARTICIPANT)
    ), R.TX_STATUS_UNAUTHORIZED


def change_validator(w: World, pk: bytes, power: int, signer: Any = ADMIN) -> VerifiedTx:
    return w.tx(signer, "change_validator", T.ChangeValidator(public_key=pk, power=power))


@case
def validator_change_by_non_admin(w: World) -> tuple[VerifiedTx, int]:
    return change_validator(w, NOBODY.public_key, 5, signer=COMPLIANCE), R.TX_STATUS_UNAUTHORIZED


@case
def validator_remove_unknown(w: World) -> tuple[VerifiedTx, int]:
    return change_validator(w, NOBODY.public_key, 0), R.TX_STATUS_INVALID_VALIDATOR_SET


@case
def validator_remove_last(w: World) -> tuple[VerifiedTx, int]:
    ok(w, change_validator(w, VAL1.public_key, 0))
    return change_validator(w, VAL2.public_key, 0), R.TX_STATUS_INVALID_VALIDATOR_SET


@case
def validator_bad_key(w: World) -> tuple[VerifiedTx, int]:
    return change_validator(w, b"short", 5), R.TX_STATUS_INVALID_VALIDATOR_SET


# --- compliance ------------------------------------------------------------------------------------


@case
def freeze_by_participant(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(A, "freeze_account", T.FreezeAccount(account=BOB.address)), R.TX_STATUS_UNAUTHORIZED


@case
def freeze_by_issuer(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(BANK, "freeze_account", T.FreezeAccount(account=BOB.address)), R.TX_STATUS_UNAUTHORIZED


@case
def freeze_unknown_account(w: World) -> tuple[VerifiedTx, int]:
    return freeze(w, NOBODY.address), R.TX_STATUS_UNKNOWN_ACCOUNT


@case
def unfreeze_by_participant(w: World) -> tuple[VerifiedTx, int]:
    ok(w, freeze(w, BOB.address))
    return w.tx(A, "unfreeze_account", T.UnfreezeAccount(account=BOB.address)), R.TX_STATUS_UNAUTHORIZED


@case
def freeze_amount_over_available(w: World) -> tuple[VerifiedTx, int]:
    tx = w.tx(COMPLIANCE, "freeze_amount", T.FreezeAmount(account=A.address, instrument=USD, amount=1001))
    return tx, R.TX_STATUS_INSUFFICIENT_FUNDS


@case
def freeze_amount_by_participant(w: World) -> tuple[VerifiedTx, int]:
    tx = w.tx(BOB, "freeze_amount", T.FreezeAmount(account=A.address, instrument=USD, amount=1))
    return tx, R.TX_STATUS_UNAUTHORIZED


@case
def unfreeze_amount_over_frozen(w: World) -> tuple[VerifiedTx, int]:
    ok(w, w.tx(COMPLIANCE, "freeze_amount", T.FreezeAmount(account=A.address, instrument=USD, amount=10)))
    tx = w.tx(COMPLIANCE, "unfreeze_amount", T.UnfreezeAmount(account=A.address, instrument=USD, amount=11))
    return tx, R.TX_STATUS_INSUFFICIENT_FROZEN


@case
def pause_by_participant(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(A, "pause_instrument", T.PauseInstrument(instrument=USD)), R.TX_STATUS_UNAUTHORIZED


@case
def pause_unknown_instrument(w: World) -> tuple[VerifiedTx, int]:
    return pause(w, EUR), R.TX_STATUS_UNKNOWN_INSTRUMENT


@case
def unpause_by_issuer(w: World) -> tuple[VerifiedTx, int]:
    ok(w, pause(w))
    return w.tx(BANK, "unpause_instrument", T.UnpauseInstrument(instrument=USD)), R.TX_STATUS_UNAUTHORIZED


def forced(w: World, amount: int = 100, reason: str = "court order", signer: Any = COMPLIANCE) -> VerifiedTx:
    op = T.ForcedTransfer(instrument=USD, to=BOB.address, amount=amount, reason=reason)
    setattr(op, "from", A.address)
    return w.tx(signer, "forced_transfer", op)


@case
def forced_transfer_by_issuer(w: World) -> tuple[VerifiedTx, int]:
    return forced(w, signer=BANK), R.TX_STATUS_UNAUTHORIZED


@case
def forced_transfer_without_reason(w: World) -> tuple[VerifiedTx, int]:
    return forced(w, reason=""), R.TX_STATUS_INVALID_ARGUMENT


@case
def forced_transfer_insufficient(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w, amount=950))
    return forced(w, amount=51), R.TX_STATUS_INSUFFICIENT_FUNDS


def recover(
    w: World,
    new_name: str = "alice-new",
    signer: Any = COMPLIANCE,
    reason: str = "lost key",
    new_key: Any = None,
    lost: bytes = A.address,
) -> VerifiedTx:
    new = key(new_name)
    pk = new.public_key if new_key is None else new_key
    op = T.RecoverAccount(lost_account=lost, new_account=new.address, new_public_key=pk, reason=reason)
    return w.tx(signer, "recover_account", op)


@case
def recover_by_admin(w: World) -> tuple[VerifiedTx, int]:
    return recover(w, signer=ADMIN), R.TX_STATUS_UNAUTHORIZED


@case
def recover_without_reason(w: World) -> tuple[VerifiedTx, int]:
    return recover(w, reason=""), R.TX_STATUS_INVALID_ARGUMENT


@case
def recover_into_existing(w: World) -> tuple[VerifiedTx, int]:
    return recover(w, new_name="bob"), R.TX_STATUS_INVALID_ARGUMENT


@case
def recover_wrong_key(w: World) -> tuple[VerifiedTx, int]:
    return recover(w, new_key=BOB.public_key), R.TX_STATUS_INVALID_ARGUMENT


@case
def recover_with_active_hold(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w, amount=5))
    return recover(w), R.TX_STATUS_INVALID_ARGUMENT


@case
def recover_closed(w: World) -> tuple[VerifiedTx, int]:
    ok(w, recover(w))
    return recover(w, new_name="alice-newer"), R.TX_STATUS_ACCOUNT_CLOSED


# Role separation: compliance cannot take over a privileged account (and its role) by recovering it.


@case
def recover_admin(w: World) -> tuple[VerifiedTx, int]:
    return recover(w, new_name="compliance-controlled", lost=ADMIN.address), R.TX_STATUS_UNAUTHORIZED


@case
def recover_issuer(w: World) -> tuple[VerifiedTx, int]:
    return recover(w, new_name="compliance-controlled", lost=BANK.address), R.TX_STATUS_UNAUTHORIZED


@case
def recover_own_compliance_account(w: World) -> tuple[VerifiedTx, int]:
    return recover(w, new_name="compliance-new", lost=COMPLIANCE.address), R.TX_STATUS_UNAUTHORIZED


@case
def recover_other_compliance_account(w: World) -> tuple[VerifiedTx, int]:
    ok(w, w.tx(ADMIN, "grant_role", T.GrantRole(account=BOB.address, role=T.ROLE_COMPLIANCE)))
    return recover(w, new_name="bob-new", lost=BOB.address), R.TX_STATUS_UNAUTHORIZED


@case
def recover_auditor(w: World) -> tuple[VerifiedTx, int]:
    aud = key("auditor")
    grant = T.GrantRole(account=aud.address, role=T.ROLE_AUDITOR, public_key=aud.public_key)
    ok(w, w.tx(ADMIN, "grant_role", grant))
    return recover(w, new_name="auditor-new", lost=aud.address), R.TX_STATUS_UNAUTHORIZED


@case
def recover_participant_also_granted_issuer(w: World) -> tuple[VerifiedTx, int]:
    ok(w, w.tx(ADMIN, "grant_role", T.GrantRole(account=A.address, role=T.ROLE_ISSUER)))
    return recover(w), R.TX_STATUS_UNAUTHORIZED


@case
def set_limits_by_participant(w: World) -> tuple[VerifiedTx, int]:
    tx = w.tx(A, "set_limits", T.SetLimits(account=A.address, instrument=USD, max_per_tx=1))
    return tx, R.TX_STATUS_UNAUTHORIZED


@case
def set_limits_by_other_issuer(w: World) -> tuple[VerifiedTx, int]:
    tx = w.tx(BANK2, "set_limits", T.SetLimits(account=A.address, instrument=USD, max_per_tx=1))
    return tx, R.TX_STATUS_UNAUTHORIZED


# --- holds -----------------------------------------------------------------------------------------


@case
def hold_insufficient(w: World) -> tuple[VerifiedTx, int]:
    return hold(w, amount=1001), R.TX_STATUS_INSUFFICIENT_FUNDS


@case
def hold_exists(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w, "dup", amount=1))
    return hold(w, "dup", amount=1), R.TX_STATUS_HOLD_EXISTS


@case
def hold_without_expiry(w: World) -> tuple[VerifiedTx, int]:
    op = T.CreateHold(hold_id="x", instrument=USD, payee=BOB.address, notary=NOTARY.address, amount=1)
    return w.tx(A, "create_hold", op), R.TX_STATUS_INVALID_ARGUMENT


@case
def hold_expiry_in_past(w: World) -> tuple[VerifiedTx, int]:
    return hold(w, time_s=T0), R.TX_STATUS_HOLD_EXPIRED


@case
def hold_expiry_height_now(w: World) -> tuple[VerifiedTx, int]:
    return hold(w, height=w.ledger.height + 1), R.TX_STATUS_HOLD_EXPIRED


@case
def hold_payee_not_approved(w: World) -> tuple[VerifiedTx, int]:
    op = T.CreateHold(
        hold_id="x",
        instrument=USD,
        payee=MALLORY.address,
        notary=NOTARY.address,
        amount=1,
        expires_at_height=50,
    )
    return w.tx(A, "create_hold", op), R.TX_STATUS_KYC_NOT_APPROVED


@case
def hold_on_behalf_by_participant(w: World) -> tuple[VerifiedTx, int]:
    return hold(w, signer=BOB, payer=A.address), R.TX_STATUS_UNAUTHORIZED


@case
def hold_over_limit(w: World) -> tuple[VerifiedTx, int]:
    ok(w, limits(w, A.address, per_tx=10))
    return hold(w, amount=11), R.TX_STATUS_LIMIT_PER_TX_EXCEEDED


@case
def hold_paused(w: World) -> tuple[VerifiedTx, int]:
    ok(w, pause(w))
    return hold(w), R.TX_STATUS_INSTRUMENT_PAUSED


@case
def execute_hold_by_payee(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w))
    return w.tx(BOB, "execute_hold", T.ExecuteHold(hold_id="h1")), R.TX_STATUS_UNAUTHORIZED


@case
def execute_unknown_hold(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="nope")), R.TX_STATUS_UNKNOWN_HOLD


@case
def execute_hold_over_amount(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w, amount=10))
    return w.tx(
        NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1", amount=11)
    ), R.TX_STATUS_INSUFFICIENT_FUNDS


@case
def execute_expired_hold(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w, height=w.ledger.height + 3))
    w.run()
    w.run()  # the hold expires at the start of this block
    return w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1")), R.TX_STATUS_HOLD_EXPIRED


@case
def execute_released_hold(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w), w.tx(BOB, "release_hold", T.ReleaseHold(hold_id="h1")))
    return w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1")), R.TX_STATUS_INVALID_ARGUMENT


@case
def execute_hold_payee_frozen(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w), freeze(w, BOB.address))
    return w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1")), R.TX_STATUS_ACCOUNT_FROZEN


# No value leaves a frozen account through a hold made before the freeze (nor through a frozen notary).


@case
def execute_hold_payer_frozen(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w), freeze(w, A.address))
    return w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1")), R.TX_STATUS_ACCOUNT_FROZEN


@case
def execute_hold_in_part_payer_frozen(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w), freeze(w, A.address))
    return w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1", amount=1)), R.TX_STATUS_ACCOUNT_FROZEN


@case
def execute_hold_on_behalf_payer_frozen(w: World) -> tuple[VerifiedTx, int]:
    ok(w, freeze(w, A.address))
    ok(w, hold(w, signer=COMPLIANCE, payer=A.address))
    return w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1")), R.TX_STATUS_ACCOUNT_FROZEN


@case
def execute_hold_notary_frozen(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w), freeze(w, NOTARY.address))
    return w.tx(NOTARY, "execute_hold", T.ExecuteHold(hold_id="h1")), R.TX_STATUS_ACCOUNT_FROZEN


@case
def release_hold_by_stranger(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w))
    return w.tx(CAROL, "release_hold", T.ReleaseHold(hold_id="h1")), R.TX_STATUS_UNAUTHORIZED


@case
def release_hold_by_payer(w: World) -> tuple[VerifiedTx, int]:
    ok(w, hold(w))
    return w.tx(A, "release_hold", T.ReleaseHold(hold_id="h1")), R.TX_STATUS_UNAUTHORIZED


# --- settlement ------------------------------------------------------------------------------------


@case
def settle_missing_signer(w: World) -> tuple[VerifiedTx, int]:
    return dvp(w, cosigners=[]), R.TX_STATUS_MISSING_SIGNATURE


@case
def settle_leg_insufficient(w: World) -> tuple[VerifiedTx, int]:
    return dvp(w, bond=101), R.TX_STATUS_INSUFFICIENT_FUNDS


@case
def settle_first_leg_ok_second_paused(w: World) -> tuple[VerifiedTx, int]:
    ok(w, pause(w, BOND))
    return dvp(w), R.TX_STATUS_INSTRUMENT_PAUSED


@case
def settle_duplicate_ref(w: World) -> tuple[VerifiedTx, int]:
    ok(w, dvp(w, 1, 1, ref="s-9"))
    return dvp(w, 1, 1, ref="s-9"), R.TX_STATUS_DUPLICATE_SETTLEMENT_REF


@case
def settle_no_legs(w: World) -> tuple[VerifiedTx, int]:
    return w.tx(A, "settle", T.Settle(settlement_ref="s")), R.TX_STATUS_INVALID_ARGUMENT


@case
def settle_leg_party_frozen(w: World) -> tuple[VerifiedTx, int]:
    ok(w, freeze(w, CAROL.address))
    return dvp(w), R.TX_STATUS_ACCOUNT_FROZEN


@case
def settle_leg_over_limit(w: World) -> tuple[VerifiedTx, int]:
    ok(w, limits(w, A.address, per_day=99))
    return dvp(w), R.TX_STATUS_LIMIT_PER_DAY_EXCEEDED


@pytest.mark.parametrize("name", sorted(CASES))
def test_rejected_and_state_unchanged(name: str) -> None:
    g = genesis()
    if name == "mint_supply_overflow":  # supply <= 2^64-1 bounds every balance, so only supply can overflow
        g = genesis(carol_bond=U64_MAX - 3)
    w = World.create(g)
    out = CASES[name](w)
    tx, status = out[0], out[1]
    kwargs: dict[str, Any] = out[2] if len(out) == 3 else {}  # type: ignore[misc]
    assert_rejected(w, tx, status, **kwargs)


def test_duplicate_client_ref_names_first_tx() -> None:
    w = World.create()
    first = transfer(w, 1, client_ref="pay-1")
    ok(w, first)
    r = assert_rejected(
        w, transfer(w, 2, client_ref="pay-1"), R.TX_STATUS_DUPLICATE_CLIENT_REF, nonce_moves=False
    )
    attrs = {a.key: a.value for a in r.events[0].attributes}
    assert attrs["first_tx_hash"] == first.tx_hash.hex()
    # The same reference under another signer is independent.
    assert (
        w.run1(
            w.tx(BOB, "transfer", T.Transfer(instrument=USD, to=A.address, amount=1), client_ref="pay-1")
        ).status
        == R.TX_STATUS_OK
    )


def test_failed_tx_does_not_consume_client_ref() -> None:
    w = World.create()
    assert_rejected(w, transfer(w, 5000, client_ref="pay-2"), R.TX_STATUS_INSUFFICIENT_FUNDS)
    assert w.run1(transfer(w, 5, client_ref="pay-2")).status == R.TX_STATUS_OK


def test_a_refusal_names_the_instrument_with_its_issuer() -> None:
    """ "instrument 'USD' is paused" did not say whose USD: every message names ISSUER:SYMBOL."""
    w = World.create()
    ok(w, pause(w))
    receipt = assert_rejected(w, transfer(w, 1), R.TX_STATUS_INSTRUMENT_PAUSED)
    assert f"instrument {BANK.address.hex()}:USD is paused" in receipt.message
    odd = T.InstrumentId(issuer=BANK.address, symbol="US D\n")
    unknown = w.tx(A, "transfer", T.Transfer(instrument=odd, to=BOB.address, amount=1))
    receipt = assert_rejected(w, unknown, R.TX_STATUS_UNKNOWN_INSTRUMENT)
    assert f"{BANK.address.hex()}:'US D\\n' does not exist" in receipt.message  # quoted: cannot garble
