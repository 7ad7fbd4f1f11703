"""NodeStore: every table round-trips, one block is all-or-nothing, bad input is refused without a
trace, and opening validates the store in a constant number of reads."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from clearline.v1 import block_pb2, receipt_pb2
from node.blocks import block_hash
from node.storage import (
    BlockCommit,
    InvalidCommitError,
    NodeStore,
    StorageError,
    StoreCorruptError,
    account_touches_of,
    keys,
)
from node.storage import store as store_mod
from node.storage.bench import BENCH_CHAIN_ID, init_store, make_validator_set, synthetic_commit


def commit_chain(store: NodeStore, count: int, n_txs: int = 3, **kw: Any) -> list[BlockCommit]:
    out = []
    for _ in range(count):
        c = synthetic_commit(store, store.latest_height() + 1, n_txs, **kw)
        store.commit_block(c)
        out.append(c)
    return out


def dump(store: NodeStore) -> dict[bytes, bytes]:
    return dict(store.iter_raw())


# ---- empty store and genesis ---------------------------------------------------------------------


def test_fresh_store_is_empty_and_uninitialized(db_path: Path) -> None:
    with NodeStore.open(db_path) as s:
        assert not s.is_initialized()
        assert s.latest_height() == 0
        assert s.chain_id() is None
        assert s.load_genesis_json() is None
        assert s.load_validator_set(1) is None
        assert s.load_block(1) is None
        assert s.state.get(b"genesis/param") is None
        assert s.iter_raw(b"\x00schema").__next__()[1] == keys.encode_u32(keys.SCHEMA_VERSION)


def test_genesis_round_trips_and_survives_reopen(db_path: Path) -> None:
    vs = make_validator_set(4)
    with NodeStore.open(db_path) as s:
        s.save_genesis(b'{"g": 1}', {b"k1": b"v1", b"k2": b"v2", b"gone": None}, vs, "chain-a")
    with NodeStore.open(db_path, chain_id="chain-a") as s:
        assert s.is_initialized()
        assert s.chain_id() == "chain-a"
        assert s.load_genesis_json() == b'{"g": 1}'
        assert s.latest_height() == 0
        assert s.state.get(b"k1") == b"v1"
        assert s.state.get(b"gone") is None
        assert list(s.state.items(b"k")) == [(b"k1", b"v1"), (b"k2", b"v2")]
        assert s.load_validator_set(1) == vs
        assert s.load_validator_set(10**6) == vs
        assert s.load_validator_set(0) is None


def test_second_genesis_is_refused_and_changes_nothing(store: NodeStore) -> None:
    before = dump(store)
    with pytest.raises(InvalidCommitError, match="already initialized") as exc:
        store.save_genesis(b"{}", {b"x": b"y"}, make_validator_set(1), "other")
    assert exc.value.height == 0
    assert dump(store) == before
    assert store.chain_id() == BENCH_CHAIN_ID


@pytest.mark.parametrize(
    ("chain_id", "vs", "match"),
    [
        ("", make_validator_set(1), "empty chain id"),
        ("c", block_pb2.ValidatorSet(), "empty genesis validator set"),
    ],
)
def test_bad_genesis_is_refused_and_changes_nothing(
    db_path: Path, chain_id: str, vs: block_pb2.ValidatorSet, match: str
) -> None:
    with NodeStore.open(db_path) as s:
        before = dump(s)
        with pytest.raises(InvalidCommitError, match=match):
            s.save_genesis(b"{}", {b"x": b"y"}, vs, chain_id)
        assert dump(s) == before
        assert not s.is_initialized()


# ---- committed blocks: every table -----------------------------------------------------------------


def test_every_table_round_trips(store: NodeStore) -> None:
    vs2 = make_validator_set(5, seed=9)
    c1 = synthetic_commit(store, 1, 4, extra_writes={b"genesis/param": None, b"keep": b"1"})
    store.commit_block(c1)
    c2 = synthetic_commit(store, 2, 3, evidence=2, next_validator_sets={4: vs2}, extra_writes={b"keep": b"2"})
    store.commit_block(c2)
    assert store.latest_height() == 2
    for c in (c1, c2):
        h = c.height
        assert store.load_block(h) == c.block
        assert store.load_block_bytes(h) == c.block.SerializeToString(deterministic=True)
        assert store.load_block_hash(h) == c.block_hash == block_hash(c.block.header)
        assert store.height_of_hash(c.block_hash) == h
        assert store.load_commit(h) == c.commit
        assert store.load_block_receipts(h) == list(c.receipts)
        for index, (raw, receipt) in enumerate(zip(c.block.body.txs, c.receipts, strict=True)):
            assert store.tx_location(receipt.tx_hash) == (h, index)
            assert store.load_receipt(receipt.tx_hash) == receipt
            assert store.load_receipt_at(h, index) == receipt
            assert store.load_tx(receipt.tx_hash) == raw
        for key, value in c.state_writes.items():
            if key not in (b"genesis/param", b"keep"):
                assert store.state.get(key) == value
    # state: later writes win, deletes delete
    assert store.state.get(b"keep") == b"2"
    assert store.state.get(b"genesis/param") is None
    # per-account history, from receipts' signer and event accounts
    sender = c2.receipts[1].signer
    assert store.account_history(sender) == [(2, 1, c2.receipts[1].tx_hash)]
    receiver = c1.receipts[0].events[0].accounts[1]
    assert store.account_history(receiver) == [(1, 0, c1.receipts[0].tx_hash)]
    # evidence
    assert store.load_evidence() == [(2, c2.evidence[0]), (2, c2.evidence[1])]
    assert store.load_evidence(from_height=3) == []
    assert store.load_evidence(limit=1) == [(2, c2.evidence[0])]
    # validator sets: genesis set signs 1..3, vs2 from 4 on
    genesis_vs = make_validator_set(4)
    assert [store.load_validator_set(h) for h in (1, 2, 3)] == [genesis_vs] * 3
    assert store.load_validator_set(4) == vs2
    assert store.load_validator_set(100) == vs2
    assert store.validator_set_changes() == [1, 4]
    # block sync serving
    served = list(store.iter_blocks(1, 2))
    assert served == [(store.load_block_bytes(1), c1.commit), (store.load_block_bytes(2), c2.commit)]


def test_the_block_receipt_of_hold_expiries_round_trips(store: NodeStore) -> None:
    event = receipt_pb2.Event(kind="hold_expired", accounts=[b"\x01" * 20, b"\x02" * 20], amount=300)
    store.commit_block(dataclasses.replace(synthetic_commit(store, 1, 2), block_events=[event]))
    store.commit_block(synthetic_commit(store, 2, 1))
    block_receipt = store.load_block_receipt(1)
    assert block_receipt is not None
    assert list(block_receipt.events) == [event]
    assert block_receipt.height == 1 and block_receipt.tx_hash == b""
    assert block_receipt.status == receipt_pb2.TX_STATUS_OK
    assert store.load_block_receipt(2) is None  # no events, nothing stored
    assert len(store.load_block_receipts(1)) == 2  # the transactions' receipts are unchanged


def test_unknown_keys_read_as_none(store: NodeStore) -> None:
    commit_chain(store, 1)
    assert store.load_block(2) is None
    assert store.load_block(0) is None
    assert store.load_block(-1) is None
    assert store.load_block_bytes(2**64) is None
    assert store.load_block_hash(5) is None
    assert store.load_commit(5) is None
    assert store.height_of_hash(b"\x00" * 32) is None
    assert store.tx_location(b"\x01" * 32) is None
    assert store.load_receipt(b"\x01" * 32) is None
    assert store.load_tx(b"\x01" * 32) is None
    assert store.load_block_receipts(2) == []
    assert store.account_history(b"\x02" * 20) == []
    assert store.account_history(b"") == []
    assert list(store.iter_blocks(2, 10)) == []


def test_account_history_pages_in_order(store: NodeStore) -> None:
    account = b"\xaa" * 20
    for height in range(1, 6):
        c = synthetic_commit(store, height, 3)
        touches = [*c.account_touches, (account, 2), (account, 0)]
        store.commit_block(dataclasses.replace(c, account_touches=touches))
    full = store.account_history(account, limit=1000)
    assert [(h, i) for h, i, _ in full] == [(h, i) for h in range(1, 6) for i in (0, 2)]
    assert full[0][2] == store.load_block_receipts(1)[0].tx_hash
    assert store.account_history(account, limit=3) == full[:3]
    assert store.account_history(account, from_height=4, limit=1000) == full[6:]
    assert store.account_history(account, limit=0) == []


def test_iter_blocks_is_inclusive_and_clamped(store: NodeStore) -> None:
    commits = commit_chain(store, 5, n_txs=1)
    assert [c.height for _, c in store.iter_blocks(2, 4)] == [2, 3, 4]
    assert [c.height for _, c in store.iter_blocks(0, 99)] == [1, 2, 3, 4, 5]
    assert [c for _, c in store.iter_blocks(5, 5)] == [commits[4].commit]
    assert list(store.iter_blocks(4, 2)) == []


def test_validator_set_written_only_on_change(store: NodeStore) -> None:
    genesis_vs = make_validator_set(4)
    new_vs = make_validator_set(3, seed=7)
    commit_chain(store, 1, next_validator_sets={3: genesis_vs})  # same set: nothing new stored
    assert store.validator_set_changes() == [1]
    # two changes in one batch, the second back to the set the DB already has in effect there
    commit_chain(store, 1, next_validator_sets={4: new_vs, 6: genesis_vs})
    assert store.validator_set_changes() == [1, 4, 6]
    assert [store.load_validator_set(h) for h in (3, 4, 5, 6, 7)] == [
        genesis_vs,
        new_vs,
        new_vs,
        genesis_vs,
        genesis_vs,
    ]


def test_save_validator_set_refuses_committed_heights(store: NodeStore) -> None:
    commit_chain(store, 2)
    before = dump(store)
    with pytest.raises(InvalidCommitError, match="committed height") as exc:
        store.save_validator_set(2, make_validator_set(2, seed=3))
    assert exc.value.height == 2
    with pytest.raises(InvalidCommitError, match="empty validator set"):
        store.save_validator_set(5, block_pb2.ValidatorSet())
    assert dump(store) == before
    store.save_validator_set(5, make_validator_set(2, seed=3))
    assert store.load_validator_set(5) == make_validator_set(2, seed=3)


def test_account_touches_derived_from_receipts() -> None:
    a, b, c = b"a" * 20, b"b" * 20, b"c" * 20
    r0 = receipt_pb2.Receipt(signer=a)
    r0.events.add(kind="transfer", accounts=[a, b])
    r0.events.add(kind="fee", accounts=[c, b])
    r1 = receipt_pb2.Receipt(signer=b, status=receipt_pb2.TX_STATUS_INSUFFICIENT_FUNDS)
    assert account_touches_of([r0, r1]) == [(a, 0), (b, 0), (c, 0), (b, 1)]


# ---- invalid commits are refused and leave no trace ------------------------------------------------

Mutation = Callable[[BlockCommit, NodeStore], BlockCommit]


def _rehash(c: BlockCommit) -> BlockCommit:
    """Recompute hash and certificate after a header edit, so only the intended check fails."""
    h = block_hash(c.block.header)
    c.commit.block_id = h
    return dataclasses.replace(c, block_hash=h)


def _set_header(field: str, value: Any) -> Mutation:
    def mutate(c: BlockCommit, _: NodeStore) -> BlockCommit:
        setattr(c.block.header, field, value)
        return _rehash(c)

    return mutate


def _bad_receipt_hash(c: BlockCommit, _: NodeStore) -> BlockCommit:
    receipts = [receipt_pb2.Receipt(), *c.receipts[1:]]
    receipts[0].CopyFrom(c.receipts[0])
    receipts[0].tx_hash = b"\x00" * 32
    return dataclasses.replace(c, receipts=receipts)


INVALID: dict[str, tuple[Mutation, str]] = {
    "gap": (lambda c, s: dataclasses.replace(c, height=c.height + 1), "the next height is"),
    "header height": (_set_header("height", 99), "header says height 99"),
    "chain id": (_set_header("chain_id", "other-chain"), "for chain 'other-chain'"),
    "block hash": (
        lambda c, s: dataclasses.replace(c, block_hash=b"\x11" * 32),
        "not the hash of the block's header",
    ),
    "prev hash": (_set_header("prev_block_hash", b"\x22" * 32), "does not match block"),
    "certificate": (
        lambda c, s: dataclasses.replace(
            c, commit=block_pb2.CommitCertificate(height=c.height, block_id=b"x")
        ),
        "commit certificate is for",
    ),
    "receipt count": (lambda c, s: dataclasses.replace(c, receipts=c.receipts[:-1]), "2 receipts for 3 txs"),
    "receipt hash": (_bad_receipt_hash, "receipt 0 has tx_hash"),
    "touch index": (lambda c, s: dataclasses.replace(c, account_touches=[(b"a" * 20, 3)]), "names no tx"),
    "touch address": (lambda c, s: dataclasses.replace(c, account_touches=[(b"", 0)]), "address of length 0"),
    "valset height": (
        lambda c, s: dataclasses.replace(c, next_validator_sets={c.height: make_validator_set(1)}),
        "cannot change once",
    ),
    "valset empty": (
        lambda c, s: dataclasses.replace(c, next_validator_sets={c.height + 2: block_pb2.ValidatorSet()}),
        "empty validator set",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_commit_is_refused_and_changes_nothing(store: NodeStore, case: str) -> None:
    commit_chain(store, 2)
    mutate, match = INVALID[case]
    bad = mutate(synthetic_commit(store, 3, 3), store)
    before = dump(store)
    with pytest.raises(InvalidCommitError, match=match):
        store.commit_block(bad)
    assert dump(store) == before
    assert store.latest_height() == 2
    # the store still takes the right block afterwards
    store.commit_block(synthetic_commit(store, 3, 3))
    assert store.latest_height() == 3


def test_commit_before_genesis_is_refused(db_path: Path) -> None:
    with NodeStore.open(db_path) as s:
        c = synthetic_commit(s, 1, 1)
        before = dump(s)
        with pytest.raises(InvalidCommitError, match="no genesis"):
            s.commit_block(c)
        assert dump(s) == before


# ---- reopening and validation on open ------------------------------------------------------------


def test_reopen_keeps_height_state_and_indexes(db_path: Path) -> None:
    s = NodeStore.open(db_path)
    init_store(s)
    commits = commit_chain(s, 4, extra_writes={b"counter": b"4"})
    contents = dump(s)
    s.close()
    with NodeStore.open(db_path, chain_id=BENCH_CHAIN_ID) as s2:
        assert s2.latest_height() == 4
        assert s2.state.get(b"counter") == b"4"
        assert s2.load_receipt(commits[2].receipts[1].tx_hash) == commits[2].receipts[1]
        assert dump(s2) == contents
        s2.commit_block(synthetic_commit(s2, 5, 2))
        assert s2.latest_height() == 5


def test_wrong_chain_id_on_open(store: NodeStore, db_path: Path) -> None:
    store.close()
    with pytest.raises(
        StoreCorruptError, match="belongs to chain 'clearline-bench', this node is configured for 'x'"
    ):
        NodeStore.open(db_path, chain_id="x")
    with NodeStore.open(db_path, chain_id=BENCH_CHAIN_ID) as s:  # the failed open released the lock
        assert s.chain_id() == BENCH_CHAIN_ID


def _corrupt(store: NodeStore, db_path: Path, put: dict[bytes, bytes | None]) -> None:
    for key, value in put.items():
        if value is None:
            store._db.delete(key)
        else:
            store._db.put(key, value)
    store.close()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({keys.META_SCHEMA: keys.encode_u32(2)}, "schema version 2, this node reads version 1"),
        ({keys.META_SCHEMA: b"\x01"}, "schema version key is malformed"),
        ({keys.META_SCHEMA: None}, "no schema version key but the database holds keys"),
        ({keys.META_LATEST: None}, "latest height key is missing"),
        ({keys.META_LATEST: b"\x00\x05"}, "latest height key is malformed"),
        ({keys.META_LATEST: keys.encode_height(9)}, "latest height is 9 but its block or commit is missing"),
        ({keys.commit_key(2): None}, "latest height is 2 but its block or commit is missing"),
        ({keys.META_LATEST: keys.encode_height(1)}, "a block above the latest height 1 is stored"),
        ({keys.META_GENESIS: None}, "genesis document is missing"),
        ({keys.META_CHAIN_ID: b"\xff\xfe"}, "chain id is not UTF-8"),
        ({keys.valset_key(1): None}, "no validator set is stored for height 3"),
    ],
)
def test_damaged_store_is_refused_on_open(
    store: NodeStore, db_path: Path, edit: dict[bytes, bytes | None], match: str
) -> None:
    commit_chain(store, 2)
    _corrupt(store, db_path, edit)
    with pytest.raises(StoreCorruptError, match=match) as exc:
        NodeStore.open(db_path)
    assert exc.value.path == str(db_path)


def test_latest_without_chain_id_is_refused(db_path: Path) -> None:
    s = NodeStore.open(db_path)
    _corrupt(s, db_path, {keys.META_LATEST: keys.encode_height(0)})
    with pytest.raises(StoreCorruptError, match="no chain id"):
        NodeStore.open(db_path)


def test_undecodable_record_is_store_corruption(store: NodeStore) -> None:
    commit_chain(store, 1)
    store._db.put(keys.block_key(1), b"\xff\xff\xff")
    with pytest.raises(StoreCorruptError, match="block 1 does not decode as Block"):
        store.load_block(1)


def test_second_open_of_a_live_store_is_refused(store: NodeStore, db_path: Path) -> None:
    with pytest.raises(StorageError, match="another process holds its lock") as exc:
        NodeStore.open(db_path)
    assert not isinstance(exc.value, StoreCorruptError)
    assert store.latest_height() == 0 and store.is_initialized()


def test_missing_parent_directories_are_created(tmp_path: Path) -> None:
    with NodeStore.open(tmp_path / "a" / "b" / "db") as s:
        assert s.latest_height() == 0


def test_unusable_path_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StorageError, match="cannot create the store directory"):
        NodeStore.open(tmp_path / "file" / "db")


def test_closed_store_refuses_use(store: NodeStore) -> None:
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageError, match="the store is closed"):
        store.load_block(1)
    with pytest.raises(StorageError, match="the store is closed"):
        store.commit_block(synthetic_commit(store, 1, 1))


def test_snapshot_does_not_see_later_commits(store: NodeStore) -> None:
    commit_chain(store, 1, extra_writes={b"x": b"1"})
    with store.snapshot() as snap:
        commit_chain(store, 1, extra_writes={b"x": b"2"})
        assert snap.latest_height == 1
        assert snap.state.get(b"x") == b"1"
        assert snap.get_raw(keys.block_key(2)) is None
        assert snap.load_block(2) is None and snap.load_commit(2) is None
        assert snap.load_block(1) == store.load_block(1)
        assert snap.load_commit(1) == store.load_commit(1)
    assert store.state.get(b"x") == b"2"


# ---- opening is O(1) in the chain length ---------------------------------------------------------


class CountingDB:
    """Wraps a plyvel DB and counts reads: gets, iterators and items they return."""

    def __init__(self, real: Any, counts: dict[str, int]) -> None:
        self._real = real
        self._counts = counts

    def get(self, key: bytes, *a: Any, **kw: Any) -> Any:
        self._counts["get"] += 1
        return self._real.get(key, *a, **kw)

    def iterator(self, *a: Any, **kw: Any) -> Any:
        self._counts["iterators"] += 1
        counts = self._counts
        real_it = self._real.iterator(*a, **kw)

        class It:
            def __enter__(self) -> It:
                return self

            def __exit__(self, *exc: object) -> None:
                real_it.close()

            def __iter__(self) -> It:
                return self

            def __next__(self) -> Any:
                item = next(real_it)
                counts["items"] += 1
                return item

        return It()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _open_counting(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[NodeStore, dict[str, int]]:
    counts = {"get": 0, "iterators": 0, "items": 0}
    real_db = store_mod.plyvel.DB
    with monkeypatch.context() as m:
        m.setattr(store_mod.plyvel, "DB", lambda *a, **kw: CountingDB(real_db(*a, **kw), counts))
        s = NodeStore.open(path, chain_id=BENCH_CHAIN_ID)
    return s, counts


def test_open_reads_a_constant_number_of_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counts_by_length = {}
    for blocks in (10, 2000):
        path = tmp_path / f"db{blocks}"
        with NodeStore.open(path) as s:
            init_store(s)
            rng = random.Random(0)
            for h in range(1, blocks + 1):
                s.commit_block(
                    synthetic_commit(s, h, 1, rng=rng, merkle_nodes_per_tx=1, state_entries_per_tx=1)
                )
            s.commit_block(
                synthetic_commit(s, blocks + 1, 1, next_validator_sets={blocks + 3: make_validator_set(2)})
            )
        s, counts = _open_counting(path, monkeypatch)
        assert s.latest_height() == blocks + 1
        s.close()
        counts_by_length[blocks] = counts
    assert counts_by_length[10] == counts_by_length[2000]
    assert counts_by_length[2000]["get"] <= 10
    assert counts_by_length[2000]["items"] <= 2


def test_write_buffers_are_staggered_by_validator_and_a_store_reopens_across_options(
    db_path: Path,
) -> None:
    """Each validator gets its own LevelDB write buffer (16-31 MiB, fixed by its address), so a local
    cluster does not flush and compact on every node at the same height. A store written with Snappy
    compression (LevelDB's default, and this store's before) reads the same under the current options."""
    import plyvel

    from node.storage import staggered_write_buffer
    from node.storage.store import LEVELDB_OPTIONS

    base = LEVELDB_OPTIONS["write_buffer_size"]
    sizes = {staggered_write_buffer(bytes([b]) + b"\x00" * 19) for b in range(256)}
    assert min(sizes) == base and max(sizes) < 2 * base and len(sizes) == 16
    assert staggered_write_buffer(b"\x07" * 20) == staggered_write_buffer(b"\x07" * 20)
    assert staggered_write_buffer(b"") == base

    s = NodeStore.open(db_path, write_buffer_size=base + 1)
    init_store(s)
    commit_chain(s, 3, extra_writes={b"counter": b"3"})
    contents = dump(s)
    s.close()
    with plyvel.DB(str(db_path), compression="snappy") as raw:  # rewrite every entry compressed
        entries = list(raw.iterator())
        with raw.write_batch() as batch:
            for k, v in entries:
                batch.put(k, v)
        raw.compact_range()
    with NodeStore.open(db_path, chain_id=BENCH_CHAIN_ID) as s2:
        assert dump(s2) == contents and s2.state.get(b"counter") == b"3"
