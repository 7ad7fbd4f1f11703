"""The `clearline` command: launch and drive Clearline networks.

    clearline init --validators 4 --home ./net       keys, CA, genesis, one config per node
    clearline up | down | status | logs               run the network as real processes
    clearline node kill|stop|start|restart|pause|resume NODE
    clearline keys new --out alice.json               a new Ed25519 key
    clearline tx transfer --as alice --instrument bank-a:USD --to bob --amount 100
    clearline query account bob --prove               verified against the commit certificate

Accounts and instruments may be named by the key names in <home>/accounts (alice, bank-a, ...) or by
hex address; an instrument is ISSUER:SYMBOL. Output is readable by default and one JSON document with
--json. A failed command prints the reason code and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from clearline.v1 import tx_pb2
from cluster.netgen import DEFAULT_BASE_PORT, Network, NetworkExistsError, init_network

DEFAULT_HOME = os.environ.get("CLEARLINE_HOME", "net")


class CliError(Exception):
    """A command failed; reason is a machine-readable code printed with the message."""

    def __init__(self, reason: str, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.code = code


# --- output ---------------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, doc: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(doc, indent=None if isinstance(doc, dict) and len(doc) > 20 else 2, default=str))
    else:
        print(text)


def _msg_dict(msg: Message) -> dict[str, Any]:
    """A protobuf message as a dict with bytes in hex (not base64) for people and scripts."""
    return _hexify(msg, json_format.MessageToDict(msg, preserving_proto_field_name=True))


def _hexify(msg: Message, doc: dict[str, Any]) -> dict[str, Any]:
    import base64

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
                doc[name] = [_hexify(v, d) for v, d in zip(value, doc[name], strict=False)]
            elif isinstance(doc[name], dict):
                doc[name] = _hexify(value, doc[name])
    return doc


# --- resolving names ------------------------------------------------------------------------------


def _network(args: argparse.Namespace) -> Network:
    try:
        return Network.load(args.home)
    except FileNotFoundError as exc:
        raise CliError("NO_NETWORK", str(exc), 2) from None


def _key(args: argparse.Namespace, name: str) -> Any:
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


def _address(args: argparse.Namespace, text: str) -> bytes:
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
        return bytes(_key(args, text).address)
    if Path(text).exists():
        return bytes(_key(args, text).address)
    raise CliError(
        "UNKNOWN_ACCOUNT", f"{text!r} is neither a 20-byte hex address nor a known account name", 2
    )


def _instrument(args: argparse.Namespace, text: str) -> tx_pb2.InstrumentId:
    issuer, sep, symbol = text.rpartition(":")
    if not sep or not issuer or not symbol:
        raise CliError("BAD_INSTRUMENT", f"instrument {text!r} must be ISSUER:SYMBOL (e.g. bank-a:USD)", 2)
    return tx_pb2.InstrumentId(issuer=_address(args, issuer), symbol=symbol)


def _target(args: argparse.Namespace) -> str:
    if getattr(args, "target", None):
        return str(args.target)
    net = _network(args)
    return net.node(args.node if args.node is not None else 0).api_target


def _client(args: argparse.Namespace) -> Any:
    from cluster.client import ClientError, SyncClient

    try:
        return SyncClient.connect(_target(args), timeout_s=args.timeout)
    except ClientError as exc:
        raise CliError(exc.reason, f"cannot reach {_target(args)}: {exc.message}") from None


# --- init / up / down / status / logs / node ---------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    hosts = [h.strip() for h in args.hosts.split(",")] if args.hosts else None
    if args.force and (Path(args.home) / "network.json").exists():
        from cluster.launcher import Launcher

        running = [
            n.name for n in Network.load(args.home).nodes if Launcher(Network.load(args.home)).pid(n.name)
        ]
        if running:
            raise CliError(
                "NETWORK_RUNNING", f"nodes {', '.join(running)} are running; `clearline down` first", 2
            )
    try:
        net = init_network(
            args.home,
            validators=args.validators,
            hosts=hosts,
            chain_id=args.chain_id,
            base_port=args.base_port,
            faults=args.faults,
            force=args.force,
            tls=not args.no_tls,
        )
    except NetworkExistsError as exc:
        raise CliError("NETWORK_EXISTS", str(exc), 2) from None
    except ValueError as exc:
        raise CliError("BAD_ARGUMENT", str(exc), 2) from None
    doc = {
        "home": net.home,
        "chain_id": net.chain_id,
        "nodes": [
            {"name": n.name, "api": n.api_target, "p2p": n.p2p_target, "address": n.address}
            for n in net.nodes
        ],
        "accounts": sorted(net.accounts),
        "faults": net.faults,
    }
    lines = [f"initialized {len(net.nodes)} validators of {net.chain_id} in {net.home}"]
    lines += [
        f"  {n.name}: api {n.api_target}  p2p {n.p2p_target}  validator {n.address[:16]}" for n in net.nodes
    ]
    lines.append(f"  accounts: {', '.join(sorted(net.accounts))} (keys in {net.home}/accounts)")
    _emit(args, doc, "\n".join(lines))
    return 0


def _launcher(args: argparse.Namespace) -> Any:
    from cluster.launcher import Launcher

    return Launcher(_network(args))


def _healthy(node: Any) -> bool:
    from cluster.client import SyncClient

    with SyncClient.connect(node.api_target, timeout_s=1.0) as client:
        return bool(client.status().height >= 1)


def cmd_up(args: argparse.Namespace) -> int:
    from cluster.launcher import LaunchError

    launcher = _launcher(args)
    launcher.start_all()
    progress = (lambda line: print(f"  {line}", file=sys.stderr)) if not args.json else None
    if progress:
        print(
            f"starting {len(launcher.network.nodes)} nodes, waiting for the first block...", file=sys.stderr
        )
    try:
        for node in launcher.network.nodes:
            launcher.wait_serving(node.name, timeout=args.wait)
        launcher.wait_until(_healthy, timeout=args.wait, what="committing blocks", progress=progress)
    except LaunchError as exc:
        raise CliError("NODE_UNHEALTHY", str(exc)) from None
    return cmd_status(args)


def cmd_down(args: argparse.Namespace) -> int:
    launcher = _launcher(args)
    launcher.stop_all(timeout=args.grace)
    left = [n.name for n in launcher.network.nodes if launcher.status(n.name).alive]
    if left:
        raise CliError("STILL_RUNNING", f"nodes still running: {', '.join(left)}")
    _emit(args, {"stopped": [n.name for n in launcher.network.nodes]}, "all nodes stopped")
    return 0


def _node_status(node: Any, launcher: Any) -> dict[str, Any]:
    from cluster.client import ClientError, SyncClient

    proc = launcher.status(node.name)
    row: dict[str, Any] = {
        "node": node.name,
        "pid": proc.pid,
        "alive": proc.alive,
        "paused": proc.paused,
        "api": node.api_target,
        "height": None,
        "round": None,
        "peers": None,
        "mempool": None,
        "last_block_age_s": None,
        "syncing": None,
    }
    if proc.alive and not proc.paused:
        try:
            with SyncClient.connect(node.api_target, timeout_s=1.5) as client:
                st = client.status()
            row.update(
                height=st.height,
                round=st.round,
                step=st.step,
                peers=st.peers,
                mempool=st.mempool_size,
                syncing=st.syncing,
                last_block_age_s=round(time.time() - st.latest_block_time_ms / 1000, 1)
                if st.latest_block_time_ms
                else None,
            )
        except ClientError as exc:
            row["error"] = exc.reason
    return row


def cmd_status(args: argparse.Namespace) -> int:
    launcher = _launcher(args)
    rows = [_node_status(n, launcher) for n in launcher.network.nodes]
    header = f"{'node':<8}{'pid':>8}  {'alive':<6}{'height':>8}{'round':>6}{'peers':>6}{'mempool':>9}{'age s':>8}  syncing"
    lines = [header]
    for r in rows:
        alive = "paused" if r["paused"] else ("yes" if r["alive"] else "no")

        def cell(key: str, r: dict[str, Any] = r) -> str:
            return "-" if r.get(key) is None else str(r[key])

        lines.append(
            f"{r['node']:<8}{cell('pid'):>8}  {alive:<6}{cell('height'):>8}{cell('round'):>6}{cell('peers'):>6}"
            f"{cell('mempool'):>9}{cell('last_block_age_s'):>8}  {cell('syncing')}"
        )
    _emit(args, {"nodes": rows}, "\n".join(lines))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from cluster.launcher import tail

    net = _network(args)
    nodes = [net.node(args.node_id)] if args.node_id is not None else list(net.nodes)
    for node in nodes:
        for name in ("stdout.log", "node.log"):
            path = Path(node.home) / name
            print(f"==> {node.name}/{name} <==")
            print(tail(path, args.lines))
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    """One node's process. start and restart wait until the node serves its client API: a node that
    refuses to start (bad config, missing genesis, address in use, ...) is reported with its reason
    and a non-zero exit, not as a pid."""
    from cluster.launcher import LaunchError, NodeRefusedError

    launcher = _launcher(args)
    node = launcher.network.node(args.node_id)
    action: Callable[..., Any] = getattr(launcher, args.action)
    extra = {}
    if args.action in ("start", "restart") and args.byzantine:
        if not launcher.network.faults:
            raise CliError(
                "FAULTS_DISABLED", "--byzantine needs a network created with `clearline init --faults`", 2
            )
        extra["args"] = ["--byzantine", args.byzantine]
    if args.action == "start" and launcher.status(node.name).alive:
        raise CliError("ALREADY_RUNNING", f"{node.name} is already running")
    pid = action(node.name, **extra)
    if pid is None:
        raise CliError("NOT_RUNNING", f"{node.name} is not running")
    if args.action in ("start", "restart"):
        try:
            launcher.wait_serving(node.name, timeout=args.wait)
        except NodeRefusedError as exc:
            raise CliError("NODE_REFUSED", str(exc)) from None
        except LaunchError as exc:
            raise CliError("NODE_NOT_SERVING", str(exc)) from None
    _emit(
        args, {"node": node.name, "action": args.action, "pid": pid}, f"{args.action} {node.name} (pid {pid})"
    )
    return 0


# --- network and disk faults ------------------------------------------------------------------------


def cmd_fault(args: argparse.Namespace) -> int:
    from cluster.faults import FaultError, Nemesis
    from cluster.faults.rules import FaultRuleError

    nemesis = Nemesis(_network(args), _launcher(args))
    a = args
    try:
        if a.fault == "partition":
            groups = [g.split(",") for g in a.groups]
            nemesis.partition(*groups)
            text = "partitioned: " + " | ".join(",".join(g) for g in groups)
        elif a.fault == "one-way":
            nemesis.one_way(a.src, a.dst)
            text = f"messages {a.src} -> {a.dst} dropped"
        elif a.fault == "link":
            kw = dict(delay_ms=a.delay_ms, jitter_ms=a.jitter_ms, loss=a.loss, duplicate=a.duplicate)
            if a.src == "all":
                nemesis.link_all(**kw)
            else:
                nemesis.link(a.src, a.dst, **kw)
            text = f"link {a.src}->{a.dst or 'all'}: {kw}"
        elif a.fault == "heal":
            nemesis.heal()
            text = "healed: every network rule removed"
        elif a.fault == "wal-truncate":
            removed = nemesis.truncate_wal(a.node_id, a.bytes)
            text = f"removed {removed} bytes from the tail of {a.node_id}'s WAL"
        elif a.fault == "wal-corrupt":
            offset = nemesis.corrupt_wal(a.node_id, at_tail=not a.middle)
            text = f"corrupted the frame at offset {offset} of {a.node_id}'s WAL"
        else:
            raise CliError("UNKNOWN_FAULT", f"unknown fault {a.fault}", 2)
    except (FaultError, FaultRuleError, KeyError, ValueError) as exc:
        raise CliError(type(exc).__name__, str(exc)) from None
    _emit(args, {"fault": a.fault, "result": text}, text)
    return 0


# --- keys -----------------------------------------------------------------------------------------


def cmd_keys_new(args: argparse.Namespace) -> int:
    from node.crypto import SigningKey, save_key_file

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CliError("KEY_EXISTS", f"{out} exists; use --force to replace it", 2)
    key = SigningKey.generate()
    save_key_file(out, key)
    doc = {"file": str(out), "address": key.address.hex(), "public_key": key.public_key.hex()}
    _emit(
        args, doc, f"new key in {out}\n  address    {key.address.hex()}\n  public key {key.public_key.hex()}"
    )
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    key = _key(args, args.name)
    doc = {"address": key.address.hex(), "public_key": key.public_key.hex()}
    _emit(args, doc, f"address    {key.address.hex()}\npublic key {key.public_key.hex()}")
    return 0


# --- transactions -----------------------------------------------------------------------------------

_KYC = {"approved": tx_pb2.KYC_STATUS_APPROVED, "pending": tx_pb2.KYC_STATUS_PENDING,
        "rejected": tx_pb2.KYC_STATUS_REJECTED, "revoked": tx_pb2.KYC_STATUS_REVOKED}  # fmt: skip
_ROLES = {"admin": tx_pb2.ROLE_ADMIN, "issuer": tx_pb2.ROLE_ISSUER, "compliance": tx_pb2.ROLE_COMPLIANCE,
          "auditor": tx_pb2.ROLE_AUDITOR, "participant": tx_pb2.ROLE_PARTICIPANT}  # fmt: skip


def _build_op(args: argparse.Namespace) -> tuple[Any, list[Any]]:
    """The operation message for `clearline tx <op>`, and the cosigning keys it needs."""
    from cluster.client import builders as b

    a = args
    op = a.op
    cosigners: list[Any] = []
    if op == "create-instrument":
        kind = tx_pb2.INSTRUMENT_KIND_ASSET if a.asset else tx_pb2.INSTRUMENT_KIND_DEPOSIT_TOKEN
        return b.create_instrument(
            _instrument(a, a.instrument), name=a.name, currency=a.currency, decimals=a.decimals,
            supply_cap=a.supply_cap, kind=kind,
        ), cosigners  # fmt: skip
    if op == "kyc":
        account = _address(a, a.account)
        public_key = _key(a, a.account).public_key if a.account in _network_accounts(a) else None
        if a.public_key:
            public_key = bytes.fromhex(a.public_key)
        return b.set_kyc(account, _KYC[a.status], public_key=public_key, expires_at=a.expires_at), cosigners
    if op == "mint":
        return b.mint(_instrument(a, a.instrument), _address(a, a.to), a.amount, a.deposit_ref), cosigners
    if op == "redeem":
        return b.redeem(_instrument(a, a.instrument), a.amount, a.redemption_ref), cosigners
    if op == "transfer":
        return b.transfer(_instrument(a, a.instrument), _address(a, a.to), a.amount), cosigners
    if op in ("freeze", "unfreeze"):
        fn = b.freeze_account if op == "freeze" else b.unfreeze_account
        return fn(_address(a, a.account), a.reason), cosigners
    if op in ("freeze-amount", "unfreeze-amount"):
        fn2 = b.freeze_amount if op == "freeze-amount" else b.unfreeze_amount
        return fn2(_address(a, a.account), _instrument(a, a.instrument), a.amount, a.reason), cosigners
    if op in ("pause", "unpause"):
        fn3 = b.pause_instrument if op == "pause" else b.unpause_instrument
        return fn3(_instrument(a, a.instrument), a.reason), cosigners
    if op == "hold-create":
        return b.create_hold(
            a.hold_id, _instrument(a, a.instrument), payee=_address(a, a.payee), notary=_address(a, a.notary),
            amount=a.amount, expires_at_height=a.expires_at_height, expires_at_time=a.expires_at_time,
        ), cosigners  # fmt: skip
    if op == "hold-execute":
        return b.execute_hold(a.hold_id, a.amount), cosigners
    if op == "hold-release":
        return b.release_hold(a.hold_id), cosigners
    if op == "settle":
        legs = []
        for text in a.leg:
            parts = text.split(",")
            if len(parts) != 4:
                raise CliError("BAD_LEG", f"leg {text!r} must be INSTRUMENT,FROM,TO,AMOUNT", 2)
            legs.append(
                b.leg(_instrument(a, parts[0]), _address(a, parts[1]), _address(a, parts[2]), int(parts[3]))
            )
        cosigners = [_key(a, name) for name in a.cosign or []]
        return b.settle(a.settlement_ref, legs), cosigners
    if op == "forced-transfer":
        return b.forced_transfer(
            _instrument(a, a.instrument), _address(a, a.from_), _address(a, a.to), a.amount, a.reason
        ), cosigners
    if op == "recover":
        return b.recover_account(_address(a, a.lost), _key(a, a.new_key).public_key, a.reason), cosigners
    if op == "set-limits":
        return b.set_limits(
            _address(a, a.account),
            _instrument(a, a.instrument),
            max_per_tx=a.max_per_tx,
            max_per_day=a.max_per_day,
        ), cosigners
    if op in ("grant-role", "revoke-role"):
        if op == "grant-role":
            pk = _key(a, a.account).public_key if a.account in _network_accounts(a) else None
            return b.grant_role(_address(a, a.account), _ROLES[a.role], public_key=pk), cosigners
        return b.revoke_role(_address(a, a.account), _ROLES[a.role]), cosigners
    if op == "change-validator":
        return b.change_validator(bytes.fromhex(a.public_key), a.power), cosigners
    raise CliError("UNKNOWN_OP", f"unknown operation {op}", 2)


def _network_accounts(args: argparse.Namespace) -> dict[str, str]:
    try:
        return Network.load(args.home).accounts
    except FileNotFoundError:
        return {}


def cmd_tx(args: argparse.Namespace) -> int:
    from cluster.client import BuildError, ClientError, WaitFor

    key = _key(args, args.as_)
    try:
        op, cosigners = _build_op(args)
    except BuildError as exc:
        raise CliError("BAD_ARGUMENT", str(exc), 2) from None
    wait = WaitFor.NONE if args.no_wait else WaitFor.COMMITTED
    with _client(args) as client:
        try:
            result = client.send(key, op, client_ref=args.ref, cosigners=cosigners, wait=wait)
        except ClientError as exc:
            raise CliError(exc.reason, exc.message) from None
    doc: dict[str, Any] = {
        "tx_hash": result.tx_hash.hex(),
        "accepted": result.accepted,
        "status": result.reason,
        "height": result.height,
        "message": result.message,
    }
    if result.receipt is not None:
        doc["receipt"] = _hexify(
            result.receipt, json_format.MessageToDict(result.receipt, preserving_proto_field_name=True)
        )
    if not result.ok:
        message = result.receipt.message if result.receipt is not None else result.message
        _emit(
            args,
            doc,
            f"FAILED {result.reason}: {message} (tx {result.tx_hash.hex()[:16]}, height {result.height})",
        )
        return 1
    where = f"committed at height {result.height}" if result.height else "accepted"
    _emit(args, doc, f"OK {args.op} {where} (tx {result.tx_hash.hex()})")
    return 0


# --- queries --------------------------------------------------------------------------------------


def cmd_query(args: argparse.Namespace) -> int:
    from cluster.client import ClientError, ProofError

    with _client(args) as client:
        try:
            if args.what == "account":
                address = _address(args, args.ref)
                if args.prove:
                    trusted = client.validators(0)
                    verified = client.get_account_verified(address, trusted)
                    resp = client.get_account(address, prove=False) if verified.account is not None else None
                    doc = {
                        "address": address.hex(),
                        "exists": verified.account is not None,
                        "height": verified.height,
                        "state_root": verified.state_root.hex() if hasattr(verified, "state_root") else None,
                        "proof": "verified",
                        "account": _msg_dict(verified.account) if verified.account is not None else None,
                    }
                    text = _account_text(address, verified.account, resp)
                    text += f"\nproof: VERIFIED against the commit certificate of height {verified.height}"
                    _emit(args, doc, text)
                    return 0
                resp = client.get_account(address)
                _emit(args, _msg_dict(resp), _account_text(address, resp.account, resp))
            elif args.what == "tx":
                resp = client.get_tx(bytes.fromhex(args.ref))
                _emit(args, _msg_dict(resp), json.dumps(_msg_dict(resp), indent=2))
            elif args.what == "block":
                ref: int | bytes | None = None
                if args.ref:
                    ref = int(args.ref) if args.ref.isdigit() else bytes.fromhex(args.ref)
                resp = client.get_block(ref)
                h = resp.block.header
                text = (
                    f"block {h.height} {resp.block_hash.hex()}\n  time {h.time_ms}  txs {len(resp.block.body.txs)}"
                    f"  proposer {h.proposer.hex()[:16]}\n  state root {h.state_root.hex()}"
                )
                _emit(args, _msg_dict(resp), text)
            elif args.what == "instrument":
                resp = client.get_instrument(_instrument(args, args.ref))
                _emit(args, _msg_dict(resp), json.dumps(_msg_dict(resp.instrument), indent=2))
            elif args.what == "hold":
                resp = client.get_hold(args.ref)
                _emit(args, _msg_dict(resp), json.dumps(_msg_dict(resp.hold), indent=2))
            elif args.what == "validators":
                vs = client.validators(0)
                lines = [f"{v.name or '-':<8} {v.address.hex()} power {v.power}" for v in vs.validators]
                _emit(args, _msg_dict(vs), "\n".join(lines))
        except ClientError as exc:
            raise CliError(exc.reason, exc.message) from None
        except ProofError as exc:
            raise CliError("PROOF_INVALID", str(exc)) from None
    return 0


def _account_text(address: bytes, account: Any, resp: Any) -> str:
    if account is None:
        return f"account {address.hex()}: does not exist"
    kyc = tx_pb2.KycStatus.Name(account.kyc_status).removeprefix("KYC_STATUS_").lower()
    lines = [
        f"account {address.hex()}  nonce {account.nonce}  kyc {kyc}{'  FROZEN' if account.frozen else ''}"
    ]
    for bal in account.balances:
        lines.append(
            f"  {bal.instrument.issuer.hex()[:8]}:{bal.instrument.symbol:<10} {bal.amount:>14}"
            f"  (frozen {bal.frozen}, held {bal.held})"
        )
    return "\n".join(lines)


# --- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clearline", description="Launch and drive Clearline networks.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--home", default=DEFAULT_HOME, help=f"network directory (default {DEFAULT_HOME})")
        sp.add_argument("--json", action="store_true", help="print one JSON document")

    def client_opts(sp: argparse.ArgumentParser) -> None:
        common(sp)
        sp.add_argument("--node", default=None, help="node name or index to talk to (default node0)")
        sp.add_argument("--target", default=None, help="host:port of a node's client API (instead of --node)")
        sp.add_argument("--timeout", type=float, default=30.0, help="seconds per call")

    sp = sub.add_parser("init", help="create a network directory")
    common(sp)
    sp.add_argument("--validators", type=int, default=4)
    sp.add_argument("--hosts", default="", help="comma-separated hosts, one per validator")
    sp.add_argument(
        "--chain-id", default=None, help="the network's chain id (default: a fresh clearline-<8 hex digits>)"
    )
    sp.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    sp.add_argument(
        "--faults", action="store_true", help="allow fault injection (Byzantine modes, link proxies)"
    )
    sp.add_argument("--force", action="store_true", help="replace an existing network")
    sp.add_argument("--no-tls", action="store_true", help="plaintext peer links (development only)")
    sp.set_defaults(func=cmd_init)

    sp = sub.add_parser("up", help="start every node and wait until all commit blocks")
    common(sp)
    sp.add_argument("--wait", type=float, default=90.0, help="seconds to wait for health")
    sp.set_defaults(func=cmd_up)

    sp = sub.add_parser("down", help="stop every node (SIGTERM, then SIGKILL)")
    common(sp)
    sp.add_argument("--grace", type=float, default=10.0)
    sp.set_defaults(func=cmd_down)

    sp = sub.add_parser("status", help="a table of the nodes")
    common(sp)
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("logs", help="the tail of each node's logs")
    common(sp)
    sp.add_argument("node_id", nargs="?", default=None)
    sp.add_argument("-n", "--lines", type=int, default=20)
    sp.set_defaults(func=cmd_logs)

    sp = sub.add_parser("node", help="kill | stop | start | restart | pause | resume one node")
    common(sp)
    sp.add_argument("action", choices=["kill", "stop", "start", "restart", "pause", "resume"])
    sp.add_argument("node_id")
    sp.add_argument("--byzantine", default="", help="test-only misbehaviour (networks made with --faults)")
    sp.add_argument(
        "--wait", type=float, default=30.0, help="start/restart: seconds to wait for the node to serve"
    )
    sp.set_defaults(func=cmd_node)

    faults = sub.add_parser("fault", help="network and disk faults (networks made with init --faults)")
    fsub = faults.add_subparsers(dest="fault", metavar="FAULT")
    sp = fsub.add_parser("partition", help="split the nodes into groups that cannot talk")
    common(sp)
    sp.add_argument("groups", nargs="+", help="comma-separated node names, one argument per group")
    sp = fsub.add_parser("one-way", help="drop messages from SRC to DST only")
    common(sp)
    sp.add_argument("src")
    sp.add_argument("dst")
    sp = fsub.add_parser("link", help="delay, loss and duplication on SRC->DST (SRC 'all' for every link)")
    common(sp)
    sp.add_argument("src")
    sp.add_argument("dst", nargs="?", default="")
    sp.add_argument("--delay-ms", type=float, default=0)
    sp.add_argument("--jitter-ms", type=float, default=0)
    sp.add_argument("--loss", type=float, default=0)
    sp.add_argument("--duplicate", type=float, default=0)
    sp = fsub.add_parser("heal", help="remove every network fault")
    common(sp)
    sp = fsub.add_parser("wal-truncate", help="cut the tail of a stopped node's WAL")
    common(sp)
    sp.add_argument("node_id")
    sp.add_argument("bytes", type=int)
    sp = fsub.add_parser("wal-corrupt", help="flip a byte in a stopped node's WAL (last frame, or --middle)")
    common(sp)
    sp.add_argument("node_id")
    sp.add_argument("--middle", action="store_true")
    for sp in fsub.choices.values():
        sp.set_defaults(func=cmd_fault)

    keys = sub.add_parser("keys", help="key files").add_subparsers(dest="keys_command", metavar="KEYS")
    sp = keys.add_parser("new", help="generate a key file")
    common(sp)
    sp.add_argument("--out", required=True)
    sp.add_argument("--force", action="store_true")
    sp.set_defaults(func=cmd_keys_new)
    sp = keys.add_parser("show", help="address and public key of a key file or account name")
    common(sp)
    sp.add_argument("name")
    sp.set_defaults(func=cmd_keys_show)

    tx = sub.add_parser("tx", help="sign and submit a transaction").add_subparsers(dest="op", metavar="OP")

    def txp(name: str, help_: str) -> argparse.ArgumentParser:
        sp = tx.add_parser(name, help=help_)
        client_opts(sp)
        sp.add_argument("--as", dest="as_", required=True, help="signing key: account name or key file")
        sp.add_argument("--ref", default=None, help="client reference (idempotency key)")
        sp.add_argument("--no-wait", action="store_true", help="return once accepted, not committed")
        sp.set_defaults(func=cmd_tx)
        return sp

    sp = txp("create-instrument", "admin registers an instrument")
    sp.add_argument("--instrument", required=True)
    sp.add_argument("--name", required=True)
    sp.add_argument("--currency", required=True)
    sp.add_argument("--decimals", type=int, default=2)
    sp.add_argument("--supply-cap", type=int, default=0)
    sp.add_argument("--asset", action="store_true", help="a tokenized asset rather than deposit tokens")
    sp = txp("kyc", "set an account's KYC status")
    sp.add_argument("--account", required=True)
    sp.add_argument("--status", choices=sorted(_KYC), default="approved")
    sp.add_argument("--expires-at", type=int, default=0)
    sp.add_argument("--public-key", default="")
    sp = txp("mint", "issuer mints against a deposit reference")
    sp.add_argument("--instrument", required=True)
    sp.add_argument("--to", required=True)
    sp.add_argument("--amount", type=int, required=True)
    sp.add_argument("--deposit-ref", required=True)
    sp = txp("redeem", "holder redeems tokens to the issuer")
    sp.add_argument("--instrument", required=True)
    sp.add_argument("--amount", type=int, required=True)
    sp.add_argument("--redemption-ref", required=True)
    sp = txp("transfer", "pay another account")
    sp.add_argument("--instrument", required=True)
    sp.add_argument("--to", required=True)
    sp.add_argument("--amount", type=int, required=True)
    for name in ("freeze", "unfreeze"):
        sp = txp(name, f"{name} an account (compliance)")
        sp.add_argument("--account", required=True)
        sp.add_argument("--reason", required=True)
    for name in ("freeze-amount", "unfreeze-amount"):
        sp = txp(name, f"{name.replace('-', ' ')} of a balance (compliance)")
        sp.add_argument("--account", required=True)
        sp.add_argument("--instrument", required=True)
        sp.add_argument("--amount", type=int, required=True)
        sp.add_argument("--reason", required=True)
    for name in ("pause", "unpause"):
        sp = txp(name, f"{name} an instrument")
        sp.add_argument("--instrument", required=True)
        sp.add_argument("--reason", required=True)
    sp = txp("hold-create", "escrow funds for a payee under a notary")
    sp.add_argument("--hold-id", required=True)
    sp.add_argument("--instrument", required=True)
    sp.add_argument("--payee", required=True)
    sp.add_argument("--notary", required=True)
    sp.add_argument("--amount", type=int, required=True)
    sp.add_argument("--expires-at-height", type=int, default=0)
    sp.add_argument("--expires-at-time", type=int, default=0)
    sp = txp("hold-execute", "the notary executes a hold (in part with --amount)")
    sp.add_argument("--hold-id", required=True)
    sp.add_argument("--amount", type=int, default=0)
    sp = txp("hold-release", "release a hold to the payer")
    sp.add_argument("--hold-id", required=True)
    sp = txp("settle", "atomic multi-leg settlement (DvP/PvP)")
    sp.add_argument("--settlement-ref", required=True)
    sp.add_argument("--leg", action="append", required=True, help="INSTRUMENT,FROM,TO,AMOUNT (repeat)")
    sp.add_argument("--cosign", action="append", help="key of another paying party (repeat)")
    sp = txp("forced-transfer", "compliance moves funds (flagged)")
    sp.add_argument("--instrument", required=True)
    sp.add_argument("--from", dest="from_", required=True)
    sp.add_argument("--to", required=True)
    sp.add_argument("--amount", type=int, required=True)
    sp.add_argument("--reason", required=True)
    sp = txp("recover", "compliance recovers a lost wallet to a new key")
    sp.add_argument("--lost", required=True)
    sp.add_argument("--new-key", required=True, help="key file of the new wallet")
    sp.add_argument("--reason", required=True)
    sp = txp("set-limits", "per-transaction and per-day limits")
    sp.add_argument("--account", required=True)
    sp.add_argument("--instrument", required=True)
    sp.add_argument("--max-per-tx", type=int, default=0)
    sp.add_argument("--max-per-day", type=int, default=0)
    for name in ("grant-role", "revoke-role"):
        sp = txp(name, f"admin {name.split('-')[0]}s a role")
        sp.add_argument("--account", required=True)
        sp.add_argument("--role", choices=sorted(_ROLES), required=True)
    sp = txp("change-validator", "admin adds, re-weights or removes a validator (power 0)")
    sp.add_argument("--public-key", required=True)
    sp.add_argument("--power", type=int, required=True)

    sp = sub.add_parser("query", help="read state: account | tx | block | instrument | hold | validators")
    client_opts(sp)
    sp.add_argument("what", choices=["account", "tx", "block", "instrument", "hold", "validators"])
    sp.add_argument(
        "ref", nargs="?", default="", help="address/name, tx hash, height/hash, ISSUER:SYMBOL, hold id"
    )
    sp.add_argument("--prove", action="store_true", help="verify the Merkle proof and commit certificate")
    sp.set_defaults(func=cmd_query)

    for name, module in (("chaos", "cluster.chaos"), ("bench", "cluster.bench")):
        sp = sub.add_parser(name, help=f"see `clearline {name} --help`", add_help=False)
        sp.set_defaults(func=None, module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in ("chaos", "bench"):
        import importlib

        try:
            module = importlib.import_module(f"cluster.{argv[0]}")
        except ModuleNotFoundError:
            print(f"clearline {argv[0]}: not available yet", file=sys.stderr)
            return 2
        return int(module.main(argv[1:]))
    args = parser.parse_args(argv)
    if args.command is None or getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except CliError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.reason, "message": exc.message}))
        else:
            print(f"error {exc.reason}: {exc.message}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
