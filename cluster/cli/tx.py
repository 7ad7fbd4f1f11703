"""`clearline tx OP`: sign and submit one ledger operation, by default waiting until it is committed.

Every operation is declared once, in TX_OPS: its name, its help, its flags (each with the kind of
value it takes) and how the resolved values become the operation message (one of the builders of
cluster.client.builders). The `clearline tx` subcommands are made from the table, and so is the
operation a command line builds:

    TxOp("transfer", "pay another account", (INSTRUMENT, TO, AMOUNT),
         lambda v: b.transfer(v.instrument, v.to, v.amount))

A flag's kind turns its text into the builder's value: an account name, key file or hex address into
20 bytes (ADDRESS), ISSUER:SYMBOL into an InstrumentId (INSTRUMENT_ID), digits into an int (INTEGER),
an amount in the instrument's units into minor units (AMOUNT: `--amount 12.50` of a 2-decimal token is
1250; `1250minor` says minor units), and so on. A value that cannot be read fails the command with the
kind's reason code (UNKNOWN_ACCOUNT, BAD_INSTRUMENT, BAD_AMOUNT, BAD_ARGUMENT, ...) and exit status 2,
as does a value the builder refuses (BAD_ARGUMENT).

An amount in units needs its instrument's decimals, which the command reads from the node
(common.Units: GetInstrument, GetHold for a hold's instrument) after the text has been checked; the
connection it opens is the one the transaction is then sent on.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

from google.protobuf import json_format

from clearline.v1 import tx_pb2
from cluster.cli import common
from cluster.cli.common import CliError, client_opts, emit, hexify
from cluster.client.amounts import MAX_DECIMALS, AmountError, to_minor

if TYPE_CHECKING:
    from cluster.client import builders as b
else:

    class _Builders:
        """cluster.client.builders, imported when an operation is first built: the client library (and
        gRPC) stays out of `clearline --help`, init, status and every other command that needs none."""

        def __getattr__(self, name: str) -> Any:
            from cluster.client import builders

            return getattr(builders, name)

    b = _Builders()

# --- kinds of value -------------------------------------------------------------------------------


class Malformed(ValueError):
    """The text of a flag is not a value of its kind (BAD_ARGUMENT, the flag named in the message)."""


class Party(NamedTuple):
    """An account, with its public key when it is named by one of the network's account names (so a
    transaction can register the key of a new account)."""

    address: bytes
    public_key: bytes | None


def _integer(args: argparse.Namespace, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise Malformed(f"{text!r} is not an integer") from None


def _hex(args: argparse.Namespace, text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise Malformed(f"{text!r} is not hex") from None


def _party(args: argparse.Namespace, text: str) -> Party:
    """An account named by a network account name, a key file (its public key is taken from the
    file, which may hold the public key only) or a hex address (no public key)."""
    address = common.account_address(args, text)
    if text in common.network_accounts(args):
        return Party(address, bytes(common.load_key(args, text).public_key))
    if Path(text).is_file():
        return Party(address, common.load_public_key(text))
    return Party(address, None)


def _leg(args: argparse.Namespace, text: str) -> tx_pb2.Leg:
    """INSTRUMENT,FROM,TO,AMOUNT (spaces around the commas are ignored)."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 4 or not all(parts):
        raise CliError("BAD_LEG", f"leg {text!r} must be INSTRUMENT,FROM,TO,AMOUNT", 2)
    inst = common.instrument_id(args, parts[0])
    try:
        amount = common.minor_units(args, parts[3], inst)
    except AmountError as exc:
        raise CliError("BAD_AMOUNT", f"leg {text!r}: {exc.problem}", 2) from None
    return b.leg(inst, common.account_address(args, parts[1]), common.account_address(args, parts[2]), amount)


def _amount(args: argparse.Namespace, text: str) -> int:
    """An amount of the command's --instrument."""
    return common.minor_units(args, text, common.instrument_id(args, args.instrument))


def _limit(args: argparse.Namespace, text: str) -> int:
    """A limit in the command's --instrument; 0 is no limit."""
    return common.minor_units(args, text, common.instrument_id(args, args.instrument), allow_zero=True)


def _hold_amount(args: argparse.Namespace, text: str) -> int:
    """An amount of the instrument of the command's --hold-id."""
    return common.minor_units(args, text, None, hold_id=args.hold_id)


def _supply_cap(args: argparse.Namespace, text: str) -> int:
    """A supply cap in units of the instrument the command creates, by its --decimals; 0 is no cap."""
    if text.strip().endswith(common.MINOR_SUFFIX):
        return common.minor_units(args, text, None, allow_zero=True)
    decimals = _integer(args, args.decimals) if args.decimals is not None else DEFAULT_DECIMALS
    if not 0 <= decimals <= MAX_DECIMALS:
        raise Malformed(f"--decimals {decimals} is outside 0..{MAX_DECIMALS}")
    return to_minor(text, decimals, args.instrument, allow_zero=True)


@dataclass(frozen=True)
class Kind:
    """What a flag's text means: convert reads it (raising CliError with its own reason code, or
    Malformed); choices, when given, are the only texts argparse accepts, each naming its value; a
    switch takes no text (present = True)."""

    name: str
    convert: Callable[[argparse.Namespace, str], Any]
    choices: Mapping[str, Any] | None = None
    switch: bool = False


_KYC = {"approved": tx_pb2.KYC_STATUS_APPROVED, "pending": tx_pb2.KYC_STATUS_PENDING,
        "rejected": tx_pb2.KYC_STATUS_REJECTED, "revoked": tx_pb2.KYC_STATUS_REVOKED}  # fmt: skip
_ROLES = {"admin": tx_pb2.ROLE_ADMIN, "issuer": tx_pb2.ROLE_ISSUER, "compliance": tx_pb2.ROLE_COMPLIANCE,
          "auditor": tx_pb2.ROLE_AUDITOR, "participant": tx_pb2.ROLE_PARTICIPANT,
          "observer": tx_pb2.ROLE_OBSERVER}  # fmt: skip

TEXT = Kind("text", lambda args, text: text)
INTEGER = Kind("integer", _integer)
HEX = Kind("hex", _hex)
ADDRESS = Kind("account", common.account_address)  # name, key file or 20-byte hex -> bytes
PARTY = Kind("account", _party)  # as ADDRESS, plus the public key of a network account name
INSTRUMENT_ID = Kind("instrument", common.instrument_id)  # ISSUER:SYMBOL -> InstrumentId
KEY = Kind("key", common.load_key)  # account name or key file -> SigningKey
LEG = Kind("leg", _leg)  # INSTRUMENT,FROM,TO,AMOUNT -> Leg (AMOUNT as AMOUNT of INSTRUMENT)
AMOUNT_UNITS = Kind("amount", _amount)  # units of --instrument (or N minor) -> minor units
LIMIT = Kind("amount", _limit)  # as AMOUNT_UNITS, 0 allowed
HOLD_AMOUNT = Kind("amount", _hold_amount)  # units of --hold-id's instrument -> minor units
SUPPLY_CAP = Kind("amount", _supply_cap)  # units by --decimals of the new instrument -> minor units
KYC_STATUS = Kind("kyc status", lambda args, text: _KYC[text], choices=_KYC)
ROLE = Kind("role", lambda args, text: _ROLES[text], choices=_ROLES)
SWITCH = Kind("switch", lambda args, text: bool(text), switch=True)


@dataclass(frozen=True)
class Arg:
    """One flag of an operation: absent, its value is default; repeat collects every occurrence in
    a list. dest is the name of the value (default: the flag without dashes, - as _)."""

    flag: str
    kind: Kind
    required: bool = False
    default: Any = None
    help: str | None = None
    repeat: bool = False
    dest: str | None = None

    @property
    def name(self) -> str:
        return self.dest or self.flag.removeprefix("--").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        kw: dict[str, Any] = {"dest": self.name, "help": self.help}
        if self.kind.switch:
            kw["action"] = "store_true"
        else:
            kw.update(default=None, required=self.required)
            if self.repeat:
                kw["action"] = "append"
            if self.kind.choices is not None:
                kw["choices"] = sorted(self.kind.choices)
        parser.add_argument(self.flag, **kw)

    def value(self, args: argparse.Namespace) -> Any:
        raw = getattr(args, self.name)
        if self.kind.switch:
            return bool(raw)
        if raw is None:
            return self.default
        try:
            if self.repeat:
                return [self.kind.convert(args, text) for text in raw]
            return self.kind.convert(args, raw)
        except Malformed as exc:
            raise CliError("BAD_ARGUMENT", f"{self.flag}: {exc}", 2) from None
        except AmountError as exc:
            raise CliError("BAD_AMOUNT", f"{self.flag}: {exc.problem}", 2) from None


@dataclass(frozen=True)
class TxOp:
    """One `clearline tx` operation: build makes its message from the values of args (attributes
    named by Arg.name); the keys of the arg named cosigners, if any, also sign the transaction."""

    name: str
    help: str
    args: tuple[Arg, ...]
    build: Callable[[Any], b.Op]
    cosigners: str | None = None

    def values(self, args: argparse.Namespace) -> SimpleNamespace:
        return SimpleNamespace(**{arg.name: arg.value(args) for arg in self.args})


# Flags several operations share.
INSTRUMENT = Arg("--instrument", INSTRUMENT_ID, required=True)
ACCOUNT = Arg("--account", ADDRESS, required=True)
TO = Arg("--to", ADDRESS, required=True)
AMOUNT = Arg("--amount", AMOUNT_UNITS, required=True, help="in units (12.50) or minor units (1250minor)")
REASON = Arg("--reason", TEXT, required=True)
HOLD_ID = Arg("--hold-id", TEXT, required=True)


DEFAULT_DECIMALS = 2


def _kind(asset: bool) -> tx_pb2.InstrumentKind.ValueType:
    return tx_pb2.INSTRUMENT_KIND_ASSET if asset else tx_pb2.INSTRUMENT_KIND_DEPOSIT_TOKEN


TX_OPS: tuple[TxOp, ...] = (
    TxOp(
        "create-instrument",
        "admin registers an instrument",
        (
            INSTRUMENT,
            Arg("--name", TEXT, required=True),
            Arg("--currency", TEXT, required=True),
            Arg("--decimals", INTEGER, default=DEFAULT_DECIMALS),
            Arg("--supply-cap", SUPPLY_CAP, default=0, help="in units by --decimals; 0: none"),
            Arg("--asset", SWITCH, help="a tokenized asset rather than deposit tokens"),
        ),
        lambda v: b.create_instrument(
            v.instrument,
            name=v.name,
            currency=v.currency,
            decimals=v.decimals,
            supply_cap=v.supply_cap,
            kind=_kind(v.asset),
        ),
    ),
    TxOp(
        "kyc",
        "set the signer's own KYC approval of an account (a bank's, or compliance's for the network)",
        (
            Arg("--account", PARTY, required=True),
            Arg("--status", KYC_STATUS, default=tx_pb2.KYC_STATUS_APPROVED),
            Arg("--expires-at", INTEGER, default=0, help="unix SECONDS (0 = no expiry)"),
            Arg("--public-key", HEX),
            Arg("--allow-past-expiry", SWITCH, help="record an approval whose expiry has already passed"),
        ),
        lambda v: b.set_kyc(
            v.account.address,
            v.status,
            public_key=v.public_key or v.account.public_key,
            expires_at=v.expires_at,
            allow_past_expiry=v.allow_past_expiry,
        ),
    ),
    TxOp(
        "mint",
        "issuer mints against a deposit reference",
        (INSTRUMENT, TO, AMOUNT, Arg("--deposit-ref", TEXT, required=True)),
        lambda v: b.mint(v.instrument, v.to, v.amount, v.deposit_ref),
    ),
    TxOp(
        "redeem",
        "holder redeems tokens to the issuer",
        (INSTRUMENT, AMOUNT, Arg("--redemption-ref", TEXT, required=True)),
        lambda v: b.redeem(v.instrument, v.amount, v.redemption_ref),
    ),
    TxOp(
        "transfer",
        "pay another account",
        (INSTRUMENT, TO, AMOUNT),
        lambda v: b.transfer(v.instrument, v.to, v.amount),
    ),
    TxOp(
        "freeze",
        "freeze an account (compliance)",
        (ACCOUNT, REASON),
        lambda v: b.freeze_account(v.account, v.reason),
    ),
    TxOp(
        "unfreeze",
        "unfreeze an account (compliance)",
        (ACCOUNT, REASON),
        lambda v: b.unfreeze_account(v.account, v.reason),
    ),
    TxOp(
        "freeze-amount",
        "freeze amount of a balance (compliance)",
        (ACCOUNT, INSTRUMENT, AMOUNT, REASON),
        lambda v: b.freeze_amount(v.account, v.instrument, v.amount, v.reason),
    ),
    TxOp(
        "unfreeze-amount",
        "unfreeze amount of a balance (compliance)",
        (ACCOUNT, INSTRUMENT, AMOUNT, REASON),
        lambda v: b.unfreeze_amount(v.account, v.instrument, v.amount, v.reason),
    ),
    TxOp(
        "pause",
        "pause an instrument",
        (INSTRUMENT, REASON),
        lambda v: b.pause_instrument(v.instrument, v.reason),
    ),
    TxOp(
        "unpause",
        "unpause an instrument",
        (INSTRUMENT, REASON),
        lambda v: b.unpause_instrument(v.instrument, v.reason),
    ),
    TxOp(
        "hold-create",
        "escrow funds for a payee under a notary",
        (
            HOLD_ID,
            INSTRUMENT,
            Arg("--payee", ADDRESS, required=True),
            Arg("--notary", ADDRESS, required=True),
            AMOUNT,
            Arg("--expires-at-height", INTEGER, default=0),
            Arg("--expires-at-time", INTEGER, default=0, help="unix SECONDS (0 = none)"),
        ),
        lambda v: b.create_hold(
            v.hold_id,
            v.instrument,
            payee=v.payee,
            notary=v.notary,
            amount=v.amount,
            expires_at_height=v.expires_at_height,
            expires_at_time=v.expires_at_time,
        ),
    ),
    TxOp(
        "hold-execute",
        "the notary executes a hold (in part with --amount)",
        (HOLD_ID, Arg("--amount", HOLD_AMOUNT, default=0, help="in units of the hold's instrument")),
        lambda v: b.execute_hold(v.hold_id, v.amount),
    ),
    TxOp(
        "hold-release",
        "release a hold to the payer",
        (HOLD_ID,),
        lambda v: b.release_hold(v.hold_id),
    ),
    TxOp(
        "settle",
        "atomic multi-leg settlement (DvP/PvP)",
        (
            Arg("--settlement-ref", TEXT, required=True),
            Arg("--leg", LEG, required=True, repeat=True, help="INSTRUMENT,FROM,TO,AMOUNT (repeat)"),
            Arg("--cosign", KEY, repeat=True, default=(), help="key of another paying party (repeat)"),
        ),
        lambda v: b.settle(v.settlement_ref, v.leg),
        cosigners="cosign",
    ),
    TxOp(
        "forced-transfer",
        "compliance moves funds (flagged)",
        (INSTRUMENT, Arg("--from", ADDRESS, required=True, dest="from_"), TO, AMOUNT, REASON),
        lambda v: b.forced_transfer(v.instrument, v.from_, v.to, v.amount, v.reason),
    ),
    TxOp(
        "recover",
        "compliance recovers a lost wallet to a new key",
        (
            Arg("--lost", ADDRESS, required=True),
            Arg("--new-key", KEY, required=True, help="key file of the new wallet"),
            REASON,
        ),
        lambda v: b.recover_account(v.lost, v.new_key.public_key, v.reason),
    ),
    TxOp(
        "set-limits",
        "per-transaction and per-day limits",
        (
            ACCOUNT,
            INSTRUMENT,
            Arg("--max-per-tx", LIMIT, default=0, help="in units; 0: none"),
            Arg("--max-per-day", LIMIT, default=0, help="in units; 0: none"),
        ),
        lambda v: b.set_limits(v.account, v.instrument, max_per_tx=v.max_per_tx, max_per_day=v.max_per_day),
    ),
    TxOp(
        "grant-role",
        "admin grants a role",
        (Arg("--account", PARTY, required=True), Arg("--role", ROLE, required=True)),
        lambda v: b.grant_role(v.account.address, v.role, public_key=v.account.public_key),
    ),
    TxOp(
        "revoke-role",
        "admin revokes a role",
        (ACCOUNT, Arg("--role", ROLE, required=True)),
        lambda v: b.revoke_role(v.account, v.role),
    ),
    TxOp(
        "change-validator",
        "admin adds, re-weights or removes a validator (power 0)",
        (Arg("--public-key", HEX, required=True), Arg("--power", INTEGER, required=True)),
        lambda v: b.change_validator(v.public_key, v.power),
    ),
)

TX_OPS_BY_NAME: dict[str, TxOp] = {op.name: op for op in TX_OPS}


# --- the command ----------------------------------------------------------------------------------


def build_op(args: argparse.Namespace, units: common.Units | None = None) -> tuple[b.Op, list[Any]]:
    """The operation message of a parsed `clearline tx OP` command line, and the keys that cosign;
    units reads the decimals of amounts given in units (default: from the node the options name)."""
    spec = TX_OPS_BY_NAME[args.op]
    args.units = units if units is not None else common.Units(args)
    try:
        values = spec.values(args)
        op = spec.build(values)
    except b.BuildError as exc:
        raise CliError("BAD_ARGUMENT", str(exc), 2) from None
    cosigners = list(getattr(values, spec.cosigners)) if spec.cosigners else []
    return op, cosigners


def cmd_tx(args: argparse.Namespace) -> int:
    from cluster.client import ClientError, WaitFor

    if not args.as_:
        raise CliError("NO_SIGNER", f"--as NAME (or ${common.AS_ENV}) names the signing key", 2)
    key = common.load_key(args, args.as_)
    units = common.Units(args)
    waiting_for = None  # the account's next nonce, when --nonce is ahead of it
    nonce = _nonce(args.nonce)
    try:
        op, cosigners = build_op(args, units)
        wait = WaitFor.NONE if args.no_wait else WaitFor.COMMITTED
        try:
            conn = units.client()
            if nonce is not None:
                next_nonce = conn.next_nonce(key.address)
                if nonce > next_nonce:
                    # It cannot commit before the nonces below it: waiting for it would only time out.
                    waiting_for, wait = next_nonce, WaitFor.NONE
            result = conn.send(key, op, client_ref=args.ref, cosigners=cosigners, wait=wait, nonce=nonce)
        except ClientError as exc:
            raise CliError(exc.reason, exc.message) from None
        moved = _events_text(args, units, result.receipt) if result.ok and not args.json else ""
    finally:
        units.close()
    doc: dict[str, Any] = {
        "tx_hash": result.tx_hash.hex(),
        "accepted": result.accepted,
        "status": result.reason,
        "height": result.height,
        "message": result.message,
    }
    if result.replaced:
        doc["replaced"] = result.replaced.hex()
        moved += f"\n  replaces waiting tx {result.replaced.hex()}"
    if waiting_for is not None:
        doc["waiting_for_nonce"] = waiting_for
    if result.receipt is not None:
        doc["receipt"] = hexify(
            result.receipt, json_format.MessageToDict(result.receipt, preserving_proto_field_name=True)
        )
    if not result.ok:
        message = result.receipt.message if result.receipt is not None else result.message
        emit(
            args,
            doc,
            f"FAILED {result.reason}: {common.humanize(args, message)} "
            f"(tx {result.tx_hash.hex()[:16]}, height {result.height})",
        )
        return 1
    where = f"committed at height {result.height}" if result.height else "accepted"
    if waiting_for is not None:
        where += (
            f", WAITING for nonce {waiting_for} (the account's next) on this node; "
            f"`clearline tx cancel --nonce {args.nonce}` withdraws it"
        )
    emit(args, doc, f"OK {args.op} {where} (tx {result.tx_hash.hex()})" + moved)
    return 0


def _events_text(args: argparse.Namespace, units: common.Units, receipt: Any) -> str:
    """What a committed transaction moved, one line per event with an amount: its kind, the amount in
    units, the instrument and the accounts it touched, by name."""
    if receipt is None:
        return ""
    names = common.Names.of(args)
    lines = []
    for event in receipt.events:
        if not event.amount or not event.HasField("instrument"):
            continue
        lines.append("  " + common.event_text(names, event, units.known_decimals(event.instrument)))
    return "".join("\n" + line for line in lines)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`clearline tx` and one subcommand per operation of TX_OPS, in table order."""
    tx = sub.add_parser("tx", help="sign and submit a transaction").add_subparsers(dest="op", metavar="OP")
    for spec in TX_OPS:
        sp = tx.add_parser(spec.name, help=spec.help)
        client_opts(sp)
        sp.add_argument("--ref", default=None, help="client reference (idempotency key)")
        sp.add_argument("--no-wait", action="store_true", help="return once accepted, not committed")
        sp.add_argument(
            "--nonce",
            default=None,
            help="this nonce, not the next: one ahead waits for those before it; the nonce of one of "
            "your waiting transactions replaces it",
        )
        for arg in spec.args:
            arg.add_to(sp)
        sp.set_defaults(func=cmd_tx)
    sp = tx.add_parser(
        "cancel",
        help="withdraw your transactions waiting for a lower nonce from a node's mempool",
    )
    client_opts(sp)
    sp.add_argument(
        "--nonce",
        dest="nonces",
        action="append",
        default=[],
        help="the nonce to withdraw (repeat for several; default: every waiting one)",
    )
    sp.set_defaults(func=cmd_cancel)


def _nonce(text: str | None) -> int | None:
    """--nonce: a whole number below 2**64 (the wire's width), refused with BAD_ARGUMENT otherwise."""
    if text is None:
        return None
    if not text.isdigit() or int(text) >= 2**64:
        raise CliError("BAD_ARGUMENT", f"--nonce: {text!r} is not a whole number below 2**64", 2)
    return int(text)


def cmd_cancel(args: argparse.Namespace) -> int:
    """Withdraw the signer's waiting transactions (all or nothing) from the node it talks to."""
    from cluster.client import ClientError

    nonces = [_nonce(text) or 0 for text in args.nonces]
    if not args.as_:
        raise CliError("NO_SIGNER", f"--as NAME (or ${common.AS_ENV}) names the account", 2)
    key = common.load_key(args, args.as_)
    conn = common.client(args, args.as_)
    try:
        cancelled = conn.cancel_pending(key, nonces)
    except ClientError as exc:
        raise CliError(exc.reason, exc.message) from None
    finally:
        conn.close()
    doc = {"cancelled": [h.hex() for h in cancelled]}
    text = "\n".join(f"CANCELLED tx {h.hex()}" for h in cancelled) or "no waiting transactions on this node"
    emit(args, doc, text)
    return 0
