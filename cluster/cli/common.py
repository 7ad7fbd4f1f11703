"""What every command group of `clearline` shares: the error every command fails with, output (readable
text or one JSON document), the options common to all commands, resolving the names a user types
(account and key names, ISSUER:SYMBOL instruments, node names) into what the network knows and back
(addresses to names for text output), and amounts: in the instrument's units, or in minor units with
the suffix `minor` (`--amount 12.50` of a 2-decimal USD token is `--amount 1250minor`)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from clearline.v1 import tx_pb2
from cluster.client.amounts import UINT64_MAX, AmountError, format_units, split_units, to_minor
from cluster.netgen import Network, NodeInfo

DEFAULT_HOME = os.environ.get("CLEARLINE_HOME", "net")
# The identity a command reads as when --as is not given.
AS_ENV = "CLEARLINE_AS"


class CliError(Exception):
    """A command failed; reason is a machine-readable code printed with the message."""

    def __init__(self, reason: str, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


# --- options --------------------------------------------------------------------------------------


def common_opts(sp: argparse.ArgumentParser) -> None:
    """--home and --json, which every command takes."""
    sp.add_argument("--home", default=DEFAULT_HOME, help=f"network directory (default {DEFAULT_HOME})")
    sp.add_argument("--json", action="store_true", help="print one JSON document")


def client_opts(sp: argparse.ArgumentParser) -> None:
    """The common options plus the node to talk to, for commands that call a node's client API."""
    common_opts(sp)
    sp.add_argument("--node", default=None, help="node name or index to talk to (default node0)")
    sp.add_argument("--target", default=None, help="host:port of a node's client API (instead of --node)")
    sp.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    sp.add_argument(
        "--as",
        dest="as_",
        metavar="NAME",
        default=os.environ.get(AS_ENV) or None,
        help=f"the account (name of the network or key file) to call as (default ${AS_ENV})",
    )
    sp.add_argument(
        "--ca", default=None, help="CA certificate that verifies the node (default <home>/ca/ca.pem)"
    )
    sp.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, for a node configured with [api] plaintext (development)",
    )


# --- output ---------------------------------------------------------------------------------------


def emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(doc, indent=None if isinstance(doc, dict) and len(doc) > 20 else 2, default=str))
    else:
        print(text)


def msg_dict(msg: Message) -> dict[str, Any]:
    """A protobuf message as a dict with bytes in hex (not base64) for people and scripts."""
    return hexify(msg, json_format.MessageToDict(msg, preserving_proto_field_name=True))


def hexify(msg: Message, doc: dict[str, Any]) -> dict[str, Any]:
    for field in msg.DESCRIPTOR.fields:
        name = field.name
        if name not in doc:
            continue
        if field.type == field.TYPE_BYTES:
            if isinstance(doc[name], list):
                doc[name] = [base64.b64decode(v).hex() for v in doc[name]]
            else:
                doc[name] = base64.b64decode(doc[name]).hex()
        elif (
            field.type == field.TYPE_MESSAGE
            and field.message_type is not None
            and not field.message_type.GetOptions().map_entry
        ):
            value = getattr(msg, name)
            if isinstance(doc[name], list):
                doc[name] = [hexify(v, d) for v, d in zip(value, doc[name], strict=False)]
            elif isinstance(doc[name], dict):
                doc[name] = hexify(value, doc[name])
    return doc


# --- resolving names ------------------------------------------------------------------------------


def network(args: argparse.Namespace) -> Network:
    try:
        return Network.load(args.home)
    except FileNotFoundError as exc:
        raise CliError("NO_NETWORK", str(exc), 2) from None


def network_accounts(args: argparse.Namespace) -> dict[str, str]:
    """The network's account names and their key files; none without a network."""
    try:
        return Network.load(args.home).accounts
    except FileNotFoundError:
        return {}


def launcher(args: argparse.Namespace) -> Any:
    from cluster.launcher import Launcher

    return Launcher(network(args))


def load_key(args: argparse.Namespace, name: str) -> Any:
    """The signing key of a key file or of an account name of the network."""
    from node.crypto import KeyFileError, load_key_file

    path = Path(name)
    if not path.exists():
        try:
            net = Network.load(args.home)
            path = Path(net.accounts.get(name, name))
        except FileNotFoundError:
            pass
    try:
        return load_key_file(path)
    except KeyFileError as exc:
        raise CliError("BAD_KEY", str(exc), 2) from None


def load_public_key(path: str) -> bytes:
    """The public key of a key file: a signing key file, or one that holds only the public key (a
    wallet's published key: {"type": "ed25519", "public_key": HEX} with an optional matching
    "address"), so an account can be named by a key file whose private key stays with its owner."""
    from node.crypto import PUBLIC_KEY_LEN, KeyFileError, address_of, load_key_file

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CliError("BAD_KEY", f"key file {path}: cannot be read ({exc})", 2) from None
    if isinstance(doc, dict) and "private_key" in doc:
        try:
            return bytes(load_key_file(path).public_key)
        except KeyFileError as exc:
            raise CliError("BAD_KEY", str(exc), 2) from None
    if not isinstance(doc, dict) or doc.get("type") != "ed25519" or "public_key" not in doc:
        raise CliError("BAD_KEY", f"key file {path}: must hold an ed25519 'public_key'", 2)
    try:
        public_key = bytes.fromhex(str(doc["public_key"]))
    except ValueError:
        raise CliError("BAD_KEY", f"key file {path}: 'public_key' is not hex", 2) from None
    if len(public_key) != PUBLIC_KEY_LEN:
        raise CliError("BAD_KEY", f"key file {path}: 'public_key' must be {PUBLIC_KEY_LEN} bytes", 2)
    if "address" in doc and str(doc["address"]).removeprefix("0x") != address_of(public_key).hex():
        raise CliError("BAD_KEY", f"key file {path}: 'address' does not match 'public_key'", 2)
    return public_key


def account_address(args: argparse.Namespace, text: str) -> bytes:
    """A 20-byte address from hex, an account name of the network or a key file."""
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
        if len(raw) == 20:
            return raw
    except ValueError:
        pass
    try:
        net = Network.load(args.home)
    except FileNotFoundError:
        net = None
    if net is not None and text in net.accounts:
        return bytes(load_key(args, text).address)
    if text and Path(text).is_file():
        from node.crypto import address_of

        return bytes(address_of(load_public_key(text)))
    raise CliError(
        "UNKNOWN_ACCOUNT", f"{text!r} is neither a 20-byte hex address nor a known account name", 2
    )


def instrument_id(args: argparse.Namespace, text: str) -> tx_pb2.InstrumentId:
    """The InstrumentId of ISSUER:SYMBOL, the issuer named as `account_address` accepts."""
    issuer, sep, symbol = text.rpartition(":")
    if not sep or not issuer or not symbol:
        raise CliError("BAD_INSTRUMENT", f"instrument {text!r} must be ISSUER:SYMBOL (e.g. bank-a:USD)", 2)
    return tx_pb2.InstrumentId(issuer=account_address(args, issuer), symbol=symbol)


def target(args: argparse.Namespace) -> str:
    if getattr(args, "target", None):
        return str(args.target)
    return node_info(network(args), args.node if args.node is not None else 0).api_target


def node_info(net: Network, name: str | int) -> NodeInfo:
    """The node a user names (name or index); UNKNOWN_NODE naming the known nodes if there is none."""
    try:
        return net.node(name)
    except KeyError:
        known = ", ".join(n.name for n in net.all_nodes)
        raise CliError(
            "UNKNOWN_NODE", f"no node {name!r} in this network (known nodes: {known})", 2
        ) from None


def identity(args: argparse.Namespace, default: str | None = None) -> Any:
    """The key the command calls as: --as, else $CLEARLINE_AS, else default (e.g. a transaction's
    signer); None if none is given (then only status answers)."""
    name = getattr(args, "as_", None) or default
    return load_key(args, name) if name else None


def client_tls(args: argparse.Namespace) -> Any:
    """How the node is verified: --ca, or the network's CA; None with --insecure."""
    from cluster.client import TlsConfig

    if getattr(args, "insecure", False):
        return None
    if getattr(args, "ca", None):
        return TlsConfig(ca_cert_path=args.ca)
    net = network(args)
    return net.client_tls() if net.tls else None


def client(args: argparse.Namespace, default_identity: str | None = None) -> Any:
    """A connection to the node the options name, made as identity(args, default_identity)."""
    from cluster.client import ClientError, SyncClient, TlsConfigError

    try:
        tls = client_tls(args)
        return SyncClient.connect(
            target(args),
            timeout_s=args.timeout,
            tls=tls,
            insecure=tls is None,
            identity=identity(args, default_identity),
        )
    except TlsConfigError as exc:
        raise CliError("BAD_TLS", str(exc), 2) from None
    except ClientError as exc:
        raise CliError(exc.reason, f"cannot reach {target(args)}: {exc.message}") from None


# --- names for people -----------------------------------------------------------------------------


class Names:
    """The network's account names by address (from its key files, read once), for text output: an
    address the network has no name for prints in hex."""

    def __init__(self, accounts: dict[str, str]) -> None:
        from node.crypto import KeyFileError, load_key_file

        self._by_address: dict[bytes, str] = {}
        for name, path in sorted(accounts.items()):
            try:
                self._by_address.setdefault(bytes(load_key_file(Path(path)).address), name)
            except (KeyFileError, OSError):
                continue

    @classmethod
    def of(cls, args: argparse.Namespace) -> Names:
        return cls(network_accounts(args))

    def account(self, address: bytes) -> str:
        return self._by_address.get(bytes(address)) or bytes(address).hex()

    def instrument(self, inst: tx_pb2.InstrumentId) -> str:
        return f"{self.account(inst.issuer)}:{inst.symbol}"

    def humanize(self, text: str) -> str:
        """text (a node's message) with every address this network has a name for replaced by it:
        "instrument 3f0c...:USD is paused" reads "instrument bank-a:USD is paused"."""
        if not self._by_address:
            return text

        def name(match: re.Match[str]) -> str:
            return self._by_address.get(bytes.fromhex(match.group(0)), match.group(0))

        return _ADDRESS_HEX.sub(name, text)


# An address in a message: exactly 40 hex digits, not part of a longer hex string (a hash).
_ADDRESS_HEX = re.compile(r"(?<![0-9a-fA-F])[0-9a-fA-F]{40}(?![0-9a-fA-F])")


def humanize(args: argparse.Namespace, text: str) -> str:
    """text with the network's account names for addresses (none known: unchanged)."""
    try:
        return Names.of(args).humanize(text)
    except Exception:  # a message for people: never fail over it
        return text


def event_text(names: Names, event: Any, decimals: int | None) -> str:
    """One ledger event (receipt_pb2.Event) for people: its kind, the amount in units of the
    instrument's decimals (minor units when unknown) with the instrument as ISSUER:SYMBOL, and the
    accounts it touched by name: payer -> payee for a movement (`transfer: 12.50 USD (bank-a:USD)
    alice -> bob`)."""
    accounts = [names.account(a) for a in event.accounts]
    if event.amount and len(accounts) >= 2:
        extra = accounts[2:]
        if event.kind == "hold_created" and extra:  # [payer, payee, notary]
            extra = [f"notary {extra[0]}", *extra[1:]]
        who = ", ".join([f"{accounts[0]} -> {accounts[1]}", *extra])
    else:
        who = ", ".join(accounts)
    what = event.kind
    if event.HasField("instrument") and event.instrument.symbol:
        inst = names.instrument(event.instrument)
        if event.amount:
            what += f": {show_amount(event.amount, decimals, event.instrument.symbol)} ({inst})"
        else:
            what += f" ({inst})"
    return f"{what}  {who}" if who else what


def table(columns: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> str:
    """rows under columns as a plain text table (rich, no colour, no width limit); columns whose index
    is in right are right-aligned (amounts)."""
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    aligned = set(right)
    tab = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, column in enumerate(columns):
        tab.add_column(column, justify="right" if i in aligned else "left", no_wrap=True)
    for row in rows:
        tab.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=1000, color_system=None, force_terminal=False).print(tab)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines() if line.strip())


# --- amounts --------------------------------------------------------------------------------------

# An amount in minor units, as the ledger counts them: digits and this suffix (`--amount 1250minor`).
MINOR_SUFFIX = "minor"


class Units:
    """What turns an amount in units into minor units: the decimals of each instrument, read from the
    node (GetInstrument) once per command, and the instrument of a hold (GetHold). Reads are made as the
    command's identity (--as), then as each --cosign key (a settlement's legs may be in instruments only
    a cosigner holds); a caller that may read none of them is told to give minor units. The connection
    is opened at the first read, so a command whose amounts need none never contacts a node for them;
    client() hands it on to the command."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._conn: Any = None
        self._decimals: dict[tuple[bytes, str], int] = {}

    def client(self) -> Any:
        if self._conn is None:
            self._conn = client(self._args)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _readers(self) -> list[Any]:
        return [None, *(load_key(self._args, name) for name in getattr(self._args, "cosign", None) or ())]

    def decimals(self, inst: tx_pb2.InstrumentId, label: str) -> int:
        from cluster.client import ClientError

        key = (bytes(inst.issuer), inst.symbol)
        if key not in self._decimals:
            refusal: Any = None
            for reader in self._readers():
                try:
                    resp = self.client().get_instrument(inst, as_=reader)
                except ClientError as exc:
                    refusal = refusal or exc
                    if exc.reason != "PERMISSION_DENIED":
                        break
                    continue
                self._decimals[key] = int(resp.instrument.decimals)
                break
            if key not in self._decimals:
                raise CliError(
                    refusal.reason if refusal is not None else "BAD_AMOUNT",
                    f"cannot read the decimals of {label} ({refusal.message if refusal else 'no reply'}):"
                    f" give the amount in minor units instead, e.g. 1250{MINOR_SUFFIX}",
                    2,
                )
        return self._decimals[key]

    def known_decimals(self, inst: tx_pb2.InstrumentId) -> int | None:
        """The decimals of inst if the command may read them, else None (for output)."""
        try:
            return self.decimals(inst, inst.symbol)
        except CliError:
            return None

    def hold_instrument(self, hold_id: str) -> tx_pb2.InstrumentId:
        from cluster.client import ClientError

        try:
            resp = self.client().get_hold(hold_id)
        except ClientError as exc:
            raise CliError(
                exc.reason,
                f"cannot read hold {hold_id!r} for its instrument's decimals ({exc.message}):"
                f" give the amount in minor units instead, e.g. 1250{MINOR_SUFFIX}",
                2,
            ) from None
        return tx_pb2.InstrumentId(issuer=resp.hold.instrument.issuer, symbol=resp.hold.instrument.symbol)


def minor_units(
    args: argparse.Namespace,
    text: str,
    inst: tx_pb2.InstrumentId | None,
    *,
    hold_id: str | None = None,
    allow_zero: bool = False,
) -> int:
    """The minor units of an amount a user typed: digits with the suffix `minor` as they are, else units
    of inst (or of the instrument of hold_id) by its decimals from args.units (a Units). Raises
    AmountError for a text that is no amount, before any read."""
    number = text.strip()
    if number.endswith(MINOR_SUFFIX):
        digits = number.removesuffix(MINOR_SUFFIX).strip()
        if not (digits.isascii() and digits.isdigit()):
            raise AmountError(text, f"{text!r} is not an amount in minor units: digits, then {MINOR_SUFFIX}")
        value = int(digits)
        if value == 0 and not allow_zero:
            raise AmountError(text, f"{number}: the amount must be more than zero")
        if value > UINT64_MAX:
            raise AmountError(text, f"{number} is more than {UINT64_MAX} minor units")
        return value
    # What is wrong whatever the decimals is refused before any read.
    whole, fraction = split_units(text)
    if not allow_zero and not (whole + fraction).strip("0"):
        raise AmountError(text, f"{number}: the amount must be more than zero")
    if int(whole or "0") > UINT64_MAX:
        raise AmountError(text, f"{number} is more than {UINT64_MAX} minor units")
    units: Units = args.units
    if inst is None:
        assert hold_id is not None
        inst = units.hold_instrument(hold_id)
    label = Names.of(args).instrument(inst)
    return to_minor(text, units.decimals(inst, label), label, allow_zero=allow_zero)


def show_amount(minor: int, decimals: int | None, symbol: str) -> str:
    """minor units for people: in units with the symbol, or `N minor` when the decimals are unknown."""
    return (
        format_units(minor, decimals, symbol) if decimals is not None else f"{minor} {MINOR_SUFFIX} {symbol}"
    )
