"""Pending transactions on real nodes: a future-nonce transaction waits with a visible status, its
signer replaces or cancels it (SDK and CLI), whoever waits for it hears why at once, a dropped
transaction says why, and no one but the signer can withdraw it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from clearline.v1 import ledger_api_pb2
from cluster.client import ClientError, WaitFor, builders
from tests.cluster.conftest import RunningNetwork
from tests.cluster.helpers import connect, key, setup_funded, usd


@pytest.fixture(scope="module")
def net(shared_network: RunningNetwork) -> RunningNetwork:
    setup_funded(shared_network.network, shared_network.target(0), ["alice", "bob"])
    return shared_network


def _cli(network: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CLEARLINE_AS"}
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args, "--home", network.home],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_a_waiting_transaction_is_replaced_by_its_signer_and_its_waiter_hears_why(
    net: RunningNetwork,
) -> None:
    network, target = net.network, net.target(0)
    alice, bob = key(network, "alice"), key(network, "bob")
    with connect(target, "alice") as client:
        nxt = client.next_nonce(alice.address)
        # Nonce nxt+1 waits for nxt; a client waits for its commit on another connection.
        outcome: dict[str, Any] = {}

        def wait_for_commit() -> None:
            with connect(target, "alice") as waiter:
                started = time.monotonic()
                try:
                    waiter.send(alice, builders.transfer(usd(network), bob.address, 5), nonce=nxt + 1,
                                timeout_s=60)  # fmt: skip
                except ClientError as exc:
                    outcome["error"] = exc
                outcome["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=wait_for_commit)
        thread.start()
        deadline = time.monotonic() + 20
        while not [t for t in client.list_pending().txs if t.nonce == nxt + 1]:
            assert time.monotonic() < deadline, "the waiting transaction never showed in ListPending"
            time.sleep(0.05)
        (waiting,) = client.list_pending().txs
        assert waiting.waiting and waiting.waiting_for_nonce == nxt
        first = waiting.tx_hash
        # The CLI replaces it: same nonce, another amount; it says it waits, and what it replaced.
        out = _cli(network, "tx", "transfer", "--as", "alice", "--instrument", "bank-a:USD", "--to", "bob",
                   "--amount", "0.07", "--nonce", str(nxt + 1), "--json")  # fmt: skip
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert doc["replaced"] == first.hex() and doc["waiting_for_nonce"] == nxt
        second = bytes.fromhex(doc["tx_hash"])
        thread.join(timeout=30)
        assert isinstance(outcome.get("error"), ClientError), outcome
        assert outcome["error"].reason == "TX_REPLACED" and second.hex() in outcome["error"].message
        assert outcome["seconds"] < 30  # told when it happened, not at its 60 s deadline
        gone = client.get_tx(first)
        assert gone.state == ledger_api_pb2.TX_STATE_DROPPED and gone.dropped_reason == "REPLACED"
        assert gone.replaced_by == second
        text = _cli(network, "query", "tx", first.hex(), "--as", "alice")
        assert "DROPPED (REPLACED)" in text.stdout and second.hex() in text.stdout, text.stdout
        # Someone else may not read alice's dropped transaction.
        denied = _cli(network, "query", "tx", first.hex(), "--as", "carol")
        assert denied.returncode != 0 and "PERMISSION_DENIED" in denied.stderr
        # The gap fills: the replacement (7 minor units), not the original (5), is what commits.
        auditor = connect(target, "auditor")
        before = {b.instrument.symbol: b.amount for b in auditor.get_account(bob.address).account.balances}
        filled = client.send(alice, builders.transfer(usd(network), bob.address, 1), nonce=nxt)
        assert filled.ok, filled.message
        done = client.wait_committed(second, timeout_s=30)
        assert done.state == ledger_api_pb2.TX_STATE_COMMITTED
        after = {b.instrument.symbol: b.amount for b in auditor.get_account(bob.address).account.balances}
        auditor.close()
        assert after["USD"] - before["USD"] == 1 + 7
        with pytest.raises(ClientError) as info:
            client.wait_committed(first, timeout_s=5)
        assert info.value.reason == "TX_REPLACED"


def test_the_signer_cancels_waiting_transactions_and_no_one_else_can(net: RunningNetwork) -> None:
    network, target = net.network, net.target(0)
    alice, bob = key(network, "alice"), key(network, "bob")
    with connect(target, "alice") as client:
        nxt = client.next_nonce(alice.address)
        raws = [
            builders.sign(builders.make_body(network.chain_id, alice.address, n, f"cancel-{n}",
                                             builders.transfer(usd(network), bob.address, 3)), alice)
            for n in (nxt + 2, nxt + 3)
        ]  # fmt: skip
        hashes = [client.submit(raw, WaitFor.NONE).tx_hash for raw in raws]
        # Bob cannot withdraw alice's: a cancel acts on the caller's own transactions only.
        with connect(target, "bob") as other:
            with pytest.raises(ClientError) as info:
                other.cancel_pending(bob, [nxt + 2])
            assert info.value.reason == "NOT_PENDING"
            assert other.cancel_pending(bob) == []
        assert [t.tx_hash for t in client.list_pending().txs] == hashes
        # A nonce that is not pending: refused, and nothing is withdrawn (all or nothing).
        missing = _cli(network, "tx", "cancel", "--as", "alice", "--nonce", str(nxt + 2), "--nonce", str(nxt))
        assert missing.returncode != 0 and "NOT_PENDING" in missing.stderr, missing.stderr
        assert len(client.list_pending().txs) == 2
        out = _cli(network, "tx", "cancel", "--as", "alice", "--nonce", str(nxt + 2), "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"cancelled": [hashes[0].hex()]}
        everything = _cli(network, "tx", "cancel", "--as", "alice")
        assert everything.returncode == 0 and f"CANCELLED tx {hashes[1].hex()}" in everything.stdout
        assert list(client.list_pending().txs) == []
        for tx_hash in hashes:
            gone = client.get_tx(tx_hash)
            assert gone.state == ledger_api_pb2.TX_STATE_DROPPED and gone.dropped_reason == "CANCELLED"
        # Submitted here again, a cancelled transaction is refused with its reason.
        with pytest.raises(ClientError) as info:
            client.submit(raws[0], WaitFor.NONE)
        assert info.value.reason == "CANCELLED"
        assert list(client.list_pending().txs) == []
        # alice's nonces are unaffected: her next transaction commits as usual.
        assert client.send(alice, builders.transfer(usd(network), bob.address, 1)).ok
