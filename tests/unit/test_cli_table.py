"""cluster.cli.tx: every `clearline tx` operation is declared once, in TX_OPS, and both its parser and
the operation it builds come from that declaration. No node runs here: the network directory is
made by init_network, and every command line is parsed and built in-process (a bad argument fails
before any connection is attempted)."""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import pytest

from clearline.v1 import tx_pb2
from cluster.cli import build_parser, main
from cluster.cli.common import CliError, Units
from cluster.cli.tx import TX_OPS, TX_OPS_BY_NAME, build_op
from cluster.client import builders as b
from cluster.netgen import Network, init_network
from node.crypto import SigningKey, load_key_file, save_key_file

# Options every `clearline tx OP` takes, whatever the operation.
COMMON_TX_FLAGS = {
    "-h",
    "--help",
    "--home",
    "--json",
    "--node",
    "--target",
    "--timeout",
    "--as",
    "--ca",
    "--insecure",
    "--ref",
    "--no-wait",
    "--nonce",
}
COMMANDS = ["init", "up", "down", "status", "logs", "node", "fault", "keys", "tx", "query", "chaos", "bench"]


@dataclass(frozen=True)
class Net:
    home: Path
    network: Network
    new_key: Path  # a key file that is not one of the network's accounts
    new_public: Path  # the same key's public key only, as a wallet publishes it

    def address(self, name: str) -> bytes:
        if name == "new":
            return bytes(load_key_file(self.new_key).address)
        return bytes(load_key_file(Path(self.network.accounts[name])).address)

    def public_key(self, name: str) -> bytes:
        return bytes(load_key_file(Path(self.network.accounts[name])).public_key)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Net:
    root = tmp_path_factory.mktemp("cli-table")
    network = init_network(root / "net", validators=1)
    key = SigningKey.generate()
    save_key_file(root / "new-wallet.json", key)
    public = {"type": "ed25519", "address": key.address.hex(), "public_key": key.public_key.hex()}
    (root / "new-wallet.pub.json").write_text(json.dumps(public))
    return Net(root / "net", network, root / "new-wallet.json", root / "new-wallet.pub.json")


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of parser, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def tx_parsers() -> dict[str, argparse.ArgumentParser]:
    return subparsers(subparsers(build_parser())["tx"])


def parse(net: Net, line: str) -> argparse.Namespace:
    return build_parser().parse_args(["tx", *shlex.split(line), "--as", "admin", "--home", str(net.home)])


# --- the parsers come from the table ----------------------------------------------------------------


def test_the_tx_subcommands_are_the_table_in_its_order() -> None:
    # ...followed by `cancel`, which withdraws waiting transactions rather than signing one.
    assert list(tx_parsers()) == [op.name for op in TX_OPS] + ["cancel"]
    assert len(TX_OPS_BY_NAME) == len(TX_OPS), "an operation is declared twice"
    # Every operation of the table is a ledger operation of the wire contract, each at most once.
    assert len(TX_OPS) == len(b.operations())


@pytest.mark.parametrize("op", TX_OPS, ids=lambda op: op.name)
def test_each_op_parser_takes_exactly_its_declared_flags(op: Any) -> None:
    parser = tx_parsers()[op.name]
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    own = {flag: action for flag, action in actions.items() if flag not in COMMON_TX_FLAGS}
    assert set(own) == {arg.flag for arg in op.args}
    every_flag = {flag for action in parser._actions for flag in action.option_strings}
    assert every_flag == COMMON_TX_FLAGS | {arg.flag for arg in op.args}
    for arg in op.args:
        action = own[arg.flag]
        assert action.dest == arg.name
        assert action.required == (arg.required and not arg.kind.switch)
        assert action.help == arg.help
        expected_choices = sorted(arg.kind.choices) if arg.kind.choices is not None else None
        assert action.choices == expected_choices
        if arg.kind.switch:
            assert isinstance(action, argparse._StoreTrueAction)
        elif arg.repeat:
            assert isinstance(action, argparse._AppendAction)
        else:
            assert isinstance(action, argparse._StoreAction)
    assert parser.get_default("func").__name__ == "cmd_tx"


# --- building each operation ------------------------------------------------------------------------


class FixedUnits(Units):
    """The genesis instruments' decimals (USD 2, BOND-2030 0) and hold h1 in USD, without a node."""

    DECIMALS: ClassVar[dict[str, int]] = {"USD": 2, "BOND-2030": 0, "EUR": 2}

    def decimals(self, inst: tx_pb2.InstrumentId, label: str) -> int:
        return self.DECIMALS[inst.symbol]

    def hold_instrument(self, hold_id: str) -> tx_pb2.InstrumentId:
        return tx_pb2.InstrumentId(symbol="USD")

    def client(self) -> Any:
        raise AssertionError("no node in these tests")


@dataclass(frozen=True)
class Addr:
    """The address of a network account, in an expected value."""

    name: str


@dataclass(frozen=True)
class Key:
    """The public key of a network account (or of the extra key file with name "new"), expected."""

    name: str


# One case per operation: the command line after `clearline tx`, the TxBody field its operation goes
# in, and some fields of the operation message (dotted paths) with their expected values.
BUILD_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("create-instrument --instrument bank-b:EUR --name 'Bank B EUR' --currency EUR", "create_instrument",
     {"instrument.issuer": Addr("bank-b"), "instrument.symbol": "EUR", "name": "Bank B EUR", "currency": "EUR",
      "decimals": 2, "supply_cap": 0, "kind": tx_pb2.INSTRUMENT_KIND_DEPOSIT_TOKEN}),
    ("create-instrument --instrument bank-a:BOND --name Bond --currency USD --decimals 0 --supply-cap 9 --asset",
     "create_instrument", {"decimals": 0, "supply_cap": 9, "kind": tx_pb2.INSTRUMENT_KIND_ASSET}),
    ("create-instrument --instrument bank-a:X --name X --currency USD --supply-cap 1000.5", "create_instrument",
     {"decimals": 2, "supply_cap": 100050}),
    ("create-instrument --instrument bank-a:X --name X --currency USD --decimals 6 --supply-cap 7minor",
     "create_instrument", {"decimals": 6, "supply_cap": 7}),
    ("kyc --account alice", "set_kyc",
     {"account": Addr("alice"), "status": tx_pb2.KYC_STATUS_APPROVED, "public_key": Key("alice"), "expires_at": 0}),
    ("kyc --account alice --status revoked --expires-at 77 --allow-past-expiry --public-key {new_hex}", "set_kyc",
     {"status": tx_pb2.KYC_STATUS_REVOKED, "expires_at": 77, "public_key": Key("new")}),
    ("kyc --account {hex_bob}", "set_kyc", {"account": Addr("bob"), "public_key": b""}),
    ("kyc --account {new}", "set_kyc", {"account": Addr("new"), "public_key": Key("new")}),
    ("kyc --account {new_public}", "set_kyc", {"account": Addr("new"), "public_key": Key("new")}),
    ("mint --instrument bank-a:USD --to alice --amount 1000.00 --deposit-ref d1", "mint",
     {"instrument.issuer": Addr("bank-a"), "instrument.symbol": "USD", "to": Addr("alice"), "amount": 100000,
      "deposit_ref": "d1"}),
    ("redeem --instrument bank-a:USD --amount 1 --redemption-ref r1", "redeem",
     {"amount": 100, "redemption_ref": "r1"}),
    ("transfer --instrument bank-a:USD --to bob --amount 5.00", "transfer",
     {"instrument.symbol": "USD", "to": Addr("bob"), "amount": 500}),
    ("transfer --instrument bank-a:USD --to bob --amount 12.50", "transfer", {"amount": 1250}),
    ("transfer --instrument bank-a:USD --to bob --amount ' .5 '", "transfer", {"amount": 50}),
    ("transfer --instrument bank-a:USD --to bob --amount 1250minor", "transfer", {"amount": 1250}),
    ("freeze --account bob --reason investigation", "freeze_account",
     {"account": Addr("bob"), "reason": "investigation"}),
    ("unfreeze --account bob --reason cleared", "unfreeze_account", {"account": Addr("bob"), "reason": "cleared"}),
    ("freeze-amount --account bob --instrument bank-a:USD --amount 0.10 --reason garnish", "freeze_amount",
     {"account": Addr("bob"), "instrument.symbol": "USD", "amount": 10, "reason": "garnish"}),
    ("unfreeze-amount --account bob --instrument bank-a:USD --amount 10minor --reason released", "unfreeze_amount",
     {"account": Addr("bob"), "amount": 10, "reason": "released"}),
    ("pause --instrument bank-a:USD --reason maintenance", "pause_instrument",
     {"instrument.issuer": Addr("bank-a"), "reason": "maintenance"}),
    ("unpause --instrument bank-a:USD --reason done", "unpause_instrument", {"reason": "done"}),
    ("hold-create --hold-id h1 --instrument bank-a:USD --payee bob --notary compliance --amount 3 "
     "--expires-at-height 100000", "create_hold",
     {"hold_id": "h1", "payee": Addr("bob"), "notary": Addr("compliance"), "amount": 300,
      "expires_at_height": 100000, "expires_at_time": 0, "payer": b""}),
    ("hold-execute --hold-id h1 --amount 2", "execute_hold", {"hold_id": "h1", "amount": 200}),
    ("hold-execute --hold-id h1", "execute_hold", {"amount": 0}),
    ("hold-release --hold-id h2", "release_hold", {"hold_id": "h2"}),
    ("settle --settlement-ref dvp1 --leg bank-a:BOND-2030,carol,alice,5 --leg bank-a:USD,alice,carol,10.00 "
     "--cosign carol", "settle",
     {"settlement_ref": "dvp1", "legs.0.from": Addr("carol"), "legs.0.to": Addr("alice"), "legs.0.amount": 5,
      "legs.0.instrument.symbol": "BOND-2030", "legs.1.from": Addr("alice"), "legs.1.amount": 1000}),
    ("settle --settlement-ref s2 --leg 'bank-a:USD, alice , carol,  7 ' --cosign carol", "settle",
     {"legs.0.from": Addr("alice"), "legs.0.to": Addr("carol"), "legs.0.amount": 700, "legs.0.instrument.symbol": "USD"}),
    ("forced-transfer --instrument bank-a:USD --from bob --to alice --amount 0.05 --reason 'court order'",
     "forced_transfer", {"from": Addr("bob"), "to": Addr("alice"), "amount": 5, "reason": "court order"}),
    ("recover --lost carol --new-key {new} --reason 'lost phone'", "recover_account",
     {"lost_account": Addr("carol"), "new_public_key": Key("new"), "reason": "lost phone"}),
    ("set-limits --account alice --instrument bank-a:USD --max-per-tx 50", "set_limits",
     {"account": Addr("alice"), "max_per_tx": 5000, "max_per_day": 0}),
    ("grant-role --account dave --role auditor", "grant_role",
     {"account": Addr("dave"), "role": tx_pb2.ROLE_AUDITOR, "public_key": Key("dave")}),
    ("revoke-role --account dave --role issuer", "revoke_role", {"account": Addr("dave"), "role": tx_pb2.ROLE_ISSUER}),
    ("change-validator --public-key {new_hex} --power 0", "change_validator",
     {"public_key": Key("new"), "power": 0}),
]  # fmt: skip


def _line(net: Net, template: str) -> str:
    new_key = load_key_file(net.new_key)
    return template.format(
        new=net.new_key,
        new_public=net.new_public,
        new_hex=new_key.public_key.hex(),
        hex_bob=net.address("bob").hex(),
    )


def _expected(net: Net, value: Any) -> Any:
    if isinstance(value, Addr):
        return net.address(value.name)
    if isinstance(value, Key):
        if value.name == "new":
            return bytes(load_key_file(net.new_key).public_key)
        return net.public_key(value.name)
    return value


def _field(message: Any, path: str) -> Any:
    for part in path.split("."):
        message = message[int(part)] if part.isdigit() else getattr(message, part)
    return message


def test_the_build_cases_cover_every_op() -> None:
    assert {line.split()[0] for line, _, _ in BUILD_CASES} == set(TX_OPS_BY_NAME)


@pytest.mark.parametrize(
    ("line", "field", "expected"), BUILD_CASES, ids=[c[0].split()[0] for c in BUILD_CASES]
)
def test_each_op_builds_its_txbody_field(net: Net, line: str, field: str, expected: dict[str, Any]) -> None:
    args = parse(net, _line(net, line))
    op, cosigners = build_op(args, FixedUnits(args))
    body = b.make_body(net.network.chain_id, net.address("admin"), 1, "ref-1", op)
    assert body.WhichOneof("op") == field
    built = getattr(body, field)
    for path, value in expected.items():
        assert _field(built, path) == _expected(net, value), path
    if TX_OPS_BY_NAME[args.op].cosigners:
        assert [bytes(k.address) for k in cosigners] == [net.address("carol")]
    else:
        assert cosigners == []


# --- refusals: the reason code and a non-zero exit, before any node is contacted ----------------------

BAD_CASES: list[tuple[str, str]] = [
    ("transfer --instrument bank-a:USD --to nobody --amount 5", "UNKNOWN_ACCOUNT"),
    ("freeze --account 0x1234 --reason x", "UNKNOWN_ACCOUNT"),
    ("transfer --instrument nobody:USD --to bob --amount 5", "UNKNOWN_ACCOUNT"),
    ("transfer --instrument bank-a-USD --to bob --amount 5", "BAD_INSTRUMENT"),
    ("transfer --instrument bank-a: --to bob --amount 5", "BAD_INSTRUMENT"),
    ("transfer --instrument :USD --to bob --amount 5", "BAD_INSTRUMENT"),
    ("transfer --instrument bank-a:USD --to bob --amount -5", "BAD_AMOUNT"),
    ("transfer --instrument bank-a:USD --to bob --amount 0", "BAD_AMOUNT"),
    ("transfer --instrument bank-a:USD --to bob --amount 0.00", "BAD_AMOUNT"),
    ("transfer --instrument bank-a:USD --to bob --amount 0minor", "BAD_AMOUNT"),
    ("transfer --instrument bank-a:USD --to bob --amount 1.5minor", "BAD_AMOUNT"),
    ("transfer --instrument bank-a:USD --to bob --amount 1e3", "BAD_AMOUNT"),
    ("transfer --instrument bank-a:USD --to bob --amount 1,000.00", "BAD_AMOUNT"),
    ("transfer --instrument bank-a:USD --to bob --amount ten", "BAD_AMOUNT"),
    ("transfer --instrument bank-a:USD --to bob --amount 18446744073709551616", "BAD_AMOUNT"),
    ("transfer --instrument bank-a:USD --to bob --amount 18446744073709551616minor", "BAD_AMOUNT"),
    ("set-limits --account alice --instrument bank-a:USD --max-per-tx -1", "BAD_AMOUNT"),
    ("create-instrument --instrument bank-a:X --name X --currency X --supply-cap 1.005", "BAD_AMOUNT"),
    ("create-instrument --instrument bank-a:X --name X --currency X --decimals 19", "BAD_ARGUMENT"),
    ("kyc --account alice --public-key not-hex", "BAD_ARGUMENT"),
    ("kyc --account alice --expires-at 77", "BAD_ARGUMENT"),  # in the past, without --allow-past-expiry
    ("kyc --account alice --expires-at 4102444800000 --allow-past-expiry", "BAD_ARGUMENT"),  # milliseconds
    (
        "hold-create --hold-id h --instrument bank-a:USD --payee bob --notary compliance --amount 1minor "
        "--expires-at-time 4102444800000",
        "BAD_ARGUMENT",
    ),  # milliseconds
    (
        "hold-create --hold-id h --instrument bank-a:USD --payee bob --notary compliance --amount 1minor "
        "--expires-at-time 77",
        "BAD_ARGUMENT",
    ),  # in the past
    ("change-validator --public-key abcd --power 1", "BAD_ARGUMENT"),
    ("settle --settlement-ref s --leg bank-a:USD,alice,bob", "BAD_LEG"),
    ("settle --settlement-ref s --leg bank-a:USD,alice,bob,many", "BAD_AMOUNT"),
    ("settle --settlement-ref s --leg bank-a:USD,alice,bob,-1", "BAD_AMOUNT"),
    ("settle --settlement-ref s --leg bank-a:USD,alice,carol,abc", "BAD_AMOUNT"),
    ("settle --settlement-ref s --leg bank-a:USD,alice,,5", "BAD_LEG"),
    ("recover --lost carol --new-key /nonexistent/key.json --reason x", "BAD_KEY"),
    ("transfer --instrument bank-a:USD --to bob --amount 1 --nonce -1", "BAD_ARGUMENT"),
    ("transfer --instrument bank-a:USD --to bob --amount 1 --nonce 1.5", "BAD_ARGUMENT"),
    ("transfer --instrument bank-a:USD --to bob --amount 1 --nonce 18446744073709551616", "BAD_ARGUMENT"),
    ("cancel --nonce x", "BAD_ARGUMENT"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_a_bad_argument_is_refused_with_its_reason_code(
    net: Net, line: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tx", *shlex.split(line), "--as", "admin", "--home", str(net.home), "--target", "127.0.0.1:1"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error {reason}: ")
    assert main([*argv, "--json"]) == 2
    out, _ = capsys.readouterr()
    doc = json.loads(out)
    assert doc["error"] == reason and doc["message"]


# `clearline query WHAT REF` refusals, made before any node is contacted.
BAD_QUERIES: list[tuple[str, str, str]] = [
    ("query tx abc", "BAD_ARGUMENT", "tx hash 'abc' is not 64 hex digits"),
    ("query tx 00ff", "BAD_ARGUMENT", "is not 64 hex digits"),
    ("query tx", "BAD_ARGUMENT", "query tx needs REF"),
    ("query account", "BAD_ARGUMENT", "query account needs REF: an address, account name or key file"),
    ("query instrument", "BAD_ARGUMENT", "query instrument needs REF"),
    ("query hold", "BAD_ARGUMENT", "query hold needs REF"),
    ("query block zz", "BAD_ARGUMENT", "block height or hash 'zz'"),
    (
        "query validators --as auditor --node node9",
        "UNKNOWN_NODE",
        "no node 'node9' in this network (known nodes: node0)",
    ),
    ("logs node9", "UNKNOWN_NODE", "known nodes: node0"),
]


@pytest.mark.parametrize(("line", "reason", "message"), BAD_QUERIES, ids=[c[0] for c in BAD_QUERIES])
def test_a_bad_query_is_refused_with_its_reason_code(
    net: Net, line: str, reason: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*shlex.split(line), "--home", str(net.home)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error {reason}: ") and message in err, err


TOO_PRECISE: list[tuple[str, str]] = [
    ("transfer --instrument bank-a:USD --to bob --amount 12.505", "--amount: 12.505 has 3 decimals, bank-a:USD has 2"),
    ("mint --instrument bank-a:BOND-2030 --to bob --amount 1.5 --deposit-ref d",
     "--amount: 1.5 has 1 decimals, bank-a:BOND-2030 has 0"),
    ("settle --settlement-ref s --leg bank-a:USD,alice,bob,0.001",
     "leg 'bank-a:USD,alice,bob,0.001': 0.001 has 3 decimals, bank-a:USD has 2"),
    ("hold-execute --hold-id h1 --amount 0.001", "--amount: 0.001 has 3 decimals"),
    ("set-limits --account alice --instrument bank-a:USD --max-per-day 0.001", "--max-per-day: 0.001 has 3"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "message"), TOO_PRECISE, ids=[c[0] for c in TOO_PRECISE])
def test_more_decimals_than_the_instrument_has_is_refused(net: Net, line: str, message: str) -> None:
    args = parse(net, line)
    with pytest.raises(CliError) as refused:
        build_op(args, FixedUnits(args))
    assert refused.value.reason == "BAD_AMOUNT"
    assert message in refused.value.message
    assert refused.value.code == 2


def test_a_choice_outside_its_kind_is_a_usage_error(net: Net, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "tx",
                "grant-role",
                "--as",
                "admin",
                "--account",
                "dave",
                "--role",
                "king",
                "--home",
                str(net.home),
            ]
        )
    assert exited.value.code == 2
    assert "invalid choice: 'king'" in capsys.readouterr().err


# --- help -------------------------------------------------------------------------------------------


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command_and_every_op(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    top = _help(["--help"], capsys)
    listed = [line.split()[0] for line in top.splitlines() if line.startswith("    ") and line.strip()]
    assert [name for name in listed if name in COMMANDS] == COMMANDS
    tx_help = _help(["tx", "--help"], capsys)
    listed = [line.split()[0] for line in tx_help.splitlines() if line.startswith("    ") and line.strip()]
    assert [op.name for op in TX_OPS] == [name for name in listed if name in TX_OPS_BY_NAME]
    for op in TX_OPS:
        assert op.help in tx_help, op.name
    for op in TX_OPS:
        op_help = _help(["tx", op.name, "--help"], capsys)
        for arg in op.args:
            assert arg.flag in op_help, (op.name, arg.flag)


def test_the_console_script_is_cluster_cli_main() -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "clearline"]
    assert script.value == "cluster.cli:main"
    assert script.load() is main


# --- names and tables for text output -----------------------------------------------------------------


def test_names_map_addresses_to_account_names_with_hex_for_the_rest(net: Net) -> None:
    from cluster.cli.common import Names

    names = Names(net.network.accounts)
    assert names.account(net.address("alice")) == "alice"
    assert names.instrument(tx_pb2.InstrumentId(issuer=net.address("bank-a"), symbol="USD")) == "bank-a:USD"
    stranger = bytes(load_key_file(net.new_key).address)
    assert names.account(stranger) == stranger.hex()
    assert Names({}).account(net.address("bob")) == net.address("bob").hex()


def test_a_table_is_plain_text_with_amounts_right_aligned() -> None:
    from cluster.cli.common import table

    text = table(("instrument", "balance"), [("bank-a:USD", "12.50 USD"), ("bank-a:BOND-2030", "5 BOND-2030")],
                 right=(1,))  # fmt: skip
    lines = text.splitlines()
    assert lines[0].split() == ["instrument", "balance"]
    assert "\x1b" not in text
    assert lines[-2].startswith("bank-a:USD") and lines[-2].endswith("  12.50 USD")
    assert lines[-1].endswith("5 BOND-2030")


def test_a_nodes_message_names_the_accounts_the_network_knows(net: Net) -> None:
    from cluster.cli.common import Names

    names = Names(net.network.accounts)
    bank, alice, stranger = net.address("bank-a").hex(), net.address("alice").hex(), "ab" * 20
    tx_hash = "cd" * 32
    message = f"account {alice} has 5 available of {bank}:USD, needs 9; {stranger} {tx_hash} {bank.upper()}"
    assert names.humanize(message) == (
        f"account alice has 5 available of bank-a:USD, needs 9; {stranger} {tx_hash} bank-a"
    )
    assert Names({}).humanize(message) == message
