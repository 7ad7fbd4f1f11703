"""`clearline query account | tx | block | instrument | hold | validators`: read state from a node, an
account optionally verified against the commit certificate (--prove)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from clearline.v1 import tx_pb2
from cluster.cli.common import CliError, account_address, client, client_opts, emit, instrument_id, msg_dict

# What each query's REF is, for the usage error of a missing one (block's is optional: the latest).
REF_NEEDED = {
    "account": "an address, account name or key file",
    "tx": "a transaction hash (64 hex digits)",
    "instrument": "an instrument ISSUER:SYMBOL",
    "hold": "a hold id",
}
TX_HASH_LEN = 32


def parse_ref(args: argparse.Namespace) -> Any:
    """The REF of `clearline query WHAT REF` as the call takes it, read before any node is contacted:
    a missing or malformed REF fails with BAD_ARGUMENT (exit 2), not a traceback or a file error."""
    what, ref = args.what, args.ref.strip()
    if not ref and what in REF_NEEDED:
        raise CliError("BAD_ARGUMENT", f"query {what} needs REF: {REF_NEEDED[what]}", 2)
    if what == "account":
        return account_address(args, ref)
    if what == "instrument":
        return instrument_id(args, ref)
    if what == "tx":
        return _hex_hash(ref, "tx hash")
    if what == "block" and ref:
        return int(ref) if ref.isdigit() else _hex_hash(ref, "block height or hash")
    return ref or None


def _hex_hash(text: str, what: str) -> bytes:
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != TX_HASH_LEN:
        raise CliError("BAD_ARGUMENT", f"{what} {text!r} is not {TX_HASH_LEN * 2} hex digits", 2)
    return raw


def cmd_query(args: argparse.Namespace) -> int:
    from cluster.client import ClientError, ProofError

    ref = parse_ref(args)
    with client(args) as conn:
        try:
            if args.what == "account":
                address = ref
                if args.prove:
                    trusted = conn.validators(0)
                    verified = conn.get_account_verified(address, trusted)
                    resp = conn.get_account(address, prove=False) if verified.account is not None else None
                    doc = {
                        "address": address.hex(),
                        "exists": verified.account is not None,
                        "height": verified.height,
                        "state_root": verified.state_root.hex() if hasattr(verified, "state_root") else None,
                        "proof": "verified",
                        "account": msg_dict(verified.account) if verified.account is not None else None,
                    }
                    text = _account_text(address, verified.account, resp)
                    text += f"\nproof: VERIFIED against the commit certificate of height {verified.height}"
                    emit(args, doc, text)
                    return 0
                resp = conn.get_account(address)
                emit(args, msg_dict(resp), _account_text(address, resp.account, resp))
            elif args.what == "tx":
                resp = conn.get_tx(ref)
                emit(args, msg_dict(resp), json.dumps(msg_dict(resp), indent=2))
            elif args.what == "block":
                resp = conn.get_block(ref)
                h = resp.block.header
                text = (
                    f"block {h.height} {resp.block_hash.hex()}\n  time {h.time_ms}  txs {len(resp.block.body.txs)}"
                    f"  proposer {h.proposer.hex()[:16]}\n  state root {h.state_root.hex()}"
                )
                emit(args, msg_dict(resp), text)
            elif args.what == "instrument":
                resp = conn.get_instrument(ref)
                emit(args, msg_dict(resp), json.dumps(msg_dict(resp.instrument), indent=2))
            elif args.what == "hold":
                resp = conn.get_hold(ref)
                emit(args, msg_dict(resp), json.dumps(msg_dict(resp.hold), indent=2))
            elif args.what == "validators":
                vs = conn.validators(0)
                lines = [f"{v.name or '-':<8} {v.address.hex()} power {v.power}" for v in vs.validators]
                emit(args, msg_dict(vs), "\n".join(lines))
        except ClientError as exc:
            raise CliError(exc.reason, exc.message) from None
        except ProofError as exc:
            raise CliError("PROOF_INVALID", str(exc)) from None
    return 0


def _kyc_text(status: int, expires_at: int) -> str:
    name = tx_pb2.KycStatus.Name(status).removeprefix("KYC_STATUS_").lower()  # type: ignore[arg-type]
    return f"{name} until {expires_at}" if expires_at else name


def _account_text(address: bytes, account: Any, resp: Any) -> str:
    if account is None:
        return f"account {address.hex()}: does not exist"
    kyc = _kyc_text(account.kyc_status, account.kyc_expires_at)
    lines = [
        f"account {address.hex()}  nonce {account.nonce}  kyc {kyc}{'  FROZEN' if account.frozen else ''}"
    ]
    for approval in account.kyc_approvals:
        by = approval.approver.hex() if approval.approver else "compliance (the network)"
        lines.append(f"  kyc by {by}: {_kyc_text(approval.status, approval.expires_at)}")
    for bal in account.balances:
        lines.append(
            f"  {bal.instrument.issuer.hex()[:8]}:{bal.instrument.symbol:<10} {bal.amount:>14}"
            f"  (frozen {bal.frozen}, held {bal.held})"
        )
    return "\n".join(lines)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser("query", help="read state: account | tx | block | instrument | hold | validators")
    client_opts(sp)
    sp.add_argument("what", choices=["account", "tx", "block", "instrument", "hold", "validators"])
    sp.add_argument(
        "ref", nargs="?", default="", help="address/name, tx hash, height/hash, ISSUER:SYMBOL, hold id"
    )
    sp.add_argument("--prove", action="store_true", help="verify the Merkle proof and commit certificate")
    sp.set_defaults(func=cmd_query)
