"""The sparse Merkle tree: roots, history independence, proofs and their failure on tampering."""

from __future__ import annotations

import hashlib
import random

import pytest

from clearline.v1 import ledger_api_pb2
from node.ledger import MemoryKV
from node.ledger.merkle import (
    CHUNK_PREFIX,
    CHUNK_SPAN,
    EMPTY_ROOT,
    ENTRY_LEN,
    N_CHUNKS,
    NODE_PREFIX,
    WHOLE_MAX,
    ChunkedNodes,
    MerkleTree,
    key_hash,
    split_chunks,
    stored_node_writes,
    value_hash,
    verify_proof,
)


def build(items: dict[bytes, bytes], kv: MemoryKV | None = None) -> tuple[MemoryKV, bytes]:
    kv = kv if kv is not None else MemoryKV()
    root, writes = MerkleTree(kv).update({key_hash(k): value_hash(v) for k, v in items.items()})
    kv.apply(writes)
    return kv, root


def keys(n: int, prefix: bytes = b"k") -> list[bytes]:
    return [prefix + i.to_bytes(4, "big") for i in range(n)]


def test_empty_tree() -> None:
    kv = MemoryKV()
    assert MerkleTree(kv).root_hash() == EMPTY_ROOT
    proof = MerkleTree(kv).prove(b"absent")
    assert verify_proof(EMPTY_ROOT, b"absent", None, proof)
    assert not verify_proof(EMPTY_ROOT, b"absent", b"v", proof)


def test_root_is_independent_of_history() -> None:
    """Insert in one batch, or in several, or with extra keys later deleted: the same root and nodes."""
    items = {k: b"v" + k for k in keys(3000)}
    kv1, root1 = build(items)
    kv2 = MemoryKV()
    ks = list(items)
    for lo in range(0, len(ks), 700):
        kv2, root2 = build({k: items[k] for k in ks[lo : lo + 700]}, kv2)
    extra = {k: b"x" for k in keys(500, b"extra")}
    kv3, _ = build({**items, **extra})
    root3, writes = MerkleTree(kv3).update({key_hash(k): None for k in extra})
    kv3.apply(writes)
    assert root1 == root2 == root3
    nodes = [dict((k, v) for k, v in kv.items() if k.startswith(NODE_PREFIX)) for kv in (kv1, kv2, kv3)]
    assert nodes[0] == nodes[1] == nodes[2]


def test_delete_everything_gives_empty_root() -> None:
    items = {k: b"v" for k in keys(600)}
    kv, _ = build(items)
    root, writes = MerkleTree(kv).update({key_hash(k): None for k in items})
    kv.apply(writes)
    assert root == EMPTY_ROOT and len(kv) == 0


def test_update_changes_root_and_is_pure() -> None:
    items = {k: b"v" for k in keys(100)}
    kv, root = build(items)
    before = dict(kv.items())
    new_root, _ = MerkleTree(kv).update({key_hash(keys(1)[0]): value_hash(b"w")})
    assert new_root != root and dict(kv.items()) == before


def test_update_touches_only_the_paths_of_changed_keys() -> None:
    kv, _ = build({k: b"v" for k in keys(20_000)})
    _, writes = MerkleTree(kv).update({key_hash(b"k\x00\x00\x00\x05"): value_hash(b"new")})
    assert 1 <= len(writes) <= 3  # root, and at most two levels below it for 20k keys


@pytest.mark.parametrize("n", [1, 2, 300, 5000])
def test_proofs_of_present_and_absent_keys(n: int) -> None:
    items = {k: hashlib.sha256(k).digest() for k in keys(n)}
    kv, root = build(items)
    tree = MerkleTree(kv)
    for k in list(items)[:: max(1, n // 50)]:
        proof = tree.prove(k)
        assert proof.present and verify_proof(root, k, items[k], proof)
        assert not verify_proof(root, k, items[k] + b"x", proof)  # tampered value
        assert not verify_proof(root, k, None, proof)  # presence is not absence
        assert not verify_proof(hashlib.sha256(root).digest(), k, items[k], proof)  # other root
        assert not verify_proof(root, k + b"?", items[k], proof)  # other key
    for k in keys(50, b"absent"):
        proof = tree.prove(k)
        assert not proof.present and verify_proof(root, k, None, proof)
        assert not verify_proof(root, k, b"anything", proof)


def test_tampered_proof_steps_fail() -> None:
    items = {k: b"v" + k for k in keys(2000)}
    kv, root = build(items)
    k = keys(2000)[7]
    proof = MerkleTree(kv).prove(k)
    assert verify_proof(root, k, items[k], proof)
    for level in range(len(proof.steps)):
        step = proof.steps[level]
        for j, child in enumerate(step.children):
            if child and j != step.index:
                bad = ledger_api_pb2.MerkleProof()
                bad.CopyFrom(proof)
                c = bytearray(child)
                c[5] ^= 1
                bad.steps[level].children[j] = bytes(c)
                assert not verify_proof(root, k, items[k], bad)
                break
        bad = ledger_api_pb2.MerkleProof()
        bad.CopyFrom(proof)
        bad.steps[level].index = (step.index + 1) % 256
        assert not verify_proof(root, k, items[k], bad)
    bad = ledger_api_pb2.MerkleProof()
    bad.CopyFrom(proof)
    del bad.steps[-1]
    assert not verify_proof(root, k, items[k], bad)


def test_absence_proof_cannot_hide_a_present_key() -> None:
    items = {k: b"v" for k in keys(300)}
    kv, root = build(items)
    k = keys(300)[3]
    proof = MerkleTree(kv).prove(k)
    forged = ledger_api_pb2.MerkleProof()
    forged.CopyFrom(proof)
    forged.present = False
    assert not verify_proof(root, k, None, forged)
    # Claiming the slot holds "another" key whose hash is in fact this key's hash fails too.
    forged.other_key = key_hash(k)
    forged.other_value_hash = value_hash(b"v")
    assert not verify_proof(root, k, None, forged)


def _colliding_keys(prefix_len: int, count: int) -> list[bytes]:
    """Keys whose hashes share their first prefix_len bytes with another key's (found by search)."""
    seen: dict[bytes, bytes] = {}
    out: list[bytes] = []
    i = 0
    while len(out) < count:
        k = b"c" + i.to_bytes(4, "big")
        p = key_hash(k)[:prefix_len]
        if p in seen:
            out += [seen.pop(p), k]
        else:
            seen[p] = k
        i += 1
    return out


def test_deep_paths_split_and_collapse() -> None:
    """Keys sharing 3 hash bytes force nodes 4 levels deep; deleting one collapses them back up."""
    pair = _colliding_keys(3, 2)
    assert key_hash(pair[0])[:3] == key_hash(pair[1])[:3]
    others = {k: b"o" for k in keys(50)}
    kv, root_without = build(others)
    kv, root_with = build({pair[0]: b"a", pair[1]: b"b"}, kv)
    deep = [k for k, _ in kv.items() if k.startswith(NODE_PREFIX) and len(k) - len(NODE_PREFIX) == 3]
    assert deep, "a node at depth 3 holds the two colliding keys"
    for k, v in ((pair[0], b"a"), (pair[1], b"b")):
        proof = MerkleTree(kv).prove(k)
        assert len(proof.steps) == 4 and verify_proof(root_with, k, v, proof)
    root, writes = MerkleTree(kv).update({key_hash(pair[1]): None})
    kv.apply(writes)
    assert not [k for k, _ in kv.items() if k.startswith(NODE_PREFIX) and len(k) - len(NODE_PREFIX) >= 2]
    fresh, fresh_root = build({**others, pair[0]: b"a"})
    assert root == fresh_root and dict(kv.items()) == dict(fresh.items())
    root, writes = MerkleTree(kv).update({key_hash(pair[0]): None})
    assert root == root_without


def _applied(kv: MemoryKV, writes: dict[bytes, bytes | None]) -> dict[bytes, bytes]:
    copy = MemoryKV(dict(kv.items()))
    copy.apply(writes)
    return dict(copy.items())


def _chunked_update(
    full: MemoryKV, chunked: MemoryKV, changes: dict[bytes, bytes | None]
) -> tuple[bytes, int, int]:
    """Apply changes to a tree stored whole (full) and the same tree stored as chunks; returns the
    root and the bytes each one wrote."""
    tree = MerkleTree(full)
    root, node_writes = tree.update(changes)
    chunk_writes = stored_node_writes(node_writes, ChunkedNodes(chunked), tree.touched, tree.built)
    # Without the update's `touched` and `built`, every node is read and every chunk of every changed node is compared: the same store.
    compared = stored_node_writes(node_writes, ChunkedNodes(chunked))
    assert _applied(chunked, chunk_writes) == _applied(chunked, compared)
    chunked_root, again = MerkleTree(ChunkedNodes(chunked)).update(changes)
    assert (chunked_root, again) == (root, node_writes)  # reading chunks gives the same tree
    full.apply(node_writes)
    chunked.apply(chunk_writes)
    return (
        root,
        sum(len(v or b"") for v in node_writes.values()),
        sum(len(v or b"") for v in chunk_writes.values()),
    )


def test_nodes_stored_as_chunks_read_back_whole_and_only_changed_chunks_are_written() -> None:
    full, chunked = MemoryKV(), MemoryKV()
    items = {k: b"v" + k for k in keys(3000)}
    _chunked_update(full, chunked, {key_hash(k): value_hash(v) for k, v in items.items()})
    nodes = ChunkedNodes(chunked)
    stored = dict(full.items())
    assert stored and all(k.startswith(NODE_PREFIX) for k in stored)
    assert all(nodes.get(k) == v for k, v in stored.items())  # every node, whole or joined from chunks
    for k, v in chunked.items():  # big nodes as chunks, small ones whole; nothing empty is kept
        assert v and (k.startswith(CHUNK_PREFIX) or (k.startswith(NODE_PREFIX) and len(v) <= WHOLE_MAX))
    assert any(k.startswith(CHUNK_PREFIX) for k, _ in chunked.items())  # the root (256 entries)
    for enc in stored.values():
        parts = split_chunks(enc)
        assert len(parts) == N_CHUNKS and b"".join(parts) == enc
        assert all(p[i] // CHUNK_SPAN == c for c, p in enumerate(parts) for i in range(0, len(p), ENTRY_LEN))
    # One changed value rewrites one entry per node on its path: one chunk per node, not the node.
    root, whole, chunks = _chunked_update(full, chunked, {key_hash(keys(1)[0]): value_hash(b"new")})
    assert chunks * 4 < whole
    assert MerkleTree(ChunkedNodes(chunked)).root_hash() == root == MerkleTree(full).root_hash()
    # Deleting everything deletes every chunk.
    _chunked_update(full, chunked, {key_hash(k): None for k in items})
    assert len(chunked) == 0 and MerkleTree(ChunkedNodes(chunked)).root_hash() == EMPTY_ROOT


def test_only_the_chunks_an_update_touched_are_cut_and_they_store_the_same_tree() -> None:
    """On a tree big enough that the nodes below the root are chunked too (more than 32 entries),
    value changes, inserts and deletes write through MerkleTree.touched exactly what comparing all
    16 chunks of each node would (_chunked_update checks), and write fewer chunks than that
    comparison would re-cut."""
    rng = random.Random(7)
    full, chunked = MemoryKV(), MemoryKV()
    present = keys(12_000)
    _chunked_update(full, chunked, {key_hash(k): value_hash(k) for k in present})
    depth1 = CHUNK_PREFIX + bytes([1])
    assert any(k.startswith(depth1) for k, _ in chunked.items())  # chunked nodes below the root
    for step in range(6):
        picked = rng.sample(present, 70)
        changed, gone = picked[:40], picked[40:]
        new = keys(30, prefix=b"n%d-" % step)
        changes: dict[bytes, bytes | None] = {key_hash(k): value_hash(b"%d" % step + k) for k in changed}
        changes.update({key_hash(k): None for k in gone})
        changes.update({key_hash(k): value_hash(k) for k in new})
        tree = MerkleTree(full)
        tree.update(changes)
        touched_chunks = sum(len(c) for c in tree.touched.values())
        assert 0 < touched_chunks < N_CHUNKS * len(tree.touched)
        _chunked_update(full, chunked, changes)
        present = [k for k in present if k not in set(gone)] + new
    assert MerkleTree(ChunkedNodes(chunked)).root_hash() == MerkleTree(full).root_hash()


def test_nodes_crossing_the_whole_size_limit_either_way_keep_one_stored_form() -> None:
    """The root grows past WHOLE_MAX (whole -> chunks) as keys are added and shrinks below it again
    as they are removed; after every step each node reads back equal to the tree stored whole, and
    no stale form (a whole node beside chunks, or an orphan chunk) is left."""
    full, chunked = MemoryKV(), MemoryKV()
    all_keys = keys(600)
    steps = [all_keys[i : i + 20] for i in range(0, 600, 20)]
    sizes = []

    def check() -> None:
        nodes = ChunkedNodes(chunked)
        stored = dict(full.items())
        assert all(nodes.get(k) == v for k, v in stored.items())
        whole = {k for k, _ in chunked.items() if k.startswith(NODE_PREFIX)}
        chunk_paths = {
            k[len(CHUNK_PREFIX) + 1 : -1] for k, _ in chunked.items() if k.startswith(CHUNK_PREFIX)
        }
        assert not {k[len(NODE_PREFIX) :] for k in whole} & chunk_paths  # one form per node
        assert chunk_paths <= {k[len(NODE_PREFIX) :] for k in stored}  # no orphan chunks
        sizes.append(len(stored.get(NODE_PREFIX, b"")))

    for batch in steps:
        _chunked_update(full, chunked, {key_hash(k): value_hash(k) for k in batch})
        check()
    for batch in steps:
        _chunked_update(full, chunked, {key_hash(k): None for k in batch})
        check()
    assert max(sizes) > WHOLE_MAX and sizes[0] <= WHOLE_MAX  # the root crossed the limit both ways
    assert len(chunked) == 0
