"""Four real validators: transactions commit everywhere identically, and bad client input is refused
with a specific reason while the node keeps serving and its state stays unchanged."""

from __future__ import annotations

import grpc
import pytest

from clearline.v1 import ledger_api_pb2, receipt_pb2, tx_pb2
from cluster.client import builders
from node import txs
from node.crypto import SigningKey
from tests.cluster.conftest import RunningNetwork, status
from tests.cluster.helpers import (
    block_hashes,
    connect,
    get_block,
    key,
    network_of,
    reason_of,
    setup_funded,
    signed,
    stub,
    submit,
    usd,
)


@pytest.fixture(scope="module")
def net(shared_network: RunningNetwork) -> RunningNetwork:
    setup_funded(shared_network.network, shared_network.target(0), ["alice", "bob"])
    return shared_network


def balance(target: str, address: bytes, symbol: str = "USD") -> int:
    channel, s = stub(target)
    with channel:
        acct = s.GetAccount(ledger_api_pb2.GetAccountRequest(address=address), timeout=10).account
    return sum(b.amount for b in acct.balances if b.instrument.symbol == symbol)


def test_transfer_commits_with_receipt_and_is_identical_on_all_nodes(net: RunningNetwork) -> None:
    network = net.network
    alice, bob = key(network, "alice"), key(network, "bob")
    before = balance(net.target(0), bob.address)
    channel, s = stub(net.target(1))
    with channel:
        nonce = s.GetAccount(
            ledger_api_pb2.GetAccountRequest(address=alice.address), timeout=10
        ).account.nonce
    resp = submit(
        net.target(1), signed(network, alice, nonce, builders.transfer(usd(network), bob.address, 250))
    )
    assert resp.accepted
    assert resp.receipt.status == receipt_pb2.TX_STATUS_OK
    assert resp.height >= 1
    net.wait_height(resp.height, timeout=30)
    hashes = [block_hashes(net.target(i), resp.height) for i in range(4)]
    assert all(h == hashes[0] for h in hashes)
    roots = {get_block(net.target(i), resp.height).block.header.state_root for i in range(4)}
    assert len(roots) == 1
    for i in range(4):
        assert balance(net.target(i), bob.address) == before + 250
        channel, s = stub(net.target(i))
        with channel:
            got = s.GetTx(ledger_api_pb2.GetTxRequest(tx_hash=resp.tx_hash), timeout=10)
        assert got.state == ledger_api_pb2.TX_STATE_COMMITTED and got.height == resp.height


def _expect(target: str, raw: bytes, code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        submit(target, raw)
    assert info.value.code() == code, info.value.details()
    assert reason_of(info.value) == reason, info.value.details()


def test_bad_transactions_are_rejected_with_their_reason_and_change_nothing(net: RunningNetwork) -> None:
    network, target = net.network, net.target(2)
    alice, bob = key(network, "alice"), key(network, "bob")
    channel, s = stub(target)
    with channel:
        nonce = s.GetAccount(
            ledger_api_pb2.GetAccountRequest(address=alice.address), timeout=10
        ).account.nonce
    before = (balance(target, alice.address), balance(target, bob.address))
    pay = builders.transfer(usd(network), bob.address, 10)

    _expect(target, b"\x0agarbage\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED")
    good = tx_pb2.SignedTx.FromString(signed(network, alice, nonce, pay))
    good.signatures[0].signature = bytes(64)
    _expect(target, good.SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "BAD_SIGNATURE")
    other_chain = builders.make_body("another-chain", alice.address, nonce, "x", pay)
    _expect(target, txs.sign_tx(other_chain, [alice]), grpc.StatusCode.INVALID_ARGUMENT, "WRONG_CHAIN")
    _expect(
        target,
        signed(network, alice, max(0, nonce - 1), pay),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BAD_NONCE",
    )
    unknown = builders.transfer(tx_pb2.InstrumentId(issuer=bob.address, symbol="XYZ"), bob.address, 1)
    _expect(target, signed(network, alice, nonce, unknown), grpc.StatusCode.NOT_FOUND, "UNKNOWN_INSTRUMENT")
    stranger = SigningKey.generate()
    _expect(target, signed(network, stranger, 0, pay), grpc.StatusCode.NOT_FOUND, "UNKNOWN_ACCOUNT")
    to_carol = builders.transfer(usd(network), key(network, "carol").address, 10)  # carol has no KYC yet
    _expect(
        target,
        signed(network, alice, nonce, to_carol),
        grpc.StatusCode.FAILED_PRECONDITION,
        "KYC_NOT_APPROVED",
    )
    big = builders.make_body(network.chain_id, alice.address, nonce, "big", pay, memo="m" * 200)
    big.memo = "m" * 70_000
    _expect(target, txs.sign_tx(big, [alice]), grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_LARGE")
    with pytest.raises(grpc.RpcError) as huge:
        submit(target, b"\x00" * (5 * 1024 * 1024))
    assert huge.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # A replayed client reference (a different tx body with the same reference) is refused too.
    first = submit(target, signed(network, alice, nonce, pay, ref="same-ref"))
    assert first.receipt.status == receipt_pb2.TX_STATUS_OK
    _expect(target, signed(network, alice, nonce + 1, pay, ref="same-ref"), grpc.StatusCode.ALREADY_EXISTS,
            "DUPLICATE_CLIENT_REF")  # fmt: skip
    # Resubmitting the identical committed tx is idempotent: the first receipt comes back.
    again = submit(target, signed(network, alice, nonce, pay, ref="same-ref"))
    assert again.tx_hash == first.tx_hash and again.height == first.height

    # Only the one good transfer changed state; the node still serves and commits.
    assert (balance(target, alice.address), balance(target, bob.address)) == (before[0] - 10, before[1] + 10)
    h = status(target).height
    net.wait_height(h + 2, [net.network.node(2).name], timeout=30)


def test_bad_queries_get_specific_errors(net: RunningNetwork) -> None:
    channel, s = stub(net.target(0))
    with channel:
        cases = [
            (lambda: s.GetAccount(ledger_api_pb2.GetAccountRequest(address=b"\x01" * 20), timeout=5),
             grpc.StatusCode.NOT_FOUND, "UNKNOWN_ACCOUNT"),
            (lambda: s.GetAccount(ledger_api_pb2.GetAccountRequest(address=b"\x01" * 3), timeout=5),
             grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ADDRESS"),
            (lambda: s.GetTx(ledger_api_pb2.GetTxRequest(tx_hash=b"\x02" * 32), timeout=5),
             grpc.StatusCode.NOT_FOUND, "UNKNOWN_TX"),
            (lambda: s.GetBlock(ledger_api_pb2.GetBlockRequest(height=10**9), timeout=5),
             grpc.StatusCode.NOT_FOUND, "UNKNOWN_BLOCK"),
            (lambda: s.GetInstrument(ledger_api_pb2.GetInstrumentRequest(
                instrument=tx_pb2.InstrumentId(issuer=b"\x03" * 20, symbol="NOPE")), timeout=5),
             grpc.StatusCode.NOT_FOUND, "UNKNOWN_INSTRUMENT"),
        ]  # fmt: skip
        for call, code, reason in cases:
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == code
            assert reason_of(info.value) == reason
        assert s.GetStatus(ledger_api_pb2.GetStatusRequest(), timeout=5).height >= 1


def test_health_and_reflection_are_served(net: RunningNetwork) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with network_of(net.target(0)).channel(net.target(0), None) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        (resp,) = list(
            reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([req]), timeout=5)
        )
        names = {s.name for s in resp.list_services_response.service}
        assert "clearline.v1.Ledger" in names


def test_account_proof_verifies_against_the_commit_certificate(net: RunningNetwork) -> None:
    from cluster.client import ProofError, verify_account_proof

    bob = key(net.network, "bob")
    with connect(net.target(3)) as client:
        trusted = client.validators(0)
        resp = client.get_account(bob.address, prove=True)
        verified = verify_account_proof(resp, chain_id=net.network.chain_id, trusted_validators=trusted,
                                        address=bob.address, target=client.target)  # fmt: skip
        assert verified.account is not None and verified.account.address == bob.address
        tampered = ledger_api_pb2.GetAccountResponse()
        tampered.CopyFrom(resp)
        tampered.account.balances[0].amount += 1
        with pytest.raises(ProofError):
            verify_account_proof(tampered, chain_id=net.network.chain_id, trusted_validators=trusted,
                                 address=bob.address, target=client.target)  # fmt: skip


def test_stream_blocks_and_subscribe_events_with_filters(net: RunningNetwork) -> None:

    bob, alice = key(net.network, "bob"), key(net.network, "alice")
    with connect(net.target(1)) as client:
        heights = []
        for block in client.stream_blocks(1, timeout_s=20):
            heights.append(block.block.header.height)
            if len(heights) == 3:
                break
        assert heights == [1, 2, 3]
        events = []
        for env in client.subscribe_events(1, account=bob.address, timeout_s=20):
            events.append(env)
            if len(events) == 2:
                break
        assert all(bob.address in env.event.accounts for env in events)
        assert "mint" in [env.event.kind for env in events]  # bob's KYC, then the mint to bob
        other = SigningKey.generate().address
        inst_events = []
        for env in client.subscribe_events(1, instrument=usd(net.network), timeout_s=20):
            inst_events.append(env)
            if len(inst_events) == 2:
                break
        assert all(env.event.instrument == usd(net.network) for env in inst_events)
        assert other not in {a for env in inst_events for a in env.event.accounts}
        assert inst_events[0].event.kind == "mint" and alice.address in inst_events[0].event.accounts
