"""The fault proxy: a gRPC man-in-the-middle on every peer link of a fault-testing network.

`python -m cluster.faults.proxy --home NETDIR` (started by `Launcher.start_all` when the network was
made with `clearline init --faults`) listens on one port per ordered pair of validators (A -> B, laid
out by cluster.netgen in network.json). A's config lists peer B at that port, under B's name, so A's
TLS target-name override still says "B". The proxy presents B's certificate and key to A and connects
on to B's real p2p address presenting A's certificate and key: mutual TLS, the certificate's validator
binding and the signed Hello all still hold end to end, and the nodes carry no fault switches.

The proxy forwards the Peer calls message by message, as raw bytes (it never re-encodes): Connect
(both directions of the long-lived stream), GetBlocks, GetSyncStatus and state sync's unary calls
(ListSnapshots, GetSnapshotChunk, GetLightBlock). For each message it applies the rules of its direction (cluster/faults/rules.py), read from <home>/faults/rules.json which
it polls every 50 ms: drop, sever, delay with jitter (FIFO per direction unless reorder), random loss
and duplication. Loss and duplication apply to peer-stream messages after the handshake (the first
message in each direction); the block-sync calls are refused while their link is dropped or severed
and are otherwise only delayed, since a lossy sync call is just a failed call. A dropped link keeps its
HTTP/2 connections open (pings still flow), like a black hole; a severed one breaks them.

Random choices come from one generator per direction seeded by (seed, rules generation, direction).
The proxy writes <home>/faults/status.json (pid, ready, applied generation, counters per direction)
and logs to stderr, which the launcher sends to <home>/faults/proxy.log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from cluster.faults.rules import NO_EFFECT, Effect, FaultRuleError, RuleSet, rules_path
from cluster.netgen import Network, NodeInfo, ProxyLink
from node.config import load_config
from node.network import keepalive
from node.network.peers import validator_address_of_cert

log = logging.getLogger("clearline.faults.proxy")

SERVICE = "clearline.v1.Peer"
CONNECT = f"/{SERVICE}/Connect"
GET_BLOCKS = f"/{SERVICE}/GetBlocks"
GET_SYNC_STATUS = f"/{SERVICE}/GetSyncStatus"
POLL_S = 0.05
STATUS_EVERY_S = 0.5
MAX_QUEUED = 20_000  # per direction of one stream; beyond it the oldest message is dropped (as the node does)
MAX_MESSAGE = 64 * 1024 * 1024

_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
# The peers' keepalive policy on both ends (node/network/keepalive.py).
_SERVER_OPTIONS = [*_OPTIONS, *keepalive.server_options()]
# The destination may be down for a while (kill/restart): retry connecting quickly once it is back.
_CHANNEL_OPTIONS = [
    *_OPTIONS,
    *keepalive.channel_options(),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


@dataclass(slots=True)
class DirectionStats:
    """Counters of one direction src -> dst (mutable, owned by the proxy's event loop)."""

    forwarded: int = 0
    dropped: int = 0
    lost: int = 0
    duplicated: int = 0
    delayed: int = 0
    overflow: int = 0


@dataclass(slots=True)
class LinkStats:
    """Counters of one proxy port (link src -> dst, by who called whom)."""

    calls: int = 0
    refused: int = 0
    severed: int = 0
    upstream_errors: int = 0
    active: int = 0


class Severed(Exception):
    """A stream was broken by a sever rule, or a block-sync message hit a dropped link."""


class FaultState:
    """The rules in force, the random generators and the counters, shared by every link."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.rules = RuleSet()
        self.applied_generation = -1
        self.rules_error: str | None = None
        self.directions: dict[str, DirectionStats] = {}
        self.links: dict[str, LinkStats] = {}
        self._rngs: dict[tuple[str, str], random.Random] = {}
        self._stamp: tuple[int, int, int] | None = None
        self.on_change: list[Callable[[], None]] = []

    def effect(self, src: str, dst: str) -> Effect:
        return self.rules.effect(src, dst) if self.rules.rules else NO_EFFECT

    def rng(self, src: str, dst: str) -> random.Random:
        rng = self._rngs.get((src, dst))
        if rng is None:
            rng = random.Random(f"{self.rules.seed}/{self.rules.generation}/{src}->{dst}")
            self._rngs[(src, dst)] = rng
        return rng

    def stats(self, src: str, dst: str) -> DirectionStats:
        return self.directions.setdefault(f"{src}->{dst}", DirectionStats())

    def link_stats(self, src: str, dst: str) -> LinkStats:
        return self.links.setdefault(f"{src}->{dst}", LinkStats())

    def poll(self) -> bool:
        """Reload rules.json if it changed; True if new rules were applied."""
        path = rules_path(self.home)
        try:
            st = path.stat()
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            new = RuleSet.from_json(path.read_text()) if stamp is not None else RuleSet()
        except (OSError, FaultRuleError) as exc:
            self.rules_error = str(exc)
            log.error("rules file %s refused, keeping the rules in force: %s", path, exc)
            return False
        self.rules_error = None
        self.rules = new
        self.applied_generation = new.generation
        self._rngs.clear()
        summary = ", ".join(f"{r.kind} {r.src}->{r.dst}" for r in new.rules) or "none (healed)"
        log.info("rules generation %d (seed %d) applied: %s", new.generation, new.seed, summary)
        for callback in self.on_change:
            callback()
        return True

    def status_doc(self, ready: bool) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "ready": ready,
            "generation": self.applied_generation,
            "rules_error": self.rules_error,
            "time": time.time(),
            "directions": {k: asdict(v) for k, v in sorted(self.directions.items())},
            "links": {k: asdict(v) for k, v in sorted(self.links.items())},
        }


class Pipe:
    """One direction of one proxied call: applies the direction's rules and writes in release order."""

    def __init__(
        self,
        state: FaultState,
        src: str,
        dst: str,
        write: Callable[[bytes], Awaitable[None]],
        *,
        chaotic: bool,
    ) -> None:
        self.state = state
        self.src = src
        self.dst = dst
        self._write = write
        self._chaotic = chaotic  # loss and duplication apply (peer stream after the handshake)
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._last_release = 0.0
        self._wake = asyncio.Event()
        self._closed = False
        self._count = 0
        self.broken = False  # a message hit a dropped link (only matters for block-sync calls)
        self.stats = state.stats(src, dst)

    def put(self, msg: bytes) -> None:
        self._count += 1
        effect = self.state.effect(self.src, self.dst)
        stats = self.stats
        if effect.blocked:
            stats.dropped += 1
            self.broken = True
            return
        copies = 1
        if self._chaotic and self._count > 1:
            rng = self.state.rng(self.src, self.dst)
            if effect.loss and rng.random() < effect.loss:
                stats.lost += 1
                return
            if effect.duplicate and rng.random() < effect.duplicate:
                stats.duplicated += 1
                copies = 2
        now = asyncio.get_running_loop().time()
        for _ in range(copies):
            delay_ms = effect.delay_ms
            if effect.jitter_ms:
                delay_ms = max(
                    0.0, delay_ms + self.state.rng(self.src, self.dst).uniform(-1, 1) * effect.jitter_ms
                )
            if delay_ms > 0:
                stats.delayed += 1
            release = now + delay_ms / 1000
            if not effect.reorder:
                release = max(release, self._last_release)
            self._last_release = max(self._last_release, release)
            heapq.heappush(self._heap, (release, self._seq, msg))
            self._seq += 1
        while len(self._heap) > MAX_QUEUED:
            heapq.heappop(self._heap)
            stats.overflow += 1
        self._wake.set()

    def close(self) -> None:
        """No more messages will be put; run() returns once the queued ones are written."""
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._heap:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            release, _, msg = self._heap[0]
            wait = release - loop.time()
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            heapq.heappop(self._heap)
            if self.state.effect(self.src, self.dst).blocked:  # partitioned while in flight
                self.stats.dropped += 1
                self.broken = True
                continue
            await self._write(msg)
            self.stats.forwarded += 1


class LinkProxy:
    """The proxy port of link src -> dst: accepts src (as dst) and calls dst (as src)."""

    def __init__(self, state: FaultState, link: ProxyLink, src: NodeInfo, dst: NodeInfo) -> None:
        self.state = state
        self.link = link
        self.src = src
        self.dst = dst
        self.stats = state.link_stats(src.name, dst.name)
        self._streams: set[asyncio.Event] = set()
        self._server: grpc.aio.Server | None = None
        self._channel: grpc.aio.Channel | None = None
        self._tls = False
        state.on_change.append(self._on_rules)

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        src_cfg, dst_cfg = load_config(self.src.home), load_config(self.dst.home)
        self._tls = dst_cfg.tls.enabled
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Connect": grpc.stream_stream_rpc_method_handler(self.connect),
                "GetBlocks": grpc.unary_stream_rpc_method_handler(self.get_blocks),
                "GetSyncStatus": grpc.unary_unary_rpc_method_handler(self.get_sync_status),
                # State sync's calls are unary: forwarded like GetSyncStatus.
                **{
                    name: grpc.unary_unary_rpc_method_handler(self._unary(f"/{SERVICE}/{name}"))
                    for name in ("ListSnapshots", "GetSnapshotChunk", "GetLightBlock")
                },
            },
        )
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        server.add_generic_rpc_handlers((handler,))
        listen = f"{self.link.host}:{self.link.port}"
        if self._tls:
            ca = dst_cfg.path(dst_cfg.tls.ca_cert).read_bytes()
            # Towards src: dst's identity. Towards dst: src's identity.
            server_creds = grpc.ssl_server_credentials(
                [(dst_cfg.path(dst_cfg.tls.key).read_bytes(), dst_cfg.path(dst_cfg.tls.cert).read_bytes())],
                ca,
                require_client_auth=True,
            )
            port = server.add_secure_port(listen, server_creds)
            channel_creds = grpc.ssl_channel_credentials(
                ca, src_cfg.path(src_cfg.tls.key).read_bytes(), src_cfg.path(src_cfg.tls.cert).read_bytes()
            )
            self._channel = grpc.aio.secure_channel(
                self.dst.p2p_target,
                channel_creds,
                options=[*_CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", self.dst.name)],
            )
        else:
            port = server.add_insecure_port(listen)
            self._channel = grpc.aio.insecure_channel(self.dst.p2p_target, options=_CHANNEL_OPTIONS)
        if port == 0:
            raise OSError(f"cannot listen on {listen} for link {self.src.name}->{self.dst.name}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        for event in self._streams:
            event.set()
        if self._server is not None:
            await self._server.stop(grace=0.2)
        if self._channel is not None:
            await self._channel.close()

    def _on_rules(self) -> None:
        if self.state.rules.severed(self.src.name, self.dst.name):
            for event in self._streams:
                if not event.is_set():
                    self.stats.severed += 1
                    event.set()

    # --- admission --------------------------------------------------------------------------------

    async def _admit(self, context: grpc.aio.ServicerContext, *, stream: bool) -> None:
        """Check the caller is src and the link lets a new call through; abort the call otherwise."""
        self.stats.calls += 1
        if self._tls:
            pems = context.auth_context().get("x509_pem_cert") or []
            address = validator_address_of_cert(pems[0]) if pems else None
            if address is None or address.hex() != self.src.address:
                self.stats.refused += 1
                log.warning(
                    "link %s->%s: refused a caller that is not %s",
                    self.src.name,
                    self.dst.name,
                    self.src.name,
                )
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"fault proxy port of {self.src.name}->{self.dst.name} accepts only {self.src.name}",
                )
        a, b = self.src.name, self.dst.name
        blocked = (
            self.state.rules.severed(a, b)
            if stream
            else (self.state.effect(a, b).blocked or self.state.effect(b, a).blocked)
        )
        if blocked:
            self.stats.refused += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"fault proxy: link {a}<->{b} is cut")

    @staticmethod
    async def _abort_from(context: grpc.aio.ServicerContext, exc: grpc.aio.AioRpcError) -> None:
        # The node's own trailing metadata goes through (a pruned peer's base height).
        await context.abort(exc.code(), exc.details() or "", trailing_metadata=exc.trailing_metadata() or ())

    # --- Peer.Connect -----------------------------------------------------------------------------

    async def connect(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        await self._admit(context, stream=True)
        assert self._channel is not None
        a, b = self.src.name, self.dst.name
        call = self._channel.stream_stream(CONNECT)()
        severed = asyncio.Event()
        self._streams.add(severed)
        self.stats.active += 1
        up = Pipe(self.state, a, b, call.write, chaotic=True)
        down = Pipe(self.state, b, a, context.write, chaotic=True)
        ended: asyncio.Future[tuple[grpc.StatusCode, str] | None] = asyncio.get_running_loop().create_future()

        def end(result: tuple[grpc.StatusCode, str] | None) -> None:
            if not ended.done():
                ended.set_result(result)

        async def from_src() -> None:
            while True:
                msg = await context.read()
                if msg is grpc.aio.EOF:
                    up.close()
                    return
                up.put(msg)

        async def up_writer() -> None:
            await up.run()
            await call.done_writing()

        async def from_dst() -> None:
            try:
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        break
                    down.put(msg)
            except grpc.aio.AioRpcError as exc:
                self.stats.upstream_errors += 1
                end((exc.code(), exc.details() or ""))
                return
            down.close()
            code = await call.code()
            end(None if code == grpc.StatusCode.OK else (code, await call.details() or ""))

        async def guard(coro: Awaitable[None], name: str) -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                end((exc.code(), exc.details() or ""))
            except Exception as exc:
                end((grpc.StatusCode.UNAVAILABLE, f"fault proxy: {name} failed: {exc}"))

        async def on_sever() -> None:
            await severed.wait()
            end((grpc.StatusCode.UNAVAILABLE, f"fault proxy: link {a}<->{b} severed"))

        tasks = [
            asyncio.create_task(guard(from_src(), "read from source")),
            asyncio.create_task(guard(up_writer(), "write to destination")),
            asyncio.create_task(from_dst()),
            asyncio.create_task(guard(down.run(), "write to source")),
            asyncio.create_task(on_sever()),
        ]
        log.info("link %s->%s: stream opened", a, b)
        try:
            result = await ended
            if result is None:  # the destination finished normally: let the source see the rest
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tasks[3], timeout=5)
        finally:
            call.cancel()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._streams.discard(severed)
            self.stats.active -= 1
            log.info("link %s->%s: stream closed", a, b)
        if result is not None:
            await context.abort(result[0], result[1])

    # --- Peer.GetBlocks / GetSyncStatus -----------------------------------------------------------

    async def _hold(self, src: str, dst: str) -> None:
        """Delay one block-sync message of direction src -> dst by the direction's delay and jitter."""
        effect = self.state.effect(src, dst)
        delay_ms = effect.delay_ms
        if effect.jitter_ms:
            delay_ms = max(0.0, delay_ms + self.state.rng(src, dst).uniform(-1, 1) * effect.jitter_ms)
        if delay_ms > 0:
            self.state.stats(src, dst).delayed += 1
            await asyncio.sleep(delay_ms / 1000)

    async def get_blocks(self, request: bytes, context: grpc.aio.ServicerContext) -> None:
        await self._admit(context, stream=False)
        assert self._channel is not None
        a, b = self.src.name, self.dst.name
        await self._hold(a, b)
        self.state.stats(a, b).forwarded += 1
        call = self._channel.unary_stream(GET_BLOCKS)(request, timeout=context.time_remaining())
        down = Pipe(self.state, b, a, context.write, chaotic=False)
        writer = asyncio.create_task(down.run())
        failure: grpc.aio.AioRpcError | None = None
        try:
            async for block in call:
                down.put(block)
                if down.broken:
                    break
        except grpc.aio.AioRpcError as exc:
            self.stats.upstream_errors += 1
            failure = exc
        finally:
            call.cancel()
        down.close()
        try:
            await writer
        finally:
            writer.cancel()
        if down.broken:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"fault proxy: link {a}<->{b} is cut")
        if failure is not None:
            await self._abort_from(context, failure)

    async def get_sync_status(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._forward_unary(GET_SYNC_STATUS, request, context)

    def _unary(self, method: str) -> Any:
        async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._forward_unary(method, request, context)

        return forward

    async def _forward_unary(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """One request and its answer through the link, each delayed and cut like the link is."""
        await self._admit(context, stream=False)
        assert self._channel is not None
        a, b = self.src.name, self.dst.name
        await self._hold(a, b)
        self.state.stats(a, b).forwarded += 1
        try:
            response: bytes = await self._channel.unary_unary(method)(
                request, timeout=context.time_remaining()
            )
        except grpc.aio.AioRpcError as exc:
            self.stats.upstream_errors += 1
            await self._abort_from(context, exc)
            raise  # not reached: abort raises
        await self._hold(b, a)
        if self.state.effect(b, a).blocked or self.state.effect(a, b).blocked:
            self.state.stats(b, a).dropped += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"fault proxy: link {a}<->{b} is cut")
        self.state.stats(b, a).forwarded += 1
        return response


def _write_status(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(".status.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


async def serve(home: Path) -> None:
    """Run the proxy of the network at home until SIGTERM/SIGINT."""
    network = Network.load(home)
    if not network.proxies:
        raise SystemExit(
            f"{home}: network.json lays out no fault proxies (made without `clearline init --faults`)"
        )
    state = FaultState(Path(network.home))
    state.poll()
    links = [
        LinkProxy(state, link, network.node(link.src), network.node(link.dst)) for link in network.proxies
    ]
    status = Path(network.home) / "faults" / "status.json"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for lp in links:
            await lp.start()
        log.info("fault proxy of %s: %d links listening", network.home, len(links))
        _write_status(status, state.status_doc(ready=True))
        last_status = time.monotonic()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
            changed = state.poll()
            if changed or time.monotonic() - last_status > STATUS_EVERY_S:
                _write_status(status, state.status_doc(ready=True))
                last_status = time.monotonic()
    finally:
        log.info("fault proxy stopping")
        for lp in links:
            with contextlib.suppress(Exception):
                await lp.stop()
        with contextlib.suppress(OSError):
            _write_status(status, state.status_doc(ready=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clearline-fault-proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True, help="the network directory (network.json)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(Path(args.home).resolve()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
