"""`clearline query account | tx | block | instrument | hold | validators | statement | instruments |
pending | holds | accounts` and `clearline watch`: read state from a node, an account optionally
verified against the commit certificate (--prove), and follow events as they commit.

Text output is for people: accounts by their names in the network (hex when it has none), instruments
as ISSUER:SYMBOL, amounts in units with the instrument's decimals and symbol (each instrument read once;
one the caller may not read shows minor units), block times in UTC, a block's proposer by validator
name. --json (and a statement's --csv) is the node's reply as it is, in minor units and hex."""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import time
from typing import Any

from clearline.v1 import ledger_api_pb2, state_pb2, tx_pb2
from cluster.cli.common import (
    CliError,
    Names,
    account_address,
    client,
    client_opts,
    emit,
    event_text,
    instrument_id,
    msg_dict,
    show_amount,
    table,
)


class Shown:
    """How text output names accounts and instruments and shows amounts, for one command."""

    def __init__(self, args: argparse.Namespace, conn: Any, names: Names | None = None) -> None:
        self.names = names if names is not None else Names.of(args)
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

    def signed(self, inst: tx_pb2.InstrumentId, minor: int) -> str:
        """A signed amount (a statement's debit is negative) in units, with its sign."""
        sign = "-" if minor < 0 else "+" if minor > 0 else ""
        return sign + self.amount(inst, abs(minor))


def utc(ms: int) -> str:
    """A block time (unix milliseconds) as a UTC date-time to the second."""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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
    if what == "account" or (what in ("holds", "accounts") and ref):
        return account_address(args, ref)
    if what in ("holds", "accounts"):
        return b""  # the caller's own
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
                shown = Shown(args, conn)
                text = _account_text(shown, address, account)
                if resp.holds:  # its active holds as payer: funds it has put aside
                    text += "\n" + _holds_text(shown, list(resp.holds))
                emit(args, msg_dict(resp), text)
            elif args.what == "tx":
                resp = conn.get_tx(ref)
                emit(args, msg_dict(resp), _tx_text(ref, resp))
            elif args.what == "block":
                resp = conn.get_block(ref)
                # Only the text reads the validator set (for names): --json makes the calls it made before.
                text = (
                    "" if args.json else _block_text(resp, _validator_names(conn, resp.block.header.height))
                )
                emit(args, msg_dict(resp), text)
            elif args.what == "instrument":
                resp = conn.get_instrument(ref)
                emit(args, msg_dict(resp), _instrument_text(Shown(args, conn), resp.instrument))
            elif args.what == "hold":
                resp = conn.get_hold(ref)
                emit(args, msg_dict(resp), _hold_text(Shown(args, conn), resp.hold))
            elif args.what == "statement":
                _statement(args, conn)
            elif args.what == "instruments":
                items = conn.list_instruments()
                docs = [msg_dict(i) for i in items]
                text = "" if args.json else _instruments_text(Shown(args, conn), items)
                emit(args, {"instruments": docs}, text)
            elif args.what == "pending":
                resp = conn.list_pending(account_address(args, args.ref) if args.ref else b"")
                lines = [
                    f"nonce {t.nonce:>6}  {t.tx_hash.hex()[:16]}  "
                    + (f"WAITING for nonce {t.waiting_for_nonce} ({t.age_ms / 1000:.0f} s of at most "
                       f"{resp.max_wait_ms / 1000:.0f} s)" if t.waiting else "ready")
                    for t in resp.txs
                ]  # fmt: skip
                emit(args, msg_dict(resp), "\n".join(lines) or "no pending transactions on this node")
            elif args.what == "holds":
                holds = conn.list_holds(ref, include_closed=args.all)
                emit(args, {"holds": [msg_dict(h) for h in holds]}, _holds_text(Shown(args, conn), holds))
            elif args.what == "accounts":
                accounts = conn.list_accounts(ref)
                emit(
                    args,
                    {"accounts": [msg_dict(a) for a in accounts]},
                    _accounts_text(Shown(args, conn), ref, accounts),
                )
            elif args.what == "validators":
                vs = conn.validators(0)
                lines = [f"{v.name or '-':<8} {v.address.hex()} power {v.power}" for v in vs.validators]
                emit(args, msg_dict(vs), "\n".join(lines))
        except ClientError as exc:
            raise CliError(exc.reason, exc.message) from None
        except ProofError as exc:
            raise CliError("PROOF_INVALID", str(exc)) from None
    return 0


def _statement(args: argparse.Namespace, conn: Any) -> None:
    """`query statement ACCOUNT --instrument ISSUER:SYMBOL [--from H] [--to H] [--csv]`: entries with
    signed minor-unit amounts, opening and closing balances (which tie out: the SDK checks it)."""
    if not args.ref:
        raise CliError("BAD_ARGUMENT", "query statement needs an account (name, key file or hex address)", 2)
    if not args.instrument:
        raise CliError("BAD_ARGUMENT", "query statement needs --instrument ISSUER:SYMBOL", 2)
    address = account_address(args, args.ref)
    inst = instrument_id(args, args.instrument)
    st = conn.statement(address, inst, from_height=args.from_height, to_height=args.to_height)
    entries = [
        {
            "height": e.height,
            "time_ms": e.time_ms,
            "tx_hash": e.tx_hash.hex(),
            "kind": e.kind,
            "counterparty": e.counterparty.hex(),
            "amount": -e.amount if e.debit else e.amount,
        }
        for e in st.entries
    ]
    doc = {
        "account": address.hex(),
        "instrument": f"{inst.issuer.hex()}:{inst.symbol}",
        "from_height": st.from_height,
        "to_height": st.to_height,
        "opening": st.opening,
        "closing": st.closing,
        "entries": entries,
    }
    if args.csv:
        out = io.StringIO()
        writer = csv.DictWriter(
            out, fieldnames=list(entries[0]) if entries else ["height"], lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(entries)
        print(out.getvalue(), end="")
        return
    emit(args, doc, "" if args.json else _statement_text(Shown(args, conn), address, inst, st))


def _statement_text(
    shown: Shown, address: bytes, inst: tx_pb2.InstrumentId, st: ledger_api_pb2.GetStatementResponse
) -> str:
    """A statement for people: the account and counterparties by name, amounts in units with their
    sign (a debit is negative), each entry's block time in UTC; opening and closing balances."""
    lines = [
        f"statement of {shown.names.account(address)} in {shown.names.instrument(inst)}, "
        f"heights {st.from_height}..{st.to_height}",
        f"opening balance  {shown.amount(inst, st.opening)}",
    ]
    rows = [
        (
            str(e.height),
            utc(e.time_ms).removesuffix(" UTC"),
            e.kind,
            shown.names.account(e.counterparty) if e.counterparty else "-",
            shown.signed(inst, -e.amount if e.debit else e.amount),
            e.tx_hash.hex()[:16],
        )
        for e in st.entries
    ]
    if rows:
        lines.append(
            table(("height", "time (UTC)", "kind", "counterparty", "amount", "tx"), rows, right=(0, 4))
        )
    else:
        lines.append("no entries in these heights")
    lines.append(f"closing balance  {shown.amount(inst, st.closing)}")
    return "\n".join(lines)


def _instruments_text(shown: Shown, items: list[state_pb2.Instrument]) -> str:
    """The instruments a caller may read: ISSUER:SYMBOL, name, currency, decimals, supply in units."""
    if not items:
        return "no instruments this identity may read"
    rows = [
        (
            shown.names.instrument(i.id),
            i.name,
            i.currency,
            str(i.decimals),
            show_amount(i.supply, i.decimals, i.id.symbol),
            "PAUSED" if i.paused else "-",
        )
        for i in items
    ]
    return table(("instrument", "name", "currency", "decimals", "supply", "paused"), rows, right=(3, 4))


def _validator_names(conn: Any, height: int) -> dict[bytes, str]:
    """The names of the validators of a height by address; none if the set cannot be read."""
    from cluster.client import ClientError

    try:
        vs = conn.validators(height)
    except ClientError:
        return {}
    return {bytes(v.address): v.name for v in vs.validators if v.name}


def _block_text(resp: ledger_api_pb2.GetBlockResponse, validators: dict[bytes, str]) -> str:
    """A block's header for people: its time in UTC and its proposer by validator name (hex when the
    validator set names none)."""
    h = resp.block.header
    proposer = validators.get(bytes(h.proposer)) or h.proposer.hex()
    return (
        f"block {h.height} {resp.block_hash.hex()}\n"
        f"  time {utc(h.time_ms)}  txs {len(resp.block.body.txs)}  proposer {proposer}\n"
        f"  state root {h.state_root.hex()}"
    )


def _event_line(shown: Shown, env: ledger_api_pb2.EventEnvelope) -> str:
    """One line of `clearline watch`: height, the event (amount in units, instrument and accounts by
    name) and its transaction (a block's own events have none)."""
    e = env.event
    decimals = shown.decimals(e.instrument) if e.amount and e.instrument.symbol else None
    tx = env.tx_hash.hex()[:16] if env.tx_hash else "block"
    return f"{env.height:>8}  {event_text(shown.names, e, decimals)}  (tx {tx})"


def _kyc_text(status: int, expires_at: int, now_s: float | None = None) -> str:
    """A KYC status with its expiry (unix seconds); EXPIRED once past (an expired approval grants
    nothing, whatever its status says)."""
    name = tx_pb2.KycStatus.Name(status).removeprefix("KYC_STATUS_").lower()  # type: ignore[arg-type]
    if not expires_at:
        return name
    when = datetime.datetime.fromtimestamp(expires_at, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    now_s = time.time() if now_s is None else now_s
    return f"{name} EXPIRED {when}" if expires_at <= now_s else f"{name} until {when}"


def _account_text(shown: Shown, address: bytes, account: state_pb2.Account | None) -> str:
    name = shown.names.account(address)
    title = f"account {name}" if name == address.hex() else f"account {name} ({address.hex()})"
    if account is None:
        return f"{title}: does not exist"
    kyc = _kyc_text(account.kyc_status, account.kyc_expires_at)
    lines = [f"{title}  nonce {account.nonce}  kyc {kyc}{'  FROZEN' if account.frozen else ''}"]
    if account.roles:
        names = ", ".join(tx_pb2.Role.Name(r).removeprefix("ROLE_").lower() for r in account.roles)
        lines.append(f"  roles {names}")
    if account.closed:
        lines.append(f"  CLOSED: recovered to {shown.names.account(account.recovered_to)}")
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
        today = int(time.time() // 86_400)  # the ledger's day: UTC days of block time
        used = {(u.instrument.issuer, u.instrument.symbol): u.used for u in account.usage if u.day == today}
        rows = [
            (
                shown.names.instrument(limit.instrument),
                shown.amount(limit.instrument, limit.max_per_tx) if limit.max_per_tx else "-",
                shown.amount(limit.instrument, limit.max_per_day) if limit.max_per_day else "-",
                shown.amount(
                    limit.instrument, used.get((limit.instrument.issuer, limit.instrument.symbol), 0)
                ),
            )
            for limit in account.limits
        ]
        lines.append(table(("limits", "per tx", "per day", "used today"), rows, right=(1, 2, 3)))
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


def _holds_text(shown: Shown, holds: list[state_pb2.Hold]) -> str:
    if not holds:
        return "no holds this identity may read"
    rows = [
        (
            h.hold_id,
            state_pb2.HoldState.Name(h.state).removeprefix("HOLD_STATE_").lower(),
            shown.names.instrument(h.instrument),
            shown.amount(h.instrument, h.amount),
            shown.amount(h.instrument, h.executed),
            shown.names.account(h.payer),
            shown.names.account(h.payee),
            shown.names.account(h.notary),
        )
        for h in holds
    ]
    return table(
        ("hold", "state", "instrument", "held", "executed", "payer", "payee", "notary"), rows, right=(3, 4)
    )


def _accounts_text(shown: Shown, issuer: bytes, accounts: list[state_pb2.Account]) -> str:
    """An issuer's accounts: KYC by that issuer, frozen/closed, and balances in its instruments."""
    if not accounts:
        return "no accounts this identity may read"
    rows = []
    for account in accounts:
        approvals = [a for a in account.kyc_approvals if not issuer or a.approver == issuer]
        kyc = ", ".join(_kyc_text(a.status, a.expires_at) for a in approvals) or "-"
        held = [b for b in account.balances if not issuer or b.instrument.issuer == issuer]
        balances = "; ".join(
            f"{shown.names.instrument(b.instrument)} {shown.amount(b.instrument, b.amount)}" for b in held
        )
        status = "CLOSED" if account.closed else "FROZEN" if account.frozen else ""
        rows.append((shown.names.account(account.address), kyc, status, balances or "-"))
    return table(("account", "kyc", "status", "balances"), rows)


def _tx_text(tx_hash: bytes, resp: Any) -> str:
    """One transaction's state for people; the decoded receipt follows a committed one."""
    head = f"tx {tx_hash.hex()}"
    if resp.state == ledger_api_pb2.TX_STATE_DROPPED:
        text = f"{head} DROPPED ({resp.dropped_reason}): {resp.message}"
        if resp.replaced_by:
            text += f"\n  replaced by tx {resp.replaced_by.hex()}"
        return text
    if resp.state == ledger_api_pb2.TX_STATE_PENDING:
        return f"{head} PENDING in this node's mempool (`clearline query pending` says whether it waits)"
    return f"{head} COMMITTED at height {resp.height}, index {resp.index}\n" + json.dumps(
        msg_dict(resp.receipt), indent=2
    )


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sp = sub.add_parser(
        "query",
        help="read state: account | tx | block | instrument | hold | validators | statement | instruments | "
        "pending | holds (of an account) | accounts (of an issuer)",
    )
    client_opts(sp)
    sp.add_argument(
        "what",
        choices=[
            "account",
            "tx",
            "block",
            "instrument",
            "hold",
            "validators",
            "statement",
            "instruments",
            "pending",
            "holds",
            "accounts",
        ],
    )
    sp.add_argument(
        "ref",
        nargs="?",
        default="",
        help="address/name, tx hash, height/hash, ISSUER:SYMBOL, hold id; holds and accounts: the "
        "account or issuer (default: --as)",
    )
    sp.add_argument("--prove", action="store_true", help="verify the Merkle proof and commit certificate")
    sp.add_argument("--instrument", default="", help="statement: the instrument, ISSUER:SYMBOL")
    sp.add_argument(
        "--from", dest="from_height", type=int, default=0, help="statement: first height (default 1)"
    )
    sp.add_argument(
        "--to", dest="to_height", type=int, default=0, help="statement: last height (default latest)"
    )
    sp.add_argument("--csv", action="store_true", help="statement: the entries as CSV")
    sp.add_argument("--all", action="store_true", help="holds: executed, released and expired ones too")
    sp.set_defaults(func=cmd_query)

    sp = sub.add_parser("watch", help="follow the events this identity may see, as they commit")
    client_opts(sp)
    sp.add_argument("--account", default="", help="only events naming this account")
    sp.add_argument("--instrument", default="", help="only events of this instrument (ISSUER:SYMBOL)")
    sp.add_argument("--from", dest="from_height", type=int, default=0, help="first height (default: now)")
    sp.add_argument("--count", type=int, default=0, help="stop after this many events (default: never)")
    sp.add_argument("--seconds", type=float, default=None, help="stop after this long (default: never)")
    sp.set_defaults(func=cmd_watch)


def cmd_watch(args: argparse.Namespace) -> int:
    """`clearline watch`: one line (or one JSON object) per event, until Ctrl-C, --count or --seconds."""
    from cluster.client import ClientError

    account = account_address(args, args.account) if args.account else None
    inst = instrument_id(args, args.instrument) if args.instrument else None
    seen = 0
    with client(args) as conn:
        shown = Shown(args, conn)
        start = args.from_height or conn.status().height + 1
        try:
            for env in conn.subscribe_events(start, account=account, instrument=inst, timeout_s=args.seconds):
                if args.json:
                    doc = {"height": env.height, "tx_hash": env.tx_hash.hex(), **msg_dict(env.event)}
                    print(json.dumps(doc), flush=True)
                else:
                    print(_event_line(shown, env), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    break
        except ClientError as exc:
            if exc.reason != "DEADLINE_EXCEEDED":
                raise CliError(exc.reason, exc.message) from None
        except KeyboardInterrupt:
            pass
    return 0
