"""node.snapshot: chunks along the Merkle tree verify alone against the root node, a tampered chunk or
manifest is refused, and the rebuilt state has the snapshot's root."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from clearline.v1 import block_pb2, peer_pb2
from node import snapshot
from node.ledger import merkle
from node.ledger.kv import MemoryKV
from node.ledger.ledger import compute_state_root


def _state(n: int) -> dict[bytes, bytes]:
    return {b"\x02a/" + i.to_bytes(20, "big"): f"account {i}".encode() * 3 for i in range(n)}


def _taken(n: int, height: int = 7) -> tuple[peer_pb2.SnapshotManifest, list[snapshot.Chunk], bytes]:
    entries = _state(n)
    kv = MemoryKV()
    root, node_writes = compute_state_root(kv, dict(entries))
    manifest, chunks = snapshot.take(entries.items(), node_writes[merkle.NODE_PREFIX] or b"", height, root)
    return manifest, chunks, root


@pytest.mark.parametrize("n", [1, 2, 300, 5000])
def test_every_chunk_verifies_alone_and_the_whole_rebuilds_the_root(n: int) -> None:
    manifest, chunks, root = _taken(n)
    header = block_pb2.Header(height=7, state_root=root)
    snapshot.verify_manifest(manifest, header)
    got: list[tuple[bytes, bytes]] = []
    for chunk in chunks:
        got += snapshot.verify_chunk(manifest, chunk.index, chunk.data)
    assert sorted(got) == sorted(_state(n).items())
    writes = snapshot.rebuild_state(got, root)
    rebuilt = MemoryKV({k: v for k, v in writes.items() if v is not None})
    assert merkle.MerkleTree(merkle.ChunkedNodes(rebuilt)).root_hash() == root
    assert len(chunks) == len(manifest.chunks) <= 256
    assert all(
        c.hash == hashlib.sha256(ch.data).digest() for c, ch in zip(manifest.chunks, chunks, strict=True)
    )


def test_a_tampered_chunk_is_refused() -> None:
    manifest, chunks, _root = _taken(2000)
    chunk = chunks[3]
    entries = peer_pb2.SnapshotEntries.FromString(chunk.data)
    changed = peer_pb2.SnapshotEntries(
        keys=entries.keys, values=[entries.values[0] + b"x", *entries.values[1:]]
    )
    dropped = peer_pb2.SnapshotEntries(keys=entries.keys[1:], values=entries.values[1:])
    foreign = chunks[4].data  # another subtree's (valid) entries
    for bad, why in (
        (changed.SerializeToString(), "does not build"),
        (dropped.SerializeToString(), "does not build"),
        (foreign, "key-hash order"),
        (b"\xff\xff garbage", "does not parse"),
        (b"", "0 keys"),
    ):
        with pytest.raises(snapshot.SnapshotInvalid, match=why):
            snapshot.verify_chunk(manifest, chunk.index, bad)
    small, small_chunks, _ = _taken(20)  # 20 entries: most subtrees are empty
    missing = next(i for i in range(256) if i not in {c.index for c in small_chunks})
    with pytest.raises(snapshot.SnapshotInvalid, match="no chunk"):
        snapshot.verify_chunk(small, missing, small_chunks[0].data)


def test_a_manifest_that_does_not_match_the_header_or_itself_is_refused() -> None:
    manifest, _chunks, root = _taken(500)
    header = block_pb2.Header(height=7, state_root=root)
    wrong_root = block_pb2.Header(height=7, state_root=b"\x00" * 32)
    wrong_height = block_pb2.Header(height=8, state_root=root)
    for h, why in ((wrong_root, "state root"), (wrong_height, "height")):
        with pytest.raises(snapshot.SnapshotInvalid, match=why):
            snapshot.verify_manifest(manifest, h)
    forged = peer_pb2.SnapshotManifest()
    forged.CopyFrom(manifest)
    forged.root_node = manifest.root_node[:-1] + bytes([manifest.root_node[-1] ^ 1])
    with pytest.raises(snapshot.SnapshotInvalid, match="does not hash"):
        snapshot.verify_manifest(forged, header)
    short = peer_pb2.SnapshotManifest()
    short.CopyFrom(manifest)
    del short.chunks[-1]
    with pytest.raises(snapshot.SnapshotInvalid, match="lists chunks"):
        snapshot.verify_manifest(short, header)
    huge = peer_pb2.SnapshotManifest()
    huge.CopyFrom(manifest)
    huge.chunks[0].entries = snapshot.MAX_CHUNK_ENTRIES + 1
    with pytest.raises(snapshot.SnapshotInvalid, match="too large"):
        snapshot.verify_manifest(huge, header)
    with pytest.raises(snapshot.SnapshotInvalid, match="rebuilt state"):
        snapshot.rebuild_state(_state(499).items(), root)


def test_the_store_keeps_the_newest_and_drops_interrupted_ones(tmp_path: Path) -> None:
    store = snapshot.SnapshotStore(tmp_path / "snaps", keep=2)
    for height in (10, 20, 30):
        manifest, chunks, _root = _taken(50, height)
        store.write(manifest, chunks)
    assert store.heights() == [20, 30] and not (tmp_path / "snaps" / "10").exists()
    first = store.manifests()[0]
    assert first.height == 30
    assert store.chunk(30, first.chunks[0].index) is not None and store.chunk(10, 0) is None
    (tmp_path / "snaps" / "tmp-40").mkdir()  # a crash while writing
    reopened = snapshot.SnapshotStore(tmp_path / "snaps", keep=2)
    assert reopened.heights() == [20, 30] and not (tmp_path / "snaps" / "tmp-40").exists()
