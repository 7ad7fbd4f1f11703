"""Bad input on the peer service: garbage bytes, forged votes, malformed proposals and oversized
batches are dropped; the node keeps committing and keeps serving. Also: an unauthenticated client
cannot open a peer stream, and metrics are exported."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from clearline.v1 import block_pb2, peer_pb2, peer_pb2_grpc
from node import crypto
from tests.cluster.conftest import RunningNetwork, status


def _peer_channel(net: RunningNetwork, as_node: int, to_node: int) -> grpc.Channel:
    home = Path(net.network.node(as_node).home)
    creds = grpc.ssl_channel_credentials(
        (home / "tls" / "ca.pem").read_bytes(),
        (home / "tls" / "node.key").read_bytes(),
        (home / "tls" / "node.pem").read_bytes(),
    )
    target = net.network.node(to_node).p2p_target
    return grpc.secure_channel(target, creds, options=[("grpc.ssl_target_name_override", f"node{to_node}")])


def _hello(net: RunningNetwork, as_node: int) -> peer_pb2.PeerMessage:
    key = crypto.load_key_file(Path(net.network.node(as_node).home) / "keys" / "validator.json")
    payload = key.address + key.public_key
    return peer_pb2.PeerMessage(
        hello=peer_pb2.Hello(
            chain_id=net.network.chain_id,
            validator=key.address,
            public_key=key.public_key,
            signature=key.sign(crypto.Domain.PEER_HELLO, net.network.chain_id, payload),
        )
    )


def _still_committing(net: RunningNetwork, node: int) -> None:
    h = status(net.target(node)).height
    net.wait_height(h + 3, [f"node{node}"], timeout=30)


def test_garbage_on_the_peer_stream_is_dropped_and_the_node_goes_on(shared_network: RunningNetwork) -> None:
    net = shared_network
    # 1. Raw bytes that are not a PeerMessage.
    with _peer_channel(net, 1, 0) as channel:
        raw = channel.stream_stream(
            "/clearline.v1.Peer/Connect", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError):
            list(raw(iter([b"\xff\xfe garbage \x00" * 10]), timeout=5))
    # 2. A stream that starts without a hello.
    with _peer_channel(net, 1, 0) as channel:
        stub = peer_pb2_grpc.PeerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Connect(iter([peer_pb2.PeerMessage(status=peer_pb2.PeerStatus(height=5))]), timeout=5))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # 3. A proper hello followed by forged and malformed consensus messages.
    h = status(net.target(0)).height
    forged_vote = block_pb2.Vote(
        type=block_pb2.VOTE_TYPE_PRECOMMIT, height=h + 1, round=0, block_id=b"\x11" * 32,
        validator=bytes.fromhex(net.network.node(2).address), signature=b"\x00" * 64,
    )  # fmt: skip
    bad = [
        _hello(net, 1),
        peer_pb2.PeerMessage(vote=forged_vote),
        peer_pb2.PeerMessage(vote=block_pb2.Vote(type=7, height=h + 1)),
        peer_pb2.PeerMessage(proposal=block_pb2.Proposal(height=h + 1, round=0)),
        peer_pb2.PeerMessage(txs=peer_pb2.TxBatch(txs=[b"junk"] * 100)),
        peer_pb2.PeerMessage(evidence=block_pb2.Evidence()),
    ]

    def messages():
        yield from bad
        time.sleep(1.5)

    with _peer_channel(net, 1, 0) as channel:
        stub = peer_pb2_grpc.PeerStub(channel)
        replies = list(stub.Connect(messages(), timeout=10))
    assert replies and replies[0].HasField("hello")
    _still_committing(net, 0)


def test_a_peer_with_an_unknown_validator_key_is_refused(shared_network: RunningNetwork) -> None:
    net = shared_network
    stranger = crypto.SigningKey.generate()
    hello = peer_pb2.PeerMessage(
        hello=peer_pb2.Hello(
            chain_id=net.network.chain_id,
            validator=stranger.address,
            public_key=stranger.public_key,
            signature=stranger.sign(
                crypto.Domain.PEER_HELLO, net.network.chain_id, stranger.address + stranger.public_key
            ),
        )
    )
    with _peer_channel(net, 1, 0) as channel:
        with pytest.raises(grpc.RpcError) as info:
            list(peer_pb2_grpc.PeerStub(channel).Connect(iter([hello]), timeout=5))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Without a client certificate the TLS handshake itself fails.
    ca = (Path(net.network.node(1).home) / "tls" / "ca.pem").read_bytes()
    creds = grpc.ssl_channel_credentials(ca)
    with (
        grpc.secure_channel(
            net.network.node(0).p2p_target, creds, options=[("grpc.ssl_target_name_override", "node0")]
        ) as channel,
        pytest.raises(grpc.RpcError),
    ):
        peer_pb2_grpc.PeerStub(channel).GetSyncStatus(peer_pb2.SyncStatusRequest(), timeout=5)
    _still_committing(net, 0)


def test_metrics_are_exported(shared_network: RunningNetwork) -> None:
    node = shared_network.network.node(0)
    text = (
        urllib.request.urlopen(f"http://{node.host}:{node.metrics_port}/metrics", timeout=5).read().decode()
    )
    for name in ("clearline_height", "clearline_peers", "clearline_height_seconds", "clearline_block_txs",
                 "clearline_signature_verify_seconds", "clearline_mempool_size", "clearline_syncing"):  # fmt: skip
        assert name in text, name
    height_line = next(line for line in text.splitlines() if line.startswith("clearline_height "))
    assert float(height_line.split()[1]) >= 1
