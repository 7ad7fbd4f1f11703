"""`clearline query account | tx | block | instrument | hold | validators`: read state from a node, an
account optionally verified against the commit certificate (--prove).

Text output is for people: accounts by their names in the network (hex when it has none), instruments
as ISSUER:SYMBOL, amounts in units with the instrument's decimals and symbol (each instrument read once;
one the caller may not read shows minor units). --json is the node's reply as it is, in minor units."""

from __future__ import annotations

import argparse
import json
from typing import Any

from clearline.v1 import state_pb2, tx_pb2
from cluster.cli.common import (
    CliError,
    Names,
    account_address,
    client,
    client_opts,
    emit,
    instrument_id,
    msg_dict,
    show_amount,
    table,
)


class Shown:
    """How text output names accounts and instruments and shows amounts, for one command."""

    def __init__(self, args: argparse.Namespace, conn: Any) -> None:
        self.names = Names.of(args)
        self._conn = conn
        self._decimals: dict[tuple[bytes, str], int | None] = {}

    def decimals(self, inst: tx_pb2.InstrumentId) -> int | None:
        from cluster.client import ClientError

        key = (bytes(inst.issuer), inst.symbol)
        if key not in self._decimals:
            try:
                self._decimals[key] = int(self._conn.get_instrument(inst).instrument.decimals)
            except ClientError:
                self._decimals[key] = None
        return self._decimals[key]

    def amount(self, inst: tx_pb2.InstrumentId, minor: int) -> str:
        return show_amount(minor, self.decimals(inst), inst.symbol)


def cmd_query(args: argparse.Namespace) -> int:
    from cluster.client import ClientError, ProofError

    with client(args) as conn:
        try:
            if args.what == "account":
                address = account_address(args, args.ref)
                if args.prove:
                    trusted = conn.validators(0)
                    verified = conn.get_account_verified(address, trusted)
                    doc = {
                        "address": address.hex(),
                        "exists": verified.account is not None,
                        "height": verified.height,
                        "state_root": verified.state_root.hex() if hasattr(verified, "state_root") else None,
                        "proof": "verified",
                        "account": msg_dict(verified.account) if verified.account is not None else None,
                    }
                    text = _account_text(Shown(args, conn), address, verified.account)
                    text += f"\nproof: VERIFIED against the commit certificate of height {verified.height}"
                    emit(args, doc, text)
                    return 0
                resp = conn.get_account(address)
                account = resp.account if resp.exists else None
                emit(args, msg_dict(resp), _account_text(Shown(args, conn), address, account))
            elif args.what == "tx":
                resp = conn.get_tx(bytes.fromhex(args.ref))
                emit(args, msg_dict(resp), json.dumps(msg_dict(resp), indent=2))
            elif args.what == "block":
                ref: int | bytes | None = None
                if args.ref:
                    ref = int(args.ref) if args.ref.isdigit() else bytes.fromhex(args.ref)
                resp = conn.get_block(ref)
                h = resp.block.header
                text = (
                    f"block {h.height} {resp.block_hash.hex()}\n  time {h.time_ms}  txs {len(resp.block.body.txs)}"
                    f"  proposer {h.proposer.hex()[:16]}\n  state root {h.state_root.hex()}"
                )
                emit(args, msg_dict(resp), text)
            elif args.what == "instrument":
                resp = conn.get_instrument(instrument_id(args, args.ref))
                emit(args, msg_dict(resp), _instrument_text(Shown(args, conn), resp.instrument))
            elif args.what == "hold":
                resp = conn.get_hold(args.ref)
                emit(args, msg_dict(resp), _hold_text(Shown(args, conn), resp.hold))
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


def _account_text(shown: Shown, address: bytes, account: state_pb2.Account | None) -> str:
    name = shown.names.account(address)
    title = f"account {name}" if name == address.hex() else f"account {name} ({address.hex()})"
    if account is None:
        return f"{title}: does not exist"
    kyc = _kyc_text(account.kyc_status, account.kyc_expires_at)
    lines = [f"{title}  nonce {account.nonce}  kyc {kyc}{'  FROZEN' if account.frozen else ''}"]
    for approval in account.kyc_approvals:
        by = shown.names.account(approval.approver) if approval.approver else "compliance (the network)"
        lines.append(f"  kyc by {by}: {_kyc_text(approval.status, approval.expires_at)}")
    if account.balances:
        rows: list[tuple[str, ...]] = [
            (
                shown.names.instrument(bal.instrument),
                shown.amount(bal.instrument, bal.amount),
                shown.amount(bal.instrument, bal.frozen),
                shown.amount(bal.instrument, bal.held),
            )
            for bal in account.balances
        ]
        lines.append(table(("instrument", "balance", "frozen", "held"), rows, right=(1, 2, 3)))
    if account.limits:
        rows = [
            (
                shown.names.instrument(limit.instrument),
                shown.amount(limit.instrument, limit.max_per_tx) if limit.max_per_tx else "-",
                shown.amount(limit.instrument, limit.max_per_day) if limit.max_per_day else "-",
            )
            for limit in account.limits
        ]
        lines.append(table(("limits", "per tx", "per day"), rows, right=(1, 2)))
    return "\n".join(lines)


def _instrument_text(shown: Shown, inst: state_pb2.Instrument) -> str:
    kind = tx_pb2.InstrumentKind.Name(inst.kind).removeprefix("INSTRUMENT_KIND_").lower().replace("_", " ")

    def amount(minor: int) -> str:
        return show_amount(minor, inst.decimals, inst.id.symbol)

    rows = [
        ("name", inst.name),
        ("kind", f"{kind}, {inst.currency}, {inst.decimals} decimals" + ("  PAUSED" if inst.paused else "")),
        ("supply", amount(inst.supply)),
        ("cap", amount(inst.supply_cap) if inst.supply_cap else "none"),
        ("minted", amount(inst.minted)),
        ("redeemed", amount(inst.redeemed)),
    ]
    return f"instrument {shown.names.instrument(inst.id)}\n" + "\n".join(f"  {k:<9}{v}" for k, v in rows)


def _hold_text(shown: Shown, hold: state_pb2.Hold) -> str:
    state = state_pb2.HoldState.Name(hold.state).removeprefix("HOLD_STATE_").lower()
    expires = [f"height {hold.expires_at_height}"] if hold.expires_at_height else []
    expires += [f"time {hold.expires_at_time}"] if hold.expires_at_time else []
    rows = [
        ("instrument", shown.names.instrument(hold.instrument)),
        ("payer", shown.names.account(hold.payer)),
        ("payee", shown.names.account(hold.payee)),
        ("notary", shown.names.account(hold.notary)),
        ("held", shown.amount(hold.instrument, hold.amount)),
        ("executed", shown.amount(hold.instrument, hold.executed)),
        ("expires", " or ".join(expires) or "never"),
        ("created", f"height {hold.created_height}"),
    ]
    return f"hold {hold.hold_id} {state}\n" + "\n".join(f"  {k:<11}{v}" for k, v in rows)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser("query", help="read state: account | tx | block | instrument | hold | validators")
    client_opts(sp)
    sp.add_argument("what", choices=["account", "tx", "block", "instrument", "hold", "validators"])
    sp.add_argument(
        "ref", nargs="?", default="", help="address/name, tx hash, height/hash, ISSUER:SYMBOL, hold id"
    )
    sp.add_argument("--prove", action="store_true", help="verify the Merkle proof and commit certificate")
    sp.set_defaults(func=cmd_query)
