"""Text output of `clearline query` and `clearline watch` is for people: instruments as ISSUER:SYMBOL
with the issuer's account name (bank-a:USD), accounts by name (hex for an address the network has no
name for), amounts in units with the symbol (minor units when the decimals cannot be read), block
times in UTC, a block's proposer by validator name. --json and --csv stay as they were: minor units
and hex, for scripts.

No node runs: the network directory comes from init_network (its key files are the address book),
the render functions are fed protobuf messages, and whole commands run against a fake connection."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from clearline.v1 import block_pb2, ledger_api_pb2, receipt_pb2, state_pb2, tx_pb2
from cluster.cli import main
from cluster.cli import query as q
from cluster.cli.common import Names, event_text, msg_dict
from cluster.client import ClientError
from cluster.netgen import Network, init_network
from node.crypto import SigningKey, load_key_file

HEX40 = re.compile(r"\b[0-9a-f]{40}\b")
T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Network:
    return init_network(tmp_path_factory.mktemp("cli-text") / "net", validators=1)


def addr(net: Network, name: str) -> bytes:
    return bytes(load_key_file(Path(net.accounts[name])).address)


def inst(net: Network, issuer: str, symbol: str) -> tx_pb2.InstrumentId:
    return tx_pb2.InstrumentId(issuer=addr(net, issuer), symbol=symbol)


STRANGER = bytes(SigningKey.generate().address)


class FakeConn:
    """What the query commands call on a connection, answering from fixed messages; instruments not
    in `readable` are refused as a node refuses a caller that may not read them."""

    def __init__(self, net: Network, readable: tuple[str, ...] = ("USD", "BOND-2030")) -> None:
        self.net = net
        usd = inst(net, "bank-a", "USD")
        bond = inst(net, "bank-a", "BOND-2030")
        self.instruments = [
            state_pb2.Instrument(id=usd, name="Bank A USD", currency="USD", decimals=2, supply=125_000,
                                 minted=130_000, redeemed=5_000),
            state_pb2.Instrument(id=bond, name="Bond 2030", currency="USD", decimals=0, supply=5, paused=True),
        ]  # fmt: skip
        self.readable = readable
        self.proposer = SigningKey.generate().address
        self.calls: list[str] = []

    def __enter__(self) -> FakeConn:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def get_instrument(self, ref: tx_pb2.InstrumentId) -> ledger_api_pb2.GetInstrumentResponse:
        self.calls.append(f"get_instrument {ref.symbol}")
        for i in self.instruments:
            if i.id == ref and i.id.symbol in self.readable:
                return ledger_api_pb2.GetInstrumentResponse(exists=True, instrument=i, height=9)
        raise ClientError(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", "not yours")

    def list_instruments(self) -> list[state_pb2.Instrument]:
        return list(self.instruments)

    def statement(self, account: bytes, instrument: tx_pb2.InstrumentId, **_: Any) -> Any:
        return statement(self.net, account, instrument)

    def validators(self, height: int = 0) -> block_pb2.ValidatorSet:
        self.calls.append(f"validators {height}")
        return block_pb2.ValidatorSet(
            validators=[block_pb2.Validator(address=self.proposer, power=10, name="node0")]
        )

    def get_block(self, ref: Any) -> ledger_api_pb2.GetBlockResponse:
        resp = ledger_api_pb2.GetBlockResponse(block_hash=b"\xab" * 32)
        h = resp.block.header
        h.height, h.time_ms, h.proposer, h.state_root = 7, T0, self.proposer, b"\xcd" * 32
        return resp

    def status(self) -> Any:
        return SimpleNamespace(height=1)

    def subscribe_events(self, start: int, **_: Any) -> Iterator[ledger_api_pb2.EventEnvelope]:
        yield from events(self.net)


def statement(
    net: Network, account: bytes, instrument: tx_pb2.InstrumentId
) -> ledger_api_pb2.GetStatementResponse:
    return ledger_api_pb2.GetStatementResponse(
        account=account, instrument=instrument, from_height=1, to_height=9, opening=0, closing=100_000 - 1_250 + 7,
        entries=[
            ledger_api_pb2.StatementEntry(height=3, time_ms=T0, tx_hash=b"\x01" * 32, kind="mint", amount=100_000),
            ledger_api_pb2.StatementEntry(height=5, time_ms=T0 + 61_000, tx_hash=b"\x02" * 32, kind="transfer",
                                          counterparty=addr(net, "bob"), amount=1_250, debit=True),
            ledger_api_pb2.StatementEntry(height=8, time_ms=T0 + 3_600_000, tx_hash=b"\x03" * 32, kind="transfer",
                                          counterparty=STRANGER, amount=7),
        ],
    )  # fmt: skip


def events(net: Network) -> list[ledger_api_pb2.EventEnvelope]:
    usd = inst(net, "bank-a", "USD")
    a, b, c = addr(net, "alice"), addr(net, "dave"), addr(net, "compliance")
    return [
        ledger_api_pb2.EventEnvelope(height=4, tx_hash=b"\x04" * 32, event=receipt_pb2.Event(
            kind="transfer", accounts=[a, addr(net, "bob")], instrument=usd, amount=1_250)),
        ledger_api_pb2.EventEnvelope(height=5, tx_hash=b"\x05" * 32, event=receipt_pb2.Event(
            kind="hold_created", accounts=[a, b, c], instrument=usd, amount=300)),
        ledger_api_pb2.EventEnvelope(height=6, tx_hash=b"\x06" * 32, event=receipt_pb2.Event(
            kind="kyc_set", accounts=[STRANGER])),
        ledger_api_pb2.EventEnvelope(height=7, block_level=True, event=receipt_pb2.Event(
            kind="hold_expired", accounts=[a, b], instrument=usd, amount=5)),
    ]  # fmt: skip


def lines_of(text: str) -> list[str]:
    """text's lines without a table's rule under its header."""
    return [line for line in text.splitlines() if line.strip("─ ")]


def shown(net: Network, conn: FakeConn) -> q.Shown:
    return q.Shown(SimpleNamespace(), conn, names=Names(net.accounts))


# --- render functions ---------------------------------------------------------------------------------


def test_instruments_are_a_table_by_name_with_the_supply_in_units(net: Network) -> None:
    conn = FakeConn(net)
    text = q._instruments_text(shown(net, conn), conn.instruments)
    header, usd, bond = lines_of(text)
    assert header.split() == ["instrument", "name", "currency", "decimals", "supply", "paused"]
    assert usd.split() == ["bank-a:USD", "Bank", "A", "USD", "USD", "2", "1250.00", "USD", "-"]
    assert bond.split() == ["bank-a:BOND-2030", "Bond", "2030", "USD", "0", "5", "BOND-2030", "PAUSED"]
    assert not HEX40.search(text) and "125000" not in text
    assert q._instruments_text(shown(net, conn), []) == "no instruments this identity may read"


def test_a_statement_names_the_parties_and_shows_signed_units_and_utc_times(net: Network) -> None:
    conn = FakeConn(net)
    usd = inst(net, "bank-a", "USD")
    text = q._statement_text(
        shown(net, conn), addr(net, "alice"), usd, statement(net, addr(net, "alice"), usd)
    )
    lines = lines_of(text)
    assert lines[0] == "statement of alice in bank-a:USD, heights 1..9"
    assert lines[1] == "opening balance  0.00 USD"
    assert lines[2].split() == ["height", "time", "(UTC)", "kind", "counterparty", "amount", "tx"]
    assert lines[3].split() == ["3", "2023-11-14", "22:13:20", "mint", "-", "+1000.00", "USD", "01" * 8]
    assert lines[4].split() == ["5", "2023-11-14", "22:14:21", "transfer", "bob", "-12.50", "USD", "02" * 8]
    # An address the network has no name for is shown in full hex.
    assert lines[5].split() == [
        "8",
        "2023-11-14",
        "23:13:20",
        "transfer",
        STRANGER.hex(),
        "+0.07",
        "USD",
        "03" * 8,
    ]
    assert lines[6] == "closing balance  987.57 USD"
    assert addr(net, "alice").hex() not in text and addr(net, "bank-a").hex() not in text


def test_a_statement_in_an_instrument_whose_decimals_cannot_be_read_shows_minor_units(net: Network) -> None:
    conn = FakeConn(net, readable=())
    usd = inst(net, "bank-a", "USD")
    text = q._statement_text(
        shown(net, conn), addr(net, "alice"), usd, statement(net, addr(net, "alice"), usd)
    )
    assert "opening balance  0 minor USD" in text
    assert "-1250 minor USD" in text and "+100000 minor USD" in text
    assert conn.calls == ["get_instrument USD"]  # read once per command, refused or not


def test_watch_lines_show_units_and_names(net: Network) -> None:
    conn = FakeConn(net)
    lines = [q._event_line(shown(net, conn), env) for env in events(net)]
    assert lines == [
        f"{4:>8}  transfer: 12.50 USD (bank-a:USD)  alice -> bob  (tx {'04' * 8})",
        f"{5:>8}  hold_created: 3.00 USD (bank-a:USD)  alice -> dave, notary compliance  (tx {'05' * 8})",
        f"{6:>8}  kyc_set  {STRANGER.hex()}  (tx {'06' * 8})",
        f"{7:>8}  hold_expired: 0.05 USD (bank-a:USD)  alice -> dave  (tx block)",
    ]


def test_an_event_names_its_instrument_even_without_an_amount(net: Network) -> None:
    names = Names(net.accounts)
    paused = receipt_pb2.Event(kind="instrument_paused", instrument=inst(net, "bank-a", "USD"))
    assert event_text(names, paused, None) == "instrument_paused (bank-a:USD)"
    minted = receipt_pb2.Event(kind="mint", accounts=[addr(net, "alice")], instrument=inst(net, "bank-a", "USD"),
                               amount=5)  # fmt: skip
    assert event_text(names, minted, None) == "mint: 5 minor USD (bank-a:USD)  alice"
    assert event_text(names, minted, 2) == "mint: 0.05 USD (bank-a:USD)  alice"


def test_a_block_shows_its_proposer_by_validator_name_and_its_time_in_utc(net: Network) -> None:
    conn = FakeConn(net)
    resp = conn.get_block(7)
    text = q._block_text(resp, {bytes(conn.proposer): "node0"})
    assert text.splitlines()[1] == "  time 2023-11-14 22:13:20 UTC  txs 0  proposer node0"
    # A validator set that names none: the proposer's address in hex.
    assert f"proposer {bytes(conn.proposer).hex()}" in q._block_text(resp, {})


# --- whole commands: text for people, --json and --csv as they were ----------------------------------


def run(net: Network, conn: FakeConn, monkeypatch: pytest.MonkeyPatch, capsys: Any, *argv: str) -> str:
    monkeypatch.setattr(q, "client", lambda args: conn)
    assert main([*argv, "--home", str(net.home), "--as", "alice"]) == 0
    out: str = capsys.readouterr().out
    return out


def test_query_statement_text_json_and_csv(
    net: Network, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    conn = FakeConn(net)
    argv = ("query", "statement", "alice", "--instrument", "bank-a:USD")
    text = run(net, conn, monkeypatch, capsys, *argv)
    assert "statement of alice in bank-a:USD" in text and "-12.50 USD" in text and " bob " in text
    # --json: minor units (signed), hex addresses, block times in milliseconds, as before.
    alice, bob, issuer = addr(net, "alice").hex(), addr(net, "bob").hex(), addr(net, "bank-a").hex()
    entries = [
        {"height": 3, "time_ms": T0, "tx_hash": "01" * 32, "kind": "mint", "counterparty": "", "amount": 100_000},
        {"height": 5, "time_ms": T0 + 61_000, "tx_hash": "02" * 32, "kind": "transfer", "counterparty": bob,
         "amount": -1_250},
        {"height": 8, "time_ms": T0 + 3_600_000, "tx_hash": "03" * 32, "kind": "transfer",
         "counterparty": STRANGER.hex(), "amount": 7},
    ]  # fmt: skip
    doc = {"account": alice, "instrument": f"{issuer}:USD", "from_height": 1, "to_height": 9, "opening": 0,
           "closing": 98_757, "entries": entries}  # fmt: skip
    conn.calls.clear()
    assert run(net, conn, monkeypatch, capsys, *argv, "--json") == json.dumps(doc, indent=2) + "\n"
    assert conn.calls == []  # no read for the text's decimals
    csv = run(net, conn, monkeypatch, capsys, *argv, "--csv").splitlines()
    assert csv[0] == "height,time_ms,tx_hash,kind,counterparty,amount"
    assert csv[2] == f"5,{T0 + 61_000},{'02' * 32},transfer,{bob},-1250"


def test_query_instruments_and_block_text_and_json(
    net: Network, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    conn = FakeConn(net)
    assert "bank-a:USD" in run(net, conn, monkeypatch, capsys, "query", "instruments")
    listed = run(net, conn, monkeypatch, capsys, "query", "instruments", "--json")
    assert listed == json.dumps({"instruments": [msg_dict(i) for i in conn.instruments]}, indent=2) + "\n"
    assert json.loads(listed)["instruments"][0]["supply"] == "125000"
    assert "proposer node0" in run(net, conn, monkeypatch, capsys, "query", "block", "7")
    conn.calls.clear()
    block = run(net, conn, monkeypatch, capsys, "query", "block", "7", "--json")
    assert block == json.dumps(msg_dict(conn.get_block(7)), indent=2) + "\n"
    assert conn.calls == []  # no read of the validator set for the text's names


def test_watch_text_and_json(net: Network, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    conn = FakeConn(net)
    text = run(net, conn, monkeypatch, capsys, "watch", "--count", "2")
    assert text.splitlines()[0].split()[:6] == ["4", "transfer:", "12.50", "USD", "(bank-a:USD)", "alice"]
    assert len(text.splitlines()) == 2
    lines = run(net, conn, monkeypatch, capsys, "watch", "--count", "1", "--json").splitlines()
    env = events(net)[0]
    assert lines == [json.dumps({"height": 4, "tx_hash": "04" * 32, **msg_dict(env.event)})]
    assert json.loads(lines[0])["amount"] == "1250"
