"""Snapshots of the ledger state for state sync: taking them, keeping them, serving them, and
verifying what a peer serves.

A snapshot is the ledger state at a committed height H: every state entry (the keys under b"\\x02",
the leaves of the Merkle tree; node/ledger/merkle.py), cut into chunks along the tree. Chunk i holds
the entries whose key hash starts with byte i, the subtree under the root node's child i. The
manifest carries the root node's encoding; its hash is the state root of H, which the header of H
carries and the commit certificate of H signs. So:

- the manifest verifies against a verified header (`verify_manifest`): root node hash == state
  root, and one chunk for each child of the root node, no more;
- each chunk verifies on arrival, alone (`verify_chunk`): the subtree its entries build is exactly
  the root node's entry i (a leaf child, or an internal child with that hash). A chunk that does
  not is the serving peer's fault and is never written;
- the state rebuilt from all chunks has the state root of H (`rebuild_state`, checked again).

Chunks follow the tree's top level, so there are at most 256 of them: about 4,000 entries (0.5 MiB)
each for a million entries. The manifest's per-chunk sha256 lets a node compare what peers serve;
the tree, not the hash, is what a chunk is trusted by.

Taking a snapshot reads a LevelDB snapshot of the store (a consistent view of height H while the
node commits on) in a thread of its own, writes the chunks and then the manifest into
<data>/snapshots/<H>/, and renames the directory into place last, so a crash leaves no half a
snapshot to serve. The newest `keep` snapshots are kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clearline.v1 import block_pb2, peer_pb2
from node.ledger import merkle
from node.ledger.kv import MemoryKV, Writes

log = logging.getLogger("clearline.snapshot")

FORMAT = 1
ENTRY_PREFIX = b"\x02"  # state entries (Merkle leaves); b"\x01" holds the tree's nodes
MANIFEST = "manifest.pb"
# A chunk of more entries than this is refused (a peer could otherwise make a node hold any amount
# in memory): 256 chunks of it is 16 million entries, far above any bank network's state.
MAX_CHUNK_ENTRIES = 65_536
MAX_CHUNK_BYTES = 64 << 20


class SnapshotInvalid(Exception):
    """What a peer served does not verify (its fault, never the node's)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    index: int
    data: bytes


def _root_entries(root_node: bytes) -> dict[int, bytes]:
    """The root node's children: index -> the 65-byte child (type + payload)."""
    if len(root_node) % merkle.ENTRY_LEN:
        raise SnapshotInvalid(f"root node of {len(root_node)} bytes is not whole entries")
    out: dict[int, bytes] = {}
    last = -1
    for off in range(0, len(root_node), merkle.ENTRY_LEN):
        index = root_node[off]
        if index <= last:
            raise SnapshotInvalid("root node entries are not in ascending index order")
        last = index
        out[index] = root_node[off + 1 : off + merkle.ENTRY_LEN]
    return out


# --- taking ------------------------------------------------------------------------------------------


def cut_chunks(entries: Iterable[tuple[bytes, bytes]]) -> list[Chunk]:
    """State entries (any order) as chunks by the first byte of their key hash, each sorted by key
    hash; empty subtrees have no chunk."""
    buckets: dict[int, list[tuple[bytes, bytes, bytes]]] = {}
    sha = hashlib.sha256
    for key, value in entries:
        kh = sha(key).digest()
        buckets.setdefault(kh[0], []).append((kh, bytes(key), bytes(value)))
    chunks = []
    for index in sorted(buckets):
        items = sorted(buckets[index])
        msg = peer_pb2.SnapshotEntries(keys=[k for _h, k, _v in items], values=[v for _h, _k, v in items])
        chunks.append(Chunk(index, msg.SerializeToString(deterministic=True)))
    return chunks


def make_manifest(
    height: int, state_root: bytes, root_node: bytes, chunks: list[Chunk]
) -> peer_pb2.SnapshotManifest:
    manifest = peer_pb2.SnapshotManifest(
        format=FORMAT, height=height, state_root=state_root, root_node=root_node
    )
    for chunk in chunks:
        entries = peer_pb2.SnapshotEntries.FromString(chunk.data)
        manifest.chunks.add(
            index=chunk.index,
            hash=hashlib.sha256(chunk.data).digest(),
            entries=len(entries.keys),
            size=len(chunk.data),
        )
    return manifest


class SnapshotStore:
    """The snapshots a node keeps under one directory: <dir>/<height>/{manifest.pb, <index>.chunk}."""

    def __init__(self, directory: Path, keep: int = 2) -> None:
        self.dir = directory
        self.keep = max(1, keep)
        self._manifests: dict[int, peer_pb2.SnapshotManifest] = {}
        self._load()

    def _load(self) -> None:
        if not self.dir.exists():
            return
        for entry in self.dir.iterdir():
            if entry.name.startswith("tmp-"):  # a snapshot a crash interrupted
                shutil.rmtree(entry, ignore_errors=True)
                continue
            if not entry.name.isdigit():
                continue
            try:
                manifest = peer_pb2.SnapshotManifest.FromString((entry / MANIFEST).read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("snapshot %s is unreadable (%s): removed", entry, exc)
                shutil.rmtree(entry, ignore_errors=True)
                continue
            self._manifests[manifest.height] = manifest

    def manifests(self) -> list[peer_pb2.SnapshotManifest]:
        """The snapshots kept, newest first."""
        return [self._manifests[h] for h in sorted(self._manifests, reverse=True)]

    def heights(self) -> list[int]:
        return sorted(self._manifests)

    def chunk(self, height: int, index: int) -> bytes | None:
        manifest = self._manifests.get(height)
        if manifest is None or not any(c.index == index for c in manifest.chunks):
            return None
        try:
            return (self.dir / str(height) / f"{index}.chunk").read_bytes()
        except OSError:
            return None

    def write(self, manifest: peer_pb2.SnapshotManifest, chunks: list[Chunk]) -> None:
        """Write a snapshot (in a temporary directory renamed into place last), then drop the
        oldest beyond `keep`. Runs in the snapshot thread; the in-memory index changes last."""
        final = self.dir / str(manifest.height)
        if final.exists():
            return
        tmp = self.dir / f"tmp-{manifest.height}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for chunk in chunks:
            (tmp / f"{chunk.index}.chunk").write_bytes(chunk.data)
        (tmp / MANIFEST).write_bytes(manifest.SerializeToString(deterministic=True))
        _fsync_dir_files(tmp)
        os.replace(tmp, final)
        self._manifests = {**self._manifests, manifest.height: manifest}
        for height in sorted(self._manifests)[: -self.keep]:
            self._manifests = {h: m for h, m in self._manifests.items() if h != height}
            shutil.rmtree(self.dir / str(height), ignore_errors=True)


def _fsync_dir_files(directory: Path) -> None:
    for path in directory.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def take(
    view: Iterable[tuple[bytes, bytes]], root_node: bytes, height: int, state_root: bytes
) -> tuple[peer_pb2.SnapshotManifest, list[Chunk]]:
    """The snapshot of a consistent view: its state entries (key, value) and root node encoding."""
    chunks = cut_chunks(view)
    manifest = make_manifest(height, state_root, root_node, chunks)
    # The snapshot must verify as a joining node will check it: a broken one is a bug here.
    verify_manifest_root(manifest)
    return manifest, chunks


# --- verifying -----------------------------------------------------------------------------------------


def verify_manifest_root(manifest: peer_pb2.SnapshotManifest) -> None:
    """The manifest is self-consistent: its root node hashes to its state root, and it lists one
    chunk for each child of the root node."""
    if manifest.format != FORMAT:
        raise SnapshotInvalid(f"snapshot format {manifest.format} (this node reads {FORMAT})")
    if merkle.compute_node_hash(manifest.root_node) != manifest.state_root:
        raise SnapshotInvalid("the manifest's root node does not hash to its state root")
    children = _root_entries(manifest.root_node)
    listed = [c.index for c in manifest.chunks]
    if listed != sorted(children):
        raise SnapshotInvalid(
            f"the manifest lists chunks {listed[:8]}... but the root node has children {sorted(children)[:8]}..."
        )
    for info in manifest.chunks:
        if info.entries > MAX_CHUNK_ENTRIES or info.size > MAX_CHUNK_BYTES:
            raise SnapshotInvalid(
                f"chunk {info.index} of {info.entries} entries, {info.size} bytes: too large"
            )


def verify_manifest(manifest: peer_pb2.SnapshotManifest, header: block_pb2.Header) -> None:
    """The manifest is of the verified header's height and state root, and self-consistent."""
    if manifest.height != header.height:
        raise SnapshotInvalid(f"manifest of height {manifest.height} for header {header.height}")
    if manifest.state_root != header.state_root:
        raise SnapshotInvalid(f"manifest state root differs from the header's at height {header.height}")
    verify_manifest_root(manifest)


def verify_chunk(manifest: peer_pb2.SnapshotManifest, index: int, data: bytes) -> list[tuple[bytes, bytes]]:
    """The entries of chunk `index` if they build exactly the root node's child `index`; else
    SnapshotInvalid. (The manifest was verified against a header first.)"""
    children = _root_entries(manifest.root_node)
    expected = children.get(index)
    if expected is None:
        raise SnapshotInvalid(f"the snapshot has no chunk {index}")
    if len(data) > MAX_CHUNK_BYTES:
        raise SnapshotInvalid(f"chunk {index} of {len(data)} bytes")
    try:
        msg = peer_pb2.SnapshotEntries.FromString(data)
    except Exception as exc:  # a peer's bytes: any parse failure is its fault
        raise SnapshotInvalid(f"chunk {index} does not parse: {exc}") from None
    if len(msg.keys) != len(msg.values) or not msg.keys or len(msg.keys) > MAX_CHUNK_ENTRIES:
        raise SnapshotInvalid(f"chunk {index} has {len(msg.keys)} keys and {len(msg.values)} values")
    sha = hashlib.sha256
    items: list[merkle.Change] = []
    out: list[tuple[bytes, bytes]] = []
    last = b""
    for key, value in zip(msg.keys, msg.values, strict=True):
        if not key.startswith(ENTRY_PREFIX):
            raise SnapshotInvalid(f"chunk {index} holds a key outside the ledger's entries")
        kh = sha(key).digest()
        if kh[0] != index or kh <= last:
            raise SnapshotInvalid(f"chunk {index} is not its subtree's entries in key-hash order")
        last = kh
        items.append((kh, sha(value).digest()))
        out.append((key, value))
    _root, writes = merkle.MerkleTree(MemoryKV()).update_sorted(items)
    built = writes.get(merkle.NODE_PREFIX) or b""
    if built[:1] != bytes((index,)) or built[1:] != expected or len(built) != merkle.ENTRY_LEN:
        raise SnapshotInvalid(f"chunk {index} does not build the state root's subtree {index}")
    return out


def rebuild_state(entries: Iterable[tuple[bytes, bytes]], state_root: bytes) -> Writes:
    """The store writes of the state made of these entries (entries and stored Merkle nodes), after
    checking that it has state_root."""
    from node.ledger.ledger import compute_state_root

    writes: Writes = dict(entries)
    empty = MemoryKV()
    root, node_writes = compute_state_root(empty, writes)
    if root != state_root:
        raise SnapshotInvalid("the rebuilt state does not have the snapshot's state root")
    writes.update(merkle.stored_node_writes(node_writes, merkle.ChunkedNodes(empty)))
    return writes


# --- serving --------------------------------------------------------------------------------------------


class SnapshotService:
    """What a node serves a joining peer: its snapshots, their chunks, and light blocks (a header,
    its certificate, and the validator sets of its height and the next) to verify them by."""

    def __init__(self, store: Any, snapshots: SnapshotStore) -> None:
        self._store = store
        self.snapshots = snapshots

    def list_snapshots(self) -> peer_pb2.ListSnapshotsResponse:
        manifests = self.snapshots.manifests()
        resp = peer_pb2.ListSnapshotsResponse(snapshots=manifests)
        if manifests:
            top = manifests[0].height + 2
            resp.validator_set_changes.extend(h for h in self._store.validator_set_changes() if h <= top)
        return resp

    def snapshot_chunk(self, request: peer_pb2.SnapshotChunkRequest) -> peer_pb2.SnapshotChunk | None:
        data = self.snapshots.chunk(request.height, request.index)
        if data is None:
            return None
        return peer_pb2.SnapshotChunk(height=request.height, index=request.index, data=data)

    def light_block(self, request: peer_pb2.LightBlockRequest) -> peer_pb2.LightBlock | None:
        height = request.height
        if not 0 < height <= self._store.latest_height():
            return None
        block = self._store.load_block(height)
        commit = self._store.load_commit(height)
        validators = self._store.load_validator_set(height)
        following = self._store.load_validator_set(height + 1)
        if block is None or commit is None or validators is None or following is None:
            return None
        return peer_pb2.LightBlock(
            header=block.header, commit=commit, validators=validators, next_validators=following
        )
