"""The state commitment: a sparse 256-ary Merkle tree over sha256(key), with leaf compression.

Every state entry (key, value) is a leaf placed on the path given by the bytes of
``kh = sha256(key)``: the child index at depth ``d`` is ``kh[d]``. A subtree holding a single leaf
is collapsed into that leaf, so a state of n keys is about log256(n) + 1 levels deep (3 for a
million keys). Nodes live in the same key-value store as the state, under ``NODE_PREFIX + path``
(``path = kh[:depth]``; the root is the node with the empty path), so opening a ledger reads only
the root, and an update touches only the nodes on the paths of the changed keys.

Encoding of a node (also what its hash covers): the present children in ascending index order,
each one fixed 66-byte entry ``index (1) | type (1) | payload (64)``:

- a leaf child: type 0, payload ``kh | sha256(value)``;
- an internal child: type 1, payload ``hash(child node) | 32 zero bytes``.

``hash(node) = sha256(0x01 | encoding)``; the state root is the hash of the root node (the hash of
the empty encoding for an empty state). Because leaves are committed inside their parent, a leaf
costs no hash of its own, and the whole update is one sha256 per touched node.

A proof (ledger_api_pb2.MerkleProof) lists, from the deepest node on the key's path up to the root,
every child entry of the node (256 slots, empty bytes where no child) and the index taken. It
proves presence (the slot holds the key's leaf with the value's hash) or absence (the slot at the
end of the path is empty, or holds the leaf of another key hash: ``other_key`` / ``other_value_hash``
carry that leaf's key hash and value hash). `verify_proof` needs nothing but hashlib.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Set
from typing import Final

from clearline.v1 import ledger_api_pb2
from node.ledger.kv import KVReader, Writes

NODE_PREFIX: Final = b"\x01m/"
ARITY: Final = 256
ENTRY_LEN: Final = 66
HASH_LEN: Final = 32
MAX_DEPTH: Final = 32
LEAF: Final = 0
INTERNAL: Final = 1
_ZERO32: Final = bytes(32)
_NODE_TAG: Final = b"\x01"
_IDX: Final = tuple(bytes((i,)) for i in range(256))
_LEAF_TAG: Final = b"\x00"
_INTERNAL_TAG: Final = b"\x01"

_sha256: Final = hashlib.sha256
EMPTY_ROOT: Final = hashlib.sha256(_NODE_TAG).digest()

# A child as the parent stores it, without its index byte: type (1) + payload (64).
Child = bytes
# One change: (key hash, value hash or None to delete).
Change = tuple[bytes, bytes | None]


class MerkleError(Exception):
    """The stored tree is inconsistent (a broken invariant, never a client error)."""


def node_key(path: bytes) -> bytes:
    """The kv key of the node at path (the first len(path) bytes of the key hashes below it)."""
    return NODE_PREFIX + path


def compute_node_hash(encoding: bytes) -> bytes:
    """The hash of a node from its encoding."""
    return hashlib.sha256(_NODE_TAG + encoding).digest()


def leaf_child(kh: bytes, vh: bytes) -> Child:
    return _LEAF_TAG + kh + vh


def internal_child(node_hash: bytes) -> Child:
    return _INTERNAL_TAG + node_hash + _ZERO32


def key_hash(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def value_hash(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


# --- how nodes are stored ------------------------------------------------------------------------
#
# A node's encoding (what its hash covers) holds up to 256 entries of 66 bytes: 16.5 KiB. Stored
# whole, every block would rewrite each big node on the paths of its changed keys in full, so the
# bytes written per block grow with the state, and LevelDB spends the cores syncing and compacting
# them. So a node of more than WHOLE_MAX bytes is stored as 16 chunks, one per run of 16 child
# indexes (`CHUNK_PREFIX | len(path) | path | chunk`), and a block writes only the chunks it changed;
# a smaller node (most of them, below the upper levels) is stored whole under NODE_PREFIX + path, one
# read. The tree, its hashes and its proofs are unchanged: MerkleTree works on whole encodings,
# read through ChunkedNodes and written through stored_node_writes.

CHUNK_PREFIX: Final = b"\x01c/"
CHUNK_SPAN: Final = 16
N_CHUNKS: Final = ARITY // CHUNK_SPAN
_CHUNK_SHIFT: Final = 4  # child index >> _CHUNK_SHIFT == its chunk number
assert 1 << _CHUNK_SHIFT == CHUNK_SPAN
WHOLE_MAX: Final = 32 * ENTRY_LEN


def chunk_key(path: bytes, chunk: int) -> bytes:
    """The kv key of chunk number `chunk` (child indexes chunk*16 .. chunk*16+15) of the node at path."""
    return CHUNK_PREFIX + _IDX[len(path)] + path + _IDX[chunk]


def split_chunks(enc: bytes) -> list[bytes]:
    """A node encoding as N_CHUNKS runs of entries by child index (b"" where a run is empty)."""
    if not enc:
        return [b""] * N_CHUNKS
    idxs = enc[0::ENTRY_LEN]  # the child indexes, ascending: cut at each chunk's first index
    cuts = [bisect_left(idxs, c * CHUNK_SPAN) * ENTRY_LEN for c in range(N_CHUNKS)]
    cuts.append(len(enc))
    return [enc[cuts[c] : cuts[c + 1]] for c in range(N_CHUNKS)]


def stored_node_writes(
    node_writes: Mapping[bytes, bytes | None],
    old: KVReader,
    touched: Mapping[bytes, set[int]] | None = None,
    built: Set[bytes] = frozenset(),
) -> Writes:
    """The kv writes that store node_writes ({NODE_PREFIX + path: new encoding, or None to delete}),
    given `old` (a reader of the committed encodings, such as ChunkedNodes): a small node whole, a
    big one as the chunks that differ from the committed node (None deletes what is no longer
    used: an emptied chunk, or the other form when a node crosses WHOLE_MAX).

    `touched` (MerkleTree.touched of the update that made node_writes) names, for a node that was
    changed in place, the only chunks that can differ: only those are cut out of a big node, instead
    of comparing all 16 chunks of the old and the new encoding. `built` (MerkleTree.built) names
    the nodes the update created where the committed tree has none: they are not looked up."""
    out: Writes = {}
    if touched is None:
        touched = {}
    cut = len(NODE_PREFIX)
    empty = [b""] * N_CHUNKS
    for key, enc in node_writes.items():
        path = key[cut:]
        before = b"" if key in built else old.get(key) or b""
        after = enc or b""
        before_chunked = len(before) > WHOLE_MAX
        if len(after) <= WHOLE_MAX:
            out[key] = after or None
            if before_chunked:
                for c, part in enumerate(split_chunks(before)):
                    if part:
                        out[chunk_key(path, c)] = None
            continue
        if before and not before_chunked:
            out[key] = None
        chunks = touched.get(key) if before_chunked else None
        if chunks is not None:
            idxs = after[0::ENTRY_LEN]
            for c in chunks:
                lo = bisect_left(idxs, c * CHUNK_SPAN) * ENTRY_LEN
                hi = bisect_left(idxs, (c + 1) * CHUNK_SPAN, lo // ENTRY_LEN) * ENTRY_LEN
                out[chunk_key(path, c)] = after[lo:hi] or None
            continue
        old_parts = split_chunks(before) if before_chunked else empty
        new_parts = split_chunks(after)
        for c in range(N_CHUNKS):
            if old_parts[c] != new_parts[c]:
                out[chunk_key(path, c)] = new_parts[c] or None
    return out


class ChunkedNodes:
    """A KVReader of whole node encodings (keys NODE_PREFIX + path) over a kv that stores them as
    stored_node_writes does; None for a node that is not there."""

    __slots__ = ("_get",)

    def __init__(self, kv: KVReader) -> None:
        self._get = kv.get

    def get(self, key: bytes) -> bytes | None:
        get = self._get
        whole = get(key)
        if whole is not None:
            return whole
        path = key[len(NODE_PREFIX) :]
        prefix = CHUNK_PREFIX + _IDX[len(path)] + path
        enc = b"".join([part for c in range(N_CHUNKS) if (part := get(prefix + _IDX[c]))])
        return enc or None


class MerkleTree:
    """Reads committed nodes from a KVReader and computes updated roots as Writes (never mutates).

    After an update, `touched` maps each node that was changed in place (not built anew) to the
    chunk numbers (child index // CHUNK_SPAN) of the children it changed: its only chunks that can
    differ from the committed node; `built` holds the nodes it created at paths where the committed
    tree has no node (under a leaf or an empty slot). Both are for stored_node_writes."""

    __slots__ = ("_get", "built", "touched")

    def __init__(self, kv: KVReader) -> None:
        self._get = kv.get
        self.touched: dict[bytes, set[int]] = {}
        self.built: set[bytes] = set()

    def _load(self, path: bytes) -> bytes:
        enc = self._get(NODE_PREFIX + path)
        if enc is None:
            if path:
                raise MerkleError(f"missing Merkle node at path {path.hex()}")
            return b""
        return enc

    def root_hash(self) -> bytes:
        return compute_node_hash(self._load(b""))

    def update(self, changes: Mapping[bytes, bytes | None]) -> tuple[bytes, Writes]:
        """Apply {key hash: value hash or None} to the committed tree; return (new root, node writes).

        Cost: one visit per node on the paths of the changed keys; ancestors shared by many keys are
        re-encoded and hashed once.
        """
        return self.update_sorted(sorted(changes.items()))

    def update_sorted(self, items: list[Change]) -> tuple[bytes, Writes]:
        """update() for changes already as a list of (key hash, value hash or None) sorted by key hash."""
        writes: Writes = {}
        self.touched = {}
        self.built = set()
        root = self._load(b"")
        if not items:
            return compute_node_hash(root), writes
        enc = self._update_node(b"", root, items, 0, len(items), writes)
        writes[NODE_PREFIX] = enc if enc else None
        return compute_node_hash(enc), writes

    def _update_node(
        self, path: bytes, enc: bytes, items: list[Change], lo: int, hi: int, writes: Writes
    ) -> bytes:
        """New encoding of the node at path after applying items[lo:hi] (all below this node).

        The hot cases of a large tree are handled inline, without recursion: one changed key whose
        leaf stays, either in this node's slot or in the slot of the child node below it.
        """
        d = len(path)
        idxs = enc[0::ENTRY_LEN]
        n_idx = len(idxs)
        prefix = NODE_PREFIX + path
        get = self._get
        touched = self.touched
        chunks = touched.setdefault(prefix, set())
        parts: list[bytes] = []
        prev = 0
        i = lo
        while i < hi:
            kh, vh = items[i]
            c = kh[d]
            chunks.add(c >> _CHUNK_SHIFT)
            j = i + 1
            while j < hi and items[j][0][d] == c:
                j += 1
            p = bisect_left(idxs, c)
            off = p * ENTRY_LEN
            if p < n_idx and idxs[p] == c:
                if j - i == 1 and vh is not None:
                    if enc[off + 1] == LEAF:
                        if enc[off + 2 : off + 34] == kh:  # this key's leaf: new value hash
                            parts.append(enc[prev : off + 34])
                            parts.append(vh)
                            prev = off + ENTRY_LEN
                            i = j
                            continue
                    else:
                        key = prefix + _IDX[c]
                        old = get(key)
                        if old is not None:
                            c2 = kh[d + 1]
                            idxs2 = old[0::ENTRY_LEN]
                            p2 = bisect_left(idxs2, c2)
                            off2 = p2 * ENTRY_LEN
                            if (
                                p2 < len(idxs2)
                                and idxs2[p2] == c2
                                and old[off2 + 1] == LEAF
                                and old[off2 + 2 : off2 + 34] == kh
                            ):  # the child's slot is this key's leaf: new value hash there
                                new_enc = b"".join((old[: off2 + 34], vh, old[off2 + ENTRY_LEN :]))
                                writes[key] = new_enc
                                touched[key] = {c2 >> _CHUNK_SHIFT}
                                parts.append(enc[prev : off + 2])
                                parts.append(_sha256(_NODE_TAG + new_enc).digest())
                                parts.append(_ZERO32)
                                prev = off + ENTRY_LEN
                                i = j
                                continue
                parts.append(enc[prev:off])
                new = self._update_child(path + _IDX[c], enc[off + 1 : off + ENTRY_LEN], items, i, j, writes)
                prev = off + ENTRY_LEN
            else:
                parts.append(enc[prev:off])
                new = self._build(path + _IDX[c], _inserts(items, i, j), writes)
                prev = off
            if new is not None:
                parts.append(_IDX[c])
                parts.append(new)
            i = j
        parts.append(enc[prev:])
        return b"".join(parts)

    def _update_child(
        self, path: bytes, child: Child, items: list[Change], lo: int, hi: int, writes: Writes
    ) -> Child | None:
        """New child entry for the slot at path (currently holding child) after items[lo:hi]."""
        if child[0] == LEAF:
            old_kh = child[1:33]
            if hi - lo == 1 and items[lo][0] == old_kh:
                # The common case: one key's value changes or is deleted.
                vh = items[lo][1]
                return None if vh is None else _LEAF_TAG + old_kh + vh
            merged = _inserts(items, lo, hi)
            if not any(items[k][0] == old_kh for k in range(lo, hi)):
                merged.append((old_kh, child[33:65]))
                merged.sort()
            return self._build(path, merged, writes)
        key = NODE_PREFIX + path
        old = self._get(key)
        if old is None:
            raise MerkleError(f"missing Merkle node at path {path.hex()}")
        enc = self._update_node(path, old, items, lo, hi, writes)
        if not enc or (len(enc) == ENTRY_LEN and enc[1] == LEAF):
            # Fewer than two leaves left below: collapse into the parent's slot.
            writes[key] = None
            return enc[1:] if enc else None
        writes[key] = enc
        return internal_child(compute_node_hash(enc))

    def _build(self, path: bytes, items: list[tuple[bytes, bytes]], writes: Writes) -> Child | None:
        """Child entry for a slot at path holding exactly items (sorted, all present)."""
        n = len(items)
        if n == 0:
            return None
        if n == 1:
            kh, vh = items[0]
            return _LEAF_TAG + kh + vh
        d = len(path)
        if d >= MAX_DEPTH:
            raise MerkleError("two distinct keys with one key hash")
        parts: list[bytes] = []
        i = 0
        while i < n:
            c = items[i][0][d]
            j = i + 1
            while j < n and items[j][0][d] == c:
                j += 1
            parts.append(_IDX[c])
            if j - i == 1:
                kh, vh = items[i]
                parts.append(_LEAF_TAG + kh + vh)
            else:
                sub = self._build(path + _IDX[c], items[i:j], writes)
                assert sub is not None
                parts.append(sub)
            i = j
        enc = b"".join(parts)
        key = NODE_PREFIX + path
        writes[key] = enc
        self.built.add(key)
        return internal_child(compute_node_hash(enc))

    def prove(self, key: bytes) -> ledger_api_pb2.MerkleProof:
        """Inclusion proof of key's leaf, or non-inclusion proof, against root_hash()."""
        kh = key_hash(key)
        proof = ledger_api_pb2.MerkleProof(key=key)
        encs: list[tuple[bytes, int]] = []
        path = b""
        enc = self._load(b"")
        while True:
            c = kh[len(path)]
            encs.append((enc, c))
            idxs = enc[0::ENTRY_LEN]
            p = bisect_left(idxs, c)
            if p < len(idxs) and idxs[p] == c:
                off = p * ENTRY_LEN
                child = enc[off + 1 : off + ENTRY_LEN]
                if child[0] == INTERNAL:
                    path = path + _IDX[c]
                    enc = self._load(path)
                    continue
                if child[1:33] == kh:
                    proof.present = True
                else:
                    proof.other_key = child[1:33]
                    proof.other_value_hash = child[33:65]
            break
        for enc, c in reversed(encs):
            children = [b""] * ARITY
            for off in range(0, len(enc), ENTRY_LEN):
                children[enc[off]] = enc[off + 1 : off + ENTRY_LEN]
            proof.steps.add(children=children, index=c)
        return proof


def _inserts(items: list[Change], lo: int, hi: int) -> list[tuple[bytes, bytes]]:
    return [(kh, vh) for kh, vh in items[lo:hi] if vh is not None]


def verify_proof(root: bytes, key: bytes, value: bytes | None, proof: ledger_api_pb2.MerkleProof) -> bool:
    """True iff proof shows that key holds value (or is absent, value None) under root.

    Pure: needs only hashlib, so a client can check a GetAccount answer with no node.
    """
    if proof.key and proof.key != key:
        return False
    steps = proof.steps
    n = len(steps)
    if n == 0 or n > MAX_DEPTH:
        return False
    kh = key_hash(key)
    bottom = steps[0]
    if len(bottom.children) != ARITY or bottom.index != kh[n - 1]:
        return False
    slot = bottom.children[bottom.index]
    if value is not None:
        if not proof.present or slot != _LEAF_TAG + kh + value_hash(value):
            return False
    else:
        if proof.present:
            return False
        if slot:
            # Another key's leaf occupies the slot where kh's leaf would be.
            if len(slot) != ENTRY_LEN - 1 or slot[0] != LEAF or slot[1:33] == kh:
                return False
            if slot[1:33] != proof.other_key or slot[33:65] != proof.other_value_hash:
                return False
            if slot[1 : 1 + n] != kh[:n]:
                return False
    h = b""
    for level, step in enumerate(steps):
        depth = n - 1 - level
        children = step.children
        if len(children) != ARITY or step.index != kh[depth]:
            return False
        if level > 0 and children[step.index] != internal_child(h):
            return False
        enc = _encode_children(children)
        if enc is None:
            return False
        h = compute_node_hash(enc)
    return h == root


def _encode_children(children: Iterable[bytes]) -> bytes | None:
    """A node's encoding from its proof step, or None if a child entry is malformed."""
    parts: list[bytes] = []
    for i, c in enumerate(children):
        if c:
            if len(c) != ENTRY_LEN - 1 or c[0] > INTERNAL:
                return None
            parts.append(_IDX[i])
            parts.append(c)
    return b"".join(parts)
