"""The node's LevelDB store: blocks, commit certificates, indexes, receipts, ledger state, history.

One LevelDB (plyvel) per node, laid out as node/storage/keys.py describes. All writes of one committed
block (block, hash indexes, certificate, receipts, tx index, state entries and Merkle nodes, account
history, evidence, validator-set changes and the latest-height key) go in ONE write_batch(sync=True),
so after kill -9 the store is at height H or H+1, never in between.

Opening reads a constant number of keys (schema version, chain id, latest height, the latest block and
the validator set that signs the next height): restart time does not depend on the chain's length.

The ledger reads state through `NodeStore.state` (a node.ledger.kv.KVReader) and never writes directly;
its `Writes` arrive in `BlockCommit.state_writes` (or `save_genesis`).

Pruning (`prune`, driven by node/pruning.py) deletes what old blocks left behind, oldest first, in
bounded batches that each record the new base height with the deletions. The base is the lowest
height whose block is kept with its receipts and indexes; validator sets and the state are never
pruned, nor the latest block.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import plyvel
from google.protobuf.message import DecodeError, Message

from clearline.v1 import block_pb2, receipt_pb2
from node.blocks import block_hash as compute_block_hash
from node.storage import keys
from node.storage.crash import crash_point
from node.storage.errors import StorageError, StoreCorruptError
from node.txs import tx_hash as compute_tx_hash

_M = TypeVar("_M", bound=Message)

StateWrites = Mapping[bytes, bytes | None]
"""What the ledger hands over (node.ledger.kv.Writes is a dict of this shape): key -> value, None =
delete. Declared here rather than imported so that opening the store never loads the ledger package."""

# LevelDB tuning (node/storage/bench.py measures it): a 16 MiB write buffer (LevelDB's default is 4)
# makes level-0 write stalls, the cause of the slowest synced batches, rare; opening replays at most
# one write buffer of log, so the restart cost does not grow with the chain. Bloom filters make
# lookups of absent keys (new accounts, unknown tx hashes) skip disk reads.
#
# No compression: most bytes written are hashes, signatures and public keys (Merkle node chunks,
# blocks), which Snappy cannot shrink; it only cost CPU in every flush and compaction.
LEVELDB_OPTIONS: dict[str, Any] = {
    "write_buffer_size": 16 << 20,
    "bloom_filter_bits": 10,
    "lru_cache_size": 32 << 20,
    "compression": None,
}
WRITE_BUFFER_STAGGER: Final = 16


def staggered_write_buffer(seed: bytes) -> int:
    """A write buffer of 16-31 MiB chosen by seed (a validator's address).

    Validators write the same data at the same rate, so with equal write buffers they flush and
    compact LevelDB at the same heights. Where they share cores (a local cluster), all of them then
    stall at once and the chain stops for the duration. Staggered sizes spread the flushes, so the
    others keep a quorum while one compacts."""
    base = int(LEVELDB_OPTIONS["write_buffer_size"])
    step = base // WRITE_BUFFER_STAGGER
    return base + (seed[0] % WRITE_BUFFER_STAGGER) * step if seed else base


class InvalidCommitError(StorageError):
    """commit_block (or save_genesis / save_validator_set) was given data that would break the store's
    invariants: a height gap, a hash that does not match, receipts that do not match the txs, ...
    Nothing was written. This is a bug in the caller; the node should stop."""

    def __init__(self, path: str | os.PathLike[str], height: int, detail: str) -> None:
        super().__init__(path, f"refusing to write height {height}: {detail}")
        self.height = height


def account_touches_of(receipts: Sequence[receipt_pb2.Receipt]) -> list[tuple[bytes, int]]:
    """(address, tx index) for per-account history, derived from receipts: the signer of each tx and
    every account named in its events, each pair once, in tx order. Failed txs count for their signer."""
    touches: list[tuple[bytes, int]] = []
    append = touches.append
    for index, receipt in enumerate(receipts):  # every committed tx: each field is read once
        signer = receipt.signer
        if signer:
            append((signer, index))
        seen = [signer]  # a handful of accounts: a list beats a set
        for event in receipt.events:
            for address in event.accounts:
                if address and address not in seen:
                    seen.append(address)
                    append((address, index))
    return touches


@dataclass(frozen=True, slots=True)
class BlockCommit:
    """Everything written when block `height` commits, in one synced batch.

    receipts: one per tx, in block order; receipt.tx_hash must be the SHA-256 of the raw tx.
    state_writes: ledger state entries AND Merkle nodes (key -> value, None = delete).
    account_touches: (address, tx index) pairs, taken as given (see account_touches_of to derive them
        from receipts); duplicates are harmless.
    next_validator_sets: sets taking effect at given heights (> height; the H+2 rule gives height + 2).
        A set equal to the one already in effect at that height is not written again.
    evidence: evidence included in this block, stored under (height, index).
    block_events: the events of the block's own work, outside any transaction (holds expired at its
        start), stored as one Receipt without tx_hash (load_block_receipt); none = nothing stored.
    """

    height: int
    block: block_pb2.Block
    block_hash: bytes
    commit: block_pb2.CommitCertificate
    receipts: Sequence[receipt_pb2.Receipt]
    state_writes: StateWrites
    account_touches: Sequence[tuple[bytes, int]] = ()
    next_validator_sets: Mapping[int, block_pb2.ValidatorSet] = field(default_factory=dict)
    evidence: Sequence[block_pb2.Evidence] = ()
    block_events: Sequence[receipt_pb2.Event] = ()


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one `NodeStore.prune` batch did: the base after it, the heights it pruned and the keys
    it deleted."""

    base: int
    heights: int
    keys: int


class StateView:
    """node.ledger.kv.KVReader over the state table of the live database (or of a snapshot)."""

    __slots__ = ("_reader",)

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._reader.get(keys.P_STATE + key)
        return value

    def items(self, prefix: bytes = b"", after: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """State entries whose key starts with prefix, in key order; with after, only the keys
        after that one (a page's start)."""
        strip = len(keys.P_STATE)
        if after:
            it_cm = self._reader.iterator(
                start=keys.P_STATE + after + b"\x00", stop=_prefix_end(keys.P_STATE + prefix)
            )
        else:
            it_cm = self._reader.iterator(prefix=keys.P_STATE + prefix)
        with it_cm as it:
            for key, value in it:
                yield key[strip:], value


def _prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with prefix (prefix must not be all 0xff)."""
    trimmed = prefix.rstrip(b"\xff")
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class StoreSnapshot:
    """A consistent read-only view of the store at one moment (a LevelDB snapshot): the state and the
    latest height seen together, e.g. to serve a Merkle proof with the matching header. close() it."""

    __slots__ = ("_snapshot", "latest_height", "state")

    def __init__(self, snapshot: Any) -> None:
        self._snapshot = snapshot
        raw = snapshot.get(keys.META_LATEST)
        self.latest_height: int = keys.decode_height(raw) if raw is not None else 0
        self.state = StateView(snapshot)

    def get_raw(self, key: bytes) -> bytes | None:
        value: bytes | None = self._snapshot.get(key)
        return value

    def load_block(self, height: int) -> block_pb2.Block | None:
        """The block at height as of the snapshot (its header's state_root matches `state` when
        height == latest_height)."""
        raw = self.get_raw(keys.block_key(height)) if 0 < height <= keys.MAX_HEIGHT else None
        return None if raw is None else _parse(block_pb2.Block, raw, "snapshot", f"block {height}")

    def load_commit(self, height: int) -> block_pb2.CommitCertificate | None:
        raw = self.get_raw(keys.commit_key(height)) if 0 < height <= keys.MAX_HEIGHT else None
        return (
            None if raw is None else _parse(block_pb2.CommitCertificate, raw, "snapshot", f"commit {height}")
        )

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every raw (key, value) of the snapshot, in key order (what a backup copies). A generator:
        close it before the snapshot."""
        with self._snapshot.iterator() as it:
            yield from it

    def close(self) -> None:
        self._snapshot.close()

    def __enter__(self) -> StoreSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(cls: type[_M], data: bytes, path: str, what: str) -> _M:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise StoreCorruptError(path, f"{what} does not decode as {cls.__name__}: {exc}") from exc
    return msg


class NodeStore:
    """One node's LevelDB store. Open with NodeStore.open(path); one writer (the runtime), any readers."""

    __slots__ = ("_base", "_chain_id", "_closed", "_db", "_latest", "_path")

    def __init__(self, db: Any, path: Path, chain_id: str | None, latest: int, base: int = 1) -> None:
        self._db = db
        self._path = path
        self._chain_id = chain_id
        self._latest = latest
        self._base = base
        self._closed = False

    # ---- lifecycle --------------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | Path, *, chain_id: str | None = None, write_buffer_size: int | None = None
    ) -> NodeStore:
        """Open (creating if missing) the store at path and validate it: schema version, chain id (if
        chain_id is given and genesis was saved, they must match), latest height, latest block and the
        validator set for the next height. Reads a constant number of keys. Raises StoreCorruptError on
        any mismatch and StorageError if the database cannot be opened (e.g. locked by another process)."""
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(path, f"cannot create the store directory: {exc}") from exc
        try:
            options = dict(LEVELDB_OPTIONS)
            if write_buffer_size is not None:
                options["write_buffer_size"] = write_buffer_size
            db = plyvel.DB(os.fspath(path), create_if_missing=True, **options)
        except plyvel.CorruptionError as exc:
            raise StoreCorruptError(path, f"LevelDB reports corruption: {exc}") from exc
        except (plyvel.IOError, plyvel.Error) as exc:
            hint = (
                " (another process holds its lock: is a node already running on it?)"
                if "lock" in str(exc).lower()
                else ""
            )
            raise StorageError(path, f"cannot open LevelDB{hint}: {exc}") from exc
        try:
            stored_chain, latest, base = _validate_opened(db, path, chain_id)
        except BaseException:
            db.close()
            raise
        return cls(db, path, stored_chain, latest, base)

    @classmethod
    def open_on(cls, db: Any, path: str | Path, *, chain_id: str | None = None) -> NodeStore:
        """The store on an already open database with plyvel's interface (the node simulation's
        in-memory one), validated as `open` does; `path` only names it in errors."""
        path = Path(path)
        stored_chain, latest, base = _validate_opened(db, path, chain_id)
        return cls(db, path, stored_chain, latest, base)

    def close(self) -> None:
        """Close the database. Idempotent; any later call raises StorageError."""
        if not self._closed:
            self._closed = True
            self._db.close()

    def __enter__(self) -> NodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    def _live(self) -> Any:
        if self._closed:
            raise StorageError(self._path, "the store is closed")
        return self._db

    # ---- metadata and genesis ---------------------------------------------------------------------

    @property
    def state(self) -> StateView:
        """Committed ledger state (entries and Merkle nodes) as a KVReader."""
        return StateView(self._live())

    def snapshot(self) -> StoreSnapshot:
        """A consistent point-in-time view (state + latest height). Close it when done."""
        return StoreSnapshot(self._live().snapshot())

    def latest_height(self) -> int:
        """Height of the last committed block; 0 when only genesis (or nothing) is stored."""
        return self._latest

    def is_initialized(self) -> bool:
        """True once save_genesis has run."""
        return self._chain_id is not None

    def chain_id(self) -> str | None:
        return self._chain_id

    def load_genesis_json(self) -> bytes | None:
        value: bytes | None = self._live().get(keys.META_GENESIS)
        return value

    def save_genesis(
        self,
        genesis_json: bytes,
        state_writes: StateWrites,
        validator_set: block_pb2.ValidatorSet,
        chain_id: str,
    ) -> None:
        """Initialize the store in one synced batch: genesis document, chain id, genesis ledger state,
        the validator set that signs height 1 (and every later height until a change), latest height 0.
        Raises InvalidCommitError if the store is already initialized or the arguments are unusable."""
        db = self._live()
        if self._chain_id is not None:
            raise InvalidCommitError(
                self._path, 0, f"the store is already initialized for chain {self._chain_id!r}"
            )
        if not chain_id:
            raise InvalidCommitError(self._path, 0, "empty chain id")
        if not validator_set.validators:
            raise InvalidCommitError(self._path, 0, "empty genesis validator set")
        batch = db.write_batch(sync=True)
        batch.put(keys.META_CHAIN_ID, chain_id.encode("utf-8"))
        batch.put(keys.META_GENESIS, bytes(genesis_json))
        _put_state(batch, state_writes)
        batch.put(keys.valset_key(1), validator_set.SerializeToString(deterministic=True))
        batch.put(keys.META_LATEST, keys.encode_height(0))
        batch.write()
        self._chain_id = chain_id
        self._latest = 0

    def save_state_sync(
        self,
        genesis_json: bytes,
        chain_id: str,
        state_writes: StateWrites,
        block: block_pb2.Block,
        block_hash: bytes,
        commit: block_pb2.CommitCertificate,
        validator_sets: dict[int, block_pb2.ValidatorSet],
    ) -> None:
        """Initialize an empty store from a verified snapshot (node/statesync.py) in one synced
        batch: the genesis document and chain id, the snapshot's state, its block and certificate
        (the anchor the chain continues from), the validator sets (genesis's at 1, then each that
        signs from a height, ascending), latest height = the block's, base = the next height."""
        db = self._live()
        if self._chain_id is not None:
            raise InvalidCommitError(
                self._path, 0, f"the store is already initialized for chain {self._chain_id!r}"
            )
        height = block.header.height
        if not chain_id or height < 1 or commit.height != height or commit.block_id != block_hash:
            raise InvalidCommitError(self._path, height, "the snapshot's block and certificate do not match")
        if 1 not in validator_sets or not all(vs.validators for vs in validator_sets.values()):
            raise InvalidCommitError(self._path, height, "the state-synced validator sets are incomplete")
        batch = db.write_batch(sync=True)
        batch.put(keys.META_CHAIN_ID, chain_id.encode("utf-8"))
        batch.put(keys.META_GENESIS, bytes(genesis_json))
        _put_state(batch, state_writes)
        batch.put(keys.block_key(height), block.SerializeToString(deterministic=True))
        batch.put(keys.block_hash_key(height), block_hash)
        batch.put(keys.hash_height_key(block_hash), keys.encode_height(height))
        batch.put(keys.commit_key(height), commit.SerializeToString(deterministic=True))
        pending: dict[int, bytes] = {}
        for at_height, vs in sorted(validator_sets.items()):
            self._put_valset_if_changed(db, batch, at_height, vs, pending)
        batch.put(keys.META_BASE, keys.encode_height(height + 1))
        batch.put(keys.META_LATEST, keys.encode_height(height))
        batch.write()
        self._chain_id = chain_id
        self._latest = height
        self._base = height + 1

    def base_height(self) -> int:
        """The lowest height whose block is kept with its receipts and indexes (1 unless pruned or
        state-synced). Below it, a block may still be kept without them (a state-synced store's
        anchor, the headers `prune` was told to keep), but no read of a height below it is answered."""
        return self._base

    # ---- pruning ----------------------------------------------------------------------------------

    def prune(self, target_base: int, *, max_keys: int, keep_headers: Collection[int] = ()) -> Pruned:
        """Delete what the blocks below target_base left, oldest first: block, block hash and its
        index, certificate, receipts, tx index entries, block events, account history and evidence.
        ONE write batch deletes the heights from the base on and records the new base, and it ends
        after the height whose deletions reach max_keys (one height at least): call again until
        `base_height()` reaches the target. The latest block is never deleted (the target is capped
        at the latest height), nor validator sets or the state.

        keep_headers: heights whose block and certificate stay (their receipts and indexes go), for
        the light blocks a joining node verifies (node/pruning.py). The account-history entries
        deleted are those `account_touches_of` derives from the stored receipts (what the node's
        commits write).

        The batch is not synced: it is atomic, so a crash loses all of it or none, and the next
        call deletes again what was lost. The new base is visible to readers before the keys go,
        so a reader that finds a key missing and then reads the base sees the deletion's cause."""
        if max_keys <= 0:
            raise ValueError(f"max_keys must be positive, got {max_keys}")
        db = self._live()
        base = self._base
        target = min(target_base, self._latest)
        if target <= base:
            return Pruned(base=base, heights=0, keys=0)
        path = str(self._path)
        batch = db.write_batch(sync=False)
        deleted = 0

        def delete_block(height: int) -> None:
            nonlocal deleted
            block_hash = db.get(keys.block_hash_key(height))
            if block_hash is not None:
                batch.delete(keys.hash_height_key(block_hash))
            for key in (keys.block_key(height), keys.block_hash_key(height), keys.commit_key(height)):
                batch.delete(key)
            deleted += 4

        anchor = base - 1  # a state-synced store's anchor block: no receipts, below the base
        if anchor >= 1 and anchor not in keep_headers and db.get(keys.block_key(anchor)) is not None:
            delete_block(anchor)
        height = base
        while height < target and (height == base or deleted < max_keys):
            receipts: list[receipt_pb2.Receipt] = []
            with db.iterator(prefix=keys.P_RECEIPT + keys.encode_height(height)) as it:
                for key, raw in it:
                    batch.delete(key)
                    receipts.append(_parse(receipt_pb2.Receipt, raw, path, f"receipt at {height}"))
            for receipt in receipts:
                located = db.get(keys.tx_key(receipt.tx_hash))
                if located is not None and keys.decode_location(located)[0] == height:
                    batch.delete(keys.tx_key(receipt.tx_hash))
                    deleted += 1
            for address, index in account_touches_of(receipts):
                if 0 < len(address) <= keys.MAX_ADDRESS_LEN:
                    batch.delete(keys.account_key(address, height, index))
                    deleted += 1
            with db.iterator(prefix=keys.P_EVIDENCE + keys.encode_height(height), include_value=False) as it:
                for key in it:
                    batch.delete(key)
                    deleted += 1
            batch.delete(keys.block_events_key(height))
            deleted += len(receipts) + 1
            if height not in keep_headers:
                delete_block(height)
            height += 1
        batch.put(keys.META_BASE, keys.encode_height(height))
        self._base = height
        try:
            batch.write()
        except BaseException:
            self._base = base
            raise
        return Pruned(base=height, heights=height - base, keys=deleted)

    # ---- committing -------------------------------------------------------------------------------

    def commit_block(self, c: BlockCommit) -> None:
        """Write everything of one committed block in ONE write_batch(sync=True), latest height included.
        Checks the invariants first (next height, hashes, receipts match txs, ...) and raises
        InvalidCommitError without writing anything if one fails."""
        db = self._live()
        _check_commit(db, self._path, self._chain_id, self._latest, c)
        height = c.height
        batch = db.write_batch(sync=True)
        batch.put(keys.block_key(height), c.block.SerializeToString(deterministic=True))
        batch.put(keys.block_hash_key(height), c.block_hash)
        batch.put(keys.hash_height_key(c.block_hash), keys.encode_height(height))
        batch.put(keys.commit_key(height), c.commit.SerializeToString(deterministic=True))
        located: set[bytes] = set()
        for index, receipt in enumerate(c.receipts):
            batch.put(keys.receipt_key(height, index), receipt.SerializeToString(deterministic=True))
            if receipt.tx_hash not in located:  # a tx repeated in one block: its first position wins
                located.add(receipt.tx_hash)
                batch.put(keys.tx_key(receipt.tx_hash), keys.encode_location(height, index))
        if c.block_events:
            block_receipt = receipt_pb2.Receipt(
                status=receipt_pb2.TX_STATUS_OK, height=height, events=list(c.block_events)
            )
            batch.put(keys.block_events_key(height), block_receipt.SerializeToString(deterministic=True))
        for address, index in c.account_touches:
            batch.put(keys.account_key(address, height, index), c.receipts[index].tx_hash)
        for index, evidence in enumerate(c.evidence):
            batch.put(keys.evidence_key(height, index), evidence.SerializeToString(deterministic=True))
        pending: dict[int, bytes] = {}
        for at_height, vs in sorted(c.next_validator_sets.items()):
            self._put_valset_if_changed(db, batch, at_height, vs, pending)
        _put_state(batch, c.state_writes)
        batch.put(keys.META_LATEST, keys.encode_height(height))
        crash_point("commit:before-batch")
        batch.write()
        crash_point("commit:after-batch")
        self._latest = height

    def _put_valset_if_changed(
        self, db: Any, batch: Any, height: int, vs: block_pb2.ValidatorSet, pending: dict[int, bytes]
    ) -> None:
        """Add vs at height to batch unless the set in effect there (counting `pending`, the sets this
        batch already writes) is the same. Sets must be added in ascending height order."""
        encoded = vs.SerializeToString(deterministic=True)
        in_effect = _find_valset(db, height)
        below = [h for h in pending if h <= height]
        if below and (in_effect is None or max(below) >= in_effect[0]):
            in_effect = (max(below), pending[max(below)])
        if in_effect is None or in_effect[1] != encoded:
            batch.put(keys.valset_key(height), encoded)
            pending[height] = encoded

    def save_validator_set(self, height: int, vs: block_pb2.ValidatorSet) -> None:
        """Record (synced) that vs signs `height` and later heights until the next change. Only for
        heights above the latest committed one; commit_block does this for next_validator_sets."""
        db = self._live()
        if height <= self._latest or height < 1:
            raise InvalidCommitError(
                self._path, height, f"validator set of a committed height (latest {self._latest})"
            )
        if not vs.validators:
            raise InvalidCommitError(self._path, height, "empty validator set")
        batch = db.write_batch(sync=True)
        self._put_valset_if_changed(db, batch, height, vs, {})
        batch.write()

    # ---- blocks -----------------------------------------------------------------------------------

    def load_block_bytes(self, height: int) -> bytes | None:
        """The serialized Block at height (as stored), or None."""
        if not 0 < height <= keys.MAX_HEIGHT:
            return None
        value: bytes | None = self._live().get(keys.block_key(height))
        return value

    def load_block(self, height: int) -> block_pb2.Block | None:
        raw = self.load_block_bytes(height)
        return None if raw is None else _parse(block_pb2.Block, raw, str(self._path), f"block {height}")

    def load_block_hash(self, height: int) -> bytes | None:
        if not 0 < height <= keys.MAX_HEIGHT:
            return None
        value: bytes | None = self._live().get(keys.block_hash_key(height))
        return value

    def height_of_hash(self, block_hash: bytes) -> int | None:
        raw = self._live().get(keys.hash_height_key(block_hash))
        return None if raw is None else keys.decode_height(raw)

    def load_commit(self, height: int) -> block_pb2.CommitCertificate | None:
        """The commit certificate that committed block `height`."""
        if not 0 < height <= keys.MAX_HEIGHT:
            return None
        raw = self._live().get(keys.commit_key(height))
        return (
            None
            if raw is None
            else _parse(block_pb2.CommitCertificate, raw, str(self._path), f"commit {height}")
        )

    def iter_blocks(
        self, from_height: int, to_height: int
    ) -> Iterator[tuple[bytes, block_pb2.CommitCertificate]]:
        """(serialized block, its commit certificate) for heights from_height..to_height INCLUSIVE, in
        order, read from one snapshot; stops early at the first missing height."""
        start = max(from_height, 1)
        stop = min(to_height, self._latest)
        if start > stop:
            return
        snapshot = self._live().snapshot()
        try:
            with snapshot.iterator(start=keys.block_key(start), stop=keys.block_key(stop) + b"\x00") as it:
                expected = start
                for key, raw_block in it:
                    if keys.decode_height(key[1:]) != expected:
                        return
                    raw_commit = snapshot.get(keys.commit_key(expected))
                    if raw_commit is None:
                        return
                    yield (
                        raw_block,
                        _parse(
                            block_pb2.CommitCertificate, raw_commit, str(self._path), f"commit {expected}"
                        ),
                    )
                    expected += 1
        finally:
            snapshot.close()

    # ---- transactions and receipts ----------------------------------------------------------------

    def tx_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        """(height, index) of a committed tx. If one tx was committed more than once (which a valid chain
        never does), the latest block's first position."""
        raw = self._live().get(keys.tx_key(tx_hash))
        return None if raw is None else keys.decode_location(raw)

    def load_receipt(self, tx_hash: bytes) -> receipt_pb2.Receipt | None:
        location = self.tx_location(tx_hash)
        if location is None:
            return None
        return self.load_receipt_at(*location)

    def load_receipt_at(self, height: int, index: int) -> receipt_pb2.Receipt | None:
        raw = self._live().get(keys.receipt_key(height, index))
        return (
            None
            if raw is None
            else _parse(receipt_pb2.Receipt, raw, str(self._path), f"receipt {height}/{index}")
        )

    def load_block_receipts(self, height: int) -> list[receipt_pb2.Receipt]:
        """All receipts of block `height` in tx order ([] for an empty or unknown block)."""
        if not 0 <= height <= keys.MAX_HEIGHT:
            return []
        prefix = keys.P_RECEIPT + keys.encode_height(height)
        with self._live().iterator(prefix=prefix, include_key=False) as it:
            return [_parse(receipt_pb2.Receipt, raw, str(self._path), f"receipt at {height}") for raw in it]

    def load_block_receipt(self, height: int) -> receipt_pb2.Receipt | None:
        """The receipt of block `height`'s own work (its hold expiries), None if it had no events."""
        if not 0 < height <= keys.MAX_HEIGHT:
            return None
        raw = self._live().get(keys.block_events_key(height))
        return (
            None
            if raw is None
            else _parse(receipt_pb2.Receipt, raw, str(self._path), f"block receipt {height}")
        )

    def load_tx(self, tx_hash: bytes) -> bytes | None:
        """The raw SignedTx bytes of a committed tx, read from its block."""
        location = self.tx_location(tx_hash)
        if location is None:
            return None
        height, index = location
        block = self.load_block(height)
        if block is None or index >= len(block.body.txs):
            raise StoreCorruptError(
                self._path, f"tx {tx_hash.hex()} indexed at {height}/{index} but not in the block"
            )
        raw: bytes = block.body.txs[index]
        return raw

    # ---- history, evidence, validators ------------------------------------------------------------

    def account_history(
        self, address: bytes, *, from_height: int = 0, limit: int = 100
    ) -> list[tuple[int, int, bytes]]:
        """(height, index, tx hash) of txs that touched address, oldest first, from from_height on."""
        if limit <= 0 or not address or len(address) > keys.MAX_ADDRESS_LEN:
            return []
        prefix = keys.account_prefix(address)
        start = prefix + keys.encode_location(max(from_height, 0), 0)
        out: list[tuple[int, int, bytes]] = []
        stop = prefix + keys.encode_location(keys.MAX_HEIGHT, keys.MAX_INDEX) + b"\x00"
        with self._live().iterator(start=start, stop=stop) as it:
            for key, tx_hash in it:
                height, index = keys.decode_location(key[len(prefix) :])
                out.append((height, index, tx_hash))
                if len(out) >= limit:
                    break
        return out

    def load_evidence(self, from_height: int = 0, limit: int = 1000) -> list[tuple[int, block_pb2.Evidence]]:
        """Committed evidence as (height, evidence), oldest first, from from_height on."""
        if limit <= 0:
            return []
        start = keys.evidence_key(max(from_height, 0), 0)
        out: list[tuple[int, block_pb2.Evidence]] = []
        stop = keys.evidence_key(keys.MAX_HEIGHT, keys.MAX_INDEX) + b"\x00"
        with self._live().iterator(start=start, stop=stop) as it:
            for key, raw in it:
                height, _ = keys.decode_location(key[1:])
                out.append(
                    (height, _parse(block_pb2.Evidence, raw, str(self._path), f"evidence at {height}"))
                )
                if len(out) >= limit:
                    break
        return out

    def load_validator_set(self, height: int) -> block_pb2.ValidatorSet | None:
        """The validator set that signs `height`: the last change at or below it (one iterator seek).
        None before genesis or for height < 1. For heights beyond latest + 2 the answer is provisional
        (a later block may still schedule a change)."""
        if not 1 <= height <= keys.MAX_HEIGHT:
            return None
        found = _find_valset(self._live(), height)
        if found is None:
            return None
        return _parse(block_pb2.ValidatorSet, found[1], str(self._path), f"validator set from {found[0]}")

    def iter_raw(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Every raw (key, value) under prefix, in key order, from a snapshot: for inspection tools and
        tests (keys.py documents the layout)."""
        snapshot = self._live().snapshot()
        try:
            with snapshot.iterator(prefix=prefix) as it:
                yield from it
        finally:
            snapshot.close()

    def validator_set_changes(self) -> list[int]:
        """Heights at which a new validator set takes effect (1 = genesis), ascending."""
        with self._live().iterator(prefix=keys.P_VALSET, include_value=False) as it:
            return [keys.decode_height(key[1:]) for key in it]


def _validate_opened(db: Any, path: Path, expected_chain: str | None) -> tuple[str | None, int, int]:
    schema = db.get(keys.META_SCHEMA)
    if schema is None:
        with db.iterator(include_value=False) as it:
            first = next(it, None)
        if first is not None:
            raise StoreCorruptError(
                path,
                f"no schema version key but the database holds keys (first {first!r}): not a Clearline store",
            )
        db.put(keys.META_SCHEMA, keys.encode_u32(keys.SCHEMA_VERSION), sync=True)
        return None, 0, 1
    try:
        version = keys.decode_u32(schema)
    except ValueError as exc:
        raise StoreCorruptError(path, f"schema version key is malformed: {schema!r}") from exc
    if version != keys.SCHEMA_VERSION:
        raise StoreCorruptError(
            path, f"schema version {version}, this node reads version {keys.SCHEMA_VERSION}"
        )
    raw_chain = db.get(keys.META_CHAIN_ID)
    raw_latest = db.get(keys.META_LATEST)
    if raw_chain is None:
        if raw_latest is not None:
            raise StoreCorruptError(path, "latest height is recorded but no chain id (genesis) is")
        return None, 0, 1
    try:
        stored_chain = raw_chain.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreCorruptError(path, f"stored chain id is not UTF-8: {raw_chain!r}") from exc
    if expected_chain is not None and stored_chain != expected_chain:
        raise StoreCorruptError(
            path,
            f"store belongs to chain {stored_chain!r}, this node is configured for {expected_chain!r}",
        )
    if raw_latest is None:
        raise StoreCorruptError(path, "genesis is recorded but the latest height key is missing")
    try:
        latest = keys.decode_height(raw_latest)
    except ValueError as exc:
        raise StoreCorruptError(path, f"latest height key is malformed: {raw_latest!r}") from exc
    if db.get(keys.META_GENESIS) is None:
        raise StoreCorruptError(path, "chain id is recorded but the genesis document is missing")
    if latest > 0 and (db.get(keys.block_key(latest)) is None or db.get(keys.commit_key(latest)) is None):
        raise StoreCorruptError(path, f"latest height is {latest} but its block or commit is missing")
    if db.get(keys.block_key(latest + 1)) is not None:
        raise StoreCorruptError(path, f"a block above the latest height {latest} is stored")
    if _find_valset(db, latest + 1) is None:
        raise StoreCorruptError(path, f"no validator set is stored for height {latest + 1}")
    raw_base = db.get(keys.META_BASE)
    try:
        base = keys.decode_height(raw_base) if raw_base is not None else 1
    except ValueError as exc:
        raise StoreCorruptError(path, f"base height key is malformed: {raw_base!r}") from exc
    if not 1 <= base <= latest + 1:
        raise StoreCorruptError(path, f"base height {base} is not within 1..{latest + 1}")
    return stored_chain, latest, base


def _check_commit(db: Any, path: Path, chain_id: str | None, latest: int, c: BlockCommit) -> None:
    """The invariants a block commit must meet before anything of it is written."""

    def bad(detail: str) -> InvalidCommitError:
        return InvalidCommitError(path, c.height, detail)

    if chain_id is None:
        raise bad("the store has no genesis yet")
    if c.height != latest + 1:
        raise bad(f"the next height is {latest + 1}")
    header = c.block.header
    if header.height != c.height:
        raise bad(f"block header says height {header.height}")
    if header.chain_id != chain_id:
        raise bad(f"block is for chain {header.chain_id!r}, the store for {chain_id!r}")
    if compute_block_hash(header) != c.block_hash:
        raise bad(f"block_hash {c.block_hash.hex()} is not the hash of the block's header")
    if c.height > 1:
        prev = db.get(keys.block_hash_key(c.height - 1))
        if header.prev_block_hash != prev:
            raise bad(f"prev_block_hash {header.prev_block_hash.hex()} does not match block {c.height - 1}")
    if c.commit.height != c.height or c.commit.block_id != c.block_hash:
        raise bad(
            f"commit certificate is for height {c.commit.height} block {c.commit.block_id.hex()}, "
            f"not this block {c.block_hash.hex()}"
        )
    txs = c.block.body.txs
    if len(c.receipts) != len(txs):
        raise bad(f"{len(c.receipts)} receipts for {len(txs)} txs")
    for index, (raw, receipt) in enumerate(zip(txs, c.receipts, strict=True)):
        if receipt.tx_hash != compute_tx_hash(raw):
            raise bad(f"receipt {index} has tx_hash {receipt.tx_hash.hex()}, not the hash of tx {index}")
    for address, index in c.account_touches:
        if not 0 <= index < len(txs):
            raise bad(f"account touch ({address.hex()}, {index}) names no tx of the block")
        if not 0 < len(address) <= keys.MAX_ADDRESS_LEN:
            raise bad(f"account touch address of length {len(address)}")
    for at_height, vs in c.next_validator_sets.items():
        if at_height <= c.height:
            raise bad(f"a validator set for height {at_height} cannot change once height {c.height} commits")
        if not vs.validators:
            raise bad(f"empty validator set for height {at_height}")


def _find_valset(reader: Any, height: int) -> tuple[int, bytes] | None:
    """(effective height, serialized set) of the last validator-set change at or below height."""
    stop = keys.P_VALSET + keys.encode_height(height) + b"\x00"
    with reader.iterator(start=keys.P_VALSET, stop=stop, reverse=True) as it:
        item = next(it, None)
    if item is None:
        return None
    key, value = item
    return keys.decode_height(key[1:]), value


def _put_state(batch: Any, writes: StateWrites) -> None:
    for key, value in writes.items():
        if value is None:
            batch.delete(keys.P_STATE + key)
        else:
            batch.put(keys.P_STATE + key, value)
