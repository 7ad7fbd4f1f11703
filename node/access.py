"""Who may read what on the client API: the rules, as pure functions of the caller and the record.

    everything        node keys (validators, observers, this node) and the admin, compliance and
                      auditor roles: every account, hold, instrument, transaction, block and event
    an account        itself (with its holds as payer), the holds where it is payer, payee or notary,
                      the instruments it holds, and the transactions and events that name it
                      (signed by it, or moving its money: the receipt's events list its address)
    an issuer         besides its own account: its instruments; the accounts of the clients it
                      approved (a KYC approval of its own, any status), whole; the other holders of
                      its instruments, but only their balances, limits and holds in its instruments
                      (no proof: a proof covers the whole record); the holds, transactions and
                      events in its instruments
    blocks, streams   full blocks and the block stream: only the "everything" group; an event
                      subscription carries only the events the caller may see

A denied read reveals nothing about what it asked for: a record that does not exist and one the
caller may not see get the same PERMISSION_DENIED answer (`denied`), so no one probes for accounts,
holds or transactions of others. The everything group gets NOT_FOUND for what does not exist.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

from google.protobuf.message import DecodeError

from clearline.v1 import receipt_pb2, state_pb2, tx_pb2
from node import crypto
from node.auth import Identity
from node.errors import ApiError

EVERYTHING_ROLES: Final = frozenset((tx_pb2.ROLE_ADMIN, tx_pb2.ROLE_COMPLIANCE, tx_pb2.ROLE_AUDITOR))
ISSUER: Final = tx_pb2.ROLE_ISSUER


def denied(what: str) -> ApiError:
    """The one answer to a read the caller may not make, whether or not the record exists. what
    names the kind of record (the RPC's), never the record asked for."""
    return ApiError("PERMISSION_DENIED", "PERMISSION_DENIED", f"this identity may not read that {what}")


def sees_everything(who: Identity) -> bool:
    return who.node or not who.roles.isdisjoint(EVERYTHING_ROLES)


def is_issuer(who: Identity) -> bool:
    return ISSUER in who.roles


class AccountView(enum.Enum):
    NONE = 0
    WHOLE = 1  # the record as stored (a proof may be asked for)
    ISSUER_PART = 2  # only what concerns the caller's instruments (see issuer_part)


def account_view(who: Identity, account: state_pb2.Account | None) -> AccountView:
    """How much of account (None: does not exist) the caller sees."""
    if sees_everything(who):
        return AccountView.WHOLE
    if account is None:
        return AccountView.NONE
    if account.address == who.address:
        return AccountView.WHOLE
    if is_issuer(who):
        if any(a.approver == who.address for a in account.kyc_approvals):
            return AccountView.WHOLE
        if any(b.instrument.issuer == who.address for b in account.balances):
            return AccountView.ISSUER_PART
    return AccountView.NONE


def issuer_part(account: state_pb2.Account, issuer: bytes) -> state_pb2.Account:
    """What an issuer sees of a holder of its instruments that is not its client: who it is, whether
    it may transact, and its balances, limits and usage in the issuer's instruments only."""
    part = state_pb2.Account(
        address=account.address,
        public_key=account.public_key,
        kyc_status=account.kyc_status,
        kyc_expires_at=account.kyc_expires_at,
        frozen=account.frozen,
        closed=account.closed,
    )
    part.balances.extend(b for b in account.balances if b.instrument.issuer == issuer)
    part.limits.extend(m for m in account.limits if m.instrument.issuer == issuer)
    part.usage.extend(u for u in account.usage if u.instrument.issuer == issuer)
    return part


def hold_visible(who: Identity, hold: state_pb2.Hold) -> bool:
    return (
        sees_everything(who)
        or who.address in (hold.payer, hold.payee, hold.notary)
        or (is_issuer(who) and hold.instrument.issuer == who.address)
    )


def instrument_visible(
    who: Identity, instrument: state_pb2.Instrument, caller: state_pb2.Account | None
) -> bool:
    """caller: the caller's own account (its balances say which instruments it holds)."""
    if sees_everything(who) or instrument.id.issuer == who.address:
        return True
    return caller is not None and any(b.instrument == instrument.id for b in caller.balances)


def event_visible(who: Identity, event: receipt_pb2.Event) -> bool:
    return (
        sees_everything(who)
        or who.address in event.accounts
        or (is_issuer(who) and event.HasField("instrument") and event.instrument.issuer == who.address)
    )


def tx_signers(raw: bytes) -> frozenset[bytes]:
    """The accounts that signed an envelope (its body's signer and every signature's key); empty for
    bytes that do not parse (a committed transaction always does)."""
    envelope = tx_pb2.SignedTx()
    body = tx_pb2.TxBody()
    try:
        envelope.ParseFromString(raw)
        body.ParseFromString(envelope.body)
        keys = [crypto.address_of(s.public_key) for s in envelope.signatures]
    except (DecodeError, crypto.CryptoError):  # stored bytes that are no envelope: no signer to admit
        return frozenset()
    return frozenset((body.signer, *keys))


def tx_visible(who: Identity, signers: Iterable[bytes], receipt: receipt_pb2.Receipt | None) -> bool:
    if sees_everything(who) or who.address in signers:
        return True
    return receipt is not None and any(event_visible(who, e) for e in receipt.events)


def blocks_visible(who: Identity) -> bool:
    return sees_everything(who)
