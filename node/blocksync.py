"""Block sync: catch up from peers in the background, trusting none of them; serve peers that do.

A node that is behind (a peer says it committed more) fetches the missing blocks with their commit
certificates and hands them, one at a time, to the consensus task, which verifies each against
what it knows (the one block-validation path: header chain, body against header, certificate
against the validator set of that height) and applies it. Consensus never waits for sync: the
consensus task keeps running the current height with the honest quorum while blocks are fetched,
and whichever commits a height first wins (the other is told the height is done).

A peer's claimed height is a hint, and a false one costs the peer: a peer that claims heights it
does not serve (nothing arrives, a fetch stalls, a block does not verify) gets a strike, is not
asked again for a back-off that doubles with each strike (capped), and is counted in a metric.
Fetches have short timeouts: the first block must arrive within FIRST_BLOCK_TIMEOUT_S and each next
one within NEXT_BLOCK_TIMEOUT_S. Sync prefers the peers that delivered: fewest strikes first, then
the most recent to deliver, then the highest claim. A tampered block is the peer's fault, never the
node's: it is rejected before any of its transactions is taken as verified.

A peer that prunes ([storage] retain_blocks) refuses heights below its base (`PeerPruned`, naming
the base): that is no fault. It is not asked again while its base is above the height this node
needs; if every peer ahead is such a peer, block sync cannot catch up and says so in the log (the
node needs an archive peer, or to join afresh by state sync).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from clearline.v1 import block_pb2, peer_pb2
from node.blockserve import blocks_to_serve
from node.clock import Clock, SystemClock, wait_event
from node.errors import PeerFault, PeerPruned

log = logging.getLogger("clearline.blocksync")

# Blocks asked for in one request (the server caps it too).
SYNC_BATCH = 200
# A request whose first block has not arrived by then, or a stream silent this long between blocks,
# is abandoned and the peer gets a strike (a block of the maximum size takes well under a second
# over a LAN; the live chain commits a height in tens of milliseconds).
FIRST_BLOCK_TIMEOUT_S = 3.0
NEXT_BLOCK_TIMEOUT_S = 3.0
# Bytes one request may return (the server stops before exceeding it; at least one block).
SYNC_REQUEST_BYTES = 64 << 20
# A peer with strikes is not asked again for BACKOFF_BASE_S * 2**(strikes-1), at most BACKOFF_MAX_S.
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
# Behind by exactly one height for this long before fetching: the node may simply be finishing the
# height itself (peers commit a few milliseconds apart).
BEHIND_ONE_S = 0.3
# While every peer ahead has pruned the height this node needs, say so at most this often.
STRANDED_LOG_S = 30.0


class SyncHost(Protocol):
    """What block sync needs from the node."""

    @property
    def height(self) -> int:
        """The last committed height."""
        ...

    def fetch_blocks(
        self, peer: str, from_height: int, to_height: int, max_bytes: int
    ) -> AsyncIterator[peer_pb2.SyncBlock]: ...

    async def apply_synced(self, peer: str, block: peer_pb2.SyncBlock) -> bool:
        """Verify and apply the next block; False if the node already has that height. Raises
        PeerFault if the block does not verify."""
        ...


class BlockSource(Protocol):
    """The committed blocks this node serves (the block store)."""

    def load_block(self, height: int) -> block_pb2.Block | None: ...

    def load_commit(self, height: int) -> block_pb2.CommitCertificate | None: ...

    def base_height(self) -> int:
        """The lowest height whose block is served (node/storage: pruned below it)."""
        ...


__all__ = ["SYNC_BATCH", "BlockSource", "BlockSync", "PeerFault", "PeerPruned", "SyncHost"]


@dataclass
class SyncPeer:
    claimed: int = 0  # the last committed height the peer claims
    strikes: int = 0
    not_before: float = 0.0  # not asked again before this time (monotonic)
    delivered_at: float = 0.0  # when it last delivered a block
    delivered: int = 0  # blocks delivered in all
    base: int = 0  # the lowest height it serves, once it refused a lower one (0: not known)


class BlockSync:
    """The block-sync reactor: peer claims in, verified blocks out to the consensus task."""

    def __init__(
        self,
        host: SyncHost,
        *,
        source: BlockSource | None = None,
        clock: Clock | None = None,
        on_fault: Callable[[str, str], None] | None = None,
    ) -> None:
        self._host = host
        self._source = source
        clock = clock or SystemClock()
        self._clock_of = clock
        self._clock = clock.monotonic
        self._sleep = clock.sleep
        self._on_fault = on_fault
        self.peers: dict[str, SyncPeer] = {}
        self._wake = asyncio.Event()
        self._behind_since: float | None = None
        self.active = False  # fetching right now
        self.blocks_synced = 0
        self.faults: dict[str, int] = {}  # reason -> count (the metric reads it)
        self.pruned_refusals = 0  # requests refused below a peer's base (not faults)
        self._stranded_logged_at: float | None = None

    # --- inputs -----------------------------------------------------------------------------------

    def on_status(self, peer: str, last_committed: int) -> None:
        state = self.peers.get(peer)
        if state is None:
            state = self.peers[peer] = SyncPeer()
        state.claimed = last_committed
        if self.wanted():
            self._wake.set()

    def on_disconnected(self, peer: str) -> None:
        state = self.peers.get(peer)
        if state is not None:
            state.claimed = 0  # the claim is renewed by the next status after a reconnect
            state.base = 0  # and it may come back with another store

    def poke(self) -> None:
        """Look again (the status loop calls this periodically)."""
        if self.wanted():
            self._wake.set()

    # --- decisions --------------------------------------------------------------------------------

    def _eligible(self, now: float) -> list[tuple[str, SyncPeer]]:
        height = self._host.height
        return [
            (p, s)
            for p, s in self.peers.items()
            if s.claimed > height and s.not_before <= now and s.base <= height + 1
        ]

    def stranded(self) -> dict[str, int]:
        """Peers ahead of this node that have pruned the next height it needs, with their bases,
        when no other peer ahead may be asked; else {}."""
        height = self._host.height
        ahead = {p: s for p, s in self.peers.items() if s.claimed > height}
        pruned = {p: s.base for p, s in ahead.items() if s.base > height + 1}
        return pruned if pruned and len(pruned) == len(ahead) else {}

    def _log_if_stranded(self) -> None:
        pruned = self.stranded()
        if not pruned:
            self._stranded_logged_at = None
            return
        now = self._clock()
        if self._stranded_logged_at is not None and now - self._stranded_logged_at < STRANDED_LOG_S:
            return
        self._stranded_logged_at = now
        bases = ", ".join(f"{p} from {b}" for p, b in sorted(pruned.items()))
        log.error(
            "block sync: every peer ahead has pruned height %d, which this node needs next (they keep "
            "blocks %s): it cannot catch up by block sync; add a peer that keeps every block, or join "
            "afresh by state sync (an empty data directory and [statesync] enable = true)",
            self._host.height + 1,
            bases,
        )

    def best_claim(self) -> int:
        """The highest height claimed by a peer that is not serving a penalty."""
        return max((s.claimed for _, s in self._eligible(self._clock())), default=0)

    def wanted(self) -> bool:
        """Is a peer that may be asked ahead of us (two heights, or one for a while)?"""
        height = self._host.height
        best = self.best_claim()
        if best <= height:
            self._behind_since = None
            return False
        now = self._clock()
        if best >= height + 2:
            return True
        if self._behind_since is None:
            self._behind_since = now
        return now - self._behind_since >= BEHIND_ONE_S

    def candidates(self) -> list[str]:
        """Peers to ask, best first: fewest strikes, most recent delivery, highest claim."""
        eligible = self._eligible(self._clock())
        eligible.sort(key=lambda ps: (ps[1].strikes, -ps[1].delivered_at, -ps[1].claimed, ps[0]))
        return [p for p, _ in eligible]

    def strike(self, peer: str, reason: str, message: str) -> None:
        state = self.peers.setdefault(peer, SyncPeer())
        state.strikes += 1
        backoff = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (state.strikes - 1))
        state.not_before = self._clock() + backoff
        self.faults[reason] = self.faults.get(reason, 0) + 1
        log.warning(
            "block sync: peer %s %s (%s); not asked again for %.0f s (strike %d)",
            peer,
            message,
            reason,
            backoff,
            state.strikes,
        )
        if self._on_fault is not None:
            self._on_fault(peer, reason)

    # --- serving peers ----------------------------------------------------------------------------

    async def serve(self, request: peer_pb2.GetBlocksRequest) -> AsyncIterator[peer_pb2.SyncBlock]:
        """A peer's GetBlocks: committed blocks with their certificates (node/blockserve.py)."""
        if self._source is None:
            return
        source = self._source
        for item in blocks_to_serve(
            request, self._host.height, source.load_block, source.load_commit, SYNC_BATCH,
            base_height=source.base_height(),
        ):  # fmt: skip
            yield item

    def sync_status(self) -> peer_pb2.SyncStatusResponse:
        height = self._host.height
        if not height:
            return peer_pb2.SyncStatusResponse(base_height=0, height=0)
        base = self._source.base_height() if self._source is not None else 1
        return peer_pb2.SyncStatusResponse(base_height=base, height=height)

    # --- the task ---------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            if not self.wanted():
                self._log_if_stranded()
                self._wake.clear()
                # Wait for a status, or look again soon (a penalty may expire; one height behind
                # becomes worth fetching after BEHIND_ONE_S).
                await wait_event(self._clock_of, self._wake, BEHIND_ONE_S)
                continue
            progressed = False
            self.active = True
            try:
                for peer in self.candidates():
                    if await self._sync_from(peer):
                        progressed = True
                        break
            finally:
                self.active = False
            if not progressed:
                # Nobody delivered: the eligible peers now serve penalties; wait for one to expire.
                await self._sleep(0.05)

    async def _sync_from(self, peer: str) -> bool:
        """Fetch and apply what peer claims; True if at least one block was applied."""
        state = self.peers[peer]
        start = self._host.height + 1
        target = min(state.claimed, self._host.height + SYNC_BATCH)
        if target < start:
            return False
        applied = 0
        stream = self._host.fetch_blocks(peer, start, target, SYNC_REQUEST_BYTES)
        try:
            timeout = FIRST_BLOCK_TIMEOUT_S
            while True:
                try:
                    sb = await asyncio.wait_for(anext(stream), timeout=timeout)
                except StopAsyncIteration:
                    break
                timeout = NEXT_BLOCK_TIMEOUT_S
                if not await self._host.apply_synced(peer, sb):
                    break  # consensus got there first: start again from the new height
                applied += 1
                self.blocks_synced += 1
                state.delivered += 1
                state.delivered_at = self._clock()
                state.strikes = 0
        except PeerFault as exc:
            self.strike(peer, exc.reason, f"served an invalid block: {exc.message}")
            return applied > 0
        except PeerPruned as exc:  # no fault: it keeps fewer blocks; not asked below its base again
            state.base = exc.base
            self.pruned_refusals += 1
            log.info("block sync: %s keeps blocks from height %d only; asking another peer", peer, exc.base)
            return applied > 0
        except TimeoutError:
            self.strike(peer, "stalled", f"sent no block within {timeout:.0f} s (claimed {state.claimed})")
            return applied > 0
        except ConnectionError as exc:
            self.strike(peer, "unavailable", f"could not serve blocks: {exc}")
            return applied > 0
        finally:
            await _close(stream)
        if applied == 0 and self._host.height < start:
            self.strike(
                peer, "false_claim", f"claimed height {state.claimed} but served nothing from {start}"
            )
        return applied > 0


async def _close(stream: AsyncIterator[peer_pb2.SyncBlock]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(RuntimeError, ConnectionError):
            await aclose()
