"""Peer transport: one long-lived bidirectional gRPC stream per peer pair, over mutual TLS.

Of each pair, the node whose name sorts first dials; the other accepts. An observer (`observer =
true`) dials every peer it is configured with and is dialed by none. The first message in each
direction is a signed `Hello`: the receiver checks the chain id, the signature, that the key is a
validator's or an admitted observer's (node/admission.py, read at connection time), and (on the
accepting side) that the TLS client certificate binds that key's address. At most MAX_OBSERVER_PEERS
observers are connected at once, and their block-sync requests have serving slots of their own
(MAX_OBSERVER_SERVES), so observers cannot crowd out validators. Then both sides send `PeerMessage`s (consensus messages, transaction batches, status) until
the stream breaks; the dialer reconnects with exponential backoff (capped).

What arrives is handed to a `PeerHandler` (the runtime), which validates it before the consensus
core sees it. Outgoing messages go through a bounded queue per peer so a slow or paused peer never
blocks the node; when a queue overflows the oldest message is dropped (consensus re-gossips).

This module and node/network/api.py are the only code that imports grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from cryptography import x509

from clearline.v1 import peer_pb2, peer_pb2_grpc
from node.admission import MAX_OBSERVER_PEERS, OBSERVER_SEND_QUEUE_BYTES, PeerNames
from node.config import NodeConfig, Peer
from node.errors import BASE_HEIGHT_KEY, BadInput, BelowBase, PeerPruned
from node.network import keepalive
from node.network.tolerant import add_tolerant

log = logging.getLogger("clearline.peers")

VALIDATOR_URI_PREFIX = "clearline:validator:"
# A peer's send queue holds at most this many messages and bytes; beyond, the oldest are dropped
# (consensus re-gossips what matters), so a slow or paused peer costs this node bounded memory.
SEND_QUEUE_MAX = 20_000
SEND_QUEUE_BYTES = 32 << 20
# The deadline of one block-sync request (block sync also bounds the wait for each block).
FETCH_DEADLINE_S = 60.0
# Block-sync requests served at once; more are refused with RESOURCE_EXHAUSTED (each streams up to
# SYNC_BATCH blocks from disk).
MAX_CONCURRENT_SERVES = 4
# Block-sync requests served to observers at once (apart from the validators' MAX_CONCURRENT_SERVES).
MAX_OBSERVER_SERVES = 2


class PeerHandler(Protocol):
    """What the peer transport needs from the node."""

    def make_hello(self) -> peer_pb2.Hello: ...

    def check_hello(
        self, hello: peer_pb2.Hello, expected_name: str | None, cert_address: bytes | None
    ) -> str | None:
        """None if the hello is acceptable, else the reason to refuse."""
        ...

    async def on_peer_message(self, peer: str, msg: peer_pb2.PeerMessage) -> None: ...

    def on_peer_connected(self, peer: str) -> None: ...

    def on_peer_disconnected(self, peer: str) -> None: ...

    def serve_blocks(self, request: peer_pb2.GetBlocksRequest) -> AsyncIterator[peer_pb2.SyncBlock]: ...

    def sync_status(self) -> peer_pb2.SyncStatusResponse: ...

    def list_snapshots(self) -> peer_pb2.ListSnapshotsResponse: ...

    async def snapshot_chunk(
        self, request: peer_pb2.SnapshotChunkRequest
    ) -> peer_pb2.SnapshotChunk | None: ...

    def light_block(self, request: peer_pb2.LightBlockRequest) -> peer_pb2.LightBlock | None: ...


def validator_address_of_cert(cert_pem: bytes) -> bytes | None:
    """The validator address that the network CA bound into a node certificate, or None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(VALIDATOR_URI_PREFIX):
            try:
                return bytes.fromhex(uri.removeprefix(VALIDATOR_URI_PREFIX))
            except ValueError:
                return None
    return None


@dataclass
class _Conn:
    name: str
    queue: asyncio.Queue[tuple[peer_pb2.PeerMessage, int]] = field(
        default_factory=lambda: asyncio.Queue(SEND_QUEUE_MAX)
    )
    dropped: int = 0
    queued_bytes: int = 0
    max_bytes: int = SEND_QUEUE_BYTES
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, msg: peer_pb2.PeerMessage, size: int | None = None) -> None:
        n = msg.ByteSize() if size is None else size
        while self.queue.full() or (self.queued_bytes + n > self.max_bytes and not self.queue.empty()):
            try:
                _old, old_size = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            self.queued_bytes -= old_size
            self.dropped += 1
        self.queue.put_nowait((msg, n))
        self.queued_bytes += n

    def take(self, item: tuple[peer_pb2.PeerMessage, int]) -> peer_pb2.PeerMessage:
        self.queued_bytes -= item[1]
        return item[0]


BATCH_MAX_MESSAGES = 64
BATCH_MAX_BYTES = 1 << 20


def batched(msgs: list[peer_pb2.PeerMessage]) -> list[peer_pb2.PeerMessage]:
    """The messages to write for msgs, in order: runs of them wrapped in PeerBatch messages of at
    most BATCH_MAX_BYTES (a message alone in its run, such as a large proposal, goes as itself)."""
    out: list[peer_pb2.PeerMessage] = []
    run: list[peer_pb2.PeerMessage] = []
    size = 0

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append(peer_pb2.PeerMessage(batch=peer_pb2.PeerBatch(messages=run)))
        run.clear()

    for msg in msgs:
        n = msg.ByteSize()
        if run and size + n > BATCH_MAX_BYTES:
            flush()
            size = 0
        run.append(msg)
        size += n
    flush()
    return out


def _grpc_options(cfg: NodeConfig, *, server: bool = False) -> list[tuple[str, Any]]:
    """The options of the peer server (server=True) or of a channel to a peer: message sizes and the
    keepalive policy of node/network/keepalive.py (the server accepts the channel's ping rate)."""
    return [
        ("grpc.max_receive_message_length", cfg.p2p.max_message_bytes),
        ("grpc.max_send_message_length", cfg.p2p.max_message_bytes),
        *(keepalive.server_options() if server else keepalive.channel_options()),
        # A second process configured with the same port must fail to bind, not share the port.
        ("grpc.so_reuseport", 0),
    ]


class _PeerServicer(peer_pb2_grpc.PeerServicer):
    def __init__(self, net: PeerNetwork) -> None:
        self._net = net

    async def Connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[override]
        net = self._net
        cert_address: bytes | None = None
        if net.tls:
            auth = context.auth_context()
            pems = auth.get("x509_pem_cert") or []
            cert_address = validator_address_of_cert(pems[0]) if pems else None
            if cert_address is None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "peer certificate binds no validator")
        try:
            first = await asyncio.wait_for(context.read(), timeout=10)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no hello within 10 s")
        if (
            first is grpc.aio.EOF
            or not isinstance(first, peer_pb2.PeerMessage)
            or not first.HasField("hello")
        ):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first message must be a hello",
                trailing_metadata=(("clearline-reason", "MALFORMED"),),
            )
        hello = first.hello
        problem = net.handler.check_hello(hello, None, cert_address)
        if problem is not None:
            log.warning("refused peer connection: %s", problem)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, problem)
        name = net.name_of(hello.validator)
        if name is None:
            return await context.abort(grpc.StatusCode.PERMISSION_DENIED, "unknown validator")
        if net.observers_full(name):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"{MAX_OBSERVER_PEERS} observers connected already"
            )
        await context.write(peer_pb2.PeerMessage(hello=net.handler.make_hello()))

        async def reads() -> AsyncIterator[peer_pb2.PeerMessage]:
            while True:
                msg = await context.read()
                if msg is grpc.aio.EOF:
                    return
                if not isinstance(msg, peer_pb2.PeerMessage):  # tolerant.Malformed: end the stream
                    log.warning("peer %s sent a message that does not parse; stream closed", name)
                    return
                yield msg

        await net.run_stream(name, reads(), context.write)

    async def GetBlocks(self, request: peer_pb2.GetBlocksRequest, context: grpc.aio.ServicerContext) -> Any:
        net = self._net
        if net.tls:
            pems = context.auth_context().get("x509_pem_cert") or []
            address = validator_address_of_cert(pems[0]) if pems else None
            name = net.name_of(address) if address is not None else None
            if name is None:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, "peer certificate binds no validator or observer"
                )
                return
            if net.is_banned(name):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "banned for sending invalid messages")
            serving = net.serving_slots(name)
        else:
            serving = net._serving
        if serving.locked():
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "serving as many block-sync requests as it may; retry later",
            )
        async with serving:
            try:
                async for block in net.handler.serve_blocks(request):
                    yield block
            except BelowBase as err:  # the peer asks below this node's base: it must ask another
                await context.abort(
                    grpc.StatusCode.OUT_OF_RANGE,
                    err.message,
                    trailing_metadata=(("clearline-reason", err.reason), (BASE_HEIGHT_KEY, str(err.base))),
                )

    async def GetSyncStatus(
        self, request: peer_pb2.SyncStatusRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.SyncStatusResponse:
        return self._net.handler.sync_status()

    async def _admit_sync_client(self, context: grpc.aio.ServicerContext) -> asyncio.Semaphore:
        """The serving slots of a validator or admitted observer asking for sync data (aborts the
        call for anyone else, or a banned peer)."""
        net = self._net
        if not net.tls:
            return net._serving
        pems = context.auth_context().get("x509_pem_cert") or []
        address = validator_address_of_cert(pems[0]) if pems else None
        name = net.name_of(address) if address is not None else None
        if name is None:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, "peer certificate binds no validator or observer"
            )
        assert name is not None
        if net.is_banned(name):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "banned for sending invalid messages")
        return net.serving_slots(name)

    async def ListSnapshots(
        self, request: peer_pb2.ListSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.ListSnapshotsResponse:
        await self._admit_sync_client(context)
        return self._net.handler.list_snapshots()

    async def GetSnapshotChunk(
        self, request: peer_pb2.SnapshotChunkRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.SnapshotChunk:
        serving = await self._admit_sync_client(context)
        if serving.locked():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "serving as many sync requests as it may")
        async with serving:
            chunk = await self._net.handler.snapshot_chunk(request)
        if chunk is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"no chunk {request.index} of a snapshot at height {request.height}",
            )
        assert chunk is not None
        return chunk

    async def GetLightBlock(
        self, request: peer_pb2.LightBlockRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.LightBlock:
        await self._admit_sync_client(context)
        light = self._net.handler.light_block(request)
        if light is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no block of height {request.height} here")
        assert light is not None
        return light


class PeerNetwork:
    """Listens for peers, dials the peers it should, and moves PeerMessages both ways."""

    def __init__(self, cfg: NodeConfig, handler: PeerHandler, names: PeerNames) -> None:
        self.cfg = cfg
        self.handler = handler
        self.tls = cfg.tls.enabled
        self._names = names
        self._conns: dict[str, _Conn] = {}
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stopping = False
        self._banned_until: dict[str, float] = {}
        self._serving = asyncio.Semaphore(MAX_CONCURRENT_SERVES)
        self._serving_observers = asyncio.Semaphore(MAX_OBSERVER_SERVES)
        self.on_fatal: Callable[[BaseException], None] = lambda exc: None  # set by the node
        self.port: int = 0
        if self.tls:
            self._ca = cfg.path(cfg.tls.ca_cert).read_bytes()
            self._cert = cfg.path(cfg.tls.cert).read_bytes()
            self._key = cfg.path(cfg.tls.key).read_bytes()

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        server = grpc.aio.server(options=_grpc_options(self.cfg, server=True))
        add_tolerant(peer_pb2_grpc.add_PeerServicer_to_server, _PeerServicer(self), server)
        if self.tls:
            creds = grpc.ssl_server_credentials([(self._key, self._cert)], self._ca, require_client_auth=True)
            self.port = server.add_secure_port(self.cfg.p2p.listen, creds)
        else:
            self.port = server.add_insecure_port(self.cfg.p2p.listen)
        await server.start()
        self._server = server
        for peer in self.cfg.p2p.peers:
            if self.cfg.observer or self.cfg.moniker < peer.name:
                self._tasks.append(asyncio.create_task(self._dial_forever(peer), name=f"dial-{peer.name}"))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for channel in list(self._channels.values()):
            await channel.close()
        if self._server is not None:
            await self._server.stop(grace=0.5)

    # --- sending ----------------------------------------------------------------------------------

    @property
    def connected(self) -> list[str]:
        return sorted(self._conns)

    def name_of(self, address: bytes) -> str | None:
        """The name of the validator or admitted observer with this address (None: refuse it)."""
        return self._names.name_of(address)

    def observers_full(self, name: str) -> bool:
        """Whether a new stream of name would exceed MAX_OBSERVER_PEERS (a validator never does)."""
        if self._names.is_validator(name) or name in self._conns:
            return False
        return sum(1 for n in self._conns if not self._names.is_validator(n)) >= MAX_OBSERVER_PEERS

    def serving_slots(self, name: str) -> asyncio.Semaphore:
        """The block-sync serving slots that a request of peer name takes."""
        return self._serving if self._names.is_validator(name) else self._serving_observers

    def broadcast(self, msg: peer_pb2.PeerMessage) -> None:
        if not self._conns:
            return
        size = msg.ByteSize()
        for conn in self._conns.values():
            conn.send(msg, size)

    def ban(self, peer: str, seconds: float, reason: str) -> None:
        """Close the stream with peer and refuse it for `seconds` (it sent invalid messages)."""
        self._banned_until[peer] = asyncio.get_running_loop().time() + seconds
        log.warning("peer %s banned for %.0f s: %s", peer, seconds, reason)
        conn = self._conns.get(peer)
        if conn is not None:
            conn.closed.set()

    def is_banned(self, peer: str) -> bool:
        until = self._banned_until.get(peer)
        if until is None:
            return False
        if asyncio.get_running_loop().time() >= until:
            del self._banned_until[peer]
            return False
        return True

    def send(self, peer: str, msg: peer_pb2.PeerMessage) -> bool:
        conn = self._conns.get(peer)
        if conn is None:
            return False
        conn.send(msg)
        return True

    # --- streams ----------------------------------------------------------------------------------

    async def run_stream(self, name: str, incoming: AsyncIterator[peer_pb2.PeerMessage], write: Any) -> None:
        """Move messages on one established stream until either side ends it (or this node bans
        the peer)."""
        if self.is_banned(name):
            log.debug("refusing banned peer %s", name)
            return
        old = self._conns.get(name)
        conn = _Conn(name)
        if not self._names.is_validator(name):
            conn.max_bytes = OBSERVER_SEND_QUEUE_BYTES
        self._conns[name] = conn
        if old is not None:
            old.send(peer_pb2.PeerMessage(), 0)  # wake its writer so it notices it was replaced
        self.handler.on_peer_connected(name)
        log.info("peer %s connected", name)

        async def writer() -> None:
            queue = conn.queue
            while self._conns.get(name) is conn:
                msg = conn.take(await queue.get())
                if self._conns.get(name) is not conn or conn.closed.is_set():
                    return
                if queue.empty():
                    await write(msg)
                    continue
                # More messages are waiting (they queued during the last write): fewer, larger writes.
                msgs = [msg]
                while len(msgs) < BATCH_MAX_MESSAGES and not queue.empty():
                    msgs.append(conn.take(queue.get_nowait()))
                for out in batched(msgs):
                    await write(out)

        write_task = asyncio.create_task(writer(), name=f"peer-write-{name}")
        try:
            async for msg in incoming:
                if write_task.done() or conn.closed.is_set():
                    break
                if msg.WhichOneof("msg") == "batch":
                    inner = msg.batch.messages
                    if len(inner) > BATCH_MAX_MESSAGES:
                        log.warning("peer %s sent a batch of %d messages; dropped", name, len(inner))
                        continue
                    for one in inner:
                        if one.WhichOneof("msg") in ("batch", "hello"):
                            log.warning(
                                "peer %s sent a %s inside a batch; dropped", name, one.WhichOneof("msg")
                            )
                            continue
                        await self._deliver(name, one)
                else:
                    await self._deliver(name, msg)
        finally:
            write_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await write_task
            if self._conns.get(name) is conn:
                del self._conns[name]
                self.handler.on_peer_disconnected(name)
                log.info("peer %s disconnected", name)

    async def _deliver(self, name: str, msg: peer_pb2.PeerMessage) -> None:
        """The handler counts a peer's bad input itself; what escapes it is this node's failure,
        which stops the node (on_fatal) rather than being logged and skipped."""
        try:
            await self.handler.on_peer_message(name, msg)
        except BadInput as exc:
            log.warning("peer %s sent an invalid message: %s", name, exc)
        except Exception as exc:
            self.on_fatal(exc)
            raise

    def _channel(self, peer: Peer) -> grpc.aio.Channel:
        channel = self._channels.get(peer.name)
        if channel is None:
            options = _grpc_options(self.cfg)
            # The channel reconnects on its own schedule too (by default 1 s growing 1.6x to 120 s,
            # during which every dial fails at once), so a peer back after a long outage would be
            # reached again long after [p2p] reconnect_max_ms. Both back-offs follow
            # [p2p] reconnect_min/max_ms.
            low, high = self.cfg.p2p.reconnect_min_ms, self.cfg.p2p.reconnect_max_ms
            options += [
                ("grpc.initial_reconnect_backoff_ms", low),
                ("grpc.min_reconnect_backoff_ms", low),
                ("grpc.max_reconnect_backoff_ms", high),
            ]
            if self.tls:
                creds = grpc.ssl_channel_credentials(self._ca, self._key, self._cert)
                options.append(("grpc.ssl_target_name_override", peer.name))
                channel = grpc.aio.secure_channel(peer.target, creds, options=options)
            else:
                channel = grpc.aio.insecure_channel(peer.target, options=options)
            self._channels[peer.name] = channel
        return channel

    async def _dial_forever(self, peer: Peer) -> None:
        backoff = self.cfg.p2p.reconnect_min_ms / 1000
        while not self._stopping:
            started = asyncio.get_running_loop().time()
            try:
                await self._dial_once(peer)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.debug("peer %s: %s %s", peer.name, exc.code().name, exc.details())
            except Exception:
                log.exception("peer %s: stream failed", peer.name)
            if asyncio.get_running_loop().time() - started > 5:
                backoff = self.cfg.p2p.reconnect_min_ms / 1000
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.cfg.p2p.reconnect_max_ms / 1000)

    async def _dial_once(self, peer: Peer) -> None:
        stub = peer_pb2_grpc.PeerStub(self._channel(peer))
        # wait_for_ready: while the peer is unreachable the call waits for the channel to connect
        # (on the channel's reconnect schedule) instead of failing at once and sleeping a back-off
        # on top of the channel's.
        call = stub.Connect(wait_for_ready=True)
        try:
            await call.write(peer_pb2.PeerMessage(hello=self.handler.make_hello()))
            first = await asyncio.wait_for(call.read(), timeout=10)
            if first is grpc.aio.EOF or not first.HasField("hello"):
                raise ConnectionError(f"peer {peer.name} did not answer with a hello")
            problem = self.handler.check_hello(first.hello, peer.name, None)
            if problem is not None:
                log.warning("refusing peer %s: %s", peer.name, problem)
                return

            async def reads() -> AsyncIterator[peer_pb2.PeerMessage]:
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        return
                    yield msg

            await self.run_stream(peer.name, reads(), call.write)
        finally:
            call.cancel()

    # --- block sync client ------------------------------------------------------------------------

    # --- state sync (as a client: node/statesync.SnapshotSource) ------------------------------------

    def snapshot_peers(self) -> list[str]:
        return [p.name for p in self.cfg.p2p.peers]

    def _stub(self, peer_name: str) -> peer_pb2_grpc.PeerStub:
        peer = next((p for p in self.cfg.p2p.peers if p.name == peer_name), None)
        if peer is None:
            raise ConnectionError(f"{peer_name} is not a configured peer")
        return peer_pb2_grpc.PeerStub(self._channel(peer))

    async def list_snapshots(self, peer_name: str) -> peer_pb2.ListSnapshotsResponse:
        try:
            resp: peer_pb2.ListSnapshotsResponse = await self._stub(peer_name).ListSnapshots(
                peer_pb2.ListSnapshotsRequest(), timeout=FETCH_DEADLINE_S
            )
        except grpc.aio.AioRpcError as exc:
            raise ConnectionError(f"{exc.code().name}: {exc.details()}") from None
        return resp

    async def snapshot_chunk(self, peer_name: str, height: int, index: int) -> peer_pb2.SnapshotChunk:
        try:
            chunk: peer_pb2.SnapshotChunk = await self._stub(peer_name).GetSnapshotChunk(
                peer_pb2.SnapshotChunkRequest(height=height, index=index), timeout=FETCH_DEADLINE_S
            )
        except grpc.aio.AioRpcError as exc:
            raise ConnectionError(f"{exc.code().name}: {exc.details()}") from None
        return chunk

    async def light_block(self, peer_name: str, height: int) -> peer_pb2.LightBlock:
        try:
            light: peer_pb2.LightBlock = await self._stub(peer_name).GetLightBlock(
                peer_pb2.LightBlockRequest(height=height), timeout=FETCH_DEADLINE_S
            )
        except grpc.aio.AioRpcError as exc:
            raise ConnectionError(f"{exc.code().name}: {exc.details()}") from None
        return light

    async def fetch_blocks(
        self, peer_name: str, from_height: int, to_height: int, max_bytes: int
    ) -> AsyncIterator[peer_pb2.SyncBlock]:
        """The blocks peer_name serves for [from_height, to_height] (at most max_bytes of them, at
        least one). Transport failures are ConnectionError; timeouts are the caller's (block sync
        bounds the wait for each block)."""
        peer = next((p for p in self.cfg.p2p.peers if p.name == peer_name), None)
        if peer is None:
            raise ConnectionError(f"{peer_name} is not a configured peer")
        stub = peer_pb2_grpc.PeerStub(self._channel(peer))
        call = stub.GetBlocks(
            peer_pb2.GetBlocksRequest(from_height=from_height, to_height=to_height, max_bytes=max_bytes),
            timeout=FETCH_DEADLINE_S,
        )
        try:
            async for block in call:
                yield block
        except grpc.aio.AioRpcError as exc:
            base = _base_height_of(exc)
            if base is not None:
                raise PeerPruned(peer_name, base, exc.details() or "") from None
            raise ConnectionError(f"{exc.code().name}: {exc.details()}") from None
        finally:
            call.cancel()


def _base_height_of(exc: grpc.aio.AioRpcError) -> int | None:
    """The base a peer names when it refuses heights it pruned (OUT_OF_RANGE), else None."""
    if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
        return None
    for key, value in exc.trailing_metadata() or ():
        if key == BASE_HEIGHT_KEY and isinstance(value, str) and value.isdigit():
            return int(value)
    return None
