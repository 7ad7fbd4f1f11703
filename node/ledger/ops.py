"""The ledger's operations: one `process_*` function per transaction kind, plus hold expiry.

Spec style: each function first runs every check of its rule (`check_*` helpers raise `TxInvalid`
with the receipt status), then changes state through the StateView's transaction layer. The
transaction layer is dropped if anything raises, so an operation is all-or-nothing even when it has
several steps (a settlement's legs). Each adds its events to the receipt (ctx.events). The hot
transfer path, whose effects come after all its checks and cannot fail, writes the block layer
directly (StateView.account_direct) to save a copy per transaction.

Authority (who may sign what):
    admin       create instrument, grant/revoke role (of another account), change validator
    issuer      mint of its own instruments, set its own KYC approval, set limits on its own instruments
    compliance  set the network's KYC approval, freeze/unfreeze (account or amount), pause/unpause,
                forced transfer, recovery (of accounts without a privileged role), set limits, holds on
                behalf of a payer
    payer       transfer, redeem, create hold, every paying leg of a settlement (must be a tx signer)
    notary      execute a hold (not while frozen); the notary or the payee releases it

KYC. Each approver keeps its own decision about an account (Account.kyc_approvals, one entry per
approver); no one changes another's:
    - SetKyc signed by an issuer sets that issuer's entry (approver = the signer's address), even if
      the signer also holds compliance. Signed by compliance without the issuer role, it sets the
      network's entry (approver = empty). Anyone else: UNAUTHORIZED. So a bank approves, renews (a
      new expires_at) and revokes only its own approval: bank-a cannot revoke bank-b's client.
    - The account may transact while ANY approval is APPROVED and unexpired. Its kyc_status and
      kyc_expires_at are derived from the approvals by compute_kyc whenever they change (APPROVED
      with the latest expiry of the approved entries, 0 if one never expires; otherwise the
      strongest refusal: REVOKED, then REJECTED, then PENDING), so check_active and the transfer
      path read two fields. Revoked by one bank and approved by another, the account still
      transacts; revoked by every approver, it does not (KYC_NOT_APPROVED).
    - Genesis: an account's kyc_status is the decision of its kyc_approver (an issuer of the same
      genesis, or empty for compliance). Recovery moves the approvals to the new key with the rest.

Freezes. A freeze is an authority's stop on an account's money, so it must hold on every path out:
    - No value leaves a frozen account but by compliance's forced transfer (a court order). Transfer,
      redeem, every paying settlement leg and a hold the payer creates require an active payer. A hold
      made before the freeze (or by compliance on the frozen payer's behalf) is not executed while
      the payer is frozen (ACCOUNT_FROZEN); it can still be released or expire, which returns its
      value to the frozen account, and it executes normally once the account is unfrozen.
    - A frozen notary does not execute holds: its authority over other accounts' money is suspended
      with its account. Releasing (value back to the payer) stays open to it and to the payee.
    - Frozen and held are disjoint parts of a balance (frozen + held <= balance): freeze_amount only
      freezes available funds and a hold only holds available funds. Executing a hold takes its held
      part only, never the frozen part, so a hold made before a partial freeze stays executable.
    - Recovery moves a frozen account whole: the new key inherits the freeze and the frozen parts.
    - A forced transfer takes any funds but held ones, frozen funds first: after it the frozen part is
      max(0, frozen - amount) (compute_frozen_after_forced), so it never grows and never outlives
      the funds the order took (5,136,600 with 5,000,000 frozen, 5,000,000 taken: 0 frozen after).

Roles. One compromised key must not take over a role it does not hold (admin also controls the
validator set and every role):
    - Only an admin grants or revokes roles, never to or from itself (no self-grant, no revoking its
      own admin role): at least one admin always remains, and a role comes from another key.
    - Recovery re-keys an account with its roles to a key compliance names, so compliance recovers
      only accounts whose roles are at most participant. An account holding admin, issuer, compliance
      or auditor is refused (UNAUTHORIZED): privileged keys are rotated by an admin (grant the role to
      the new key, revoke it from the old one); if such an account also holds funds, an admin revokes
      its roles first and compliance then recovers it (two parties, each within its role).
    - Not covered here: an admin can grant any role to another key it controls (admin is the root of
      trust; a multi-party admin would need multi-signature rules).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from clearline.v1 import receipt_pb2, state_pb2, tx_pb2
from node import crypto
from node.errors import quote
from node.ledger.errors import TxInvalid
from node.ledger.state import (
    ACCOUNT,
    META,
    MS_PER_DAY,
    NO_ENTRIES,
    U64_MAX,
    VALIDATORS,
    AccountRec,
    InstrumentKey,
    KycApprovals,
    StateView,
    client_ref_key,
    deposit_ref_key,
    encode_transfer_event,
    expiry_height_key,
    expiry_time_key,
    frozen_approvals,
    frozen_map,
    hold_key,
    ik_of,
    instrument_id,
    instrument_key,
    new_account,
    payer_holds_key,
    redemption_ref_key,
    settlement_ref_key,
)
from node.txs import VerifiedTx

S = receipt_pb2
ADMIN: Final = tx_pb2.ROLE_ADMIN
ISSUER: Final = tx_pb2.ROLE_ISSUER
COMPLIANCE: Final = tx_pb2.ROLE_COMPLIANCE
RECOVERABLE_ROLES: Final = frozenset((tx_pb2.ROLE_PARTICIPANT,))
"""The roles an account may hold and still be recovered by compliance (the others are privileged)."""
VALID_ROLES: Final = frozenset(
    (
        tx_pb2.ROLE_ADMIN,
        tx_pb2.ROLE_ISSUER,
        tx_pb2.ROLE_COMPLIANCE,
        tx_pb2.ROLE_AUDITOR,
        tx_pb2.ROLE_PARTICIPANT,
        tx_pb2.ROLE_OBSERVER,
    )
)
VALID_KYC: Final = frozenset(
    (
        tx_pb2.KYC_STATUS_PENDING,
        tx_pb2.KYC_STATUS_APPROVED,
        tx_pb2.KYC_STATUS_REJECTED,
        tx_pb2.KYC_STATUS_REVOKED,
    )
)
_APPROVED: Final = tx_pb2.KYC_STATUS_APPROVED
_REFUSALS: Final = (tx_pb2.KYC_STATUS_REVOKED, tx_pb2.KYC_STATUS_REJECTED, tx_pb2.KYC_STATUS_PENDING)
"""The derived status of an account with no APPROVED approval: the first of these any approver set."""
NETWORK_APPROVER: Final = b""
"""The approver of compliance's KYC decisions (the network's approval)."""
_OK: Final = receipt_pb2.TX_STATUS_OK
MAX_REF_LEN: Final = 128
MAX_SYMBOL_LEN: Final = 32
MAX_DECIMALS: Final = 18
MAX_LEGS: Final = 64
MAX_ACTIVE_HOLDS_PER_PAYER: Final = 256
MAX_VALIDATORS: Final = 150
MAX_TOTAL_POWER: Final = 2**60

EventSink: TypeAlias = RepeatedCompositeFieldContainer[receipt_pb2.Event]


@dataclass(slots=True)
class TxContext:
    """A transaction being applied and the block it is applied in (not frozen: built per tx, hot)."""

    tx: VerifiedTx
    height: int
    time_ms: int
    receipt: receipt_pb2.Receipt
    """The transaction's receipt (status and message are set by apply_tx)."""

    @property
    def events(self) -> EventSink:
        """Where the operation's events go (the receipt's events)."""
        return self.receipt.events

    @property
    def time_s(self) -> int:
        return self.time_ms // 1000

    @property
    def day(self) -> int:
        return self.time_ms // MS_PER_DAY


def fail(status: receipt_pb2.TxStatus.ValueType, message: str) -> TxInvalid:
    return TxInvalid(status, message)


# --- checks (raise TxInvalid, change nothing) ---------------------------------------------------


def get_account_checked(st: StateView, address: bytes, who: str) -> AccountRec:
    acct = st.account(address)
    if acct is None:
        raise fail(S.TX_STATUS_UNKNOWN_ACCOUNT, f"{who} {quote(address)} does not exist")
    return acct


def check_role(acct: AccountRec, *roles: int) -> None:
    if acct.roles.isdisjoint(roles):
        names = " or ".join(tx_pb2.Role.Name(r).removeprefix("ROLE_").lower() for r in roles)  # type: ignore[arg-type]
        raise fail(S.TX_STATUS_UNAUTHORIZED, f"account {acct.address.hex()} is not {names}")


def check_active(acct: AccountRec, ctx: TxContext, who: str) -> None:
    """Only open, KYC-approved, unexpired, unfrozen accounts send or receive."""
    if (
        acct.kyc_status == _APPROVED
        and not acct.frozen
        and not acct.closed
        and (not acct.kyc_expires_at or ctx.time_ms // 1000 < acct.kyc_expires_at)
    ):
        return
    if acct.closed:
        raise fail(S.TX_STATUS_ACCOUNT_CLOSED, f"{who} {acct.address.hex()} is closed")
    if acct.kyc_status != tx_pb2.KYC_STATUS_APPROVED:
        raise fail(S.TX_STATUS_KYC_NOT_APPROVED, f"{who} {acct.address.hex()} is not KYC-approved")
    if acct.kyc_expires_at and ctx.time_ms // 1000 >= acct.kyc_expires_at:
        raise fail(S.TX_STATUS_KYC_EXPIRED, f"KYC of {who} {acct.address.hex()} expired")
    if acct.frozen:
        raise fail(S.TX_STATUS_ACCOUNT_FROZEN, f"{who} {acct.address.hex()} is frozen")


def check_not_closed(acct: AccountRec, who: str) -> None:
    if acct.closed:
        raise fail(S.TX_STATUS_ACCOUNT_CLOSED, f"{who} {acct.address.hex()} is closed")


def check_amount(amount: int) -> None:
    if amount <= 0 or amount > U64_MAX:
        raise fail(S.TX_STATUS_INVALID_AMOUNT, f"amount must be in 1..2^64-1, got {amount}")


def check_ref(ref: str, what: str) -> None:
    if not ref or len(ref) > MAX_REF_LEN:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, f"{what} must be 1..{MAX_REF_LEN} characters")


def inst_text(ik: InstrumentKey) -> str:
    """An instrument in a message: ISSUER:SYMBOL with the issuer in hex (clients show names for
    addresses they know); a symbol that could garble a message is quoted."""
    symbol = ik[1]
    plain = (
        0 < len(symbol) <= MAX_SYMBOL_LEN and symbol.isprintable() and not any(c.isspace() for c in symbol)
    )
    return f"{bytes(ik[0][:32]).hex()}:{symbol if plain else quote(symbol)}"


def get_instrument_checked(
    st: StateView, instrument: tx_pb2.InstrumentId, *, allow_paused: bool = False
) -> tuple[InstrumentKey, state_pb2.Instrument]:
    ik = (instrument.issuer, instrument.symbol)
    inst = st.instrument(ik)
    if inst is None:
        raise fail(S.TX_STATUS_UNKNOWN_INSTRUMENT, f"instrument {inst_text(ik)} does not exist")
    if inst.paused and not allow_paused:
        raise fail(S.TX_STATUS_INSTRUMENT_PAUSED, f"instrument {inst_text(ik)} is paused")
    return ik, inst


def get_available(acct: AccountRec, ik: InstrumentKey) -> int:
    """available = balance - frozen - held."""
    amount, frozen, held = acct.balances.get(ik, (0, 0, 0))
    return amount - frozen - held


def check_available(acct: AccountRec, ik: InstrumentKey, amount: int) -> None:
    available = get_available(acct, ik)
    if available < amount:
        raise fail(
            S.TX_STATUS_INSUFFICIENT_FUNDS,
            f"account {acct.address.hex()} has {available} available of {inst_text(ik)}, needs {amount} "
            "(minor units)",
        )


def check_can_credit(acct: AccountRec, ik: InstrumentKey, amount: int) -> None:
    if acct.balances.get(ik, (0, 0, 0))[0] + amount > U64_MAX:
        raise fail(S.TX_STATUS_INVALID_AMOUNT, f"balance of {acct.address.hex()} would exceed 2^64-1")


def check_limits(acct: AccountRec, ik: InstrumentKey, amount: int, day: int) -> None:
    limit = acct.limits.get(ik)
    if limit is None:
        return
    max_tx, max_day = limit
    if max_tx and amount > max_tx:
        raise fail(S.TX_STATUS_LIMIT_PER_TX_EXCEEDED, f"{amount} exceeds the per-transaction limit {max_tx}")
    if max_day:
        used = get_used_today(acct, ik, day)
        if used + amount > max_day:
            raise fail(
                S.TX_STATUS_LIMIT_PER_DAY_EXCEEDED,
                f"{used} sent today plus {amount} exceeds the daily limit {max_day}",
            )


def get_used_today(acct: AccountRec, ik: InstrumentKey, day: int) -> int:
    usage = acct.usage.get(ik)
    return usage[1] if usage is not None and usage[0] == day else 0


# --- mutations (only after every check passed) ---------------------------------------------------


def increase_balance(acct: AccountRec, ik: InstrumentKey, amount: int) -> None:
    bal = acct.balances.get(ik)
    if bal is None:
        acct.balances[ik] = (amount, 0, 0)
    else:
        acct.balances[ik] = (bal[0] + amount, bal[1], bal[2])


def decrease_balance(acct: AccountRec, ik: InstrumentKey, amount: int) -> None:
    bal = acct.balances[ik]
    new = (bal[0] - amount, bal[1], bal[2])
    assert new[0] >= new[1] + new[2], "decrease below frozen + held"
    if new == (0, 0, 0):
        del acct.balances[ik]
    else:
        acct.balances[ik] = new


def compute_kyc(approvals: KycApprovals) -> tuple[int, int]:
    """The account's derived (kyc_status, kyc_expires_at) from its approvers' decisions.

    APPROVED if any approval is: expiring at the latest expiry among the approved ones, or never (0)
    if one of them never expires. Otherwise the strongest refusal any approver set (REVOKED, then
    REJECTED, then PENDING) with no expiry; (0, 0) without approvals.
    """
    expiries = [expires_at for status, expires_at in approvals.values() if status == _APPROVED]
    if expiries:
        return _APPROVED, 0 if 0 in expiries else max(expiries)
    statuses = {status for status, _ in approvals.values()}
    for status in _REFUSALS:
        if status in statuses:
            return status, 0
    return 0, 0


def get_kyc_approver(signer: AccountRec) -> bytes:
    """Whose approval a SetKyc by signer sets: an issuer's own (even if also compliance), else the
    network's (compliance). The caller has checked that signer is an issuer or compliance."""
    return signer.address if ISSUER in signer.roles else NETWORK_APPROVER


def set_kyc_approval(acct: AccountRec, approver: bytes, status: int, expires_at: int) -> None:
    """Replace approver's decision about acct and recompute acct's derived KYC fields."""
    acct.kyc_approvals = frozen_approvals({**acct.kyc_approvals, approver: (status, expires_at)})
    acct.kyc_status, acct.kyc_expires_at = compute_kyc(acct.kyc_approvals)


def record_usage(acct: AccountRec, ik: InstrumentKey, amount: int, day: int) -> None:
    limit = acct.limits.get(ik)
    if limit is not None and limit[1]:
        acct.usage = frozen_map({**acct.usage, ik: (day, get_used_today(acct, ik, day) + amount)})


def emit(
    sink: EventSink,
    kind: str,
    accounts: Sequence[bytes],
    instrument: tx_pb2.InstrumentId | None = None,
    amount: int = 0,
    *,
    flagged: bool = False,
    reason: str = "",
    **attributes: str,
) -> None:
    """Add an event to a receipt (or a block's events)."""
    ev = sink.add(kind=kind, accounts=accounts, amount=amount, flagged=flagged, reason=reason)
    if instrument is not None:
        ev.instrument.CopyFrom(instrument)
    for key in sorted(attributes):
        ev.attributes.add(key=key, value=attributes[key])


def move(st: StateView, ik: InstrumentKey, payer: bytes, payee: bytes, amount: int, day: int | None) -> None:
    """Debit payer and credit payee (checks done by the caller); day set = count toward limits."""
    src = st.account_mut(payer)
    decrease_balance(src, ik, amount)
    if day is not None:
        record_usage(src, ik, amount, day)
    increase_balance(st.account_mut(payee), ik, amount)


# --- operations ----------------------------------------------------------------------------------


def process_create_instrument(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.create_instrument
    check_role(signer, ADMIN)
    ik = ik_of(op.instrument)
    if len(ik[0]) != crypto.ADDRESS_LEN:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, "instrument issuer must be a 20-byte address")
    if not ik[1] or len(ik[1]) > MAX_SYMBOL_LEN:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, f"symbol must be 1..{MAX_SYMBOL_LEN} characters")
    if op.decimals > MAX_DECIMALS:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, f"decimals must be at most {MAX_DECIMALS}")
    if op.kind == tx_pb2.INSTRUMENT_KIND_UNSPECIFIED:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, "instrument kind is required")
    issuer = get_account_checked(st, ik[0], "issuer")
    check_role(issuer, ISSUER)
    if st.instrument(ik) is not None:
        raise fail(S.TX_STATUS_INSTRUMENT_EXISTS, f"instrument {inst_text(ik)} exists")
    st.put(
        instrument_key(ik),
        state_pb2.Instrument(
            id=op.instrument,
            name=op.name,
            currency=op.currency,
            decimals=op.decimals,
            supply_cap=op.supply_cap,
            kind=op.kind,
        ),
    )
    emit(ctx.events, "instrument_created", [ik[0]], op.instrument)


def _check_new_account_key(address: bytes, public_key: bytes) -> None:
    if len(public_key) != crypto.PUBLIC_KEY_LEN or crypto.address_of(public_key) != address:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, "a new account needs the public key of its address")


def process_set_kyc(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.set_kyc
    check_role(signer, ISSUER, COMPLIANCE)
    if op.status not in VALID_KYC:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, "KYC status is required")
    acct = st.account(op.account)
    if acct is None:
        _check_new_account_key(op.account, op.public_key)
        acct = new_account(op.account, op.public_key)
        st.put_account(acct)
    else:
        check_not_closed(acct, "account")
        acct = st.account_mut(op.account)
    # An issuer sets only its own approval, compliance only the network's: never another's.
    # An expires_at (unix seconds) at or before the block time is accepted on purpose: compliance may
    # record a decision that has already lapsed (an audit trail, a back-dated review), and such an
    # approval grants nothing (check_active reads it as expired). The client's builder refuses one
    # unless asked (allow_past_expiry), since it is usually a mistake of date or unit.
    approver = get_kyc_approver(signer)
    set_kyc_approval(acct, approver, op.status, op.expires_at)
    emit(
        ctx.events,
        "kyc_set",
        [op.account],
        status=tx_pb2.KycStatus.Name(op.status),
        expires_at=str(op.expires_at),
        approver=approver.hex(),
    )


def process_mint(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.mint
    check_role(signer, ISSUER)
    ik, inst = get_instrument_checked(st, op.instrument)
    if ik[0] != signer.address:
        raise fail(S.TX_STATUS_UNAUTHORIZED, "only an instrument's issuer mints it")
    check_amount(op.amount)
    check_ref(op.deposit_ref, "deposit reference")
    ref_key = deposit_ref_key(ik, op.deposit_ref)
    first = st.ref(ref_key)
    if first is not None:
        raise fail(
            S.TX_STATUS_DUPLICATE_DEPOSIT_REF,
            f"deposit {quote(op.deposit_ref)} was minted by {first.tx_hash.hex()}",
        )
    to = get_account_checked(st, op.to, "recipient")
    check_active(to, ctx, "recipient")
    if inst.supply_cap and inst.supply + op.amount > inst.supply_cap:
        raise fail(
            S.TX_STATUS_SUPPLY_CAP_EXCEEDED,
            f"supply {inst.supply} + {op.amount} exceeds cap {inst.supply_cap}",
        )
    if inst.supply + op.amount > U64_MAX or inst.minted + op.amount > U64_MAX:
        raise fail(S.TX_STATUS_INVALID_AMOUNT, "supply would exceed 2^64-1")
    check_can_credit(to, ik, op.amount)
    inst_mut = st.instrument_mut(ik)
    inst_mut.supply += op.amount
    inst_mut.minted += op.amount
    increase_balance(st.account_mut(op.to), ik, op.amount)
    st.put(ref_key, state_pb2.RefRecord(tx_hash=ctx.tx.tx_hash, height=ctx.height))
    emit(ctx.events, "mint", [op.to], op.instrument, op.amount, deposit_ref=op.deposit_ref)


def process_redeem(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.redeem
    ik, _ = get_instrument_checked(st, op.instrument)
    check_amount(op.amount)
    check_ref(op.redemption_ref, "redemption reference")
    ref_key = redemption_ref_key(ik, op.redemption_ref)
    first = st.ref(ref_key)
    if first is not None:
        raise fail(
            S.TX_STATUS_DUPLICATE_REDEMPTION_REF,
            f"redemption {quote(op.redemption_ref)} was recorded by {first.tx_hash.hex()}",
        )
    check_active(signer, ctx, "holder")
    check_available(signer, ik, op.amount)
    inst_mut = st.instrument_mut(ik)
    inst_mut.supply -= op.amount
    inst_mut.redeemed += op.amount
    decrease_balance(st.account_mut(signer.address), ik, op.amount)
    st.put(ref_key, state_pb2.RefRecord(tx_hash=ctx.tx.tx_hash, height=ctx.height))
    emit(ctx.events, "redeem", [signer.address], op.instrument, op.amount, redemption_ref=op.redemption_ref)


def process_transfer(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.transfer
    instrument = op.instrument
    ik = (instrument.issuer, instrument.symbol)
    amount = op.amount
    to = op.to
    payer = signer
    # The common case in one pass: every rule below holds (the same rules as the checks that follow,
    # which run only when one of them fails, to name which one in the receipt).
    inst = st.instrument(ik)
    payee = st.account(to)
    now_s = ctx.time_ms // 1000
    if (
        inst is not None
        and not inst.paused
        and amount > 0
        and payee is not None
        and to != payer.address
        and not payer.limits
        and payer.kyc_status == _APPROVED
        and payee.kyc_status == _APPROVED
        and not (payer.frozen or payer.closed or payee.frozen or payee.closed)
        and (not payer.kyc_expires_at or now_s < payer.kyc_expires_at)
        and (not payee.kyc_expires_at or now_s < payee.kyc_expires_at)
    ):
        bal = payer.balances.get(ik)
        credit = payee.balances.get(ik)
        if (
            bal is not None
            and bal[0] - bal[1] - bal[2] >= amount
            and (credit is None or credit[0] + amount <= U64_MAX)
        ):
            # Every check passed and nothing below can fail: change the block's records directly.
            # The tx layer is empty here, so each of the two records is either the block's own
            # (changed earlier in this block: change it in place) or the committed one (copy it once).
            block = st.block
            key = ACCOUNT + payer.address
            src = block.get(key)
            if src is None:
                src = block[key] = payer.copy()
            decrease_balance(src, ik, amount)  # type: ignore[arg-type]
            key = ACCOUNT + to
            dst = block.get(key)
            if dst is None:
                dst = block[key] = payee.copy()
            increase_balance(dst, ik, amount)  # type: ignore[arg-type]
            # The event as encoded bytes: cheaper than building it field by field (hot path).
            ctx.receipt.MergeFromString(encode_transfer_event(payer.address, to, ik, amount))
            return
    # Some rule fails (or the payer has limits): the checks in their order, then the general path.
    ik, _ = get_instrument_checked(st, instrument)
    if amount <= 0:
        check_amount(amount)
    if to == payer.address:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, "transfer to self")
    check_active(payer, ctx, "payer")
    payee = get_account_checked(st, to, "payee")
    check_active(payee, ctx, "payee")
    check_available(payer, ik, amount)
    day = ctx.time_ms // MS_PER_DAY
    if payer.limits:
        check_limits(payer, ik, amount, day)
    check_can_credit(payee, ik, amount)
    src = st.account_direct(payer.address)
    decrease_balance(src, ik, amount)
    if src.limits:
        record_usage(src, ik, amount, day)
    increase_balance(st.account_direct(to), ik, amount)
    ctx.events.add(kind="transfer", accounts=[payer.address, to], instrument=instrument, amount=amount)


def process_freeze_account(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.freeze_account
    check_role(signer, COMPLIANCE)
    acct = get_account_checked(st, op.account, "account")
    check_not_closed(acct, "account")
    st.account_mut(op.account).frozen = True
    emit(ctx.events, "account_frozen", [op.account], flagged=True, reason=op.reason)


def process_unfreeze_account(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.unfreeze_account
    check_role(signer, COMPLIANCE)
    acct = get_account_checked(st, op.account, "account")
    check_not_closed(acct, "account")
    st.account_mut(op.account).frozen = False
    emit(ctx.events, "account_unfrozen", [op.account], reason=op.reason)


def process_freeze_amount(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.freeze_amount
    check_role(signer, COMPLIANCE)
    ik, _ = get_instrument_checked(st, op.instrument, allow_paused=True)
    check_amount(op.amount)
    acct = get_account_checked(st, op.account, "account")
    check_not_closed(acct, "account")
    check_available(acct, ik, op.amount)
    mut = st.account_mut(op.account)
    amount, frozen, held = mut.balances[ik]
    mut.balances[ik] = (amount, frozen + op.amount, held)
    emit(ctx.events, "amount_frozen", [op.account], op.instrument, op.amount, flagged=True, reason=op.reason)


def process_unfreeze_amount(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.unfreeze_amount
    check_role(signer, COMPLIANCE)
    ik, _ = get_instrument_checked(st, op.instrument, allow_paused=True)
    check_amount(op.amount)
    acct = get_account_checked(st, op.account, "account")
    frozen = acct.balances.get(ik, (0, 0, 0))[1]
    if frozen < op.amount:
        raise fail(S.TX_STATUS_INSUFFICIENT_FROZEN, f"{frozen} frozen, cannot unfreeze {op.amount}")
    mut = st.account_mut(op.account)
    amount, frozen, held = mut.balances[ik]
    mut.balances[ik] = (amount, frozen - op.amount, held)
    emit(ctx.events, "amount_unfrozen", [op.account], op.instrument, op.amount, reason=op.reason)


def _process_pause(
    st: StateView,
    ctx: TxContext,
    signer: AccountRec,
    op_instrument: tx_pb2.InstrumentId,
    paused: bool,
    reason: str,
) -> None:
    check_role(signer, COMPLIANCE)
    ik, _ = get_instrument_checked(st, op_instrument, allow_paused=True)
    st.instrument_mut(ik).paused = paused
    emit(
        ctx.events, "instrument_paused" if paused else "instrument_unpaused", [], op_instrument, reason=reason
    )


def process_pause_instrument(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.pause_instrument
    return _process_pause(st, ctx, signer, op.instrument, True, op.reason)


def process_unpause_instrument(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.unpause_instrument
    return _process_pause(st, ctx, signer, op.instrument, False, op.reason)


def process_create_hold(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.create_hold
    on_behalf = bool(op.payer) and op.payer != signer.address
    if on_behalf:
        check_role(signer, COMPLIANCE)
    payer_addr = op.payer if on_behalf else signer.address
    check_ref(op.hold_id, "hold id")
    ik, _ = get_instrument_checked(st, op.instrument)
    check_amount(op.amount)
    if st.hold(op.hold_id) is not None:
        raise fail(S.TX_STATUS_HOLD_EXISTS, f"hold {quote(op.hold_id)} exists")
    if not op.expires_at_height and not op.expires_at_time:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, "a hold needs an expiry height or time")
    if op.expires_at_height and op.expires_at_height <= ctx.height:
        raise fail(
            S.TX_STATUS_HOLD_EXPIRED, f"expiry height {op.expires_at_height} is not after {ctx.height}"
        )
    if op.expires_at_time and op.expires_at_time <= ctx.time_s:
        raise fail(S.TX_STATUS_HOLD_EXPIRED, f"expiry time {op.expires_at_time} is not after {ctx.time_s}")
    payer = get_account_checked(st, payer_addr, "payer")
    if on_behalf:
        check_not_closed(payer, "payer")
    else:
        check_active(payer, ctx, "payer")
    if payer_addr == op.payee:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, "payee is the payer")
    payee = get_account_checked(st, op.payee, "payee")
    check_active(payee, ctx, "payee")
    notary = get_account_checked(st, op.notary, "notary")
    check_not_closed(notary, "notary")
    check_available(payer, ik, op.amount)
    day = ctx.day
    if not on_behalf:
        check_limits(payer, ik, op.amount, day)
    active = st.hold_list(payer_holds_key(payer_addr))
    if len(active) >= MAX_ACTIVE_HOLDS_PER_PAYER:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, f"payer has {len(active)} active holds, the maximum")
    # Effects.
    mut = st.account_mut(payer_addr)
    amount, frozen, held = mut.balances[ik]
    mut.balances[ik] = (amount, frozen, held + op.amount)
    if not on_behalf:
        record_usage(mut, ik, op.amount, day)
    st.put(
        hold_key(op.hold_id),
        state_pb2.Hold(
            hold_id=op.hold_id,
            instrument=op.instrument,
            payer=payer_addr,
            payee=op.payee,
            notary=op.notary,
            amount=op.amount,
            expires_at_height=op.expires_at_height,
            expires_at_time=op.expires_at_time,
            state=state_pb2.HOLD_STATE_ACTIVE,
            created_height=ctx.height,
        ),
    )
    st.put_hold_list(payer_holds_key(payer_addr), sorted([*active, op.hold_id]))
    if op.expires_at_height:
        key = expiry_height_key(op.expires_at_height)
        st.put_hold_list(key, sorted([*st.hold_list(key), op.hold_id]))
    if op.expires_at_time:
        key = expiry_time_key(op.expires_at_time // 60)
        st.put_hold_list(key, sorted([*st.hold_list(key), op.hold_id]))
    emit(
        ctx.events,
        "hold_created",
        [payer_addr, op.payee, op.notary],
        op.instrument,
        op.amount,
        flagged=on_behalf,
        hold_id=op.hold_id,
    )


def _get_active_hold(st: StateView, hold_id: str) -> state_pb2.Hold:
    hold = st.hold(hold_id)
    if hold is None:
        raise fail(S.TX_STATUS_UNKNOWN_HOLD, f"hold {quote(hold_id)} does not exist")
    if hold.state == state_pb2.HOLD_STATE_EXPIRED:
        raise fail(S.TX_STATUS_HOLD_EXPIRED, f"hold {quote(hold_id)} expired")
    if hold.state != state_pb2.HOLD_STATE_ACTIVE:
        raise fail(
            S.TX_STATUS_INVALID_ARGUMENT,
            f"hold {quote(hold_id)} is {state_pb2.HoldState.Name(hold.state).removeprefix('HOLD_STATE_').lower()}",
        )
    return hold


def close_hold(st: StateView, hold: state_pb2.Hold, state: state_pb2.HoldState.ValueType) -> None:
    """Return what a hold still holds to its payer and retire it (release or expiry)."""
    ik = ik_of(hold.instrument)
    payer = st.account_mut(hold.payer)
    amount, frozen, held = payer.balances[ik]
    payer.balances[ik] = (amount, frozen, held - hold.amount)
    mut = st.hold_mut(hold.hold_id)
    mut.released = hold.amount
    mut.amount = 0
    mut.state = state
    key = payer_holds_key(hold.payer)
    st.put_hold_list(key, [h for h in st.hold_list(key) if h != hold.hold_id])


def process_execute_hold(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.execute_hold
    hold = _get_active_hold(st, op.hold_id)
    if signer.address != hold.notary:
        raise fail(S.TX_STATUS_UNAUTHORIZED, "only the hold's notary executes it")
    if signer.frozen:
        raise fail(
            S.TX_STATUS_ACCOUNT_FROZEN, f"notary {signer.address.hex()} is frozen: it cannot execute holds"
        )
    amount = op.amount or hold.amount
    if amount > hold.amount:
        raise fail(S.TX_STATUS_INSUFFICIENT_FUNDS, f"hold has {hold.amount}, cannot execute {amount}")
    ik, _ = get_instrument_checked(st, hold.instrument)
    # No value leaves a frozen account, even held for a hold made before the freeze.
    if get_account_checked(st, hold.payer, "payer").frozen:
        raise fail(
            S.TX_STATUS_ACCOUNT_FROZEN,
            f"payer {hold.payer.hex()} is frozen: its holds can be released or expire, not be executed",
        )
    payee = get_account_checked(st, hold.payee, "payee")
    check_active(payee, ctx, "payee")
    check_can_credit(payee, ik, amount)
    # Effects: the held part (never the frozen part) leaves the payer's balance and reaches the payee.
    payer = st.account_mut(hold.payer)
    bal, frozen, held = payer.balances[ik]
    payer.balances[ik] = (bal, frozen, held - amount)
    decrease_balance(payer, ik, amount)
    increase_balance(st.account_mut(hold.payee), ik, amount)
    mut = st.hold_mut(op.hold_id)
    mut.amount -= amount
    mut.executed += amount
    if mut.amount == 0:
        mut.state = state_pb2.HOLD_STATE_EXECUTED
        key = payer_holds_key(hold.payer)
        st.put_hold_list(key, [h for h in st.hold_list(key) if h != op.hold_id])
    emit(ctx.events, "hold_executed", [hold.payer, hold.payee], hold.instrument, amount, hold_id=op.hold_id)


def process_release_hold(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.release_hold
    hold = _get_active_hold(st, op.hold_id)
    if signer.address not in (hold.notary, hold.payee):
        raise fail(S.TX_STATUS_UNAUTHORIZED, "only the hold's notary or payee releases it")
    amount = hold.amount
    close_hold(st, hold, state_pb2.HOLD_STATE_RELEASED)
    emit(ctx.events, "hold_released", [hold.payer, hold.payee], hold.instrument, amount, hold_id=op.hold_id)


def process_settle(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.settle
    check_ref(op.settlement_ref, "settlement reference")
    if not op.legs or len(op.legs) > MAX_LEGS:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, f"a settlement has 1..{MAX_LEGS} legs")
    ref_key = settlement_ref_key(op.settlement_ref)
    first = st.ref(ref_key)
    if first is not None:
        raise fail(
            S.TX_STATUS_DUPLICATE_SETTLEMENT_REF,
            f"settlement {quote(op.settlement_ref)} was recorded by {first.tx_hash.hex()}",
        )
    signers = ctx.tx.signers
    for n, leg in enumerate(op.legs):
        if getattr(leg, "from") not in signers:
            raise fail(
                S.TX_STATUS_MISSING_SIGNATURE,
                f"leg {n}: paying party {quote(getattr(leg, 'from'))} did not sign",
            )
    day = ctx.day
    # Legs apply in order inside the transaction layer: any failing check drops them all.
    for n, leg in enumerate(op.legs):
        src: bytes = getattr(leg, "from")
        try:
            ik, _ = get_instrument_checked(st, leg.instrument)
            check_amount(leg.amount)
            if src == leg.to:
                raise fail(S.TX_STATUS_INVALID_ARGUMENT, "payer and payee are the same")
            payer = get_account_checked(st, src, "payer")
            check_active(payer, ctx, "payer")
            payee = get_account_checked(st, leg.to, "payee")
            check_active(payee, ctx, "payee")
            check_available(payer, ik, leg.amount)
            check_limits(payer, ik, leg.amount, day)
            check_can_credit(payee, ik, leg.amount)
        except TxInvalid as exc:
            raise fail(exc.status, f"leg {n}: {exc.message}") from None
        move(st, ik, src, leg.to, leg.amount, day)
        emit(ctx.events, "settlement_leg", [src, leg.to], leg.instrument, leg.amount, leg=str(n))
    st.put(ref_key, state_pb2.RefRecord(tx_hash=ctx.tx.tx_hash, height=ctx.height))
    emit(
        ctx.events,
        "settled",
        sorted({p for leg in op.legs for p in (getattr(leg, "from"), leg.to)}),
        settlement_ref=op.settlement_ref,
        legs=str(len(op.legs)),
    )


def compute_frozen_after_forced(frozen: int, held: int, remaining: int, taken: int) -> int:
    """The frozen part of a balance after a forced transfer took `taken` of it, leaving `remaining`:
    frozen funds are taken first, so max(0, frozen - taken), and at most the unheld remainder (so
    frozen + held <= balance still holds)."""
    return max(0, min(frozen - taken, remaining - held))


def process_forced_transfer(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.forced_transfer
    src: bytes = getattr(op, "from")
    check_role(signer, COMPLIANCE)
    if not op.reason:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, "a forced transfer needs a reason")
    ik, _ = get_instrument_checked(st, op.instrument, allow_paused=True)
    check_amount(op.amount)
    if src == op.to:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, "from and to are the same")
    payer = get_account_checked(st, src, "from")
    payee = get_account_checked(st, op.to, "to")
    check_not_closed(payee, "to")
    amount, frozen, held = payer.balances.get(ik, (0, 0, 0))
    if amount - held < op.amount:
        raise fail(S.TX_STATUS_INSUFFICIENT_FUNDS, f"{amount - held} not held, cannot move {op.amount}")
    check_can_credit(payee, ik, op.amount)
    # Effects: the forced transfer takes frozen funds first (a court order executes the freeze it
    # enforces), so frozen shrinks by what it took: max(0, frozen - amount), never more than the
    # free part of what remains (balance - held), never more than before.
    mut = st.account_mut(src)
    new_amount = amount - op.amount
    new = (new_amount, compute_frozen_after_forced(frozen, held, new_amount, op.amount), held)
    if new == (0, 0, 0):
        del mut.balances[ik]
    else:
        mut.balances[ik] = new
    increase_balance(st.account_mut(op.to), ik, op.amount)
    emit(
        ctx.events, "forced_transfer", [src, op.to], op.instrument, op.amount, flagged=True, reason=op.reason
    )


def process_recover_account(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.recover_account
    check_role(signer, COMPLIANCE)
    if not op.reason:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, "a recovery needs a reason")
    lost = get_account_checked(st, op.lost_account, "lost account")
    check_not_closed(lost, "lost account")
    privileged = lost.roles - RECOVERABLE_ROLES
    if privileged:
        names = ", ".join(tx_pb2.Role.Name(r).removeprefix("ROLE_").lower() for r in sorted(privileged))  # type: ignore[arg-type]
        raise fail(
            S.TX_STATUS_UNAUTHORIZED,
            f"lost account {op.lost_account.hex()} holds {names}: compliance does not recover a privileged "
            "account; an admin rotates its key (grant the role to a new key, revoke it from the old one)",
        )
    if st.account(op.new_account) is not None:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, f"new account {quote(op.new_account)} already exists")
    _check_new_account_key(op.new_account, op.new_public_key)
    if st.hold_list(payer_holds_key(op.lost_account)):
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, "the lost account has active holds; release them first")
    new = lost.copy()
    new.address = op.new_account
    new.public_key = op.new_public_key
    new.nonce = 0
    new.closed = False
    new.recovered_to = b""
    st.put_account(new)
    old = st.account_mut(op.lost_account)
    old.balances = {}
    old.usage = NO_ENTRIES
    old.closed = True
    old.recovered_to = op.new_account
    old.roles = frozenset()
    emit(ctx.events, "account_recovered", [op.lost_account, op.new_account], flagged=True, reason=op.reason)
    # One event per balance moved, so that both accounts' statements tie out (node/statement.py).
    for ik in sorted(lost.balances):
        if lost.balances[ik][0]:
            emit(ctx.events, "balance_recovered", [op.lost_account, op.new_account], instrument_id(ik),
                 lost.balances[ik][0])  # fmt: skip


def process_set_limits(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.set_limits
    ik, _ = get_instrument_checked(st, op.instrument, allow_paused=True)
    if COMPLIANCE not in signer.roles and not (ISSUER in signer.roles and ik[0] == signer.address):
        raise fail(S.TX_STATUS_UNAUTHORIZED, "only compliance or the instrument's issuer sets limits")
    acct = get_account_checked(st, op.account, "account")
    check_not_closed(acct, "account")
    mut = st.account_mut(op.account)
    if op.max_per_tx or op.max_per_day:
        mut.limits = frozen_map({**mut.limits, ik: (op.max_per_tx, op.max_per_day)})
    else:
        mut.limits = frozen_map({k: v for k, v in mut.limits.items() if k != ik})
    if not op.max_per_day:
        mut.usage = frozen_map({k: v for k, v in mut.usage.items() if k != ik})
    emit(
        ctx.events,
        "limits_set",
        [op.account],
        op.instrument,
        max_per_tx=str(op.max_per_tx),
        max_per_day=str(op.max_per_day),
    )


def process_grant_role(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.grant_role
    check_role(signer, ADMIN)
    if op.account == signer.address:
        raise fail(
            S.TX_STATUS_UNAUTHORIZED, "an admin cannot grant a role to itself; another admin grants it"
        )
    if op.role not in VALID_ROLES:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, f"unknown role {op.role}")
    acct = st.account(op.account)
    if acct is None:
        _check_new_account_key(op.account, op.public_key)
        acct = new_account(op.account, op.public_key)
        st.put_account(acct)
    else:
        check_not_closed(acct, "account")
        acct = st.account_mut(op.account)
    acct.roles = acct.roles | {op.role}
    emit(ctx.events, "role_granted", [op.account], role=tx_pb2.Role.Name(op.role))


def process_revoke_role(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.revoke_role
    check_role(signer, ADMIN)
    acct = get_account_checked(st, op.account, "account")
    if op.role not in acct.roles:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, f"account does not have role {op.role}")
    if op.role == ADMIN and op.account == signer.address:
        raise fail(S.TX_STATUS_INVALID_ARGUMENT, "an admin cannot revoke its own admin role")
    mut = st.account_mut(op.account)
    mut.roles = mut.roles - {op.role}
    emit(ctx.events, "role_revoked", [op.account], role=tx_pb2.Role.Name(op.role))


def process_change_validator(st: StateView, ctx: TxContext, signer: AccountRec) -> None:
    op = ctx.tx.body.change_validator
    check_role(signer, ADMIN)
    if len(op.public_key) != crypto.PUBLIC_KEY_LEN:
        raise fail(S.TX_STATUS_INVALID_VALIDATOR_SET, "validator public key must be 32 bytes")
    current = {v.public_key: v.power for v in st.validator_set().validators}
    if op.power == 0:
        if op.public_key not in current:
            raise fail(S.TX_STATUS_INVALID_VALIDATOR_SET, "cannot remove an unknown validator")
        del current[op.public_key]
        if not current:
            raise fail(S.TX_STATUS_INVALID_VALIDATOR_SET, "cannot remove the last validator")
    else:
        current[op.public_key] = op.power
    if len(current) > MAX_VALIDATORS:
        raise fail(S.TX_STATUS_INVALID_VALIDATOR_SET, f"at most {MAX_VALIDATORS} validators")
    if sum(current.values()) > MAX_TOTAL_POWER:
        raise fail(S.TX_STATUS_INVALID_VALIDATOR_SET, "total voting power too large")
    st.put(
        VALIDATORS,
        state_pb2.ValidatorSetState(
            validators=[state_pb2.ValidatorEntry(public_key=k, power=current[k]) for k in sorted(current)]
        ),
    )
    emit(
        ctx.events,
        "validator_changed",
        [crypto.address_of(op.public_key)],
        public_key=op.public_key.hex(),
        power=str(op.power),
    )


Processor = Callable[[StateView, TxContext, AccountRec], None]

PROCESSORS: Final[dict[str, Processor]] = {
    "create_instrument": process_create_instrument,
    "set_kyc": process_set_kyc,
    "mint": process_mint,
    "redeem": process_redeem,
    "transfer": process_transfer,
    "freeze_account": process_freeze_account,
    "unfreeze_account": process_unfreeze_account,
    "freeze_amount": process_freeze_amount,
    "unfreeze_amount": process_unfreeze_amount,
    "pause_instrument": process_pause_instrument,
    "unpause_instrument": process_unpause_instrument,
    "create_hold": process_create_hold,
    "execute_hold": process_execute_hold,
    "release_hold": process_release_hold,
    "settle": process_settle,
    "forced_transfer": process_forced_transfer,
    "recover_account": process_recover_account,
    "set_limits": process_set_limits,
    "grant_role": process_grant_role,
    "revoke_role": process_revoke_role,
    "change_validator": process_change_validator,
}


def apply_tx(
    st: StateView,
    tx: VerifiedTx,
    height: int,
    time_ms: int,
    expected_nonce: int | None = None,
    index: int = 0,
) -> receipt_pb2.Receipt:
    """Apply one transaction to st (block layer): a receipt whatever happens, never an exception.

    Order: signer account exists; nonce is the next one (else nothing changes); the client
    reference is new (else nothing changes and the receipt names the first tx); then the operation.
    On success its changes and the reference are kept; on failure they are dropped. Either way the
    signer's nonce advances.
    """
    body = tx.body
    signer_addr = body.signer
    nonce = body.nonce
    client_ref = body.client_ref
    receipt = receipt_pb2.Receipt(
        tx_hash=tx.tx_hash, height=height, index=index, signer=signer_addr, nonce=nonce, client_ref=client_ref
    )
    signer = st.account(signer_addr)
    if signer is None:
        receipt.status = S.TX_STATUS_UNKNOWN_ACCOUNT
        receipt.message = f"signer {signer_addr.hex()} does not exist"
        return receipt
    if signer_addr not in tx.signers:
        receipt.status = S.TX_STATUS_MISSING_SIGNATURE
        receipt.message = "the signer account did not sign"
        return receipt
    want = signer.nonce if expected_nonce is None else expected_nonce
    if nonce != want:
        receipt.status = S.TX_STATUS_BAD_NONCE
        receipt.message = f"nonce {nonce}, expected {want}"
        return receipt
    ref_key = b""
    if client_ref:
        ref_key = client_ref_key(signer_addr, client_ref)
        first = st.ref(ref_key)
        if first is not None:
            receipt.status = S.TX_STATUS_DUPLICATE_CLIENT_REF
            receipt.message = f"client reference {quote(client_ref)} was used by {first.tx_hash.hex()}"
            emit(
                receipt.events,
                "duplicate_client_ref",
                [signer_addr],
                first_tx_hash=first.tx_hash.hex(),
                first_height=str(first.height),
            )
            return receipt
    op = body.WhichOneof("op")
    processor = PROCESSORS.get(op) if op is not None else None
    try:
        if processor is None:
            raise fail(S.TX_STATUS_MALFORMED, "transaction has no known operation")
        if signer.closed:
            raise fail(S.TX_STATUS_ACCOUNT_CLOSED, f"signer {signer_addr.hex()} is closed")
        processor(st, TxContext(tx, height, time_ms, receipt), signer)
    except TxInvalid as exc:
        st.rollback_tx()
        del receipt.events[:]
        receipt.status = exc.status
        receipt.message = exc.message
    else:
        receipt.status = _OK
        if ref_key:
            st.put(ref_key, state_pb2.RefRecord(tx_hash=tx.tx_hash, height=height))
    if st.tx:
        st.commit_tx()
    rec = st.block.get(ACCOUNT + signer_addr)  # the hot path: the operation changed the signer
    if rec is None:
        rec = st.account_direct(signer_addr)
    rec.nonce = nonce + 1  # type: ignore[union-attr]  # an account key holds an AccountRec
    return receipt


def process_hold_expiry(st: StateView, height: int, time_ms: int, events: EventSink) -> None:
    """Release every hold whose expiry height or time has come, at the start of a block.

    Holds are indexed by expiry height and by expiry minute; a block visits the bucket of its
    height and the minute buckets since the last block, so the cost follows the holds that expire.

    Each expired hold adds a "hold_expired" event to events (the block's own receipt, outside any
    transaction: BlockResult.events, stored with the block and served as GetBlockResponse.block_receipt
    and by SubscribeEvents with block_level set): accounts [payer, payee] (so both may see it),
    the instrument, the amount returned to the payer and the hold_id attribute. The hold keeps state
    EXPIRED with `released` set to that amount.
    """
    meta = st.meta()
    now_s = time_ms // 1000
    due: list[str] = []
    key = expiry_height_key(height)
    ids = st.hold_list(key)
    if ids:
        due.extend(ids)
        st.put(key, None)
    now_minute = now_s // 60
    # 0 = no block yet: holds exist only from the first block on, so earlier buckets are empty.
    start = meta.expiry_minute or now_minute
    for minute in range(start, now_minute + 1):
        key = expiry_time_key(minute)
        ids = st.hold_list(key)
        if not ids:
            continue
        expired = []
        keep = []
        for hold_id in ids:
            hold = st.hold(hold_id)
            if (
                hold is not None
                and hold.state == state_pb2.HOLD_STATE_ACTIVE
                and hold.expires_at_time > now_s
            ):
                keep.append(hold_id)
            else:
                expired.append(hold_id)
        due.extend(expired)
        st.put_hold_list(key, keep)
    for hold_id in sorted(set(due)):
        hold = st.hold(hold_id)
        if hold is None or hold.state != state_pb2.HOLD_STATE_ACTIVE:
            continue
        amount = hold.amount
        close_hold(st, hold, state_pb2.HOLD_STATE_EXPIRED)
        emit(events, "hold_expired", [hold.payer, hold.payee], hold.instrument, amount, hold_id=hold_id)
    if now_minute != meta.expiry_minute and now_minute >= start:
        new_meta = state_pb2.LedgerMeta()
        new_meta.CopyFrom(meta)
        new_meta.expiry_minute = now_minute
        st.put(META, new_meta)
    st.commit_tx()
