"""A real validator: a block of the maximum size is readable through the client API (GetBlock and
StreamBlocks, with its receipts and certificate), and an oversized query gets a short error."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grpc
import pytest

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc, tx_pb2
from cluster.client import WaitFor
from cluster.launcher import Launcher
from cluster.netgen import Network
from node import txs
from node.config import load_config
from node.crypto import SigningKey
from tests.cluster.conftest import FAST, RunningNetwork, _factory
from tests.cluster.helpers import connect, key, network_of, reason_of, stub

MIB = 1 << 20
OLD_API_LIMIT = 4 * MIB  # [api] max_message_bytes before: equal to [consensus] max_block_bytes
# After a commit the next height starts this much later: time to submit a block's worth of
# transactions so that one proposal takes them all.
TIMEOUT_COMMIT_MS = 3000


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNetwork]:
    launchers: list[Launcher] = []
    consensus = dataclasses.replace(FAST, timeout_commit_ms=TIMEOUT_COMMIT_MS)
    yield _factory(tmp_path_factory.mktemp("limits"), launchers)(validators=1, consensus=consensus)
    for launcher in launchers:
        launcher.stop_all(timeout=10)


def tx_of_size(network: Network, signer: SigningKey, nonce: int, holder: SigningKey, size: int) -> bytes:
    """A signed SetKyc of exactly size bytes (padded with its memo)."""
    op = tx_pb2.SetKyc(
        account=holder.address, public_key=holder.public_key, status=tx_pb2.KYC_STATUS_APPROVED
    )
    pad = size
    for _ in range(10):
        body = tx_pb2.TxBody(
            chain_id=network.chain_id, signer=signer.address, nonce=nonce, client_ref=f"full-{nonce}",
            memo="m" * pad, set_kyc=op,
        )  # fmt: skip
        raw = txs.sign_tx(body, [signer])
        if len(raw) == size:
            return raw
        pad += size - len(raw)
    raise AssertionError(f"no memo makes a transaction of {size} bytes")


def test_a_block_of_the_maximum_size_is_readable_by_get_block_and_stream_blocks(net: RunningNetwork) -> None:
    network = net.network
    cfg = load_config(network.nodes[0].home)
    max_tx, max_block = cfg.mempool.max_tx_bytes, cfg.consensus.max_block_bytes
    count = max_block // max_tx
    bank, alice = key(network, "bank-a"), key(network, "alice")
    with connect(net.target(0), timeout_s=60) as client:
        first_nonce = client.next_nonce(bank.address)
        raws = [tx_of_size(network, bank, first_nonce + i, alice, max_tx) for i in range(count)]
        assert sum(map(len, raws)) == max_block  # the transactions fill the block exactly
        # Right after a commit, so the next proposal (TIMEOUT_COMMIT_MS later) takes all of them;
        # two batches, as one would exceed the request limit.
        start = client.status().height + 1
        for _ in client.stream_blocks(start, timeout_s=30):
            break
        half = count // 2
        checked = client.submit_many(raws[:half], WaitFor.CHECKED)
        committed = client.submit_many(raws[half:], WaitFor.COMMITTED)
        assert all(r.accepted for r in checked + committed), [r.message for r in checked + committed][:3]
        height = committed[0].height
        resp = client.get_block(height)
        assert list(resp.block.body.txs) == raws, "the transactions did not go into one block"
        assert resp.block.ByteSize() > max_block
        assert len(resp.receipts) == count and resp.commit.height == height
        assert resp.ByteSize() > OLD_API_LIMIT  # what the old limit refused (RESOURCE_EXHAUSTED)

        # The stream carries the full block and goes on past it.
        streamed = []
        for item in client.stream_blocks(height, timeout_s=30):
            streamed.append(item)
            if len(streamed) == 2:
                break
        assert streamed[0] == resp
        assert streamed[1].block.header.height == height + 1
    # A client with gRPC's default receive limit (4 MiB) cannot read it: the client needs a limit too.
    with network_of(net.target(0)).channel(net.target(0)) as channel, pytest.raises(grpc.RpcError) as info:
        ledger_api_pb2_grpc.LedgerStub(channel).GetBlock(
            ledger_api_pb2.GetBlockRequest(height=height), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_huge_hold_id_gets_a_short_error_and_the_node_goes_on(net: RunningNetwork) -> None:
    channel, s = stub(net.target(0))
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            s.GetHold(ledger_api_pb2.GetHoldRequest(hold_id="h" * MIB), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason_of(info.value) == "INVALID_HOLD_ID"
        assert len(info.value.details()) < 200
        assert "(1048576 bytes)" in info.value.details()
        assert s.GetStatus(ledger_api_pb2.GetStatusRequest(), timeout=10).height >= 1
