"""cluster.client.aio.Client against the FAKE in-process Ledger server (tests/unit/client/fake_ledger.py).

Covers: chain id discovery, submit with every wait mode, node errors mapped to ClientError with the
node's reason, deadlines on every call, batch results, send (nonce, build, sign), queries, streams,
and cross-checked verified reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from clearline.v1 import ledger_api_pb2, receipt_pb2, state_pb2, tx_pb2
from cluster.client import Client, ClientError, ProofError, ProofFailure, TxFailedError, WaitFor
from cluster.client import builders as b
from cluster.client.errors import BadResponseError
from node import blocks, txs
from node.crypto import SigningKey

from .chain import CHAIN, header, proved_account, validator_set
from .fake_ledger import FakeLedger, Refusal, start_fake
from .test_proofs import StubMerkle

ME = SigningKey.from_seed(b"\x21" * 32)
BOB = SigningKey.from_seed(b"\x22" * 32)
USD = b.instrument(ME.address, "USD")


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeLedger, str]]:
    ledger = FakeLedger()
    server, target = await start_fake(ledger)
    try:
        yield ledger, target
    finally:
        await server.stop(None)


@pytest.fixture
async def client(fake: tuple[FakeLedger, str]) -> AsyncIterator[Client]:
    async with await Client.connect(fake[1], timeout_s=5, insecure=True) as c:
        yield c


def transfer_tx(nonce: int = 0, chain: str = CHAIN, amount: int = 100) -> bytes:
    body = b.make_body(
        chain, ME.address, nonce, f"ref-{nonce}-{amount}", b.transfer(USD, BOB.address, amount)
    )
    return b.sign(body, ME)


async def test_connect_reads_the_chain_id_from_the_node(client: Client) -> None:
    assert client.chain_id == CHAIN


async def test_connect_with_a_chain_id_does_not_ask(fake: tuple[FakeLedger, str]) -> None:
    ledger, target = fake
    ledger.hang_s = 30  # GetStatus would hang: connect must not call it
    async with await Client.connect(target, chain_id="given", timeout_s=0.5, insecure=True) as c:
        assert c.chain_id == "given"
    assert ledger.seen_timeouts == []


async def test_connect_to_nothing_fails_within_its_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(ClientError) as info:
        await Client.connect("127.0.0.1:1", timeout_s=0.5, insecure=True)
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert info.value.reason == info.value.code.name  # no node, so no node reason
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("wait", list(WaitFor))
async def test_submit_returns_the_result_for_each_wait_mode(
    client: Client, fake: tuple[FakeLedger, str], wait: WaitFor
) -> None:
    ledger, _ = fake
    raw = transfer_tx()
    result = await client.submit(raw, wait=wait)
    assert result.tx_hash == txs.tx_hash(raw)
    assert result.accepted and result.ok and result.reason == "OK"
    assert ledger.submitted[-1].wait == wait.value
    if wait is WaitFor.NONE:
        assert result.receipt is None and not result.committed
    else:
        assert result.receipt is not None and result.receipt.tx_hash == result.tx_hash
    if wait is WaitFor.COMMITTED:
        assert result.committed and result.height == 4 and result.state_root == b"\x5a" * 32
    assert result.raise_for_status() is result


async def test_rejection_is_mapped_to_client_error_with_the_node_reason(client: Client) -> None:
    with pytest.raises(ClientError) as info:
        await client.submit(transfer_tx(chain="other-chain"))
    err = info.value
    assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "WRONG_CHAIN")
    assert "other-chain" in err.message and err.target == client.target
    assert isinstance(err.__cause__, grpc.aio.AioRpcError)


async def test_replayed_nonce_is_rejected_with_bad_nonce(
    client: Client, fake: tuple[FakeLedger, str]
) -> None:
    await client.submit(transfer_tx(0))
    with pytest.raises(ClientError) as info:
        await client.submit(transfer_tx(0, amount=7))
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "BAD_NONCE")
    assert fake[0].accounts[ME.address].nonce == 1  # the replay changed nothing


async def test_refusal_without_reason_metadata_falls_back_to_the_code_name(
    client: Client, fake: tuple[FakeLedger, str]
) -> None:
    fake[0].refuse = Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "MEMPOOL_FULL", "10000 transactions pending")
    with pytest.raises(ClientError) as info:
        await client.submit(transfer_tx())
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "MEMPOOL_FULL")
    with pytest.raises(ClientError) as info:
        await client.get_hold("nope")
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_HOLD")


async def test_unary_deadline_is_honoured_and_sent_to_the_node(
    client: Client, fake: tuple[FakeLedger, str]
) -> None:
    ledger, _ = fake
    ledger.hang_s = 5
    start = time.monotonic()
    with pytest.raises(ClientError) as info:
        await client.submit(transfer_tx(), timeout_s=0.3)
    elapsed = time.monotonic() - start
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED")
    assert 0.25 < elapsed < 2
    remaining = ledger.seen_timeouts[-1]
    assert remaining is not None and 0.2 < remaining < 0.35


async def test_client_default_timeout_applies_to_every_call(fake: tuple[FakeLedger, str]) -> None:
    ledger, target = fake
    async with await Client.connect(target, timeout_s=0.4, insecure=True) as c:
        ledger.hang_s = 5
        start = time.monotonic()
        with pytest.raises(ClientError) as info:
            await c.status()
        assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 2
        remaining = ledger.seen_timeouts[-1]
        assert remaining is not None and 0.3 < remaining < 0.45


async def test_answer_for_another_tx_is_a_bad_response(client: Client, fake: tuple[FakeLedger, str]) -> None:
    fake[0].wrong_hash = True
    with pytest.raises(BadResponseError) as info:
        await client.submit(transfer_tx())
    assert info.value.reason == "BAD_RESPONSE"


async def test_failed_dry_run_is_reported_not_raised_until_asked(client: Client) -> None:
    result = await client.check(transfer_tx())
    assert result.accepted and not result.ok and result.reason == "INSUFFICIENT_FUNDS"
    with pytest.raises(TxFailedError) as info:
        result.raise_for_status()
    assert info.value.status == receipt_pb2.TX_STATUS_INSUFFICIENT_FUNDS
    assert info.value.reason == "INSUFFICIENT_FUNDS" and info.value.receipt == result.receipt


async def test_submit_many_returns_one_result_per_tx_in_order(client: Client) -> None:
    raws = [transfer_tx(0), transfer_tx(0, amount=5), transfer_tx(1), transfer_tx(2, chain="x")]
    results = await client.submit_many(raws, wait=WaitFor.CHECKED)
    assert [r.tx_hash for r in results] == [txs.tx_hash(r) for r in raws]
    assert [r.accepted for r in results] == [True, False, True, False]
    assert [r.reason for r in results] == ["OK", "BAD_NONCE", "OK", "WRONG_CHAIN"]
    assert "expected 1" in results[1].message


async def test_send_fetches_the_nonce_builds_signs_and_submits(
    client: Client, fake: tuple[FakeLedger, str]
) -> None:
    ledger, _ = fake
    ledger.accounts[ME.address] = state_pb2.Account(address=ME.address, nonce=7)
    assert await client.next_nonce(ME.address) == 7
    assert await client.next_nonce(BOB.address) == 0
    first = await client.send(ME, b.transfer(USD, BOB.address, 5), client_ref="pay-1")
    second = await client.send(ME, b.transfer(USD, BOB.address, 6))
    assert first.ok and second.ok
    bodies = [txs.verify_tx(s.tx, CHAIN).body for s in ledger.submitted]
    assert [body.nonce for body in bodies] == [7, 8]
    assert bodies[0].client_ref == "pay-1" and bodies[1].client_ref and bodies[1].client_ref != "pay-1"


async def test_send_without_waiting_does_not_reuse_a_nonce(
    client: Client, fake: tuple[FakeLedger, str]
) -> None:
    ledger, _ = fake
    real_get = ledger.GetAccount

    async def stale_account(request: ledger_api_pb2.GetAccountRequest, context: object) -> object:
        return ledger_api_pb2.GetAccountResponse(exists=False)  # committed state lags the mempool

    ledger.GetAccount = stale_account  # type: ignore[method-assign,assignment]
    results = await asyncio.gather(
        *(client.send(ME, b.transfer(USD, BOB.address, i + 1), wait=WaitFor.NONE) for i in range(3))
    )
    assert all(r.accepted for r in results)
    assert sorted(txs.verify_tx(s.tx, CHAIN).body.nonce for s in ledger.submitted) == [0, 1, 2]
    ledger.GetAccount = real_get  # type: ignore[method-assign]


async def test_rejected_send_forgets_its_reserved_nonce(client: Client, fake: tuple[FakeLedger, str]) -> None:
    ledger, _ = fake
    ledger.refuse = Refusal(grpc.StatusCode.UNAVAILABLE, "SYNCING", "node is catching up")
    with pytest.raises(ClientError):
        await client.send(ME, b.transfer(USD, BOB.address, 1))
    ledger.refuse = None
    await client.send(ME, b.transfer(USD, BOB.address, 1))
    assert txs.verify_tx(ledger.submitted[-1].tx, CHAIN).body.nonce == 0


async def test_invalid_op_is_refused_before_anything_is_sent(
    client: Client, fake: tuple[FakeLedger, str]
) -> None:
    with pytest.raises(b.BuildError):
        await client.send(ME, tx_pb2.Leg())  # type: ignore[arg-type]
    assert fake[0].submitted == []


async def test_wait_committed_polls_until_committed_or_deadline(
    client: Client, fake: tuple[FakeLedger, str]
) -> None:
    raw = transfer_tx()
    with pytest.raises(ClientError) as info:
        await client.wait_committed(txs.tx_hash(raw), timeout_s=0.3, poll_s=0.05)
    assert (info.value.code, info.value.reason) == (grpc.StatusCode.DEADLINE_EXCEEDED, "NOT_COMMITTED")

    async def submit_later() -> None:
        await asyncio.sleep(0.15)
        await client.submit(raw, wait=WaitFor.NONE)

    task = asyncio.create_task(submit_later())
    got = await client.wait_committed(txs.tx_hash(raw), timeout_s=3, poll_s=0.05)
    await task
    assert got.state == ledger_api_pb2.TX_STATE_COMMITTED and got.tx == raw


async def test_queries_return_the_node_answers(client: Client, fake: tuple[FakeLedger, str]) -> None:
    ledger, _ = fake
    ledger.validator_set.CopyFrom(validator_set())
    raw = transfer_tx()
    await client.submit(raw)
    tx = await client.get_tx(txs.tx_hash(raw))
    assert tx.state == ledger_api_pb2.TX_STATE_COMMITTED and tx.tx == raw
    assert (await client.get_tx(b"\x00" * 32)).state == ledger_api_pb2.TX_STATE_UNKNOWN
    account = await client.get_account(ME.address)
    assert account.exists and account.account.nonce == 1
    assert (await client.get_instrument(USD)).instrument.id == USD
    assert (await client.validators()) == validator_set()
    assert (await client.status()).height == 4


def canned_blocks(count: int) -> list[ledger_api_pb2.GetBlockResponse]:
    out = []
    for height in range(1, count + 1):
        hdr = header(height)
        resp = ledger_api_pb2.GetBlockResponse(block_hash=blocks.block_hash(hdr))
        resp.block.header.CopyFrom(hdr)
        out.append(resp)
    return out


async def test_get_block_by_height_hash_or_latest(client: Client, fake: tuple[FakeLedger, str]) -> None:
    ledger, _ = fake
    ledger.blocks = canned_blocks(3)
    assert (await client.get_block(2)).block.header.height == 2
    assert (await client.get_block(ledger.blocks[0].block_hash)).block.header.height == 1
    assert (await client.get_block()).block.header.height == 3
    with pytest.raises(ClientError) as info:
        await client.get_block(b"\x00" * 32)
    assert info.value.reason == "UNKNOWN_BLOCK"


async def test_stream_blocks_yields_from_the_height_and_cancels_on_break(
    client: Client, fake: tuple[FakeLedger, str]
) -> None:
    ledger, _ = fake
    ledger.blocks = canned_blocks(5)
    ledger.keep_streams_open = True
    heights = []
    stream = client.stream_blocks(3)
    async for item in stream:
        heights.append(item.block.header.height)
        if len(heights) == 3:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert heights == [3, 4, 5]
    for _ in range(500):  # the server sees the cancellation (up to 10 s: late under load)
        if ledger.streams_cancelled:
            break
        await asyncio.sleep(0.02)
    assert ledger.streams_cancelled == 1


async def test_stream_deadline_ends_an_idle_stream_with_client_error(
    client: Client, fake: tuple[FakeLedger, str]
) -> None:
    ledger, _ = fake
    ledger.blocks = canned_blocks(1)
    ledger.keep_streams_open = True
    got = []
    with pytest.raises(ClientError) as info:
        async for item in client.stream_blocks(1, timeout_s=0.3):
            got.append(item.block.header.height)
    assert got == [1] and info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_subscribe_events_filters_by_account_and_instrument(
    client: Client, fake: tuple[FakeLedger, str]
) -> None:
    ledger, _ = fake
    eur = b.instrument(ME.address, "EUR")
    for height, acct, inst in [
        (1, ME.address, USD),
        (2, BOB.address, USD),
        (3, ME.address, eur),
        (4, ME.address, USD),
    ]:
        env = ledger_api_pb2.EventEnvelope(height=height)
        env.event.kind = "transfer"
        env.event.accounts.append(acct)
        env.event.instrument.CopyFrom(inst)
        ledger.events.append(env)
    all_events = [e.height async for e in client.subscribe_events(1)]
    mine = [e.height async for e in client.subscribe_events(2, account=ME.address)]
    mine_usd = [e.height async for e in client.subscribe_events(1, account=ME.address, instrument=USD)]
    assert (all_events, mine, mine_usd) == ([1, 2, 3, 4], [3, 4], [1, 4])


async def test_closed_client_refuses_calls(fake: tuple[FakeLedger, str]) -> None:
    c = await Client.connect(fake[1], insecure=True)
    await c.close()
    await c.close()  # idempotent
    with pytest.raises(ClientError) as info:
        await c.status()
    assert info.value.reason == "CLIENT_CLOSED"


# --- verified reads across nodes ------------------------------------------------------------------

ALICE = b"\xa1" * 20


@pytest.fixture
def merkle(monkeypatch: pytest.MonkeyPatch) -> StubMerkle:
    from cluster.client import proofs

    stub = StubMerkle()
    monkeypatch.setattr(proofs, "_ledger_functions", lambda: (stub.verify_proof, stub.account_key))
    return stub


@pytest.fixture
async def three_nodes() -> AsyncIterator[list[tuple[FakeLedger, Client]]]:
    out: list[tuple[FakeLedger, Client]] = []
    servers = []
    try:
        for _ in range(3):
            ledger = FakeLedger()
            server, target = await start_fake(ledger)
            servers.append(server)
            out.append((ledger, await Client.connect(target, timeout_s=5, insecure=True)))
        yield out
    finally:
        for _, c in out:
            await c.close()
        for server in servers:
            await server.stop(None)


async def test_verified_read_cross_checks_nodes_and_returns_the_newest(
    merkle: StubMerkle, three_nodes: list[tuple[FakeLedger, Client]]
) -> None:
    (a, ca), (b_, cb), (c_, cc) = three_nodes
    a.proofs[ALICE] = proved_account(ALICE, height=9, nonce=4)
    b_.proofs[ALICE] = proved_account(ALICE, height=10, nonce=5)
    c_.proofs[ALICE] = proved_account(ALICE, height=9, nonce=4)
    got = await ca.get_account_verified(ALICE, validator_set(), [cb, cc])
    assert got.height == 10 and got.account is not None and got.account.nonce == 5
    alone = await ca.get_account_verified(ALICE, validator_set())
    assert alone.height == 9


async def test_verified_read_fails_if_any_node_lies_or_disagrees(
    merkle: StubMerkle, three_nodes: list[tuple[FakeLedger, Client]]
) -> None:
    (a, ca), (b_, cb), _ = three_nodes
    a.proofs[ALICE] = proved_account(ALICE, height=9)
    b_.proofs[ALICE] = proved_account(ALICE, height=9, signers=[])  # no certificate signatures
    with pytest.raises(ProofError) as info:
        await ca.get_account_verified(ALICE, validator_set(), [cb])
    assert info.value.reason is ProofFailure.COMMIT_INVALID and info.value.target == cb.target
    b_.proofs[ALICE] = proved_account(ALICE, height=9, nonce=99)
    with pytest.raises(ProofError) as info:
        await ca.get_account_verified(ALICE, validator_set(), [cb])
    assert info.value.reason is ProofFailure.NODES_DISAGREE


async def test_verified_read_fails_if_a_node_does_not_answer(
    merkle: StubMerkle, three_nodes: list[tuple[FakeLedger, Client]]
) -> None:
    (a, ca), _, (_c, cc) = three_nodes
    a.proofs[ALICE] = proved_account(ALICE)
    await cc.close()
    with pytest.raises(ClientError) as info:
        await ca.get_account_verified(ALICE, validator_set(), [cc])
    assert info.value.reason == "CLIENT_CLOSED"
