"""node.network.api on a real socket with a stand-in node: oversized client input is refused with a
short error before it reaches the node, no error detail is large, a response may be larger than a
request may be, and an address in use stops the server from starting."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc, receipt_pb2, tx_pb2
from cluster.client import channels
from node.auth import Identity
from node.crypto import SigningKey
from node.errors import BASE_HEIGHT_KEY, MAX_MESSAGE_CHARS, ApiError, BelowBase
from node.network.api import REASON_KEY, ApiListenError, ApiServer

CHAIN = "test-chain"
CALLER = SigningKey.generate()  # the one identity the stand-in node knows
MIB = 1 << 20
HUGE = "h" * MIB
SHORT_DETAIL = 200  # what an error about a 1 MiB input may say, at most


class StandInNode:
    """Answers like a node that echoes its input in errors, and records what reached it."""

    chain_id = CHAIN

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.block = ledger_api_pb2.GetBlockResponse()
        self.base = 1  # the lowest height it keeps

    def now_ms(self) -> int:
        import time

        return int(time.time() * 1000)

    def identity_of(self, public_key: bytes) -> Identity | None:
        return (
            Identity(CALLER.address, CALLER.public_key, frozenset(), node=True)
            if public_key == CALLER.public_key
            else None
        )

    async def submit(self, raws: list[bytes], wait: int, timeout_s: float | None) -> list[Any]:
        self.calls.append("submit")
        return [
            ledger_api_pb2.SubmitTxResult(
                accepted=False, status=receipt_pb2.TX_STATUS_WRONG_CHAIN, message=f"chain {raw!r}"
            )
            for raw in raws
        ]

    def get_hold(self, who: Identity, hold_id: str) -> ledger_api_pb2.GetHoldResponse:
        self.calls.append("get_hold")
        raise ApiError("NOT_FOUND", "UNKNOWN_HOLD", f"no hold {hold_id!r}")

    def get_instrument(self, who: Identity, req: ledger_api_pb2.GetInstrumentRequest) -> Any:
        self.calls.append("get_instrument")
        raise ApiError("NOT_FOUND", "UNKNOWN_INSTRUMENT", f"no instrument {req.instrument.symbol}")

    def get_block(
        self, who: Identity, req: ledger_api_pb2.GetBlockRequest
    ) -> ledger_api_pb2.GetBlockResponse:
        self.calls.append("get_block")
        if req.WhichOneof("by") == "hash":
            raise ApiError("NOT_FOUND", "UNKNOWN_BLOCK", f"no block {req.hash.hex()}")
        if req.height and req.height < self.base:
            raise BelowBase(self.base, f"block {req.height}")
        return self.block

    def get_tx(self, who: Identity, tx_hash: bytes) -> Any:
        self.calls.append("get_tx")
        raise ApiError("NOT_FOUND", "UNKNOWN_TX", "x" * MIB)  # a node message that is too long

    async def stream_blocks(
        self, who: Identity, from_height: int
    ) -> AsyncIterator[ledger_api_pb2.GetBlockResponse]:
        if from_height and from_height < self.base:
            raise BelowBase(self.base, f"blocks from height {from_height}")
        yield self.block


@pytest.fixture
async def served() -> AsyncIterator[tuple[StandInNode, ledger_api_pb2_grpc.LedgerStub, ApiServer]]:
    node = StandInNode()
    server = ApiServer(node, "127.0.0.1:0", max_message_bytes=32 * MIB, max_batch=10)  # type: ignore[arg-type]
    await server.start()
    channel = channels.aio_channel(
        f"127.0.0.1:{server.port}",
        tls=None,
        identity=CALLER,
        chain_id=CHAIN,
        options=[("grpc.max_receive_message_length", 64 * MIB), ("grpc.max_send_message_length", 64 * MIB)],
    )
    try:
        yield node, ledger_api_pb2_grpc.LedgerStub(channel), server
    finally:
        await channel.close()
        await server.stop(0)


def reason_of(err: grpc.aio.AioRpcError, key: str = REASON_KEY) -> str:
    for name, value in err.trailing_metadata() or ():
        if name == key:
            return str(value)
    return ""


async def test_a_read_below_the_base_is_out_of_range_naming_the_base(
    served: tuple[StandInNode, ledger_api_pb2_grpc.LedgerStub, ApiServer],
) -> None:
    node, stub, _server = served
    node.base = 501
    calls = (
        stub.GetBlock(ledger_api_pb2.GetBlockRequest(height=500), timeout=10),
        stub.StreamBlocks(ledger_api_pb2.StreamBlocksRequest(from_height=3), timeout=10).read(),
    )
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        err = info.value
        assert (err.code(), reason_of(err)) == (grpc.StatusCode.OUT_OF_RANGE, "BELOW_BASE_HEIGHT")
        assert reason_of(err, BASE_HEIGHT_KEY) == "501"
        assert "this node keeps blocks from height 501" in (err.details() or "")
    assert (await stub.GetBlock(ledger_api_pb2.GetBlockRequest(height=501), timeout=10)) == node.block


OVERSIZED = [
    ("GetHold", ledger_api_pb2.GetHoldRequest(hold_id=HUGE), "INVALID_HOLD_ID"),
    ("GetHold", ledger_api_pb2.GetHoldRequest(hold_id="h" * 129), "INVALID_HOLD_ID"),
    ("GetBlock", ledger_api_pb2.GetBlockRequest(hash=HUGE.encode()), "INVALID_HASH"),
    ("GetBlock", ledger_api_pb2.GetBlockRequest(hash=bytes(31)), "INVALID_HASH"),
    ("GetTx", ledger_api_pb2.GetTxRequest(tx_hash=HUGE.encode()), "INVALID_HASH"),
    (
        "GetInstrument",
        ledger_api_pb2.GetInstrumentRequest(instrument=tx_pb2.InstrumentId(issuer=bytes(20), symbol=HUGE)),
        "INVALID_SYMBOL",
    ),
]


@pytest.mark.parametrize(("method", "request_msg", "reason"), OVERSIZED)
async def test_oversized_names_are_refused_briefly_before_reaching_the_node(
    served: tuple[StandInNode, ledger_api_pb2_grpc.LedgerStub, ApiServer],
    method: str,
    request_msg: Any,
    reason: str,
) -> None:
    node, stub, _server = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await getattr(stub, method)(request_msg, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(info.value) == reason
    assert len(info.value.details() or "") < SHORT_DETAIL
    assert node.calls == []


async def test_names_of_the_longest_valid_size_reach_the_node(
    served: tuple[StandInNode, ledger_api_pb2_grpc.LedgerStub, ApiServer],
) -> None:
    node, stub, _server = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetHold(ledger_api_pb2.GetHoldRequest(hold_id="h" * 128), timeout=10)
    assert (info.value.code(), reason_of(info.value)) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_HOLD")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetBlock(ledger_api_pb2.GetBlockRequest(hash=bytes(32)), timeout=10)
    assert reason_of(info.value) == "UNKNOWN_BLOCK"
    assert node.calls == ["get_hold", "get_block"]


async def test_no_error_detail_or_result_message_is_large(
    served: tuple[StandInNode, ledger_api_pb2_grpc.LedgerStub, ApiServer],
) -> None:
    _node, stub, _server = served
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetTx(ledger_api_pb2.GetTxRequest(tx_hash=bytes(32)), timeout=10)
    assert reason_of(info.value) == "UNKNOWN_TX"
    assert len(info.value.details() or "") <= MAX_MESSAGE_CHARS
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SubmitTx(ledger_api_pb2.SubmitTxRequest(tx=b"\x00" * MIB), timeout=10)
    assert reason_of(info.value) == "WRONG_CHAIN"
    assert len(info.value.details() or "") <= MAX_MESSAGE_CHARS
    resp = await stub.SubmitTxs(ledger_api_pb2.SubmitTxsRequest(txs=[b"\x00" * 100_000] * 3), timeout=10)
    assert [len(r.message) for r in resp.results] == [MAX_MESSAGE_CHARS] * 3


async def test_a_response_may_be_larger_than_a_request(
    served: tuple[StandInNode, ledger_api_pb2_grpc.LedgerStub, ApiServer],
) -> None:
    node, stub, _server = served
    node.block.block.body.txs.extend([bytes(64 * 1024)] * 160)  # 10 MiB: more than any request
    got = await stub.GetBlock(ledger_api_pb2.GetBlockRequest(height=1), timeout=10)
    assert got.ByteSize() > 10 * MIB
    streamed = stub.StreamBlocks(ledger_api_pb2.StreamBlocksRequest(from_height=1), timeout=10)
    assert (await streamed.read()).ByteSize() > 10 * MIB
    streamed.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.SubmitTxs(ledger_api_pb2.SubmitTxsRequest(txs=[bytes(64 * 1024)] * 80), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # over max_request_bytes (4 MiB)


async def test_an_address_in_use_stops_the_server_from_starting() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ApiListenError, match=f"127.0.0.1:{port}"):
            ApiServer(StandInNode(), f"127.0.0.1:{port}", max_message_bytes=MIB, max_batch=1)  # type: ignore[arg-type]


async def test_a_second_server_cannot_share_the_port_of_a_running_one() -> None:
    first = ApiServer(StandInNode(), "127.0.0.1:0", max_message_bytes=MIB, max_batch=1)  # type: ignore[arg-type]
    await first.start()
    try:
        with pytest.raises(ApiListenError):
            ApiServer(StandInNode(), f"127.0.0.1:{first.port}", max_message_bytes=MIB, max_batch=1)  # type: ignore[arg-type]
    finally:
        await first.stop(0)
