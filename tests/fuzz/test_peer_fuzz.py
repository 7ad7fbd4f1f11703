"""Fuzz the peer service (`Peer`) of a real node over mutual TLS, as its peers (see harness.py).

- Connect, invalid hellos: generated and mutated hellos, and valid ones signed by the wrong key,
  for the wrong chain, or presented with another validator's certificate. A hello that is not
  valid (checked here independently: chain id, key and address, signature, membership, the
  certificate's validator, not the node itself) must be refused with PERMISSION_DENIED or
  INVALID_ARGUMENT and never answered with the node's own hello; a valid one must be answered.
- Connect, after a valid hello: generated PeerMessages (every kind: proposals, votes, tx batches,
  evidence, status, commits, batches of those), messages the node itself sent (captured at the
  start) mutated, and truncated or bit-flipped serializations sent as raw bytes. The node answers
  the hello, and the stream ends normally when the fuzzer closes it, or with a defined status.
- GetBlocks and GetSyncStatus: generated and mutated requests; what they return is checked
  (consecutive heights within the requested range, base <= height).
- ListSnapshots, GetSnapshotChunk, GetLightBlock (state sync): generated and mutated requests; a
  manifest served is self-consistent, a chunk served is the one asked for and verifies against its
  manifest, a light block is of the height asked with its certificate and validator set; anything
  else is NOT_FOUND (or INVALID_ARGUMENT for bytes that are not a request).

After every test: the node is healthy, has committed since the test began, and its state is the
baseline's: no transaction, no evidence, nothing in the mempool.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clearline.v1 import peer_pb2, peer_pb2_grpc
from node import blocks, crypto, snapshot
from tests.fuzz.harness import (
    PEERS,
    Answer,
    FuzzNode,
    Snapshot,
    call_server_stream,
    call_unary,
    fuzz_settings,
    peer_answer_problem,
    reason_of,
)
from tests.fuzz.strategies import Blob, Known, messages, mutated, parses_as

PEER = peer_pb2.DESCRIPTOR.services_by_name["Peer"]
PEER_RPCS_FUZZED = {
    "Connect",
    "GetBlocks",
    "GetSyncStatus",
    "ListSnapshots",
    "GetSnapshotChunk",
    "GetLightBlock",
}
CONNECT = f"/{PEER.full_name}/Connect"
GET_BLOCKS = f"/{PEER.full_name}/GetBlocks"
GET_SYNC_STATUS = f"/{PEER.full_name}/GetSyncStatus"
LIST_SNAPSHOTS = f"/{PEER.full_name}/ListSnapshots"
GET_SNAPSHOT_CHUNK = f"/{PEER.full_name}/GetSnapshotChunk"
GET_LIGHT_BLOCK = f"/{PEER.full_name}/GetLightBlock"
CALL_TIMEOUT_S = 5.0
SYNC_BATCH = 200  # node.blocksync.SYNC_BATCH: the most blocks one GetBlocks call returns
STALL_WINDOW_S = 4.0
REFUSALS = {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}


def connect(channel: grpc.Channel, frames: list[bytes], timeout: float = CALL_TIMEOUT_S) -> Answer:
    """One Connect stream: send frames (serialized PeerMessages, or not), close, read until the end."""
    method = channel.stream_stream(CONNECT, request_serializer=None, response_deserializer=None)
    call = method(iter([bytes(f) for f in frames]), timeout=timeout)
    responses: list[bytes] = []
    try:
        for response in call:
            responses.append(response)
    except grpc.RpcError as err:
        return Answer(CONNECT, err.code(), err.details() or "", reason_of(err.trailing_metadata()), responses)
    return Answer(CONNECT, call.code(), call.details() or "", "", responses)


@dataclass(frozen=True)
class PeerSeeds:
    hello: peer_pb2.PeerMessage  # node1's valid hello
    captured: tuple[peer_pb2.PeerMessage, ...]  # what node0 sent a peer: status, proposals, votes
    known: Known

    def __repr__(self) -> str:
        return f"PeerSeeds({len(self.captured)} captured)"

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:  # how Hypothesis prints it
        printer.text(repr(self))  # type: ignore[attr-defined]


def make_hello(chain_id: str, key: crypto.SigningKey) -> peer_pb2.PeerMessage:
    payload = key.address + key.public_key
    return peer_pb2.PeerMessage(
        hello=peer_pb2.Hello(
            chain_id=chain_id,
            validator=key.address,
            public_key=key.public_key,
            signature=key.sign(crypto.Domain.PEER_HELLO, chain_id, payload),
        )
    )


HELLO_PEER = 1  # the identity of the hello fuzzer (a refused hello is no fault, it is never banned)
SESSION_PEERS = range(2, PEERS)  # identities the session fuzzer rotates through
LIAR = PEERS  # the identity of the Byzantine block server


class Identities:
    """One channel and one valid hello per validator identity the fuzzer uses."""

    def __init__(self, node: FuzzNode) -> None:
        self.channels = {i: node.peer_channel(i) for i in range(1, PEERS + 1)}
        self.hellos = {i: make_hello(node.chain_id, node.peer_key(i)) for i in self.channels}
        self._turn = itertools.cycle(SESSION_PEERS)

    def next_session(self) -> tuple[grpc.Channel, peer_pb2.PeerMessage]:
        """The next session identity, in turn: each gets a PEERS-th of the invalid messages."""
        i = next(self._turn)
        return self.channels[i], self.hellos[i]

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


@pytest.fixture(scope="module")
def identities(fuzz_node: FuzzNode) -> Iterator[Identities]:
    ids = Identities(fuzz_node)
    yield ids
    ids.close()


@pytest.fixture(scope="module")
def peer_channel(identities: Identities) -> grpc.Channel:
    """node1's channel: hellos, GetBlocks, GetSyncStatus."""
    return identities.channels[HELLO_PEER]


@pytest.fixture(scope="module")
def peer_seeds(fuzz_node: FuzzNode, identities: Identities) -> PeerSeeds:
    """node1's hello, and what node0 sends to a peer in a second and a half."""
    channel, hello = identities.next_session()

    def frames() -> Iterator[bytes]:
        yield hello.SerializeToString()
        time.sleep(1.5)

    method = channel.stream_stream(CONNECT, request_serializer=None, response_deserializer=None)
    replies = [peer_pb2.PeerMessage.FromString(r) for r in method(frames(), timeout=10)]
    assert replies and replies[0].HasField("hello"), replies[:1]
    captured: list[peer_pb2.PeerMessage] = []
    for msg in replies[1:]:
        captured.extend(msg.batch.messages if msg.HasField("batch") else [msg])
    assert any(m.HasField("status") for m in captured), [m.WhichOneof("msg") for m in captured]
    addresses = [bytes.fromhex(n.address) for n in fuzz_node.network.nodes]
    block_ids = [m.vote.block_id for m in captured if m.HasField("vote") and m.vote.block_id]
    keys = [fuzz_node.peer_key(i).public_key for i in (1, 2)]
    return PeerSeeds(
        hello=identities.hellos[HELLO_PEER],
        captured=tuple(captured),
        known=Known(
            byte_values=[*addresses[:3], *keys, *block_ids[:4]],
            string_values=[fuzz_node.chain_id],
            int_values=[0, 1, 2, 2**31, 2**63, 2**64 - 1],
        ),
    )


@pytest.fixture(autouse=True)
def checked_after(fuzz_node: FuzzNode, baseline: Snapshot) -> Iterator[None]:
    start = fuzz_node.height()
    yield
    fuzz_node.assert_healthy(since_height=start)
    fuzz_node.assert_unchanged(baseline)


# --- the hello oracle ---------------------------------------------------------------------------------


def hello_is_valid(node: FuzzNode, first: bytes, cert_address: bytes) -> bool:
    """What node0 must accept as the first frame from a peer whose certificate binds cert_address."""
    if not parses_as(first, peer_pb2.PeerMessage):
        return False
    msg = peer_pb2.PeerMessage.FromString(first)
    if not msg.HasField("hello"):
        return False
    h = msg.hello
    members = {bytes.fromhex(n.address) for n in node.network.nodes}
    return (
        h.chain_id == node.chain_id
        and len(h.public_key) == 32
        and crypto.address_of(h.public_key) == h.validator
        and crypto.verify(
            h.public_key, h.signature, crypto.Domain.PEER_HELLO, node.chain_id, h.validator + h.public_key
        )
        and h.validator in members
        and h.validator == cert_address
        and h.validator != bytes.fromhex(node.info.address)
    )


def check_hello_answer(node: FuzzNode, first: bytes, answer: Answer, cert_address: bytes) -> None:
    node.assert_alive()
    malformed = not parses_as(first, peer_pb2.PeerMessage)
    problem = peer_answer_problem(answer, malformed=malformed)
    assert problem is None, f"{problem}\n  answer: {answer}\n  first frame: {Blob(first)!r}"
    if malformed:
        assert not answer.responses, f"an unparseable hello was answered: {Blob(first)!r}"
    elif hello_is_valid(node, first, cert_address):
        assert answer.responses, f"a valid hello was not answered: {answer}"
        reply = peer_pb2.PeerMessage.FromString(answer.responses[0])
        assert reply.hello.validator == bytes.fromhex(node.info.address), reply
    else:
        assert not answer.responses, f"an invalid hello was answered: {Blob(first)!r}"
        assert answer.code in REFUSALS, f"an invalid hello was not refused: {answer}"


# --- minimal reproductions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [CONNECT, GET_BLOCKS, GET_SYNC_STATUS, GET_SNAPSHOT_CHUNK, GET_LIGHT_BLOCK],
    ids=["Connect", "GetBlocks", "GetSyncStatus", "GetSnapshotChunk", "GetLightBlock"],
)
def test_an_unparseable_peer_request_is_invalid_argument(peer_channel: grpc.Channel, path: str) -> None:
    """As on the client API (test_ledger_fuzz): gRPC's deserializer failure is UNKNOWN "Unexpected
    <class 'DecodeError'>: ..."; a peer's malformed input should be INVALID_ARGUMENT."""
    if path == CONNECT:
        answer = connect(peer_channel, [b"\n"])
    elif path == GET_BLOCKS:
        answer = call_server_stream(peer_channel, path, b"\n", timeout=CALL_TIMEOUT_S, max_responses=1000)
    else:
        answer = call_unary(peer_channel, path, b"\n", timeout=CALL_TIMEOUT_S)
    assert answer.code == grpc.StatusCode.INVALID_ARGUMENT, answer


def test_a_refused_hello_does_not_quote_its_chain_id(fuzz_node: FuzzNode, peer_channel: grpc.Channel) -> None:
    """The refusal "peer is on chain '...'" quotes the hello's chain id: a 60 KB chain id must not
    come back as 60 KB of status details (limit 1 KiB)."""
    key = fuzz_node.peer_key()
    hello = make_hello("x" * 60_000, key)
    first = hello.SerializeToString()
    answer = connect(peer_channel, [first])
    check_hello_answer(fuzz_node, first, answer, key.address)


# --- hellos -----------------------------------------------------------------------------------------


@st.composite
def hellos(draw: st.DrawFn, node: FuzzNode, seeds: PeerSeeds) -> bytes:
    """A first frame: a generated hello, a mutated valid one, or a valid one with one thing wrong."""
    valid = seeds.hello
    stranger = crypto.SigningKey.from_seed(draw(st.binary(min_size=32, max_size=32)))
    node0 = crypto.load_key_file(Path(node.info.home) / "keys" / "validator.json")
    kinds = ["generated", "mutated", "wrong chain", "stranger", "node0", "other peer", "not a hello", "extra"]
    kind = draw(st.sampled_from(kinds))
    if kind == "generated":
        hello = draw(messages(peer_pb2.Hello.DESCRIPTOR, seeds.known))
        return peer_pb2.PeerMessage(hello=hello).SerializeToString()
    if kind == "mutated":
        return draw(mutated(valid.SerializeToString()))
    if kind == "wrong chain":
        return make_hello(draw(st.text(max_size=40)), node.peer_key()).SerializeToString()
    if kind == "stranger":
        return make_hello(node.chain_id, stranger).SerializeToString()
    if kind == "node0":
        return make_hello(node.chain_id, node0).SerializeToString()
    if kind == "other peer":  # a member, but not the one the certificate binds
        return make_hello(node.chain_id, node.peer_key(2)).SerializeToString()
    if kind == "not a hello":
        return draw(messages(peer_pb2.PeerMessage.DESCRIPTOR, seeds.known)).SerializeToString()
    # a valid hello with unsigned fields changed
    extra = peer_pb2.PeerMessage()
    extra.CopyFrom(valid)
    extra.hello.height = draw(st.integers(0, 2**64 - 1))
    extra.hello.version = draw(st.text(max_size=40))
    extra.hello.cert_fingerprint = draw(st.binary(max_size=40))
    return extra.SerializeToString()


def _hello(node: FuzzNode, channel: grpc.Channel, seeds: PeerSeeds, data: st.DataObject) -> None:
    first = data.draw(hellos(node, seeds).map(Blob), label="first frame")
    answer = connect(channel, [first])
    check_hello_answer(node, first, answer, node.peer_key().address)


# --- messages after a valid hello -------------------------------------------------------------------


@st.composite
def frames(draw: st.DrawFn, seeds: PeerSeeds, known: Known) -> list[bytes]:
    """1-6 PeerMessages after the hello, generated or captured and changed, and sometimes a last
    frame of raw mutated bytes (the first unparseable frame ends the stream)."""
    out: list[bytes] = []
    for _ in range(draw(st.integers(1, 6))):
        if seeds.captured and draw(st.booleans()):
            msg = peer_pb2.PeerMessage()
            msg.CopyFrom(draw(st.sampled_from(seeds.captured)))
            _perturb(draw, msg, known)
        else:
            msg = draw(messages(peer_pb2.PeerMessage.DESCRIPTOR, known))
        out.append(msg.SerializeToString())
    if draw(st.integers(0, 3)) == 0:
        base = draw(st.sampled_from(seeds.captured)) if seeds.captured else seeds.hello
        out.append(draw(mutated(base.SerializeToString())))
    return [Blob(f) for f in out]


def _perturb(draw: st.DrawFn, msg: peer_pb2.PeerMessage, known: Known) -> None:
    """Change one field of a captured message to a generated value (a forged vote, a proposal for
    another height, a block with other transactions, ...)."""
    kind = msg.WhichOneof("msg")
    inner = getattr(msg, kind) if kind else msg
    fields = [fd for fd in inner.DESCRIPTOR.fields if not fd.is_repeated]
    if not fields:
        return
    fd = draw(st.sampled_from(fields))
    replacement = draw(messages(inner.DESCRIPTOR, known))
    if fd.message_type is not None:
        getattr(inner, fd.name).CopyFrom(getattr(replacement, fd.name))
    else:
        setattr(inner, fd.name, getattr(replacement, fd.name))


def near(node: FuzzNode, known: Known) -> Known:
    """known, with the heights around the node's height now (messages inside its window)."""
    h = node.height()
    return dataclasses.replace(known, int_values=[*known.int_values, h, h + 1, h + 2, h + 3])


def _session(node: FuzzNode, ids: Identities, seeds: PeerSeeds, data: st.DataObject) -> None:
    sent = data.draw(frames(seeds, near(node, seeds.known)), label="frames")
    channel, hello = ids.next_session()
    answer = connect(channel, [hello.SerializeToString(), *sent])
    node.assert_alive()
    malformed = not all(parses_as(f, peer_pb2.PeerMessage) for f in sent)
    problem = peer_answer_problem(answer, malformed=malformed)
    assert problem is None, f"{problem}\n  answer: {answer}"
    assert answer.responses and peer_pb2.PeerMessage.FromString(answer.responses[0]).HasField("hello"), answer


# --- block sync -------------------------------------------------------------------------------------


def _get_blocks(node: FuzzNode, channel: grpc.Channel, seeds: PeerSeeds, data: st.DataObject) -> None:
    if data.draw(st.booleans(), label="mutated"):
        seed = peer_pb2.GetBlocksRequest(from_height=1, to_height=3).SerializeToString()
        payload = data.draw(mutated(seed).map(Blob), label="request")
    else:
        payload = Blob(
            data.draw(messages(peer_pb2.GetBlocksRequest.DESCRIPTOR, seeds.known)).SerializeToString()
        )
    answer = call_server_stream(
        channel, GET_BLOCKS, payload, timeout=CALL_TIMEOUT_S, max_responses=SYNC_BATCH + 1
    )
    node.assert_alive()
    malformed = not parses_as(payload, peer_pb2.GetBlocksRequest)
    problem = peer_answer_problem(answer, malformed=malformed)
    assert problem is None, f"{problem}\n  answer: {answer}\n  request: {payload!r}"
    if malformed:
        return
    request = peer_pb2.GetBlocksRequest.FromString(payload)
    heights = [peer_pb2.SyncBlock.FromString(r).block.header.height for r in answer.responses]
    assert len(heights) <= SYNC_BATCH, f"{len(heights)} blocks in one call"
    if heights:
        first = max(1, request.from_height)
        assert heights == list(range(first, first + len(heights))), (request, heights[:5])
        assert request.to_height == 0 or heights[-1] <= request.to_height, (request, heights[-1])
    for raw in answer.responses:
        sb = peer_pb2.SyncBlock.FromString(raw)
        assert sb.commit.height == sb.block.header.height, sb.commit


def _sync_status(node: FuzzNode, channel: grpc.Channel, seeds: PeerSeeds, data: st.DataObject) -> None:
    payload = data.draw(mutated(b"").map(Blob) | st.just(Blob(b"")), label="request")
    answer = call_unary(channel, GET_SYNC_STATUS, payload, timeout=CALL_TIMEOUT_S)
    node.assert_alive()
    problem = peer_answer_problem(answer, malformed=not parses_as(payload, peer_pb2.SyncStatusRequest))
    assert problem is None, f"{problem}\n  answer: {answer}\n  request: {payload!r}"
    for raw in answer.responses:
        status = peer_pb2.SyncStatusResponse.FromString(raw)
        assert status.base_height <= status.height, status


# --- state sync -------------------------------------------------------------------------------------


def _manifests(channel: grpc.Channel) -> list[peer_pb2.SnapshotManifest]:
    answer = call_unary(channel, LIST_SNAPSHOTS, b"", timeout=CALL_TIMEOUT_S)
    assert answer.code == grpc.StatusCode.OK and answer.responses, answer
    return list(peer_pb2.ListSnapshotsResponse.FromString(answer.responses[0]).snapshots)


def _list_snapshots(node: FuzzNode, channel: grpc.Channel, seeds: PeerSeeds, data: st.DataObject) -> None:
    payload = data.draw(mutated(b"").map(Blob) | st.just(Blob(b"")), label="request")
    answer = call_unary(channel, LIST_SNAPSHOTS, payload, timeout=CALL_TIMEOUT_S)
    node.assert_alive()
    problem = peer_answer_problem(answer, malformed=not parses_as(payload, peer_pb2.ListSnapshotsRequest))
    assert problem is None, f"{problem}\n  answer: {answer}\n  request: {payload!r}"
    for raw in answer.responses:
        listed = peer_pb2.ListSnapshotsResponse.FromString(raw)
        for manifest in listed.snapshots:
            snapshot.verify_manifest_root(manifest)  # what it serves verifies as a joiner checks it
            assert manifest.height <= node.height()
        assert list(listed.validator_set_changes)[:1] == [1], listed.validator_set_changes


def _snapshot_chunk(node: FuzzNode, channel: grpc.Channel, seeds: PeerSeeds, data: st.DataObject) -> None:
    manifests = _manifests(channel)
    if manifests and data.draw(st.booleans(), label="real"):
        manifest = data.draw(st.sampled_from(manifests), label="manifest")
        index = data.draw(st.sampled_from([c.index for c in manifest.chunks]), label="index")
        seed = peer_pb2.SnapshotChunkRequest(height=manifest.height, index=index).SerializeToString()
        payload = data.draw(st.just(Blob(seed)) | mutated(seed).map(Blob), label="request")
    else:
        known = near(node, seeds.known)
        payload = Blob(
            data.draw(messages(peer_pb2.SnapshotChunkRequest.DESCRIPTOR, known)).SerializeToString()
        )
    answer = call_unary(channel, GET_SNAPSHOT_CHUNK, payload, timeout=CALL_TIMEOUT_S)
    node.assert_alive()
    malformed = not parses_as(payload, peer_pb2.SnapshotChunkRequest)
    problem = peer_answer_problem(answer, malformed=malformed)
    assert problem is None, f"{problem}\n  answer: {answer}\n  request: {payload!r}"
    if malformed or not answer.responses:
        return
    request = peer_pb2.SnapshotChunkRequest.FromString(payload)
    chunk = peer_pb2.SnapshotChunk.FromString(answer.responses[0])
    assert (chunk.height, chunk.index) == (request.height, request.index), (request, chunk.height)
    served = {m.height: m for m in _manifests(channel)}
    if chunk.height in served:  # still kept: the chunk verifies against the manifest it belongs to
        snapshot.verify_chunk(served[chunk.height], chunk.index, chunk.data)


def _light_block(node: FuzzNode, channel: grpc.Channel, seeds: PeerSeeds, data: st.DataObject) -> None:
    if data.draw(st.booleans(), label="mutated"):
        seed = peer_pb2.LightBlockRequest(height=max(1, node.height() - 1)).SerializeToString()
        payload = data.draw(mutated(seed).map(Blob), label="request")
    else:
        known = near(node, seeds.known)
        payload = Blob(data.draw(messages(peer_pb2.LightBlockRequest.DESCRIPTOR, known)).SerializeToString())
    answer = call_unary(channel, GET_LIGHT_BLOCK, payload, timeout=CALL_TIMEOUT_S)
    node.assert_alive()
    malformed = not parses_as(payload, peer_pb2.LightBlockRequest)
    problem = peer_answer_problem(answer, malformed=malformed)
    assert problem is None, f"{problem}\n  answer: {answer}\n  request: {payload!r}"
    if malformed or not answer.responses:
        return
    request = peer_pb2.LightBlockRequest.FromString(payload)
    light = peer_pb2.LightBlock.FromString(answer.responses[0])
    assert light.header.height == request.height == light.commit.height, (request, light.header.height)
    assert blocks.validator_set_hash(light.validators) == light.header.validator_set_hash
    assert blocks.validator_set_hash(light.next_validators) == light.header.next_validator_set_hash
    blocks.verify_commit(
        node.chain_id, light.validators, light.commit, height=request.height,
        block_hash=blocks.block_hash(light.header),
    )  # fmt: skip


# --- tests ------------------------------------------------------------------------------------------

CI_EXAMPLES = 40


@fuzz_settings(CI_EXAMPLES)
@given(data=st.data())
def test_invalid_hellos_are_refused(
    fuzz_node: FuzzNode, peer_channel: grpc.Channel, peer_seeds: PeerSeeds, data: st.DataObject
) -> None:
    _hello(fuzz_node, peer_channel, peer_seeds, data)


@fuzz_settings(CI_EXAMPLES)
@given(data=st.data())
def test_messages_after_a_valid_hello(
    fuzz_node: FuzzNode, identities: Identities, peer_seeds: PeerSeeds, data: st.DataObject
) -> None:
    _session(fuzz_node, identities, peer_seeds, data)


def test_the_session_fuzzer_was_not_banned(fuzz_node: FuzzNode) -> None:
    """The session fuzzer spreads its invalid messages over enough identities that none reaches the
    ban limit in a CI run: a banned peer's stream is closed unread, which would make it vacuous."""
    if "FUZZ_EXAMPLES" in os.environ:
        pytest.skip("longer runs are expected to get identities banned")
    session = {f"node{i}" for i in SESSION_PEERS}
    assert not fuzz_node.banned_peers() & session


@fuzz_settings(CI_EXAMPLES)
@given(data=st.data())
def test_get_blocks_requests(
    fuzz_node: FuzzNode, peer_channel: grpc.Channel, peer_seeds: PeerSeeds, data: st.DataObject
) -> None:
    _get_blocks(fuzz_node, peer_channel, peer_seeds, data)


@fuzz_settings(20)
@given(data=st.data())
def test_get_sync_status_requests(
    fuzz_node: FuzzNode, peer_channel: grpc.Channel, peer_seeds: PeerSeeds, data: st.DataObject
) -> None:
    _sync_status(fuzz_node, peer_channel, peer_seeds, data)


@fuzz_settings(10)
@given(data=st.data())
def test_list_snapshots_requests(
    fuzz_node: FuzzNode, peer_channel: grpc.Channel, peer_seeds: PeerSeeds, data: st.DataObject
) -> None:
    _list_snapshots(fuzz_node, peer_channel, peer_seeds, data)


@fuzz_settings(CI_EXAMPLES)
@given(data=st.data())
def test_snapshot_chunk_requests(
    fuzz_node: FuzzNode, peer_channel: grpc.Channel, peer_seeds: PeerSeeds, data: st.DataObject
) -> None:
    _snapshot_chunk(fuzz_node, peer_channel, peer_seeds, data)


@fuzz_settings(CI_EXAMPLES)
@given(data=st.data())
def test_light_block_requests(
    fuzz_node: FuzzNode, peer_channel: grpc.Channel, peer_seeds: PeerSeeds, data: st.DataObject
) -> None:
    _light_block(fuzz_node, peer_channel, peer_seeds, data)


def test_a_valid_hello_with_another_validators_certificate_is_refused(fuzz_node: FuzzNode) -> None:
    """node1's hello over a connection that presents node0's own certificate: the certificate binds
    another validator (node0), so the hello is refused."""
    hello = make_hello(fuzz_node.chain_id, fuzz_node.peer_key()).SerializeToString()
    with fuzz_node.peer_channel(as_home=Path(fuzz_node.info.home)) as channel:
        answer = connect(channel, [hello])
    check_hello_answer(fuzz_node, hello, answer, bytes.fromhex(fuzz_node.info.address))


class _Tarpit(peer_pb2_grpc.PeerServicer):
    """A validator's peer service as a Byzantine one runs it: GetBlocks answers nothing until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.asked = threading.Event()

    def GetBlocks(
        self, request: peer_pb2.GetBlocksRequest, context: grpc.ServicerContext
    ) -> Iterator[peer_pb2.SyncBlock]:
        self.asked.set()
        self.release.wait(timeout=60)
        return iter(())

    def Connect(
        self, request_iterator: object, context: grpc.ServicerContext
    ) -> Iterator[peer_pb2.PeerMessage]:
        context.abort(grpc.StatusCode.UNAVAILABLE, "not serving streams")
        return iter(())


def test_a_peer_claiming_a_height_it_does_not_serve_does_not_stall_the_node(fuzz_node: FuzzNode) -> None:
    """A Byzantine validator (LIAR, with none of the fuzzers' faults against it) says it has
    committed 1000 blocks more and then serves GetBlocks on its own port by never answering. The
    node must go on committing with its own three quarters of the power: a lying peer may cost it a
    sync attempt, not its liveness."""
    home = fuzz_node.peer_home(LIAR)
    tarpit = _Tarpit()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    peer_pb2_grpc.add_PeerServicer_to_server(tarpit, server)
    creds = grpc.ssl_server_credentials(
        [((home / "tls" / "node.key").read_bytes(), (home / "tls" / "node.pem").read_bytes())],
        (home / "tls" / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(fuzz_node.network.node(LIAR).p2p_target, creds)
    server.start()
    try:
        h = fuzz_node.height()
        lie = peer_pb2.PeerMessage(status=peer_pb2.PeerStatus(height=h + 1001, last_committed=h + 1000))
        hello = make_hello(fuzz_node.chain_id, fuzz_node.peer_key(LIAR))

        def frames() -> Iterator[bytes]:
            yield hello.SerializeToString()
            yield lie.SerializeToString()
            time.sleep(STALL_WINDOW_S)

        with fuzz_node.peer_channel(LIAR) as channel:
            method = channel.stream_stream(CONNECT, request_serializer=None, response_deserializer=None)
            started = time.monotonic()
            replies = list(method(frames(), timeout=STALL_WINDOW_S + 5))
        assert replies and peer_pb2.PeerMessage.FromString(replies[0]).HasField("hello"), replies[:1]
        now = fuzz_node.status()
        assert now.height >= h + 3, (
            f"height {h} -> {now.height} in {time.monotonic() - started:.1f} s while a peer lied about its "
            f"height (node syncing: {now.syncing}, sync asked of the liar: {tarpit.asked.is_set()})"
        )
    finally:
        tarpit.release.set()
        server.stop(0)
        fuzz_node.wait_height(fuzz_node.height() + 1, timeout=60)  # recovered, for the tests after


# --- the long campaign ------------------------------------------------------------------------------

CAMPAIGN = 1000


@pytest.mark.slow
@fuzz_settings(CAMPAIGN)
@given(data=st.data())
def test_campaign_hellos(
    fuzz_node: FuzzNode, peer_channel: grpc.Channel, peer_seeds: PeerSeeds, data: st.DataObject
) -> None:
    _hello(fuzz_node, peer_channel, peer_seeds, data)


@pytest.mark.slow
@fuzz_settings(CAMPAIGN)
@given(data=st.data())
def test_campaign_messages_after_a_valid_hello(
    fuzz_node: FuzzNode, identities: Identities, peer_seeds: PeerSeeds, data: st.DataObject
) -> None:
    _session(fuzz_node, identities, peer_seeds, data)


@pytest.mark.slow
@fuzz_settings(CAMPAIGN)
@given(data=st.data())
def test_campaign_get_blocks(
    fuzz_node: FuzzNode, peer_channel: grpc.Channel, peer_seeds: PeerSeeds, data: st.DataObject
) -> None:
    _get_blocks(fuzz_node, peer_channel, peer_seeds, data)
