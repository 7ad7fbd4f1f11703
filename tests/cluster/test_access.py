"""Who may read what, on real nodes: every role x every read RPC and stream x own and others' data,
allowed and denied; a denied read looks the same whether the record exists or not; strangers,
wrong, expired and replayed tokens and plaintext are refused; the CLI's --as."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc, tx_pb2
from cluster.client import ClientError, WaitFor, builders
from cluster.client.channels import token_metadata
from node import auth, crypto
from node.crypto import SigningKey
from tests.cluster.conftest import RunningNetwork
from tests.cluster.helpers import connect, key, network_of, setup_funded, usd

ALLOW, DENY, NOT_FOUND = "allow", "deny", "not-found"
UNKNOWN_ADDRESS = bytes(range(20))
UNKNOWN_HASH = bytes(32)


@pytest.fixture(scope="module")
def world(shared_network: RunningNetwork) -> dict[str, Any]:
    """alice and bob (bank-a's clients, funded), carol (bank-b's client); alice pays bob, and
    alice holds funds for bob in a hold (notary bank-a)."""
    net = shared_network
    network = net.network
    target = net.target(0)
    setup_funded(network, target, ["alice", "bob"])
    with connect(target) as client:
        carol = key(network, "carol")
        ok = client.send(
            key(network, "bank-b"),
            builders.set_kyc(carol.address, tx_pb2.KYC_STATUS_APPROVED, public_key=carol.public_key),
        )
        assert ok.ok, ok.message
        alice, bob = key(network, "alice"), key(network, "bob")
        paid = client.send(alice, builders.transfer(usd(network), bob.address, 100))
        assert paid.ok, paid.message
        held = client.send(
            alice,
            builders.create_hold(
                "h-access",
                usd(network),
                payee=bob.address,
                notary=key(network, "bank-a").address,
                amount=5,
                expires_at_height=100_000,
            ),
        )
        assert held.ok, held.message
    node_key = crypto.load_key_file(Path(network.nodes[1].home) / "keys" / "validator.json")
    return {"net": net, "tx": paid.tx_hash, "node_key": node_key, "height": paid.height}


def _reads(world: dict[str, Any]) -> dict[str, Any]:
    network = world["net"].network
    alice = key(network, "alice").address
    return {
        "account-own": lambda c: c.get_account(alice, prove=True),
        "account-unknown": lambda c: c.get_account(UNKNOWN_ADDRESS),
        "tx": lambda c: c.get_tx(world["tx"]),
        "tx-unknown": lambda c: c.get_tx(UNKNOWN_HASH),
        "hold": lambda c: c.get_hold("h-access"),
        "hold-unknown": lambda c: c.get_hold("no-such-hold"),
        "instrument": lambda c: c.get_instrument(usd(network)),
        "validators": lambda c: c.validators(0),
        "block": lambda c: c.get_block(world["height"]),
        "block-stream": lambda c: next(iter(c.stream_blocks(1, timeout_s=10))),
    }


EVERYTHING = {
    "account-own": ALLOW,
    "account-unknown": NOT_FOUND,
    "tx": ALLOW,
    "tx-unknown": NOT_FOUND,
    "hold": ALLOW,
    "hold-unknown": NOT_FOUND,
    "instrument": ALLOW,
    "validators": ALLOW,
    "block": ALLOW,
    "block-stream": ALLOW,
}
NOTHING = {read: DENY for read in EVERYTHING} | {"validators": ALLOW}
# "account-own" reads alice's account: alice's own, and what others may see of it.
TABLE: dict[str, dict[str, str]] = {
    "alice": NOTHING | {"account-own": ALLOW, "tx": ALLOW, "hold": ALLOW, "instrument": ALLOW},
    "bob": NOTHING | {"tx": ALLOW, "hold": ALLOW, "instrument": ALLOW},  # payee of both, holds bank-a USD
    "carol": NOTHING,  # bank-b's client, no part in any of it
    "bank-a": NOTHING | {"account-own": ALLOW, "tx": ALLOW, "hold": ALLOW, "instrument": ALLOW},
    "bank-b": NOTHING,  # another bank: alice holds none of its instruments
    "compliance": EVERYTHING,
    "admin": EVERYTHING,
    "auditor": EVERYTHING,
    "node": EVERYTHING,
}


@pytest.mark.parametrize("role", list(TABLE))
def test_each_role_reads_exactly_what_it_may(world: dict[str, Any], role: str) -> None:
    network = world["net"].network
    identity = world["node_key"] if role == "node" else role
    got: dict[str, str] = {}
    denials: list[str] = []
    with connect(world["net"].target(2), identity, timeout_s=10) as client:
        for read, call in _reads(world).items():
            try:
                call(client)
                got[read] = ALLOW
            except ClientError as exc:
                if exc.code == grpc.StatusCode.PERMISSION_DENIED:
                    assert exc.reason == "PERMISSION_DENIED"
                    denials.append(exc.message.split("that ")[0])
                    got[read] = DENY
                elif exc.code == grpc.StatusCode.NOT_FOUND:
                    got[read] = NOT_FOUND
                else:
                    raise
    assert got == TABLE[role], network.chain_id
    # A denial names no record: the words before the kind of record are the same for all.
    assert len(set(denials)) <= 1


def test_a_denied_read_of_an_existing_record_looks_like_one_of_a_missing_record(
    world: dict[str, Any],
) -> None:
    with connect(world["net"].target(0), "carol") as client:
        answers = []
        for call in (
            lambda: client.get_account(key(world["net"].network, "alice").address),
            lambda: client.get_account(UNKNOWN_ADDRESS),
        ):
            with pytest.raises(ClientError) as info:
                call()
            answers.append((info.value.code, info.value.reason, info.value.message))
        assert answers[0] == answers[1]
        tx_answers = []
        for h in (world["tx"], UNKNOWN_HASH):
            with pytest.raises(ClientError) as info:
                client.get_tx(h)
            tx_answers.append((info.value.code, info.value.reason, info.value.message))
        assert tx_answers[0] == tx_answers[1]


def test_an_event_subscription_carries_only_the_callers_events(world: dict[str, Any]) -> None:
    network = world["net"].network
    alice, bob = key(network, "alice").address, key(network, "bob").address
    seen: dict[str, list[Any]] = {}
    for who, wanted in (("alice", 4), ("bob", 4), ("auditor", 7)):
        events = []
        with connect(world["net"].target(1), who) as client:
            for env in client.subscribe_events(1, timeout_s=15):
                events.append(env.event)
                if len(events) == wanted:
                    break
        seen[who] = events
    assert all(alice in e.accounts for e in seen["alice"])
    assert all(bob in e.accounts for e in seen["bob"])
    # The auditor sees others' events too (the validators' genesis and other clients' KYC).
    assert any(alice not in e.accounts and bob not in e.accounts for e in seen["auditor"])
    # Asking for someone else's events yields only those the caller may see.
    with connect(world["net"].target(1), "bob") as client:
        for env in client.subscribe_events(1, account=alice, timeout_s=15):
            assert bob in env.event.accounts and alice in env.event.accounts
            break


def _raw_call(network: Any, target: str, metadata: Any) -> grpc.RpcError | None:
    with network.channel(target, None) as channel:
        try:
            ledger_api_pb2_grpc.LedgerStub(channel).GetValidators(
                ledger_api_pb2.GetValidatorsRequest(), timeout=5, metadata=metadata
            )
        except grpc.RpcError as exc:
            return exc
    return None


def _reason(err: grpc.RpcError | None) -> str:
    assert err is not None, "the call was answered"
    return dict(err.trailing_metadata() or ()).get("clearline-reason", "")  # type: ignore[attr-defined]


def test_strangers_and_bad_tokens_are_refused(world: dict[str, Any]) -> None:
    network = world["net"].network
    target = world["net"].target(0)
    method = "/clearline.v1.Ledger/GetValidators"
    alice = key(network, "alice")
    assert _reason(_raw_call(network, target, None)) == "AUTH_REQUIRED"
    stranger = SigningKey.generate()
    assert _reason(_raw_call(network, target, (token_metadata(stranger, network.chain_id, method),))) == (
        "AUTH_UNKNOWN_IDENTITY"
    )
    other_chain = token_metadata(alice, "another-chain", method)
    assert _reason(_raw_call(network, target, (other_chain,))) == "AUTH_BAD_SIGNATURE"
    wrong_method = token_metadata(alice, network.chain_id, "/clearline.v1.Ledger/GetBlock")
    assert _reason(_raw_call(network, target, (wrong_method,))) == "AUTH_BAD_SIGNATURE"
    stale = auth.make_token(alice, network.chain_id, method, int(time.time() * 1000) - 120_000)
    assert _reason(_raw_call(network, target, ((auth.METADATA_KEY, stale),))) == "AUTH_EXPIRED"
    good = (token_metadata(alice, network.chain_id, method),)
    assert _raw_call(network, target, good) is None
    assert _reason(_raw_call(network, target, good)) == "AUTH_REPLAYED"
    err = _raw_call(network, target, good)
    assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def test_a_plaintext_channel_to_a_default_network_fails(world: dict[str, Any]) -> None:
    target = world["net"].target(0)
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as info:
        ledger_api_pb2_grpc.LedgerStub(channel).GetStatus(ledger_api_pb2.GetStatusRequest(), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    # TLS with the network's CA works without any identity for status.
    with network_of(target).channel(target, None) as channel:
        assert (
            ledger_api_pb2_grpc.LedgerStub(channel)
            .GetStatus(ledger_api_pb2.GetStatusRequest(), timeout=5)
            .height
        )


def _cli(network: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CLEARLINE_AS"}
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args, "--home", network.home],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_the_cli_reads_as_the_identity_it_is_given(world: dict[str, Any]) -> None:
    network = world["net"].network
    denied = _cli(network, "query", "account", "bob", "--as", "alice")
    assert denied.returncode != 0 and "PERMISSION_DENIED" in denied.stderr, denied.stderr
    own = _cli(network, "query", "account", "alice", "--as", "alice", "--json")
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout)["account"]["address"] == key(network, "alice").address.hex()
    assert _cli(network, "query", "account", "bob", "--as", "compliance").returncode == 0
    proved = _cli(network, "query", "account", "alice", "--as", "alice", "--prove")
    assert proved.returncode == 0 and "VERIFIED" in proved.stdout, proved.stderr
    nobody = _cli(network, "query", "account", "alice")
    assert nobody.returncode != 0 and "AUTH_REQUIRED" in nobody.stderr
    env_as = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "query", "account", "alice", "--home", network.home],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CLEARLINE_AS": "alice"},
    )
    assert env_as.returncode == 0, env_as.stderr


def test_statements_tie_out_page_and_obey_the_read_rules(world: dict[str, Any]) -> None:
    network = world["net"].network
    alice, bob = key(network, "alice").address, key(network, "bob").address
    out = _cli(
        network, "query", "statement", "alice", "--instrument", "bank-a:USD", "--as", "alice", "--json"
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["closing"] == doc["opening"] + sum(e["amount"] for e in doc["entries"])
    assert doc["opening"] == 0  # alice had nothing at genesis: minted, paid bob 100
    paid = [e for e in doc["entries"] if e["tx_hash"] == world["tx"].hex()]
    assert [(e["amount"], e["counterparty"], e["kind"]) for e in paid] == [(-100, bob.hex(), "transfer")]
    with connect(world["net"].target(1), "alice") as client:
        account = client.get_account(alice).account
        assert doc["closing"] == sum(b.amount for b in account.balances if b.instrument == usd(network))
        # Paged one entry at a time, over the first page's range: the same entries.
        first = client.statement_page(alice, usd(network), limit=1)
        assert len(first.entries) == 1 and first.next_page_token
        whole = client.statement(alice, usd(network), to_height=first.to_height)
        assert [e.tx_hash.hex() for e in whole.entries] == [e["tx_hash"] for e in doc["entries"]][
            : len(whole.entries)
        ]
        assert (whole.opening, whole.closing) == (first.opening, first.closing)
        # A range after the payment: it opens where the full statement's payment left alice.
        later = client.statement(
            alice, usd(network), from_height=world["height"] + 1, to_height=first.to_height
        )
        assert all(e.height > world["height"] for e in later.entries)
    # bob's statement shows the same payment as a credit.
    bob_doc = json.loads(
        _cli(
            network, "query", "statement", "bob", "--instrument", "bank-a:USD", "--as", "bob", "--json"
        ).stdout
    )
    assert [e["amount"] for e in bob_doc["entries"] if e["tx_hash"] == world["tx"].hex()] == [100]
    # The issuer reads its holders' statements in its instrument; a stranger reads none.
    assert (
        _cli(
            network, "query", "statement", "alice", "--instrument", "bank-a:USD", "--as", "bank-a"
        ).returncode
        == 0
    )
    denied = _cli(network, "query", "statement", "alice", "--instrument", "bank-a:USD", "--as", "carol")
    assert denied.returncode != 0 and "PERMISSION_DENIED" in denied.stderr
    csv_out = _cli(
        network, "query", "statement", "alice", "--instrument", "bank-a:USD", "--as", "alice", "--csv"
    )
    assert csv_out.stdout.splitlines()[0] == "height,time_ms,tx_hash,kind,counterparty,amount"
    assert len(csv_out.stdout.splitlines()) == 1 + len(doc["entries"])


def test_lists_of_instruments_and_pending_transactions_and_watch_obey_the_read_rules(
    world: dict[str, Any],
) -> None:
    network = world["net"].network
    alice = key(network, "alice")
    with connect(world["net"].target(0), "auditor") as client:
        everything = {(i.id.issuer, i.id.symbol) for i in client.list_instruments()}
    bank_a = key(network, "bank-a").address
    assert {(bank_a, "USD"), (bank_a, "BOND-2030")} <= everything and len(everything) >= 3
    with connect(world["net"].target(0), "alice") as client:
        assert {(i.id.issuer, i.id.symbol) for i in client.list_instruments()} == {(bank_a, "USD")}  # held
        # A transaction with a nonce ahead of alice's next one waits, and says for which nonce.
        nonce = client.next_nonce(alice.address)
        ahead = builders.sign(
            builders.make_body(network.chain_id, alice.address, nonce + 3, "ahead",
                               builders.transfer(usd(network), key(network, "bob").address, 1)),
            alice,
        )  # fmt: skip
        client.submit(ahead, WaitFor.NONE)
        pending = client.list_pending()
        (waiting,) = [t for t in pending.txs if t.nonce == nonce + 3]
        assert waiting.waiting and waiting.waiting_for_nonce == nonce and pending.max_wait_ms > 0
    listed = _cli(network, "query", "pending", "--as", "alice")
    assert listed.returncode == 0 and f"WAITING for nonce {nonce}" in listed.stdout, listed.stdout
    denied = _cli(network, "query", "pending", "alice", "--as", "carol")
    assert denied.returncode != 0 and "PERMISSION_DENIED" in denied.stderr
    watched = _cli(network, "watch", "--as", "alice", "--from", "1", "--count", "2", "--json")
    assert watched.returncode == 0, watched.stderr
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert len(events) == 2 and all(alice.address.hex() in e["accounts"] for e in events)


def test_holds_of_an_account_and_accounts_of_an_issuer_obey_the_read_rules(world: dict[str, Any]) -> None:
    network = world["net"].network
    target = world["net"].target(0)
    alice, bob, carol = (key(network, n).address for n in ("alice", "bob", "carol"))
    bank_a, bank_b = key(network, "bank-a").address, key(network, "bank-b").address
    # The hold alice (payer) made for bob (payee), notary bank-a: each party lists it as its own.
    for who in ("alice", "bob", "bank-a"):
        with connect(target, who) as client:
            assert [h.hold_id for h in client.list_holds()] == ["h-access"], who
    with connect(target, "auditor") as client:
        assert [h.hold_id for h in client.list_holds(alice)] == ["h-access"]
    with connect(target, "carol") as client:
        assert client.list_holds(alice) == [] and client.list_holds() == []  # nothing she may read
    # An issuer's accounts: bank-a approved alice and bob; bank-b approved carol.
    with connect(target, "bank-a") as client:
        mine = {a.address: a for a in client.list_accounts()}
        assert {alice, bob} <= set(mine) and carol not in mine
        assert mine[alice].nonce > 0 and mine[alice].kyc_approvals  # its own clients, whole
        with pytest.raises(ClientError) as info:
            client.list_accounts(bank_b)
        assert info.value.reason == "PERMISSION_DENIED"
    with connect(target, "auditor") as client:
        assert carol in {a.address for a in client.list_accounts(bank_b)}
    with connect(target, "alice") as client:
        with pytest.raises(ClientError) as info:
            client.list_accounts(bank_a)
        assert info.value.reason == "PERMISSION_DENIED"
    # The CLI: names and units in text, the same records in --json.
    holds = _cli(network, "query", "holds", "alice", "--as", "alice")
    assert holds.returncode == 0 and "h-access" in holds.stdout and "bob" in holds.stdout, holds.stdout
    accounts = _cli(network, "query", "accounts", "--as", "bank-a", "--json")
    assert accounts.returncode == 0, accounts.stderr
    listed = {a["address"] for a in json.loads(accounts.stdout)["accounts"]}
    assert {alice.hex(), bob.hex()} <= listed
    denied = _cli(network, "query", "accounts", "bank-a", "--as", "carol")
    assert denied.returncode != 0 and "PERMISSION_DENIED" in denied.stderr
