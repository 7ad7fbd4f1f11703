"""NodeStore.prune on real LevelDB: every key of a height below the new base is gone (block, hash and
its index, certificate, receipts, tx index, block events, account history, evidence), every key at
or above it is untouched, the base is recorded with the deletions and survives a reopen, a batch
stops after the height that reaches its key budget, the latest block and validator sets stay, and
the headers it is told to keep stay with their certificates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from clearline.v1 import receipt_pb2
from node.storage import NodeStore, StoreCorruptError, keys
from node.storage.bench import BENCH_CHAIN_ID, make_validator_set, synthetic_commit

HEIGHTS = 30
TXS = 3


def build_chain(store: NodeStore, heights: int = HEIGHTS) -> dict[int, list[bytes]]:
    """A chain with evidence every 5th height, block events every 4th, a validator-set change
    scheduled by block 10 (from 12); returns each height's tx hashes."""
    tx_hashes: dict[int, list[bytes]] = {}
    for height in range(1, heights + 1):
        c = synthetic_commit(
            store,
            height,
            TXS,
            evidence=1 if height % 5 == 0 else 0,
            next_validator_sets={12: make_validator_set(5, seed=1)} if height == 10 else None,
        )
        if height % 4 == 0:
            c = dataclasses.replace(c, block_events=[receipt_pb2.Event(kind="hold_expired", amount=height)])
        store.commit_block(c)
        tx_hashes[height] = [r.tx_hash for r in c.receipts]
    return tx_hashes


def height_of_key(key: bytes, dump: dict[bytes, bytes]) -> int | None:
    """The block height a key of a per-height table belongs to (None for tables that are kept)."""
    table = key[:1]
    if table in (keys.P_BLOCK, keys.P_BLOCK_HASH, keys.P_COMMIT, keys.P_BLOCK_EVENTS):
        return keys.decode_height(key[1:9])
    if table in (keys.P_RECEIPT, keys.P_EVIDENCE):
        return keys.decode_location(key[1:13])[0]
    if table in (keys.P_HASH_HEIGHT,):
        return keys.decode_height(dump[key])
    if table == keys.P_TX:
        return keys.decode_location(dump[key])[0]
    if table == keys.P_ACCOUNT:
        return keys.decode_location(key[-12:])[0]
    return None


def by_height(dump: dict[bytes, bytes]) -> dict[int, dict[bytes, bytes]]:
    out: dict[int, dict[bytes, bytes]] = {}
    for key, value in dump.items():
        height = height_of_key(key, dump)
        if height is not None:
            out.setdefault(height, {})[key] = value
    return out


def kept_tables(dump: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {k: v for k, v in dump.items() if height_of_key(k, dump) is None and k != keys.META_BASE}


def test_prune_deletes_every_key_below_the_base_and_nothing_else(store: NodeStore, db_path: Path) -> None:
    tx_hashes = build_chain(store)
    before = dict(store.iter_raw())
    tables = by_height(before)
    assert {k[:1] for k in tables[10]} == {b"b", b"k", b"h", b"c", b"r", b"t", b"a", b"e"}
    assert keys.block_events_key(8) in tables[8]

    pruned = store.prune(21, max_keys=10**6)

    assert (pruned.base, pruned.heights) == (21, 20)
    assert store.base_height() == 21
    after = dict(store.iter_raw())
    remaining = by_height(after)
    assert min(remaining) == 21, "a key of a pruned height is left"
    assert all(remaining[h] == tables[h] for h in range(21, HEIGHTS + 1)), "a kept height changed"
    # Validator sets, state, genesis and the other metadata are untouched; the base is recorded.
    assert kept_tables(after) == kept_tables(before)
    assert after[keys.META_BASE] == keys.encode_height(21)
    assert store.load_validator_set(11) == before_set(before, 1)
    assert store.load_validator_set(12) == make_validator_set(5, seed=1)
    # Reads of pruned heights find nothing; kept ones read as before.
    assert store.load_block(20) is None and store.load_commit(20) is None
    assert store.tx_location(tx_hashes[20][0]) is None
    assert store.load_block_receipts(20) == [] and store.load_block_receipt(20) is None
    assert store.load_evidence(0)[0][0] == 25
    assert store.tx_location(tx_hashes[21][0]) == (21, 0)
    assert store.load_block(HEIGHTS) is not None
    # The base survives a reopen.
    store.close()
    with NodeStore.open(db_path, chain_id=BENCH_CHAIN_ID) as reopened:
        assert reopened.base_height() == 21
        assert reopened.latest_height() == HEIGHTS


def before_set(dump: dict[bytes, bytes], height: int) -> object:
    from clearline.v1 import block_pb2

    return block_pb2.ValidatorSet.FromString(dump[keys.valset_key(height)])


def test_account_history_keeps_the_entries_from_the_base(store: NodeStore) -> None:
    build_chain(store, 12)
    addresses = {key[2 : 2 + key[1]] for key, _ in store.iter_raw(keys.P_ACCOUNT)}
    history = {address: store.account_history(address, from_height=0) for address in addresses}
    assert len(addresses) == 12 * TXS * 2
    store.prune(7, max_keys=10**6)
    for address, entries in history.items():
        assert store.account_history(address, from_height=0) == [e for e in entries if e[0] >= 7]


def test_a_batch_stops_after_the_height_that_reaches_its_budget(store: NodeStore) -> None:
    build_chain(store, 12)
    first = store.prune(11, max_keys=1)  # one height at least, however small the budget
    assert (first.base, first.heights) == (2, 1)
    per_height = first.keys  # deletions of one height of this chain (evidence adds one)
    assert per_height >= len(by_height(dict(store.iter_raw()))[2])
    second = store.prune(11, max_keys=per_height + 1)  # reached within the second height
    assert (second.base, second.heights) == (4, 2)
    bases = [store.prune(11, max_keys=per_height).base for _ in range(10)]
    assert bases[:7] == [5, 6, 7, 8, 9, 10, 11] and set(bases[7:]) == {11}
    assert min(by_height(dict(store.iter_raw()))) == 11


def test_the_latest_block_is_never_pruned(store: NodeStore) -> None:
    build_chain(store, 5)
    assert store.prune(10**6, max_keys=10**6).base == 5
    assert store.load_block(5) is not None and store.load_commit(5) is not None
    assert store.prune(3, max_keys=10**6).heights == 0  # never back
    assert store.base_height() == 5


def test_kept_headers_stay_with_their_certificates_and_lose_the_rest(store: NodeStore) -> None:
    tx_hashes = build_chain(store, 15)
    block_hash = store.load_block_hash(11)
    store.prune(14, max_keys=10**6, keep_headers={11})
    assert store.load_block(11) is not None and store.load_commit(11) is not None
    assert block_hash is not None and store.height_of_hash(block_hash) == 11
    assert store.load_block_receipts(11) == [] and store.tx_location(tx_hashes[11][0]) is None
    assert store.load_block(10) is None and store.load_block(12) is None


def test_a_state_synced_anchor_goes_with_the_first_batch(tmp_path: Path) -> None:
    source = NodeStore.open(tmp_path / "src", chain_id=BENCH_CHAIN_ID)
    from node.storage.bench import init_store

    init_store(source)
    build_chain(source, 3)
    block, commit = source.load_block(3), source.load_commit(3)
    block_hash = source.load_block_hash(3)
    assert block is not None and commit is not None and block_hash is not None
    with NodeStore.open(tmp_path / "synced", chain_id=BENCH_CHAIN_ID) as synced:
        synced.save_state_sync(
            b"{}", BENCH_CHAIN_ID, {b"k": b"v"}, block, block_hash, commit, {1: make_validator_set(4)}
        )
        assert synced.base_height() == 4
        for height in (4, 5, 6):
            synced.commit_block(synthetic_commit(synced, height, TXS))
        assert synced.prune(5, max_keys=10**6).base == 5
        assert synced.load_block(3) is None and synced.height_of_hash(block_hash) is None
        assert synced.load_block(4) is None and synced.load_block(5) is not None
    source.close()


@pytest.mark.parametrize(("raw", "problem"), [(b"\x01", "malformed"), (keys.encode_height(99), "not within")])
def test_a_bad_base_key_is_refused_at_open(store: NodeStore, db_path: Path, raw: bytes, problem: str) -> None:
    build_chain(store, 3)
    store.close()
    import plyvel

    db = plyvel.DB(str(db_path))
    db.put(keys.META_BASE, raw)
    db.close()
    with pytest.raises(StoreCorruptError, match=problem):
        NodeStore.open(db_path, chain_id=BENCH_CHAIN_ID)
