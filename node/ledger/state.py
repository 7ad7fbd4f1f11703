"""Ledger state: the keys of state entries, their records and codecs, and the layered state view.

Every state entry is a (key, protobuf bytes) pair in the kv store and a leaf of the Merkle tree.
Keys are a one-byte namespace, a kind tag and the record's identity:

    ACCOUNT  + address(20)                       state_pb2.Account    (what GetAccount proves)
    INSTR    + issuer(20) + symbol(utf-8)        state_pb2.Instrument
    HOLD     + hold id(utf-8)                    state_pb2.Hold
    PAYER_HOLDS + address(20)                    state_pb2.HoldList   (a payer's active holds)
    EXP_TIME + minute(8, big-endian)             state_pb2.HoldList   (holds expiring in that minute)
    EXP_HEIGHT + height(8, big-endian)           state_pb2.HoldList   (holds expiring at that height)
    CLIENT_REF + signer(20) + sha256(ref)        state_pb2.RefRecord
    DEPOSIT_REF / REDEEM_REF + sha256(issuer | 0 | symbol | 0 | ref)   state_pb2.RefRecord
    SETTLE_REF + sha256(ref)                     state_pb2.RefRecord
    VALIDATORS                                   state_pb2.ValidatorSetState
    META                                         state_pb2.LedgerMeta

Accounts are decoded into a mutable `AccountRec` (balances as a dict, so a transfer is two dict
updates); every other record stays a protobuf message. `StateView` layers a transaction's changes
over a block's changes over the committed state (a shared cache of decoded committed records, then
the kv). Committed records are never mutated: the first write in a transaction copies the record
into the transaction layer, which is merged into the block layer on success and dropped on failure,
so a failed transaction cannot leave a partial change behind.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, NewType, TypeAlias, TypeVar

from google.protobuf.message import DecodeError, Message

from clearline.v1 import state_pb2, tx_pb2
from node.ledger.errors import StateCorrupted
from node.ledger.kv import KVReader

Amount = NewType("Amount", int)
Height = NewType("Height", int)
TimeMs = NewType("TimeMs", int)
InstrumentKey: TypeAlias = tuple[bytes, str]  # (issuer address, symbol)

U64_MAX: Final = 2**64 - 1
MS_PER_DAY: Final = 86_400_000

ACCOUNT: Final = b"\x02a/"
INSTR: Final = b"\x02i/"
_INSTRUMENT_KEYS: dict[tuple[bytes, str], bytes] = {}
HOLD: Final = b"\x02h/"
PAYER_HOLDS: Final = b"\x02p/"
EXP_TIME: Final = b"\x02e/t"
EXP_HEIGHT: Final = b"\x02e/h"
CLIENT_REF: Final = b"\x02c/"
DEPOSIT_REF: Final = b"\x02d/"
REDEEM_REF: Final = b"\x02r/"
SETTLE_REF: Final = b"\x02s/"
VALIDATORS: Final = b"\x02v"
META: Final = b"\x02m"

_BE64: Final = struct.Struct(">Q")


def account_key(address: bytes) -> bytes:
    """The state key of an account entry (what Ledger.prove_account proves)."""
    return ACCOUNT + address


def instrument_key(ik: InstrumentKey) -> bytes:
    return INSTR + ik[0] + ik[1].encode()


def hold_key(hold_id: str) -> bytes:
    return HOLD + hold_id.encode()


def payer_holds_key(address: bytes) -> bytes:
    return PAYER_HOLDS + address


def expiry_time_key(minute: int) -> bytes:
    return EXP_TIME + _BE64.pack(minute)


def expiry_height_key(height: int) -> bytes:
    return EXP_HEIGHT + _BE64.pack(height)


def client_ref_key(signer: bytes, ref: str) -> bytes:
    return CLIENT_REF + signer + hashlib.sha256(ref.encode()).digest()


def _instrument_ref_digest(ik: InstrumentKey, ref: str) -> bytes:
    return hashlib.sha256(ik[0] + b"\x00" + ik[1].encode() + b"\x00" + ref.encode()).digest()


def deposit_ref_key(ik: InstrumentKey, ref: str) -> bytes:
    return DEPOSIT_REF + _instrument_ref_digest(ik, ref)


def redemption_ref_key(ik: InstrumentKey, ref: str) -> bytes:
    return REDEEM_REF + _instrument_ref_digest(ik, ref)


def settlement_ref_key(ref: str) -> bytes:
    return SETTLE_REF + hashlib.sha256(ref.encode()).digest()


def ik_of(instrument: tx_pb2.InstrumentId) -> InstrumentKey:
    return (instrument.issuer, instrument.symbol)


_IK_INTERN: dict[InstrumentKey, InstrumentKey] = {}
_ROLES_INTERN: dict[frozenset[int], frozenset[int]] = {}
NO_ENTRIES: Final[Mapping[InstrumentKey, tuple[int, int]]] = MappingProxyType({})
KycApprovals: TypeAlias = Mapping[bytes, tuple[int, int]]
"""approver address (b"" = compliance, the network) -> (KycStatus, expires_at in unix seconds, 0 = none)."""
NO_APPROVALS: Final[KycApprovals] = MappingProxyType({})


def frozen_map(entries: dict[InstrumentKey, tuple[int, int]]) -> Mapping[InstrumentKey, tuple[int, int]]:
    """A read-only mapping for AccountRec.limits / usage (the shared empty one when empty)."""
    return MappingProxyType(entries) if entries else NO_ENTRIES


def frozen_approvals(entries: dict[bytes, tuple[int, int]]) -> KycApprovals:
    """A read-only mapping for AccountRec.kyc_approvals (the shared empty one when empty)."""
    return MappingProxyType(entries) if entries else NO_APPROVALS


def interned_roles(roles: frozenset[int]) -> frozenset[int]:
    """One shared frozenset per distinct role set (there are few)."""
    return _intern(_ROLES_INTERN, roles, 1024)


def interned_ik(ik: InstrumentKey) -> InstrumentKey:
    """One shared tuple per instrument key (there are few instruments): the accounts decoded from
    the store then share their balance keys, which makes encoding and lookups cache-friendly."""
    return _intern(_IK_INTERN, ik, 4096)


_T = TypeVar("_T")


def _intern(table: dict[_T, _T], value: _T, limit: int) -> _T:
    """The shared object equal to value (a bounded memo of objects, not state)."""
    shared = table.get(value)
    if shared is None:
        if len(table) >= limit:
            return value
        shared = table[value] = value
    return shared


def instrument_id(ik: InstrumentKey) -> tx_pb2.InstrumentId:
    return tx_pb2.InstrumentId(issuer=ik[0], symbol=ik[1])


@dataclass(slots=True)
class AccountRec:
    """An account as the ledger works on it (a mutable record inside a StateView layer).

    balances maps an instrument to (amount, frozen, held): amount is the total, frozen and held are
    the parts that cannot move. limits maps an instrument to (max per tx, max per day), 0 = none;
    usage maps an instrument to (UTC day, amount sent that day), kept only where a daily limit is.
    kyc_approvals maps an approver (an issuer's address, or b"" for compliance) to its KYC decision
    (status, expires_at); kyc_status and kyc_expires_at are derived from them (ops.compute_kyc) and
    recomputed whenever they change, so the transfer path reads two fields.
    copy() copies balances (a transfer changes them in place); limits, usage and kyc_approvals are
    read-only mappings shared between copies and replaced as a whole when they change.
    """

    address: bytes
    public_key: bytes
    roles: frozenset[int]
    kyc_status: int
    kyc_expires_at: int
    frozen: bool
    nonce: int
    balances: dict[InstrumentKey, tuple[int, int, int]]
    limits: Mapping[InstrumentKey, tuple[int, int]]
    usage: Mapping[InstrumentKey, tuple[int, int]]
    closed: bool
    recovered_to: bytes
    kyc_approvals: KycApprovals

    def copy(self) -> AccountRec:
        return AccountRec(
            self.address,
            self.public_key,
            self.roles,
            self.kyc_status,
            self.kyc_expires_at,
            self.frozen,
            self.nonce,
            dict(self.balances),
            self.limits,
            self.usage,
            self.closed,
            self.recovered_to,
            self.kyc_approvals,
        )


def new_account(address: bytes, public_key: bytes) -> AccountRec:
    return AccountRec(
        address, public_key, frozenset(), 0, 0, False, 0, {}, NO_ENTRIES, NO_ENTRIES, False, b"", NO_APPROVALS
    )


def _varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if n < 0x80:
        return _SMALL_VARINTS[n]
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    if n < 0x10000000:
        if n < 0x200000:
            return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, ((n >> 14) & 0x7F) | 0x80, n >> 21))
    if n < 0x40000000000:  # 5 or 6 bytes: typical minor-unit balances
        low = bytes(
            (
                (n & 0x7F) | 0x80,
                ((n >> 7) & 0x7F) | 0x80,
                ((n >> 14) & 0x7F) | 0x80,
                ((n >> 21) & 0x7F) | 0x80,
            )
        )
        n >>= 28
        return low + (bytes((n,)) if n < 0x80 else bytes(((n & 0x7F) | 0x80, n >> 7)))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS: Final = tuple(bytes((i,)) for i in range(0x80))
_IID_CACHE: dict[InstrumentKey, bytes] = {}
_ROLES_CACHE: dict[frozenset[int], bytes] = {}


def _len_field(tag: bytes, data: bytes) -> bytes:
    n = len(data)
    return tag + (_SMALL_VARINTS[n] if n < 0x80 else _varint(n)) + data


def _instrument_id_field(ik: InstrumentKey) -> bytes:
    """Field 1 (InstrumentId) of Balance/Limit/DailyUsage, encoded (memoized: few instruments)."""
    enc = _IID_CACHE.get(ik)
    if enc is None:
        inner = (_len_field(b"\x0a", ik[0]) if ik[0] else b"") + (
            _len_field(b"\x12", ik[1].encode()) if ik[1] else b""
        )
        enc = _len_field(b"\x0a", inner)
        if len(_IID_CACHE) < 4096:
            _IID_CACHE[ik] = enc
    return enc


def _roles_field(roles: frozenset[int]) -> bytes:
    enc = _ROLES_CACHE.get(roles)
    if enc is None:
        enc = _len_field(b"\x1a", b"".join([_varint(r) for r in sorted(roles)])) if roles else b""
        if len(_ROLES_CACHE) < 1024:
            _ROLES_CACHE[roles] = enc
    return enc


def encode_account(rec: AccountRec) -> bytes:
    """Deterministic state_pb2.Account bytes: repeated fields sorted, zero balances omitted.

    A hand-written encoder of exactly what `SerializeToString(deterministic=True)` produces (fields
    in number order, proto3 defaults omitted, packed enums); tests compare the two. It is the
    per-block hot path: every touched account is serialized once per block.
    """
    v = _varint
    address = rec.address
    out = b"\x0a\x14" + address if len(address) == 20 else (_len_field(b"\x0a", address) if address else b"")
    pk = rec.public_key
    if pk:
        out += b"\x12\x20" + pk if len(pk) == 32 else _len_field(b"\x12", pk)
    if rec.roles:
        out += _roles_field(rec.roles)
    if rec.kyc_status:
        out += b"\x20" + v(rec.kyc_status)
    if rec.kyc_expires_at:
        out += b"\x28" + v(rec.kyc_expires_at)
    if rec.frozen:
        out += b"\x30\x01"
    if rec.nonce:
        out += b"\x38" + v(rec.nonce)
    balances = rec.balances
    for ik in sorted(balances) if len(balances) > 1 else balances:
        amount, frozen, held = balances[ik]
        if amount or frozen or held:
            inner = _IID_CACHE.get(ik) or _instrument_id_field(ik)
            if amount:
                inner += b"\x10" + v(amount)
            if frozen:
                inner += b"\x18" + v(frozen)
            if held:
                inner += b"\x20" + v(held)
            n = len(inner)
            out += (b"\x42" + _SMALL_VARINTS[n] if n < 0x80 else b"\x42" + v(n)) + inner
    if rec.limits:
        for ik in sorted(rec.limits):
            max_tx, max_day = rec.limits[ik]
            inner = _instrument_id_field(ik)
            if max_tx:
                inner += b"\x10" + v(max_tx)
            if max_day:
                inner += b"\x18" + v(max_day)
            out += _len_field(b"\x4a", inner)
    if rec.usage:
        for ik in sorted(rec.usage):
            day, used = rec.usage[ik]
            inner = _instrument_id_field(ik)
            if day:
                inner += b"\x10" + v(day)
            if used:
                inner += b"\x18" + v(used)
            out += _len_field(b"\x52", inner)
    if rec.closed:
        out += b"\x58\x01"
    if rec.recovered_to:
        out += _len_field(b"\x62", rec.recovered_to)
    if rec.kyc_approvals:
        for approver in sorted(rec.kyc_approvals):
            status, expires_at = rec.kyc_approvals[approver]
            inner = _len_field(b"\x0a", approver) if approver else b""
            if status:
                inner += b"\x10" + v(status)
            if expires_at:
                inner += b"\x18" + v(expires_at)
            out += _len_field(b"\x6a", inner)
    return out


_TRANSFER_KIND: Final = b"\x0a\x08transfer"


def encode_transfer_event(payer: bytes, payee: bytes, ik: InstrumentKey, amount: int) -> bytes:
    """A transfer event as the bytes of one `Receipt.events` entry (field 6), to merge into a receipt.

    The same bytes as adding receipt_pb2.Event(kind="transfer", accounts=[payer, payee],
    instrument=..., amount=amount) and serializing; tests compare the two. Hot path: one per transfer.
    """
    iid = _IID_CACHE.get(ik) or _instrument_id_field(ik)  # field 1 of Balance; field 3 here
    event = b"".join(
        (
            _TRANSFER_KIND,
            b"\x12\x14" + payer if len(payer) == 20 else _len_field(b"\x12", payer),
            b"\x12\x14" + payee if len(payee) == 20 else _len_field(b"\x12", payee),
            b"\x1a",
            iid[1:],
            b"\x20" + _varint(amount) if amount else b"",
        )
    )
    return _len_field(b"\x32", event)


def encode_account_pb(rec: AccountRec) -> bytes:
    """The same bytes as encode_account, through the protobuf library (the reference)."""
    msg = state_pb2.Account(
        address=rec.address,
        public_key=rec.public_key,
        roles=sorted(rec.roles),  # type: ignore[arg-type]
        kyc_status=rec.kyc_status,  # type: ignore[arg-type]
        kyc_expires_at=rec.kyc_expires_at,
        frozen=rec.frozen,
        nonce=rec.nonce,
        closed=rec.closed,
        recovered_to=rec.recovered_to,
    )
    for ik in sorted(rec.balances):
        amount, frozen, held = rec.balances[ik]
        if amount or frozen or held:
            msg.balances.add(instrument=instrument_id(ik), amount=amount, frozen=frozen, held=held)
    for ik in sorted(rec.limits):
        max_tx, max_day = rec.limits[ik]
        msg.limits.add(instrument=instrument_id(ik), max_per_tx=max_tx, max_per_day=max_day)
    for ik in sorted(rec.usage):
        day, used = rec.usage[ik]
        msg.usage.add(instrument=instrument_id(ik), day=day, used=used)
    for approver in sorted(rec.kyc_approvals):
        status, expires_at = rec.kyc_approvals[approver]
        msg.kyc_approvals.add(approver=approver, status=status, expires_at=expires_at)
    return msg.SerializeToString(deterministic=True)


def account_rec_of(msg: state_pb2.Account) -> AccountRec:
    return AccountRec(
        address=msg.address,
        public_key=msg.public_key,
        roles=interned_roles(frozenset(msg.roles)),
        kyc_status=msg.kyc_status,
        kyc_expires_at=msg.kyc_expires_at,
        frozen=msg.frozen,
        nonce=msg.nonce,
        balances={interned_ik(ik_of(b.instrument)): (b.amount, b.frozen, b.held) for b in msg.balances},
        limits=frozen_map(
            {interned_ik(ik_of(m.instrument)): (m.max_per_tx, m.max_per_day) for m in msg.limits}
        ),
        usage=frozen_map({interned_ik(ik_of(u.instrument)): (u.day, u.used) for u in msg.usage}),
        closed=msg.closed,
        recovered_to=msg.recovered_to,
        kyc_approvals=frozen_approvals({a.approver: (a.status, a.expires_at) for a in msg.kyc_approvals}),
    )


def decode_account(raw: bytes) -> AccountRec:
    msg = state_pb2.Account()
    msg.ParseFromString(raw)
    return account_rec_of(msg)


def account_message(rec: AccountRec) -> state_pb2.Account:
    msg = state_pb2.Account()
    msg.ParseFromString(encode_account(rec))
    return msg


Record: TypeAlias = AccountRec | Message

_MESSAGE_OF_PREFIX: Final[tuple[tuple[bytes, type[Message]], ...]] = (
    (INSTR, state_pb2.Instrument),
    (HOLD, state_pb2.Hold),
    (PAYER_HOLDS, state_pb2.HoldList),
    (EXP_TIME, state_pb2.HoldList),
    (EXP_HEIGHT, state_pb2.HoldList),
    (CLIENT_REF, state_pb2.RefRecord),
    (DEPOSIT_REF, state_pb2.RefRecord),
    (REDEEM_REF, state_pb2.RefRecord),
    (SETTLE_REF, state_pb2.RefRecord),
    (VALIDATORS, state_pb2.ValidatorSetState),
    (META, state_pb2.LedgerMeta),
)


def decode_record(key: bytes, raw: bytes) -> Record:
    """Decode a committed state entry by its key's kind; StateCorrupted if it does not parse."""
    try:
        if key.startswith(ACCOUNT):
            return decode_account(raw)
        for prefix, cls in _MESSAGE_OF_PREFIX:
            if key.startswith(prefix):
                msg = cls()
                msg.ParseFromString(raw)
                return msg
    except DecodeError as exc:
        raise StateCorrupted(f"state entry {key!r} does not decode: {exc}") from exc
    raise StateCorrupted(f"unknown state key {key!r}")


def encode_record(record: Record) -> bytes:
    if isinstance(record, AccountRec):
        return encode_account(record)
    return record.SerializeToString(deterministic=True)


_MISSING: Final = object()


class StateView:
    """Committed state (cache, then kv) <- the block's changes <- the current transaction's changes.

    get() returns a record that must not be mutated; *_mut() return a copy in the transaction layer
    that may be. commit_tx() merges the transaction layer into the block layer; rollback_tx() drops it.
    """

    __slots__ = ("block", "cache", "kv", "tx")

    def __init__(self, kv: KVReader, cache: dict[bytes, Record | None]) -> None:
        self.kv = kv
        self.cache = cache
        self.block: dict[bytes, Record | None] = {}
        self.tx: dict[bytes, Record | None] = {}

    def get(self, key: bytes) -> Record | None:
        rec = self.tx.get(key, _MISSING)
        if rec is _MISSING:
            rec = self.block.get(key, _MISSING)
            if rec is _MISSING:
                rec = self.cache.get(key, _MISSING)
                if rec is _MISSING:
                    raw = self.kv.get(key)
                    rec = None if raw is None else decode_record(key, raw)
                    self.cache[key] = rec
        return rec  # type: ignore[return-value]

    def put(self, key: bytes, record: Record | None) -> None:
        self.tx[key] = record

    def commit_tx(self) -> None:
        if self.tx:
            self.block.update(self.tx)
            self.tx.clear()

    def rollback_tx(self) -> None:
        self.tx.clear()

    # Typed accessors.

    def account(self, address: bytes) -> AccountRec | None:
        key = ACCOUNT + address
        rec = self.tx.get(key) or self.block.get(key) or self.cache.get(key)  # the hot path: found
        if rec is None:
            rec = self.get(key)
        return rec  # type: ignore[return-value]  # the key's kind fixes the type (decode_record)

    def account_mut(self, address: bytes) -> AccountRec:
        """A writable copy of an existing account in the transaction layer."""
        key = ACCOUNT + address
        rec = self.tx.get(key)
        if rec is None:
            base = self.get(key)
            if not isinstance(base, AccountRec):
                raise StateCorrupted(f"account {address.hex()} is not in state")
            rec = base.copy()
            self.tx[key] = rec
        assert isinstance(rec, AccountRec)
        return rec

    def account_direct(self, address: bytes) -> AccountRec:
        """A writable existing account outside the transaction layer, for a step that cannot fail.

        Only for changes made after every check of the transaction passed (they survive a later
        rollback_tx). Copies the committed record at most once per block, not once per transaction.
        """
        key = ACCOUNT + address
        rec = self.tx.get(key)
        if rec is None:
            rec = self.block.get(key)
            if rec is None:
                base = self.get(key)
                if not isinstance(base, AccountRec):
                    raise StateCorrupted(f"account {address.hex()} is not in state")
                rec = base.copy()
                self.block[key] = rec
        return rec  # type: ignore[return-value]  # an account key holds an AccountRec

    def put_account(self, rec: AccountRec) -> None:
        self.tx[ACCOUNT + rec.address] = rec

    def instrument(self, ik: InstrumentKey) -> state_pb2.Instrument | None:
        key = _INSTRUMENT_KEYS.get(ik)
        if key is None:
            key = INSTR + ik[0] + ik[1].encode()
            if len(_INSTRUMENT_KEYS) < 4096:  # a bounded memo of key bytes, not state
                _INSTRUMENT_KEYS[ik] = key
        rec = self.tx.get(key) or self.block.get(key) or self.cache.get(key)  # the hot path: found
        if rec is None:
            rec = self.get(key)
        return rec  # type: ignore[return-value]  # an instrument key holds an Instrument

    def instrument_mut(self, ik: InstrumentKey) -> state_pb2.Instrument:
        key = instrument_key(ik)
        rec = self.tx.get(key)
        if rec is None:
            base = self.get(key)
            if not isinstance(base, state_pb2.Instrument):
                raise StateCorrupted(f"instrument {ik} is not in state")
            rec = state_pb2.Instrument()
            rec.CopyFrom(base)
            self.tx[key] = rec
        assert isinstance(rec, state_pb2.Instrument)
        return rec

    def hold(self, hold_id: str) -> state_pb2.Hold | None:
        rec = self.get(hold_key(hold_id))
        assert rec is None or isinstance(rec, state_pb2.Hold)
        return rec

    def hold_mut(self, hold_id: str) -> state_pb2.Hold:
        key = hold_key(hold_id)
        rec = self.tx.get(key)
        if rec is None:
            base = self.get(key)
            if not isinstance(base, state_pb2.Hold):
                raise StateCorrupted(f"hold {hold_id!r} is not in state")
            rec = state_pb2.Hold()
            rec.CopyFrom(base)
            self.tx[key] = rec
        assert isinstance(rec, state_pb2.Hold)
        return rec

    def hold_list(self, key: bytes) -> list[str]:
        rec = self.get(key)
        assert rec is None or isinstance(rec, state_pb2.HoldList)
        return [] if rec is None else list(rec.hold_ids)

    def put_hold_list(self, key: bytes, hold_ids: list[str]) -> None:
        self.tx[key] = state_pb2.HoldList(hold_ids=hold_ids) if hold_ids else None

    def ref(self, key: bytes) -> state_pb2.RefRecord | None:
        rec = self.get(key)
        assert rec is None or isinstance(rec, state_pb2.RefRecord)
        return rec

    def meta(self) -> state_pb2.LedgerMeta:
        rec = self.get(META)
        if not isinstance(rec, state_pb2.LedgerMeta):
            raise StateCorrupted("ledger metadata is missing")
        return rec

    def validator_set(self) -> state_pb2.ValidatorSetState:
        rec = self.get(VALIDATORS)
        if not isinstance(rec, state_pb2.ValidatorSetState):
            raise StateCorrupted("validator set is missing")
        return rec
