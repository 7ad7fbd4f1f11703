"""State sync: a new or wiped node joins from a snapshot its peers serve, trusting none of them.

1. **Discover**: ask every peer for its snapshots (ListSnapshots). None offered within
   `[statesync] discovery_s`: the node starts from genesis and block-syncs (a young chain).
2. **Trust the header** of the newest offered height, light-client style: from the genesis
   validator set (or from `[statesync] trust_height`/`trust_hash`), walk the validator-set changes
   the peer lists, verifying at each change the commit certificate of the header that scheduled it
   with the set trusted so far, and take the next set from the header's hash; then verify the
   snapshot height's header with the set in effect there. A peer that lies about the changes
   cannot make a header verify with a set it did not have.
3. **Verify the manifest** against that header (node/snapshot.py: the root node hashes to the
   state root) and **fetch the chunks** from all the peers offering that height, `fetchers` at a
   time: each verifies alone against the root node before it is kept. A chunk that does not verify,
   does not arrive within `chunk_timeout_s` or fails to parse is counted against its peer (`on_fault`),
   and the chunk is asked of another peer; a peer with MAX_STRIKES is not asked again.
4. **Rebuild** the state (its root is checked once more), fetch the snapshot height's block (its
   header must hash to the verified header) and hand back everything the store needs to continue
   from there: the node then block-syncs the heights after it and starts voting.

Nothing is written until all of it verifies (the store writes it in one batch), so a node killed
in the middle starts over with nothing half-written.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from clearline.v1 import block_pb2, peer_pb2, state_pb2
from node import blocks, crypto, snapshot, validation
from node.clock import Clock
from node.errors import InvalidBlock
from node.ledger.kv import Writes
from node.ledger.state import VALIDATORS

log = logging.getLogger("clearline.statesync")

# A peer that failed this many requests (bad chunk, bad manifest, stall) is not asked again.
MAX_STRIKES = 3
LIST_TIMEOUT_S = 3.0
LIGHT_TIMEOUT_S = 5.0
ANCHOR_TIMEOUT_S = 10.0


class SnapshotSource(Protocol):
    """What state sync needs from the network (the peer network, or the node simulation's)."""

    def snapshot_peers(self) -> list[str]: ...

    async def list_snapshots(self, peer: str) -> peer_pb2.ListSnapshotsResponse: ...

    async def snapshot_chunk(self, peer: str, height: int, index: int) -> peer_pb2.SnapshotChunk: ...

    async def light_block(self, peer: str, height: int) -> peer_pb2.LightBlock: ...

    def fetch_blocks(
        self, peer: str, from_height: int, to_height: int, max_bytes: int
    ) -> AsyncIterator[peer_pb2.SyncBlock]: ...


class StateSyncFailed(Exception):
    """No offered snapshot could be verified and fetched from the peers at hand."""


@dataclass(frozen=True, slots=True)
class Trust:
    """Where trust starts: the genesis validator set, or a header of a known height and hash."""

    genesis_set: block_pb2.ValidatorSet
    height: int = 0
    block_hash: bytes = b""


@dataclass(frozen=True, slots=True)
class Synced:
    """A verified snapshot, ready for the store."""

    height: int
    block: block_pb2.Block
    block_hash: bytes
    commit: block_pb2.CommitCertificate
    state_writes: Writes
    validator_sets: dict[int, block_pb2.ValidatorSet]  # the set that signs from each height
    chunks: int
    entries: int


class _Bad(Exception):
    """A peer's answer does not verify: kind is the fault counted against it."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


def verify_light_block(
    chain_id: str, lb: peer_pb2.LightBlock, trusted: block_pb2.ValidatorSet, height: int
) -> None:
    """lb is the header of `height`, signed by more than 2/3 of `trusted`, with its sets' hashes."""
    header = lb.header
    if header.height != height or header.chain_id != chain_id:
        raise _Bad("bad_light_block", f"light block of height {header.height}, chain {header.chain_id!r}")
    if blocks.validator_set_hash(trusted) != header.validator_set_hash:
        raise _Bad("bad_light_block", f"the header of {height} is not signed by the trusted validator set")
    try:
        blocks.verify_commit(
            chain_id, trusted, lb.commit, height=height, block_hash=blocks.block_hash(header)
        )
    except blocks.CommitError as exc:
        raise _Bad("bad_light_block", f"the certificate of {height} does not verify: {exc}") from None
    if blocks.validator_set_hash(lb.next_validators) != header.next_validator_set_hash:
        raise _Bad("bad_light_block", f"the next validator set served with {height} is not the header's")


def sets_from_state(entries: dict[bytes, bytes], names: block_pb2.ValidatorSet) -> block_pb2.ValidatorSet:
    """The validator set the ledger state records (genesis plus applied changes): the one that
    signs two heights after the snapshot's. Names come from `names` where it knows the key."""
    raw = entries.get(VALIDATORS)
    if raw is None:
        raise _Bad("bad_chunk", "the snapshot holds no validator set")
    recorded = state_pb2.ValidatorSetState.FromString(raw)
    labels = {v.public_key: v.name for v in names.validators}
    out = block_pb2.ValidatorSet()
    for entry in sorted(recorded.validators, key=lambda e: crypto.address_of(e.public_key)):
        out.validators.add(
            address=crypto.address_of(entry.public_key),
            public_key=entry.public_key,
            power=entry.power,
            name=labels.get(entry.public_key, ""),
        )
    return out


class StateSync:
    def __init__(
        self,
        source: SnapshotSource,
        *,
        chain_id: str,
        trust: Trust,
        clock: Clock,
        on_fault: Callable[[str, str], None] = lambda peer, kind: None,
        fetchers: int = 4,
        chunk_timeout_s: float = 10.0,
        discovery_s: float = 10.0,
        seed: int | None = None,
    ) -> None:
        self._source = source
        self._chain_id = chain_id
        self._trust = trust
        self._clock = clock
        self._on_fault = on_fault
        self._fetchers = max(1, fetchers)
        self._chunk_timeout_s = chunk_timeout_s
        self._discovery_s = discovery_s
        self._rng = random.Random(seed)
        self.strikes: dict[str, int] = {}
        self.faults: list[tuple[str, str]] = []

    # --- faults -------------------------------------------------------------------------------------

    def _fault(self, peer: str, kind: str, detail: str) -> None:
        self.strikes[peer] = self.strikes.get(peer, 0) + 1
        self.faults.append((peer, kind))
        log.warning("state sync: %s from %s: %s", kind, peer, detail)
        self._on_fault(peer, kind)

    def _usable(self, peer: str) -> bool:
        return self.strikes.get(peer, 0) < MAX_STRIKES

    # --- the whole ------------------------------------------------------------------------------------

    async def run(self) -> Synced | None:
        """A verified snapshot, or None when no peer offers one within discovery_s. Raises
        StateSyncFailed when snapshots were offered but none could be verified and fetched."""
        offers = await self._discover()
        if not offers:
            return None
        for height in sorted(offers, reverse=True):
            if height < self._trust.height:
                continue
            peers = {p: r for p, r in offers[height].items() if self._usable(p)}
            if not peers:
                continue
            try:
                return await self._sync_height(height, peers)
            except StateSyncFailed as exc:
                log.warning("state sync at height %d failed: %s", height, exc)
        raise StateSyncFailed("no offered snapshot could be verified and fetched")

    async def _discover(self) -> dict[int, dict[str, peer_pb2.ListSnapshotsResponse]]:
        deadline = self._clock.monotonic() + self._discovery_s
        while True:
            peers = [p for p in self._source.snapshot_peers() if self._usable(p)]
            answers = await asyncio.gather(*(self._list(p) for p in peers))
            offers: dict[int, dict[str, peer_pb2.ListSnapshotsResponse]] = {}
            for peer, resp in zip(peers, answers, strict=True):
                if resp is None:
                    continue
                for manifest in resp.snapshots[:8]:
                    if manifest.height > 0:
                        offers.setdefault(manifest.height, {})[peer] = resp
            if offers:
                log.info("state sync: snapshots offered at heights %s", sorted(offers, reverse=True)[:5])
                return offers
            if self._clock.monotonic() >= deadline:
                log.info("state sync: no snapshot offered within %.0f s", self._discovery_s)
                return {}
            await asyncio.sleep(0.5)

    async def _list(self, peer: str) -> peer_pb2.ListSnapshotsResponse | None:
        try:
            return await asyncio.wait_for(self._source.list_snapshots(peer), LIST_TIMEOUT_S)
        except (TimeoutError, ConnectionError) as exc:
            log.debug("state sync: %s did not list snapshots: %s", peer, exc)
            return None

    # --- one height -------------------------------------------------------------------------------------

    async def _sync_height(self, height: int, offers: dict[str, peer_pb2.ListSnapshotsResponse]) -> Synced:
        order = list(offers)
        self._rng.shuffle(order)
        header_lb: peer_pb2.LightBlock | None = None
        trusted: block_pb2.ValidatorSet | None = None
        for peer in order:
            try:
                header_lb, trusted = await self._verify_header(
                    peer, height, offers[peer].validator_set_changes
                )
                break
            except _Bad as bad:
                self._fault(peer, bad.kind, str(bad))
            except (TimeoutError, ConnectionError) as exc:
                self._fault(peer, "stall", f"light block: {str(exc) or 'timed out'}")
        if header_lb is None or trusted is None:
            raise StateSyncFailed(f"no peer served a verifiable header of height {height}")
        header = header_lb.header
        manifests: dict[str, peer_pb2.SnapshotManifest] = {}
        for peer in order:
            manifest = next(m for m in offers[peer].snapshots if m.height == height)
            try:
                snapshot.verify_manifest(manifest, header)
            except snapshot.SnapshotInvalid as exc:
                self._fault(peer, "bad_manifest", str(exc))
                continue
            manifests[peer] = manifest
        if not manifests:
            raise StateSyncFailed(f"no peer served a manifest of height {height} that matches its header")
        reference = next(iter(manifests.values()))  # all verified manifests share the root node
        entries = await self._fetch_chunks(height, reference, manifests)
        block, block_hash = await self._anchor(height, header, list(manifests))
        state_writes = self._rebuild(entries, header.state_root)
        sets = {height: trusted, height + 1: header_lb.next_validators}
        try:
            sets[height + 2] = sets_from_state(entries, header_lb.next_validators)
        except _Bad as bad:  # a root-verified state without a validator set: cannot be (no peer to blame)
            raise StateSyncFailed(str(bad)) from None
        log.info(
            "state sync: verified height %d: %d chunks, %d entries",
            height,
            len(reference.chunks),
            len(entries),
        )
        return Synced(
            height=height,
            block=block,
            block_hash=block_hash,
            commit=header_lb.commit,
            state_writes=state_writes,
            validator_sets=sets,
            chunks=len(reference.chunks),
            entries=len(entries),
        )

    def _rebuild(self, entries: dict[bytes, bytes], state_root: bytes) -> Writes:
        """The store writes of the fetched state, checked once more against the state root."""
        try:
            return snapshot.rebuild_state(entries.items(), state_root)
        except snapshot.SnapshotInvalid as exc:  # every chunk verified: this cannot be a peer's doing
            raise StateSyncFailed(str(exc)) from None

    async def _verify_header(
        self, peer: str, height: int, changes: Iterable[int]
    ) -> tuple[peer_pb2.LightBlock, block_pb2.ValidatorSet]:
        """The light block of `height` from peer, verified from the trusted start; and its set."""
        trust = self._trust
        trusted, at = trust.genesis_set, 1
        if trust.height:
            lb = await self._light(peer, trust.height)
            if blocks.block_hash(lb.header) != trust.block_hash:
                raise _Bad(
                    "bad_light_block", f"the header of the trusted height {trust.height} has another hash"
                )
            if blocks.validator_set_hash(lb.validators) != lb.header.validator_set_hash:
                raise _Bad(
                    "bad_light_block", "the validator set served with the trusted header is not its own"
                )
            trusted, at = lb.validators, trust.height
        for start in sorted({int(h) for h in changes}):
            if not at < start <= height:
                continue
            # The set signing from `start` was scheduled in block start - 2 and is named by the
            # header of start - 1 (its next set), which the set trusted until then signs.
            lb = await self._light(peer, start - 1)
            verify_light_block(self._chain_id, lb, trusted, start - 1)
            trusted, at = lb.next_validators, start
        lb = await self._light(peer, height)
        verify_light_block(self._chain_id, lb, trusted, height)
        return lb, trusted

    async def _light(self, peer: str, height: int) -> peer_pb2.LightBlock:
        return await asyncio.wait_for(self._source.light_block(peer, height), LIGHT_TIMEOUT_S)

    async def _fetch_chunks(
        self,
        height: int,
        reference: peer_pb2.SnapshotManifest,
        manifests: dict[str, peer_pb2.SnapshotManifest],
    ) -> dict[bytes, bytes]:
        todo: asyncio.Queue[int] = asyncio.Queue()
        for info in reference.chunks:
            todo.put_nowait(info.index)
        entries: dict[bytes, bytes] = {}
        done: set[int] = set()
        busy: set[str] = set()
        failed = asyncio.Event()

        def pick() -> str | None:
            good = [p for p in manifests if self._usable(p)]
            if not good:
                return None
            free = [p for p in good if p not in busy] or good
            return min(free, key=lambda p: (self.strikes.get(p, 0), self._rng.random()))

        async def worker() -> None:
            while len(done) < len(reference.chunks) and not failed.is_set():
                try:
                    index = todo.get_nowait()
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0.01)
                    continue
                if index in done:
                    continue
                peer = pick()
                if peer is None:
                    failed.set()
                    return
                busy.add(peer)
                try:
                    got = await self._chunk(peer, height, index, manifests[peer])
                finally:
                    busy.discard(peer)
                if got is None:
                    todo.put_nowait(index)
                    continue
                entries.update(got)
                done.add(index)

        await asyncio.gather(*(worker() for _ in range(min(self._fetchers, len(reference.chunks)) or 1)))
        if len(done) < len(reference.chunks):
            raise StateSyncFailed(
                f"{len(reference.chunks) - len(done)} chunks of height {height} could not be fetched from any peer"
            )
        return entries

    async def _chunk(
        self, peer: str, height: int, index: int, manifest: peer_pb2.SnapshotManifest
    ) -> list[tuple[bytes, bytes]] | None:
        try:
            chunk = await asyncio.wait_for(
                self._source.snapshot_chunk(peer, height, index), self._chunk_timeout_s
            )
            if chunk.height != height or chunk.index != index:
                raise snapshot.SnapshotInvalid(
                    f"asked for chunk {index} of {height}, got {chunk.index} of {chunk.height}"
                )
            got = snapshot.verify_chunk(manifest, index, chunk.data)
        except snapshot.SnapshotInvalid as exc:
            self._fault(peer, "bad_chunk", str(exc))
            return None
        except (TimeoutError, ConnectionError) as exc:
            self._fault(peer, "stall", f"chunk {index}: {str(exc) or 'timed out'}")
            return None
        info = next((c for c in manifest.chunks if c.index == index), None)
        if info is not None and info.hash != crypto.sha256(chunk.data):
            # The chunk is right (it builds the certified subtree): the peer's manifest lied.
            self._fault(peer, "bad_manifest", f"chunk {index} hash differs from its manifest")
        return got

    async def _anchor(
        self, height: int, header: block_pb2.Header, peers: list[str]
    ) -> tuple[block_pb2.Block, bytes]:
        """The block of the snapshot's height (the node continues from it): its header must be
        the verified one."""
        want = blocks.block_hash(header)
        for _ in range(2 * len(peers)):
            usable = [p for p in peers if self._usable(p)]
            if not usable:
                break
            peer = min(usable, key=lambda p: (self.strikes.get(p, 0), self._rng.random()))
            try:
                async with asyncio.timeout(ANCHOR_TIMEOUT_S):
                    async for sb in self._source.fetch_blocks(peer, height, height, 64 << 20):
                        if blocks.block_hash(sb.block.header) != want:
                            raise _Bad("bad_block", f"block {height} is not the verified header's")
                        try:
                            validation.check_tx_root(sb.block)
                        except InvalidBlock as exc:
                            raise _Bad("bad_block", f"block {height}: {exc}") from None
                        return sb.block, want
            except _Bad as bad:
                self._fault(peer, bad.kind, str(bad))
            except (TimeoutError, ConnectionError) as exc:
                self._fault(peer, "stall", f"block {height}: {str(exc) or 'timed out'}")
        raise StateSyncFailed(f"no peer served the block of height {height}")
