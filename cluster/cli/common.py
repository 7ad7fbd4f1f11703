"""What every command group of `clearline` shares: the error every command fails with, output (readable
text or one JSON document), the options common to all commands, and resolving the names a user types
(account and key names, ISSUER:SYMBOL instruments, node names) into what the network knows."""

from __future__ import annotations

import argparse
import base64
import json
import os
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from clearline.v1 import tx_pb2
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
