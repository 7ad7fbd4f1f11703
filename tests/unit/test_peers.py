"""The peer transport's batching: queued messages go out in PeerBatch writes, and a received batch is
handled message by message, in order, refusing what may not be inside one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clearline.v1 import block_pb2, peer_pb2
from node.admission import PeerNames
from node.config import NodeConfig, TlsConfig
from node.network import keepalive
from node.network.peers import BATCH_MAX_BYTES, BATCH_MAX_MESSAGES, PeerNetwork, batched


def vote(height: int) -> peer_pb2.PeerMessage:
    return peer_pb2.PeerMessage(vote=block_pb2.Vote(height=height, round=0, signature=b"s" * 64))


def status(height: int) -> peer_pb2.PeerMessage:
    return peer_pb2.PeerMessage(status=peer_pb2.PeerStatus(height=height, last_committed=height - 1))


def big_txs(size: int) -> peer_pb2.PeerMessage:
    return peer_pb2.PeerMessage(txs=peer_pb2.TxBatch(txs=[b"t" * size]))


def unpack(out: list[peer_pb2.PeerMessage]) -> list[peer_pb2.PeerMessage]:
    flat: list[peer_pb2.PeerMessage] = []
    for msg in out:
        flat.extend(msg.batch.messages if msg.WhichOneof("msg") == "batch" else [msg])
    return flat


def test_batched_wraps_runs_and_keeps_order() -> None:
    assert batched([vote(1)]) == [vote(1)]  # alone: as itself
    msgs = [vote(1), status(2), vote(3)]
    out = batched(msgs)
    assert len(out) == 1 and out[0].WhichOneof("msg") == "batch"
    assert list(out[0].batch.messages) == msgs
    # A message that would push a run past the byte limit starts a new run; a big one goes alone.
    big = big_txs(BATCH_MAX_BYTES)
    out = batched([vote(1), vote(2), big, vote(3), vote(4)])
    assert [m.WhichOneof("msg") for m in out] == ["batch", "txs", "batch"]
    assert unpack(out) == [vote(1), vote(2), big, vote(3), vote(4)]
    assert all(m.ByteSize() <= BATCH_MAX_BYTES + 64 for m in out if m.WhichOneof("msg") == "batch")


class Recorder:
    def __init__(self) -> None:
        self.got: list[peer_pb2.PeerMessage] = []

    async def on_peer_message(self, peer: str, msg: peer_pb2.PeerMessage) -> None:
        self.got.append(msg)

    def on_peer_connected(self, peer: str) -> None:
        pass

    def on_peer_disconnected(self, peer: str) -> None:
        pass


def network(handler: Any) -> PeerNetwork:
    cfg = NodeConfig(home=Path("/nonexistent"), chain_id="test", tls=TlsConfig(enabled=False))
    return PeerNetwork(cfg, handler, PeerNames({}))


@pytest.mark.asyncio
async def test_received_batches_are_handled_in_order_and_checked() -> None:
    handler = Recorder()
    net = network(handler)
    nested = peer_pb2.PeerMessage(batch=peer_pb2.PeerBatch(messages=[vote(9)]))
    hello = peer_pb2.PeerMessage(hello=peer_pb2.Hello(chain_id="test"))
    incoming = [
        vote(1),
        peer_pb2.PeerMessage(batch=peer_pb2.PeerBatch(messages=[vote(2), status(3)])),
        peer_pb2.PeerMessage(batch=peer_pb2.PeerBatch(messages=[nested, hello, vote(4)])),  # two refused
        peer_pb2.PeerMessage(batch=peer_pb2.PeerBatch(messages=[vote(5)] * (BATCH_MAX_MESSAGES + 1))),
        vote(6),
    ]

    async def reads() -> AsyncIterator[peer_pb2.PeerMessage]:
        for msg in incoming:
            yield msg

    async def write(msg: peer_pb2.PeerMessage) -> None:
        pass

    await net.run_stream("peer", reads(), write)
    assert handler.got == [vote(1), vote(2), status(3), vote(4), vote(6)]
    assert net.connected == []  # the stream ended: the connection is gone


@pytest.mark.asyncio
async def test_messages_queued_during_a_write_go_out_together() -> None:
    net = network(Recorder())
    written: list[peer_pb2.PeerMessage] = []
    first_write = asyncio.Event()
    release = asyncio.Event()
    done = asyncio.Event()

    async def write(msg: peer_pb2.PeerMessage) -> None:
        written.append(msg)
        first_write.set()
        await release.wait()  # a slow transport: everything sent meanwhile queues up
        if len(unpack(written)) == 4:
            done.set()

    async def reads() -> AsyncIterator[peer_pb2.PeerMessage]:
        await done.wait()
        if False:  # an async generator that yields nothing and ends when the writes are done
            yield vote(0)

    stream = asyncio.create_task(net.run_stream("peer", reads(), write))
    await asyncio.sleep(0)
    net.send("peer", vote(1))
    await asyncio.wait_for(first_write.wait(), 5)
    for h in (2, 3, 4):
        net.send("peer", vote(h))
    release.set()
    await asyncio.wait_for(stream, 5)
    assert [m.WhichOneof("msg") for m in written] == ["vote", "batch"]
    assert unpack(written) == [vote(1), vote(2), vote(3), vote(4)]


# --- keepalive: the server accepts the rate at which the channels ping it --------------------------


def _opts(options: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in options]
    assert len(names) == len(set(names)), f"an option is set twice: {names}"
    return dict(options)


def _check_server_allows_channel(server: dict[str, Any], channel: dict[str, Any]) -> None:
    # gRPC's defaults: a server accepts a ping without data every 300 s and none without a call.
    interval = channel["grpc.keepalive_time_ms"]
    assert server.get("grpc.http2.min_recv_ping_interval_without_data_ms", 300_000) <= interval
    if channel.get("grpc.keepalive_permit_without_calls"):
        assert server.get("grpc.keepalive_permit_without_calls") == 1
    # The server's own pings to the dialer follow the same policy.
    assert server.get("grpc.http2.min_ping_interval_without_data_ms", 300_000) <= interval


def test_the_peer_server_allows_the_peer_channels_ping_rate() -> None:
    from node.network.peers import _grpc_options

    cfg = NodeConfig(home=Path("/nonexistent"), chain_id="test", tls=TlsConfig(enabled=False))
    server, channel = _opts(_grpc_options(cfg, server=True)), _opts(_grpc_options(cfg))
    assert channel["grpc.keepalive_time_ms"] == keepalive.KEEPALIVE_TIME_MS
    assert channel["grpc.keepalive_permit_without_calls"] == 1
    _check_server_allows_channel(server, channel)


def test_the_fault_proxy_allows_the_same_ping_rate() -> None:
    from cluster.faults import proxy

    server, channel = _opts(proxy._SERVER_OPTIONS), _opts(proxy._CHANNEL_OPTIONS)
    _check_server_allows_channel(server, channel)
    # The proxy's server end is dialed by the nodes' peer channels.
    from node.network.peers import _grpc_options

    cfg = NodeConfig(home=Path("/nonexistent"), chain_id="test", tls=TlsConfig(enabled=False))
    _check_server_allows_channel(server, _opts(_grpc_options(cfg)))


# --- block sync below a pruned peer's base ---------------------------------------------------------


class PrunedServer(Recorder):
    """Serves blocks from BASE on only (it pruned the rest)."""

    BASE = 501

    async def serve_blocks(self, request: peer_pb2.GetBlocksRequest) -> AsyncIterator[peer_pb2.SyncBlock]:
        from node.errors import BelowBase

        if request.from_height < self.BASE:
            raise BelowBase(self.BASE, f"blocks from height {request.from_height}")
        yield peer_pb2.SyncBlock(block=block_pb2.Block(header=block_pb2.Header(height=request.from_height)))


@pytest.mark.asyncio
async def test_a_request_below_a_peers_base_is_refused_with_the_base_not_as_a_broken_link() -> None:
    from node.config import P2PConfig, Peer
    from node.errors import PeerPruned

    server = PeerNetwork(
        NodeConfig(home=Path("/nonexistent"), chain_id="test", moniker="b", tls=TlsConfig(enabled=False),
                   p2p=P2PConfig(listen="127.0.0.1:0")),
        PrunedServer(), PeerNames({}),
    )  # fmt: skip
    await server.start()
    client_cfg = NodeConfig(
        home=Path("/nonexistent"), chain_id="test", moniker="a", tls=TlsConfig(enabled=False),
        p2p=P2PConfig(listen="127.0.0.1:0", peers=(Peer("b", "127.0.0.1", server.port),)),
    )  # fmt: skip
    client = PeerNetwork(client_cfg, Recorder(), PeerNames({}))
    try:
        with pytest.raises(PeerPruned) as info:
            async for _ in client.fetch_blocks("b", 7, 20, 1 << 20):
                pass
        assert (info.value.peer, info.value.base) == ("b", PrunedServer.BASE)
        assert isinstance(info.value, ConnectionError)  # callers that only know transport failures
        served = [sb.block.header.height async for sb in client.fetch_blocks("b", 501, 501, 1 << 20)]
        assert served == [501]
    finally:
        await client.stop()
        await server.stop()
