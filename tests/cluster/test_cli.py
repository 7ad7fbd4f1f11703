"""The `clearline` command line end to end on a real cluster in a temporary directory: init, up,
status, a transaction of each kind, queries with proof, kill and restart of a node, down with no
process left; and `make run` with a bounded run time."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.launcher import Launcher, ledger_serving
from cluster.netgen import Network
from cluster.ports import free_base_port

ROOT = Path(__file__).resolve().parents[2]


def cli(home: Path, *args: str, ok: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        # Reads are made as the auditor unless a command names its own --as (tests/cluster/test_access.py
        # covers the other identities).
        env={**os.environ, "CLEARLINE_AS": "auditor"},
    )
    if ok:
        assert proc.returncode == 0, f"clearline {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def tx(home: Path, *args: str, ok: bool = True) -> dict:
    proc = cli(home, "tx", *args, "--json", ok=ok)
    doc = json.loads(proc.stdout)
    if not ok:
        assert proc.returncode != 0
    return doc


@pytest.fixture
def home(tmp_path: Path):
    home = tmp_path / "net"
    yield home
    if (home / "network.json").exists():
        Launcher(Network.load(home)).stop_all()


def test_command_line_end_to_end(home: Path) -> None:
    base = free_base_port(4)
    cli(home, "init", "--validators", "4", "--base-port", str(base))
    again = cli(home, "init", "--base-port", str(base), ok=False)
    assert again.returncode == 2 and "NETWORK_EXISTS" in again.stderr
    up = cli(home, "up", "--json")
    assert all(n["alive"] and n["height"] >= 1 for n in json.loads(up.stdout)["nodes"])

    # One transaction of each kind the command line offers; amounts in the instrument's units (USD has
    # 2 decimals, BOND-2030 none) or, with the suffix minor, in minor units.
    assert tx(home, "kyc", "--as", "bank-a", "--account", "alice")["status"] == "OK"
    assert tx(home, "kyc", "--as", "bank-a", "--account", "bob")["status"] == "OK"
    assert tx(home, "kyc", "--as", "bank-b", "--account", "carol")["status"] == "OK"
    tx(home, "mint", "--as", "bank-a", "--instrument", "bank-a:USD", "--to", "alice", "--amount", "1000.00",
       "--deposit-ref", "d1")  # fmt: skip
    tx(home, "mint", "--as", "bank-a", "--instrument", "bank-a:BOND-2030", "--to", "carol", "--amount", "50",
       "--deposit-ref", "bond-1")  # fmt: skip
    sent = tx(home, "transfer", "--as", "alice", "--instrument", "bank-a:USD", "--to", "bob", "--amount", "12.50",
              "--node", "2")  # fmt: skip
    assert sent["status"] == "OK"
    assert int(sent["receipt"]["events"][0]["amount"]) == 1250
    bob = json.loads(cli(home, "query", "account", "bob", "--json").stdout)["account"]
    assert [(b["instrument"]["symbol"], int(b["amount"])) for b in bob["balances"]] == [("USD", 1250)]
    shown = cli(home, "query", "account", "bob").stdout
    assert "account bob (" in shown
    (row,) = [line for line in shown.splitlines() if line.startswith("bank-a:USD ")]
    assert row.split()[1:3] == ["12.50", "USD"], shown
    too_precise = tx(home, "transfer", "--as", "alice", "--instrument", "bank-a:USD", "--to", "bob",
                     "--amount", "12.505", ok=False)  # fmt: skip
    assert too_precise["error"] == "BAD_AMOUNT"
    assert too_precise["message"] == "--amount: 12.505 has 3 decimals, bank-a:USD has 2"
    paid = cli(home, "tx", "transfer", "--as", "alice", "--instrument", "bank-a:USD", "--to", "bob", "--amount",
               "0.01").stdout  # fmt: skip
    assert "transfer: 0.01 USD (bank-a:USD)  alice -> bob" in paid, paid
    # dave holds no bank-a:USD, so may not read its decimals: minor units still work for him.
    unreadable = tx(home, "transfer", "--as", "dave", "--instrument", "bank-a:USD", "--to", "bob",
                    "--amount", "1", ok=False)  # fmt: skip
    assert unreadable["error"] == "PERMISSION_DENIED" and "1250minor" in unreadable["message"]
    tx(
        home,
        "redeem",
        "--as",
        "bob",
        "--instrument",
        "bank-a:USD",
        "--amount",
        "1",
        "--redemption-ref",
        "r1",
    )
    tx(home, "hold-create", "--as", "alice", "--hold-id", "h1", "--instrument", "bank-a:USD", "--payee", "bob",
       "--notary", "compliance", "--amount", "3", "--expires-at-height", "100000")  # fmt: skip
    tx(home, "hold-execute", "--as", "compliance", "--hold-id", "h1", "--amount", "2")
    hold = cli(home, "query", "hold", "h1").stdout
    assert "instrument bank-a:USD" in hold and "held       1.00 USD" in hold and "payee      bob" in hold
    tx(home, "hold-create", "--as", "alice", "--hold-id", "h2", "--instrument", "bank-a:USD", "--payee", "bob",
       "--notary", "compliance", "--amount", "0.50", "--expires-at-height", "100000")  # fmt: skip
    tx(home, "hold-release", "--as", "bob", "--hold-id", "h2")
    tx(home, "settle", "--as", "alice", "--settlement-ref", "dvp1", "--leg", "bank-a:BOND-2030,carol,alice,5",
       "--leg", "bank-a:USD,alice,carol,10.00", "--cosign", "carol")  # fmt: skip
    tx(home, "set-limits", "--as", "compliance", "--account", "alice", "--instrument", "bank-a:USD",
       "--max-per-tx", "50")  # fmt: skip
    over = tx(home, "transfer", "--as", "alice", "--instrument", "bank-a:USD", "--to", "bob", "--amount", "60",
              ok=False)  # fmt: skip
    assert over["error"] == "LIMIT_PER_TX_EXCEEDED"
    tx(home, "freeze-amount", "--as", "compliance", "--account", "bob", "--instrument", "bank-a:USD",
       "--amount", "0.10", "--reason", "garnish")  # fmt: skip
    tx(home, "unfreeze-amount", "--as", "compliance", "--account", "bob", "--instrument", "bank-a:USD",
       "--amount", "10minor", "--reason", "released")  # fmt: skip
    tx(home, "forced-transfer", "--as", "compliance", "--instrument", "bank-a:USD", "--from", "bob", "--to", "alice",
       "--amount", "0.05", "--reason", "court order")  # fmt: skip
    tx(home, "freeze", "--as", "compliance", "--account", "bob", "--reason", "investigation")
    frozen = tx(home, "transfer", "--as", "bob", "--instrument", "bank-a:USD", "--to", "alice", "--amount", "1",
                ok=False)  # fmt: skip
    assert frozen["error"] == "ACCOUNT_FROZEN"
    tx(home, "unfreeze", "--as", "compliance", "--account", "bob", "--reason", "cleared")
    tx(home, "pause", "--as", "compliance", "--instrument", "bank-a:USD", "--reason", "maintenance")
    paused = tx(home, "transfer", "--as", "bob", "--instrument", "bank-a:USD", "--to", "alice", "--amount", "1",
                ok=False)  # fmt: skip
    assert paused["error"] == "INSTRUMENT_PAUSED"
    said = cli(home, "tx", "transfer", "--as", "bob", "--instrument", "bank-a:USD", "--to", "alice", "--amount", "1",
               ok=False)  # fmt: skip
    assert "error INSTRUMENT_PAUSED: instrument bank-a:USD is paused" in said.stderr, said.stderr  # whose USD
    tx(home, "unpause", "--as", "compliance", "--instrument", "bank-a:USD", "--reason", "done")
    tx(home, "create-instrument", "--as", "admin", "--instrument", "bank-b:EUR", "--name", "Bank B EUR",
       "--currency", "EUR")  # fmt: skip
    tx(home, "grant-role", "--as", "admin", "--account", "dave", "--role", "auditor")
    keyfile = home.parent / "new-wallet.json"
    cli(home, "keys", "new", "--out", str(keyfile))
    tx(
        home,
        "recover",
        "--as",
        "compliance",
        "--lost",
        "carol",
        "--new-key",
        str(keyfile),
        "--reason",
        "lost phone",
    )

    # Queries, with a verified proof.
    proved = cli(home, "query", "account", "alice", "--prove")
    assert "proof: VERIFIED" in proved.stdout
    doc = json.loads(cli(home, "query", "account", "bob", "--json").stdout)
    assert doc["exists"] is True
    bank_a = json.loads(cli(home, "query", "account", "bank-a", "--json").stdout)["account"]["address"]
    assert doc["account"]["kyc_approvals"] == [{"approver": bank_a, "status": "KYC_STATUS_APPROVED"}]
    shown = cli(home, "query", "account", "bob").stdout
    assert "kyc by bank-a: approved" in shown and "roles participant" in shown
    assert "used today" in cli(home, "query", "account", "alice").stdout  # alice's limits (set above)
    # A recovered account says so, and where its funds went.
    assert "CLOSED: recovered to" in cli(home, "query", "account", "carol").stdout
    # An approval that lapsed shows EXPIRED, whatever its status says.
    tx(
        home,
        "kyc",
        "--as",
        "bank-b",
        "--account",
        "dave",
        "--expires-at",
        "1000000000",
        "--allow-past-expiry",
    )
    assert "kyc by bank-b: approved EXPIRED 2001-09-09" in cli(home, "query", "account", "dave").stdout
    inst = json.loads(cli(home, "query", "instrument", "bank-a:USD", "--json").stdout)
    assert int(inst["instrument"]["supply"]) == 100000 - 100
    assert "supply   999.00 USD" in cli(home, "query", "instrument", "bank-a:USD").stdout
    assert len(json.loads(cli(home, "query", "validators", "--json").stdout)["validators"]) == 4
    block = json.loads(cli(home, "query", "block", "2", "--json").stdout)
    assert int(block["block"]["header"]["height"]) == 2
    missing = cli(home, "query", "account", "ff" * 20, ok=False)
    assert missing.returncode != 0 and "UNKNOWN_ACCOUNT" in missing.stderr

    # Kill and restart one node; it catches up.
    killed = json.loads(cli(home, "node", "kill", "node3", "--json").stdout)
    assert killed["action"] == "kill"
    status = json.loads(cli(home, "status", "--json").stdout)["nodes"]
    assert [n["alive"] for n in status] == [True, True, True, False]
    cli(home, "node", "start", "node3")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = json.loads(cli(home, "status", "--json").stdout)["nodes"]
        if rows[3]["height"] and rows[3]["height"] >= rows[0]["height"] - 1:
            break
        time.sleep(1)
    else:
        pytest.fail(f"node3 did not catch up: {rows}")
    cli(home, "node", "pause", "node1")
    assert json.loads(cli(home, "status", "--json").stdout)["nodes"][1]["paused"] is True
    cli(home, "node", "resume", "node1")

    # Down leaves no process behind.
    pids = [n["pid"] for n in json.loads(cli(home, "status", "--json").stdout)["nodes"]]
    cli(home, "down")
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_make_run_with_a_bounded_run_time(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RUN_SECONDS": "3",
        "RUN_HOME": str(tmp_path / "run"),
        "BASE_PORT": str(free_base_port(4)),
    }
    proc = subprocess.run(
        ["make", "--no-print-directory", "run", f"PY={sys.executable}", "GEN="],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for step in ("1. Two banks", "2. Clients pass KYC", "3. Deposits are minted", "4. Clients pay each other",
                 "5. A hold", "6. A tokenized bond", "7. Compliance freezes", "8. A balance read", "9. Reads are permissioned"):  # fmt: skip
        assert step in out
    assert "alice reads bob's account: PERMISSION_DENIED [ok]" in out
    assert "proof VERIFIED" in out
    assert "[UNEXPECTED]" not in out
    assert "every step as expected" in out
    blocks = out.split("Committed blocks")[1]
    assert "block " in blocks and "proposer node" in blocks  # validators by name
    # Amounts in the instrument's units with its symbol, instruments and accounts by name: what moved,
    # balances, the verified read.
    assert "bank-a:USD: Bank A tokenized USD deposits (USD, 2 decimals)" in out
    assert "transfer: 2500.00 USD (bank-a:USD)  alice -> carol" in out
    assert "carol holds 2500.00 USD (bank-a:USD); bob holds 1200.00 USD (bank-b:USD)" in out
    assert "alice now holds 10 BOND-2030 (bank-a:BOND-2030)" in out
    assert re.search(r"alice: \d+\.\d\d USD \(bank-a:USD\), proof VERIFIED", out), out
    assert "payer bob is frozen" in out  # the node's refusal, its address named
    # No address in hex anywhere: the network names every account and validator the demo shows.
    steps = out.split("1. Two banks")[1]
    assert not re.search(r"(?<![0-9a-fA-F])(?:0x)?[0-9a-fA-F]{40}(?![0-9a-fA-F])", steps), steps
    net = Network.load(tmp_path / "run")
    assert all(Launcher(net).pid(n.name) is None for n in net.nodes)


def test_node_start_reports_a_refusal_with_its_reason_and_a_non_zero_exit(home: Path) -> None:
    cli(home, "init", "--validators", "1", "--base-port", str(free_base_port(1)))
    net = Network.load(home)
    node = net.nodes[0]
    config = Path(node.home) / "config.toml"
    good = config.read_text()

    # A corrupted config.toml: the node's own reason, its exit status, and nothing left running.
    config.write_text(good + "[api\n")
    proc = cli(home, "node", "start", "node0", ok=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error NODE_REFUSED: node0 refused to start (exit status 2): configuration error:" in proc.stderr
    assert "config.toml: not valid TOML" in proc.stderr
    assert "pid" not in proc.stdout
    assert Launcher(net).pid("node0") is None

    # Its client API port held by another process.
    config.write_text(good)
    with socket.socket() as held:
        held.bind(("127.0.0.1", node.api_port))
        held.listen()
        proc = cli(home, "node", "start", "node0", "--json", ok=False)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["error"] == "NODE_REFUSED"
    assert f"(exit status 1): [api] listen: cannot listen on {node.api_target}" in doc["message"]
    assert Launcher(net).pid("node0") is None

    # Nothing wrong: start returns once the node serves its client API.
    started = json.loads(cli(home, "node", "start", "node0", "--json").stdout)
    assert started["pid"] == Launcher(net).pid("node0")
    assert ledger_serving(node.api_target, tls=net.client_tls())
    cli(home, "node", "stop", "node0")
