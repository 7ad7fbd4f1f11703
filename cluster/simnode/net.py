"""The simulated peer network: every node's transport, with a seeded adversary on the links.

Each directed link (src -> dst) is an ordered stream, like the gRPC stream it stands for: messages
leave in order, each with a delay drawn from the link's latency, and are handed to the receiver's
peer handler one at a time (the next waits until the handler returns). Faults: loss, duplication
and extra jitter per message (`Links`), cut links (partitions, one-way or both), nodes that are
down, and bans (a node refusing a peer it banned). Messages cross as bytes, so no two nodes share
an object. Block sync (`fetch_blocks`) streams from the serving node's handler with the same
delays, and fails with ConnectionError when the link is cut or the server goes down.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from clearline.v1 import peer_pb2
from node import blocks


def describe(msg: peer_pb2.PeerMessage) -> tuple[str, int | None]:
    """A message in a few words for the trace, and the height it is about (if any)."""
    kind = msg.WhichOneof("msg")
    if kind == "vote":
        v = msg.vote
        what = "prevote" if v.type == 1 else "precommit" if v.type == 2 else f"vote type {v.type}"
        target = v.block_id.hex()[:8] or "nil"
        return f"{what} {v.height}/{v.round} {target} by {v.validator.hex()[:8]}", v.height
    if kind == "proposal":
        p = msg.proposal
        block_id = blocks.block_hash(p.block.header).hex()[:8]
        return (
            f"proposal {p.height}/{p.round} pol {p.pol_round} {block_id} ({len(p.block.body.txs)} txs) "
            f"by {p.proposer.hex()[:8]}",
            p.height,
        )
    if kind == "status":
        return f"status committed {msg.status.last_committed}", None
    if kind == "txs":
        return f"{len(msg.txs.txs)} txs", None
    return str(kind), None


# Receives (what, src, dst, height) for each message handed to a node (the detailed trace).
Tracer = Callable[[str, str, str, "int | None"], None]


class Handler(Protocol):
    async def on_peer_message(self, peer: str, msg: peer_pb2.PeerMessage) -> None: ...

    def on_peer_connected(self, peer: str) -> None: ...

    def on_peer_disconnected(self, peer: str) -> None: ...

    def serve_blocks(self, request: peer_pb2.GetBlocksRequest) -> AsyncIterator[peer_pb2.SyncBlock]: ...

    def list_snapshots(self) -> peer_pb2.ListSnapshotsResponse: ...

    async def snapshot_chunk(
        self, request: peer_pb2.SnapshotChunkRequest
    ) -> peer_pb2.SnapshotChunk | None: ...

    def light_block(self, request: peer_pb2.LightBlockRequest) -> peer_pb2.LightBlock | None: ...


@dataclass
class Links:
    """What the adversary does to every message on the links it holds."""

    latency_ms: tuple[float, float] = (1.0, 10.0)
    loss: float = 0.0
    duplicate: float = 0.0
    jitter_ms: float = 0.0  # extra delay, drawn per message (may reorder across links, not within)


@dataclass
class _Link:
    queue: deque[bytes] = field(default_factory=deque)
    busy: bool = False
    last_arrival: float = 0.0


class SimNet:
    def __init__(self, loop: asyncio.AbstractEventLoop, rng: random.Random, names: list[str]) -> None:
        self.loop = loop
        self.rng = rng
        self.names = list(names)
        self.links = Links()
        self.handlers: dict[str, Handler] = {}
        self.cut: set[tuple[str, str]] = set()
        self.banned: dict[tuple[str, str], float] = {}  # (node, peer) -> until
        self._links: dict[tuple[str, str], _Link] = {}
        self._connected: set[tuple[str, str]] = set()  # (node, peer) pairs told "connected"
        self.messages = 0
        self.bytes = 0
        self.dropped = 0
        self.tracer: Tracer | None = None

    # --- topology ------------------------------------------------------------------------------

    def up(self, name: str, handler: Handler) -> None:
        self.handlers[name] = handler
        self.refresh()

    def down(self, name: str) -> None:
        self.handlers.pop(name, None)
        for key in list(self._links):
            if name in key:
                self._links[key].queue.clear()
        self.refresh()

    def partition(self, *groups: list[str]) -> None:
        where = {n: i for i, g in enumerate(groups) for n in g}
        self.cut = {(a, b) for a in self.names for b in self.names if a != b and where.get(a) != where.get(b)}
        self.refresh()

    def cut_one_way(self, src: str, dst: str) -> None:
        self.cut.add((src, dst))
        self.refresh()

    def heal(self) -> None:
        self.cut.clear()
        self.links = Links(latency_ms=self.links.latency_ms)
        self.refresh()

    def reachable(self, src: str, dst: str) -> bool:
        """Can a message from src reach dst now?"""
        if src not in self.handlers or dst not in self.handlers or (src, dst) in self.cut:
            return False
        until = self.banned.get((dst, src))
        return until is None or until <= self.loop.time()

    def refresh(self) -> None:
        """Tell each node which peers it is connected to (both directions reachable)."""
        for a in self.names:
            for b in self.names:
                if a == b:
                    continue
                now = self.reachable(a, b) and self.reachable(b, a)
                was = (a, b) in self._connected
                if now and not was:
                    self._connected.add((a, b))
                    self.handlers[a].on_peer_connected(b)
                elif was and not now:
                    self._connected.discard((a, b))
                    if a in self.handlers:
                        self.handlers[a].on_peer_disconnected(b)

    def connected(self, name: str) -> list[str]:
        return sorted(b for (a, b) in self._connected if a == name)

    # --- messages ------------------------------------------------------------------------------

    def _delay(self) -> float:
        lo, hi = self.links.latency_ms
        extra = self.rng.uniform(0, self.links.jitter_ms) if self.links.jitter_ms else 0.0
        return (self.rng.uniform(lo, hi) + extra) / 1000

    def send(self, src: str, dst: str, msg: peer_pb2.PeerMessage) -> bool:
        if not self.reachable(src, dst) or (src, dst) not in self._connected:
            return False
        data = msg.SerializeToString()
        self.messages += 1
        self.bytes += len(data)
        if self.links.loss and self.rng.random() < self.links.loss:
            self.dropped += 1
            return True
        copies = 2 if self.links.duplicate and self.rng.random() < self.links.duplicate else 1
        link = self._links.setdefault((src, dst), _Link())
        for _ in range(copies):
            # In order on one link: never before the previous message on it.
            at = max(self.loop.time() + self._delay(), link.last_arrival)
            link.last_arrival = at
            self.loop.call_at(at, self._arrive, src, dst, data)
        return True

    def _arrive(self, src: str, dst: str, data: bytes) -> None:
        if not self.reachable(src, dst):
            self.dropped += 1
            return
        link = self._links.setdefault((src, dst), _Link())
        link.queue.append(data)
        if not link.busy:
            link.busy = True
            self.loop.create_task(self._drain(src, dst, link))

    async def _drain(self, src: str, dst: str, link: _Link) -> None:
        try:
            while link.queue:
                data = link.queue.popleft()
                handler = self.handlers.get(dst)
                if handler is None or not self.reachable(src, dst):
                    continue
                msg = peer_pb2.PeerMessage.FromString(data)
                if self.tracer is not None:
                    what, height = describe(msg)
                    self.tracer(what, src, dst, height)
                await handler.on_peer_message(src, msg)
        finally:
            link.busy = False

    async def fetch(
        self, dst: str, src: str, from_height: int, to_height: int, max_bytes: int
    ) -> AsyncIterator[peer_pb2.SyncBlock]:
        """dst asks src for blocks (dst may be a node joining by state sync, not up yet)."""
        if not self._linked(dst, src):
            raise ConnectionError(f"{src} is unreachable")
        await asyncio.sleep(self._delay())
        handler = self.handlers.get(src)
        if handler is None:
            raise ConnectionError(f"{src} is down")
        request = peer_pb2.GetBlocksRequest(from_height=from_height, to_height=to_height, max_bytes=max_bytes)
        async for sb in handler.serve_blocks(request):
            await asyncio.sleep(self._delay() / 4)
            if not self._linked(dst, src) or self.handlers.get(src) is not handler:
                raise ConnectionError(f"lost {src} during block sync")
            data = sb.SerializeToString()
            self.bytes += len(data)
            yield peer_pb2.SyncBlock.FromString(data)

    def _linked(self, asker: str, server: str) -> bool:
        if asker not in self.handlers:
            return self._can_ask(asker, server)
        return self.reachable(asker, server) and self.reachable(server, asker)

    def _can_ask(self, asker: str, server: str) -> bool:
        """A call needs the server up and the link both ways; the asker may be a node that is not
        up yet (joining by state sync, before it starts)."""
        if server not in self.handlers or (asker, server) in self.cut or (server, asker) in self.cut:
            return False
        until = self.banned.get((server, asker))
        return until is None or until <= self.loop.time()

    async def ask(self, dst: str, src: str, what: str, request: Any) -> Any:
        """dst makes one of state sync's unary calls to src (what: the handler's method): a request
        and its answer, each delayed like a message; ConnectionError if src is down or unreachable,
        or has nothing to answer (NOT_FOUND)."""
        if not self._can_ask(dst, src):
            raise ConnectionError(f"{src} is unreachable")
        await asyncio.sleep(self._delay())
        handler = self.handlers.get(src)
        if handler is None:
            raise ConnectionError(f"{src} is down")
        method = getattr(handler, what)
        answer = method(request) if request is not None else method()
        if asyncio.iscoroutine(answer):
            answer = await answer
        await asyncio.sleep(self._delay())
        if not self._can_ask(dst, src) or self.handlers.get(src) is not handler:
            raise ConnectionError(f"lost {src} during {what}")
        if answer is None:
            raise ConnectionError(f"NOT_FOUND: {src} has no answer to {what}")
        data = answer.SerializeToString()
        self.bytes += len(data)
        return type(answer).FromString(data)


class SimSnapshotSource:
    """One joining node's view of its peers for state sync (node/statesync.SnapshotSource)."""

    def __init__(self, net: SimNet, name: str) -> None:
        self._net = net
        self._name = name

    def snapshot_peers(self) -> list[str]:
        return [n for n in self._net.names if n != self._name]

    async def list_snapshots(self, peer: str) -> peer_pb2.ListSnapshotsResponse:
        answer: peer_pb2.ListSnapshotsResponse = await self._net.ask(self._name, peer, "list_snapshots", None)
        return answer

    async def snapshot_chunk(self, peer: str, height: int, index: int) -> peer_pb2.SnapshotChunk:
        request = peer_pb2.SnapshotChunkRequest(height=height, index=index)
        answer: peer_pb2.SnapshotChunk = await self._net.ask(self._name, peer, "snapshot_chunk", request)
        return answer

    async def light_block(self, peer: str, height: int) -> peer_pb2.LightBlock:
        request = peer_pb2.LightBlockRequest(height=height)
        answer: peer_pb2.LightBlock = await self._net.ask(self._name, peer, "light_block", request)
        return answer

    def fetch_blocks(
        self, peer: str, from_height: int, to_height: int, max_bytes: int
    ) -> AsyncIterator[peer_pb2.SyncBlock]:
        return self._net.fetch(self._name, peer, from_height, to_height, max_bytes)


class SimTransport:
    """One node's view of the network (node.router.Transport)."""

    def __init__(self, net: SimNet, name: str) -> None:
        self._net = net
        self._name = name

    @property
    def connected(self) -> list[str]:
        return self._net.connected(self._name)

    def broadcast(self, msg: peer_pb2.PeerMessage) -> None:
        for peer in self.connected:
            self._net.send(self._name, peer, msg)

    def send(self, peer: str, msg: peer_pb2.PeerMessage) -> bool:
        return self._net.send(self._name, peer, msg)

    def ban(self, peer: str, seconds: float, reason: str) -> None:
        self._net.banned[(self._name, peer)] = self._net.loop.time() + seconds
        self._net.refresh()

    def fetch_blocks(
        self, peer: str, from_height: int, to_height: int, max_bytes: int
    ) -> AsyncIterator[peer_pb2.SyncBlock]:
        return self._net.fetch(self._name, peer, from_height, to_height, max_bytes)
