"""Transaction builders: one function per ledger operation, plus the body and the signatures.

Each operation function validates its arguments locally (address and key lengths, uint64 ranges,
positive amounts where the ledger can only reject zero, known enum values) and returns the
operation message; `make_body` puts it into the TxBody oneof; `sign` produces the serialized
SignedTx ready for `Client.submit`:

    op = transfer(instrument(bank, "USD"), to=alice, amount=1_000)
    raw = sign(make_body(chain_id, me.address, nonce, "pay-42", op), me)

Addresses are raw 20-byte values (`parse_address`/`format_address` convert hex); instruments are
`InstrumentId(issuer, symbol)` messages built with `instrument(...)`. Invalid arguments raise
`BuildError`, a ValueError naming the field.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import NewType, TypeAlias, TypeVar

from google.protobuf.message import Message

from clearline.v1 import tx_pb2
from node import crypto, txs
from node.crypto import Address, SigningKey

_E = TypeVar("_E", bound=int)

Amount = NewType("Amount", int)
Nonce = NewType("Nonce", int)

UINT64_MAX = (1 << 64) - 1
MAX_SYMBOL_LEN = 32
MAX_UNIX_S = 32_503_680_000
"""3000-01-01T00:00:00Z in unix seconds: a later expiry time is taken for a
mistake of unit (a millisecond value given as seconds; every expiry time of the ledger is in unix
SECONDS, compared with the block time) and refused."""

Op: TypeAlias = (
    tx_pb2.CreateInstrument
    | tx_pb2.SetKyc
    | tx_pb2.Mint
    | tx_pb2.Redeem
    | tx_pb2.Transfer
    | tx_pb2.FreezeAccount
    | tx_pb2.UnfreezeAccount
    | tx_pb2.FreezeAmount
    | tx_pb2.UnfreezeAmount
    | tx_pb2.PauseInstrument
    | tx_pb2.UnpauseInstrument
    | tx_pb2.CreateHold
    | tx_pb2.ExecuteHold
    | tx_pb2.ReleaseHold
    | tx_pb2.Settle
    | tx_pb2.ForcedTransfer
    | tx_pb2.RecoverAccount
    | tx_pb2.SetLimits
    | tx_pb2.GrantRole
    | tx_pb2.RevokeRole
    | tx_pb2.ChangeValidator
)

# TxBody oneof field name for each operation message type, read from the wire contract.
OP_FIELDS: dict[str, str] = {
    field.message_type.full_name: field.name
    for field in tx_pb2.TxBody.DESCRIPTOR.oneofs_by_name["op"].fields
    if field.message_type is not None
}


class BuildError(ValueError):
    """An argument cannot go into a valid transaction; field names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# --- addresses and instruments -----------------------------------------------------------------


def parse_address(text: str) -> Address:
    """A 20-byte address from 40 hex digits (an optional 0x prefix is allowed)."""
    digits = text.strip().removeprefix("0x").removeprefix("0X")
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        raise BuildError("address", f"{text!r} is not hex") from None
    return _address("address", raw)


def format_address(address: bytes) -> str:
    """Lower-case hex of a 20-byte address, without prefix."""
    return _address("address", address).hex()


def instrument(issuer: bytes | str, symbol: str) -> tx_pb2.InstrumentId:
    """The InstrumentId of symbol issued by issuer (raw address or hex)."""
    issuer_addr = parse_address(issuer) if isinstance(issuer, str) else _address("issuer", issuer)
    if not symbol or len(symbol) > MAX_SYMBOL_LEN or not symbol.isprintable() or symbol != symbol.strip():
        raise BuildError("symbol", f"{symbol!r} must be 1-{MAX_SYMBOL_LEN} printable characters")
    return tx_pb2.InstrumentId(issuer=issuer_addr, symbol=symbol)


def parse_instrument(text: str) -> tx_pb2.InstrumentId:
    """An InstrumentId from "ISSUER_HEX/SYMBOL"."""
    issuer, sep, symbol = text.partition("/")
    if not sep:
        raise BuildError("instrument", f"{text!r} is not ISSUER_HEX/SYMBOL")
    return instrument(issuer, symbol)


def format_instrument(inst: tx_pb2.InstrumentId) -> str:
    """ "ISSUER_HEX/SYMBOL", the inverse of parse_instrument."""
    return f"{format_address(inst.issuer)}/{inst.symbol}"


# --- argument checks ---------------------------------------------------------------------------


def _address(field: str, value: bytes) -> Address:
    if not isinstance(value, bytes | bytearray):
        raise BuildError(field, f"must be bytes, got {type(value).__name__}")
    if len(value) != crypto.ADDRESS_LEN:
        raise BuildError(field, f"must be a {crypto.ADDRESS_LEN}-byte address, got {len(value)} bytes")
    return Address(bytes(value))


def _optional_address(field: str, value: bytes | None) -> bytes:
    return b"" if value is None or value == b"" else _address(field, value)


def _public_key(field: str, value: bytes | None, *, required: bool = True) -> bytes:
    if value is None or value == b"":
        if required:
            raise BuildError(field, "is required")
        return b""
    if len(value) != crypto.PUBLIC_KEY_LEN:
        raise BuildError(field, f"must be a {crypto.PUBLIC_KEY_LEN}-byte Ed25519 key, got {len(value)} bytes")
    return bytes(value)


def _uint64(field: str, value: int, *, positive: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BuildError(field, f"must be an integer, got {type(value).__name__}")
    low = 1 if positive else 0
    if not low <= value <= UINT64_MAX:
        raise BuildError(field, f"{value} is outside {low}..{UINT64_MAX}")
    return value


def _unix_s(field: str, value: int, *, now_s: int | None, allow_past: bool) -> int:
    """An expiry time: unix seconds (0 = none), not after the year 3000 (a larger value is almost
    certainly milliseconds) and, unless allow_past, after now_s (default: this machine's clock)."""
    value = _uint64(field, value)
    if value == 0:
        return 0
    if value >= MAX_UNIX_S:
        raise BuildError(
            field, f"{value} is after the year 3000 in unix seconds: the unit is SECONDS, not milliseconds"
        )
    now = int(time.time()) if now_s is None else now_s
    if not allow_past and value <= now:
        raise BuildError(field, f"{value} (unix seconds) is not after now ({now})")
    return value


def _amount(field: str, value: int) -> Amount:
    return Amount(_uint64(field, value, positive=True))


def _text(field: str, value: str, *, required: bool = False, max_len: int = 256) -> str:
    if not isinstance(value, str):
        raise BuildError(field, f"must be a string, got {type(value).__name__}")
    if required and not value:
        raise BuildError(field, "is required")
    if len(value) > max_len:
        raise BuildError(field, f"is longer than {max_len} characters")
    return value


def _enum(field: str, valid: Sequence[_E], value: _E) -> _E:
    if value == 0 or value not in valid:
        raise BuildError(field, f"{value} is not a valid value")
    return value


def _instrument(field: str, inst: tx_pb2.InstrumentId) -> tx_pb2.InstrumentId:
    if not isinstance(inst, tx_pb2.InstrumentId):
        raise BuildError(field, f"must be an InstrumentId, got {type(inst).__name__}")
    _address(f"{field}.issuer", inst.issuer)
    if not inst.symbol:
        raise BuildError(f"{field}.symbol", "is required")
    return inst


# --- one builder per operation -------------------------------------------------------------------


def create_instrument(
    inst: tx_pb2.InstrumentId,
    *,
    name: str,
    currency: str,
    decimals: int = 2,
    supply_cap: int = 0,
    kind: tx_pb2.InstrumentKind.ValueType = tx_pb2.INSTRUMENT_KIND_DEPOSIT_TOKEN,
) -> tx_pb2.CreateInstrument:
    """Admin registers an instrument (supply_cap 0 = no cap)."""
    if not 0 <= decimals <= 18:
        raise BuildError("decimals", f"{decimals} is outside 0..18")
    return tx_pb2.CreateInstrument(
        instrument=_instrument("instrument", inst),
        name=_text("name", name, required=True),
        currency=_text("currency", currency, required=True, max_len=16),
        decimals=decimals,
        supply_cap=_uint64("supply_cap", supply_cap),
        kind=_enum("kind", tx_pb2.InstrumentKind.values(), kind),
    )


def set_kyc(
    account: bytes,
    status: tx_pb2.KycStatus.ValueType,
    *,
    public_key: bytes | None = None,
    expires_at: int = 0,
    allow_past_expiry: bool = False,
    now_s: int | None = None,
) -> tx_pb2.SetKyc:
    """The signer's own KYC decision about account: an issuer's approval, or compliance's for the
    network (the ledger takes the approver from the signer). public_key is needed for a new account.

    expires_at is unix SECONDS (0 = no expiry). An expiry at or before now_s (default: this machine's
    clock) is refused unless allow_past_expiry: recording an already-lapsed approval is allowed by the
    ledger but is almost always a mistake of unit or date."""
    return tx_pb2.SetKyc(
        account=_address("account", account),
        public_key=_public_key("public_key", public_key, required=False),
        status=_enum("status", tx_pb2.KycStatus.values(), status),
        expires_at=_unix_s("expires_at", expires_at, now_s=now_s, allow_past=allow_past_expiry),
    )


def mint(inst: tx_pb2.InstrumentId, to: bytes, amount: int, deposit_ref: str) -> tx_pb2.Mint:
    """Issuer mints against an off-ledger deposit reference (at most one mint per reference)."""
    return tx_pb2.Mint(
        instrument=_instrument("instrument", inst),
        to=_address("to", to),
        amount=_amount("amount", amount),
        deposit_ref=_text("deposit_ref", deposit_ref, required=True),
    )


def redeem(inst: tx_pb2.InstrumentId, amount: int, redemption_ref: str) -> tx_pb2.Redeem:
    """The holder burns tokens back to the issuer."""
    return tx_pb2.Redeem(
        instrument=_instrument("instrument", inst),
        amount=_amount("amount", amount),
        redemption_ref=_text("redemption_ref", redemption_ref, required=True),
    )


def transfer(inst: tx_pb2.InstrumentId, to: bytes, amount: int) -> tx_pb2.Transfer:
    """Move amount of inst from the signer to `to`."""
    return tx_pb2.Transfer(
        instrument=_instrument("instrument", inst), to=_address("to", to), amount=_amount("amount", amount)
    )


def freeze_account(account: bytes, reason: str) -> tx_pb2.FreezeAccount:
    return tx_pb2.FreezeAccount(
        account=_address("account", account), reason=_text("reason", reason, required=True)
    )


def unfreeze_account(account: bytes, reason: str) -> tx_pb2.UnfreezeAccount:
    return tx_pb2.UnfreezeAccount(
        account=_address("account", account), reason=_text("reason", reason, required=True)
    )


def freeze_amount(account: bytes, inst: tx_pb2.InstrumentId, amount: int, reason: str) -> tx_pb2.FreezeAmount:
    """Freeze part of one balance (e.g. a garnishment order)."""
    return tx_pb2.FreezeAmount(
        account=_address("account", account),
        instrument=_instrument("instrument", inst),
        amount=_amount("amount", amount),
        reason=_text("reason", reason, required=True),
    )


def unfreeze_amount(
    account: bytes, inst: tx_pb2.InstrumentId, amount: int, reason: str
) -> tx_pb2.UnfreezeAmount:
    return tx_pb2.UnfreezeAmount(
        account=_address("account", account),
        instrument=_instrument("instrument", inst),
        amount=_amount("amount", amount),
        reason=_text("reason", reason, required=True),
    )


def pause_instrument(inst: tx_pb2.InstrumentId, reason: str) -> tx_pb2.PauseInstrument:
    return tx_pb2.PauseInstrument(
        instrument=_instrument("instrument", inst), reason=_text("reason", reason, required=True)
    )


def unpause_instrument(inst: tx_pb2.InstrumentId, reason: str) -> tx_pb2.UnpauseInstrument:
    return tx_pb2.UnpauseInstrument(
        instrument=_instrument("instrument", inst), reason=_text("reason", reason, required=True)
    )


def create_hold(
    hold_id: str,
    inst: tx_pb2.InstrumentId,
    *,
    payee: bytes,
    notary: bytes,
    amount: int,
    expires_at_height: int = 0,
    expires_at_time: int = 0,
    payer: bytes | None = None,
    now_s: int | None = None,
) -> tx_pb2.CreateHold:
    """Escrow amount for payee until notary executes or releases it, or it expires.

    expires_at_time is unix SECONDS (0 = none); one at or before now_s (default: this machine's clock)
    is refused here, as the ledger would refuse it (HOLD_EXPIRED). payer None = the signer; otherwise
    compliance holds on behalf of an authority."""
    return tx_pb2.CreateHold(
        hold_id=_text("hold_id", hold_id, required=True, max_len=128),
        instrument=_instrument("instrument", inst),
        payee=_address("payee", payee),
        notary=_address("notary", notary),
        amount=_amount("amount", amount),
        expires_at_height=_uint64("expires_at_height", expires_at_height),
        expires_at_time=_unix_s("expires_at_time", expires_at_time, now_s=now_s, allow_past=False),
        payer=_optional_address("payer", payer),
    )


def execute_hold(hold_id: str, amount: int = 0) -> tx_pb2.ExecuteHold:
    """The notary executes a hold in full (amount 0) or in part."""
    return tx_pb2.ExecuteHold(
        hold_id=_text("hold_id", hold_id, required=True, max_len=128), amount=_uint64("amount", amount)
    )


def release_hold(hold_id: str) -> tx_pb2.ReleaseHold:
    return tx_pb2.ReleaseHold(hold_id=_text("hold_id", hold_id, required=True, max_len=128))


def leg(inst: tx_pb2.InstrumentId, from_: bytes, to: bytes, amount: int) -> tx_pb2.Leg:
    """One leg of a settlement: from_ pays amount of inst to `to`."""
    fields = {"from": _address("from", from_)}  # `from` is a Python keyword
    return tx_pb2.Leg(
        instrument=_instrument("instrument", inst),
        to=_address("to", to),
        amount=_amount("amount", amount),
        **fields,
    )


def settle(settlement_ref: str, legs: Iterable[tx_pb2.Leg]) -> tx_pb2.Settle:
    """Atomic multi-leg settlement (DvP, PvP): every paying party must sign the transaction."""
    message = tx_pb2.Settle(settlement_ref=_text("settlement_ref", settlement_ref, required=True))
    message.legs.extend(legs)
    if not message.legs:
        raise BuildError("legs", "a settlement needs at least one leg")
    return message


def payers(op: tx_pb2.Settle) -> list[Address]:
    """The distinct paying parties of a settlement, in leg order: the keys that must sign it."""
    seen: dict[bytes, None] = {}
    for item in op.legs:
        seen.setdefault(getattr(item, "from"), None)
    return [Address(a) for a in seen]


def forced_transfer(
    inst: tx_pb2.InstrumentId, from_: bytes, to: bytes, amount: int, reason: str
) -> tx_pb2.ForcedTransfer:
    """Compliance moves funds without the holder's signature (flagged in events)."""
    fields = {"from": _address("from", from_)}  # `from` is a Python keyword
    return tx_pb2.ForcedTransfer(
        instrument=_instrument("instrument", inst),
        to=_address("to", to),
        amount=_amount("amount", amount),
        reason=_text("reason", reason, required=True),
        **fields,
    )


def recover_account(lost_account: bytes, new_public_key: bytes, reason: str) -> tx_pb2.RecoverAccount:
    """Compliance moves a lost wallet to the account of a new key (its address is derived)."""
    key = _public_key("new_public_key", new_public_key)
    return tx_pb2.RecoverAccount(
        lost_account=_address("lost_account", lost_account),
        new_account=crypto.address_of(key),
        new_public_key=key,
        reason=_text("reason", reason, required=True),
    )


def set_limits(
    account: bytes, inst: tx_pb2.InstrumentId, *, max_per_tx: int = 0, max_per_day: int = 0
) -> tx_pb2.SetLimits:
    """Per-transaction and per-day limits (0 = unlimited)."""
    return tx_pb2.SetLimits(
        account=_address("account", account),
        instrument=_instrument("instrument", inst),
        max_per_tx=_uint64("max_per_tx", max_per_tx),
        max_per_day=_uint64("max_per_day", max_per_day),
    )


def grant_role(
    account: bytes, role: tx_pb2.Role.ValueType, *, public_key: bytes | None = None
) -> tx_pb2.GrantRole:
    """Admin grants a role (public_key needed when the account is new)."""
    return tx_pb2.GrantRole(
        account=_address("account", account),
        role=_enum("role", tx_pb2.Role.values(), role),
        public_key=_public_key("public_key", public_key, required=False),
    )


def revoke_role(account: bytes, role: tx_pb2.Role.ValueType) -> tx_pb2.RevokeRole:
    return tx_pb2.RevokeRole(
        account=_address("account", account),
        role=_enum("role", tx_pb2.Role.values(), role),
    )


def change_validator(public_key: bytes, power: int) -> tx_pb2.ChangeValidator:
    """Admin adds or re-weights (power > 0) or removes (power 0) a validator; effective at H+2."""
    return tx_pb2.ChangeValidator(
        public_key=_public_key("public_key", public_key), power=_uint64("power", power)
    )


# --- body and signatures -----------------------------------------------------------------------


def op_field(op: Message) -> str:
    """The TxBody oneof field that carries op; BuildError if op is not a ledger operation."""
    field = OP_FIELDS.get(op.DESCRIPTOR.full_name)
    if field is None:
        raise BuildError("op", f"{op.DESCRIPTOR.full_name} is not a ledger operation")
    return field


def make_body(
    chain_id: str, signer: bytes, nonce: int, client_ref: str, op: Op, *, memo: str = ""
) -> tx_pb2.TxBody:
    """A TxBody for op, consuming signer's nonce; client_ref is the idempotency key."""
    if not chain_id:
        raise BuildError("chain_id", "is required")
    body = tx_pb2.TxBody(
        chain_id=chain_id,
        signer=_address("signer", signer),
        nonce=_uint64("nonce", nonce),
        client_ref=_text("client_ref", client_ref, required=True, max_len=128),
        memo=_text("memo", memo),
    )
    getattr(body, op_field(op)).CopyFrom(op)
    return body


def sign(body: tx_pb2.TxBody, *keys: SigningKey) -> bytes:
    """The serialized SignedTx of body signed by every key (the signer's key among them)."""
    if not keys:
        raise BuildError("keys", "at least one signing key is needed")
    return txs.sign_tx(body, list(keys))


def signers_needed(body: tx_pb2.TxBody) -> list[Address]:
    """The addresses whose keys must sign body: the signer, then any other settlement payer."""
    needed = [Address(body.signer)]
    if body.WhichOneof("op") == "settle":
        needed += [a for a in payers(body.settle) if a != body.signer]
    return needed


def operations() -> Sequence[str]:
    """The names of every operation in the wire contract's TxBody oneof."""
    return tuple(OP_FIELDS.values())
