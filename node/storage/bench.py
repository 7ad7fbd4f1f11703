"""Storage benchmark and synthetic chains: commit N blocks of K txs of realistic sizes, time the small
synced writes of the signing path (sign-state save, WAL append, WAL rotation), print JSON.

    .venv/bin/python -m node.storage.bench --blocks 200 --txs 500

Sizes per tx (defaults): a 250-byte SignedTx, a receipt with one transfer event naming two accounts,
two 120-byte state entries and 16 Merkle nodes of 68 bytes (what a sparse Merkle tree update of two
accounts writes), two account-history entries; a 4-signature commit certificate per block.
`synthetic_commit` is also what the storage tests use to build chains.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from clearline.v1 import block_pb2, receipt_pb2, wal_pb2
from node.blocks import block_hash
from node.storage.signstate import SignStateFile
from node.storage.store import BlockCommit, NodeStore, account_touches_of
from node.storage.wal import WAL
from node.txs import tx_hash

BENCH_CHAIN_ID = "clearline-bench"


def make_validator_set(count: int = 4, seed: int = 0) -> block_pb2.ValidatorSet:
    rng = random.Random(seed)
    vs = block_pb2.ValidatorSet()
    for i in range(count):
        vs.validators.add(address=rng.randbytes(20), public_key=rng.randbytes(32), power=10, name=f"v{i}")
    return vs


def init_store(store: NodeStore, chain_id: str = BENCH_CHAIN_ID, validators: int = 4) -> None:
    """save_genesis with a small genesis document and state."""
    store.save_genesis(
        b'{"chain_id": "%s"}' % chain_id.encode(),
        {b"genesis/param": b"1"},
        make_validator_set(validators),
        chain_id,
    )


def synthetic_commit(
    store: NodeStore,
    height: int,
    n_txs: int,
    *,
    rng: random.Random | None = None,
    tx_size: int = 250,
    state_entries_per_tx: int = 2,
    merkle_nodes_per_tx: int = 16,
    ledger_accounts: int | None = None,
    evidence: int = 0,
    next_validator_sets: dict[int, block_pb2.ValidatorSet] | None = None,
    extra_writes: dict[bytes, bytes | None] | None = None,
) -> BlockCommit:
    """A valid BlockCommit for the next height of store (chained to its latest block)."""
    rng = rng or random.Random(height)
    chain_id = store.chain_id() or BENCH_CHAIN_ID
    txs = [rng.randbytes(tx_size) for _ in range(n_txs)]
    block = block_pb2.Block()
    header = block.header
    header.chain_id = chain_id
    header.height = height
    header.time_ms = 1_700_000_000_000 + height * 1000
    header.prev_block_hash = store.load_block_hash(height - 1) or b""
    header.tx_root = rng.randbytes(32)
    header.state_root = rng.randbytes(32)
    header.validator_set_hash = rng.randbytes(32)
    header.proposer = rng.randbytes(20)
    block.body.txs.extend(txs)
    for _ in range(evidence):
        ev = block.body.evidence.add()
        for vote in (ev.duplicate_vote.vote_a, ev.duplicate_vote.vote_b):
            vote.type = block_pb2.VOTE_TYPE_PREVOTE
            vote.height = height - 1
            vote.block_id = rng.randbytes(32)
            vote.validator = rng.randbytes(20)
            vote.signature = rng.randbytes(64)
    bhash = block_hash(header)
    commit = block_pb2.CommitCertificate(height=height, round=0, block_id=bhash)
    for _ in range(4):
        commit.signatures.add(validator=rng.randbytes(20), signature=rng.randbytes(64))
    receipts: list[receipt_pb2.Receipt] = []
    writes: dict[bytes, bytes | None] = {}
    for index, raw in enumerate(txs):
        sender, receiver = rng.randbytes(20), rng.randbytes(20)
        receipt = receipt_pb2.Receipt(
            tx_hash=tx_hash(raw), status=receipt_pb2.TX_STATUS_OK, height=height, index=index, signer=sender
        )
        receipt.events.add(kind="transfer", accounts=[sender, receiver], amount=rng.randrange(1, 10**9))
        receipts.append(receipt)
        if ledger_accounts is None:
            for _ in range(state_entries_per_tx):
                writes[b"acct/" + rng.randbytes(20)] = rng.randbytes(120)
            for _ in range(merkle_nodes_per_tx):
                writes[b"smt/" + rng.randbytes(32)] = rng.randbytes(68)
        else:
            _ledger_writes(writes, rng, ledger_accounts, state_entries_per_tx)
    if extra_writes:
        writes.update(extra_writes)
    return BlockCommit(
        height=height,
        block=block,
        block_hash=bhash,
        commit=commit,
        receipts=receipts,
        state_writes=writes,
        account_touches=account_touches_of(receipts),
        next_validator_sets=next_validator_sets or {},
        evidence=list(block.body.evidence),
    )


def _ledger_writes(
    writes: dict[bytes, bytes | None], rng: random.Random, accounts: int, entries: int
) -> None:
    """What node.ledger's 256-ary sparse Merkle tree writes for `entries` changed keys in a state of
    `accounts` keys: the entries, the root node, and each key's level-1 and level-2 nodes (66 bytes
    per present child; the root and level-1 nodes are full, ~16.9 KB, once accounts >= 65536)."""
    level1 = min(256, max(1, accounts // 256)) * 66
    level2 = min(256, max(1, accounts // 65536)) * 66
    writes[b"\x01m/"] = rng.randbytes(256 * 66)
    for _ in range(entries):
        key = b"acct/" + rng.randrange(accounts).to_bytes(8, "big")
        kh = hashlib.sha256(key).digest()
        writes[key] = rng.randbytes(120)
        writes[b"\x01m/" + kh[:1]] = rng.randbytes(level1)
        writes[b"\x01m/" + kh[:2]] = rng.randbytes(level2)


def run(
    blocks: int, txs: int, directory: Path, ledger_accounts: int | None = None
) -> dict[str, float | int | str]:
    """Commit `blocks` blocks of `txs` txs into a fresh store under directory; timings of commit_block
    only (building the synthetic blocks is excluded)."""
    store = NodeStore.open(directory / "db")
    try:
        init_store(store)
        rng = random.Random(1)
        total = 0.0
        worst = 0.0
        for height in range(1, blocks + 1):
            c = synthetic_commit(store, height, txs, rng=rng, ledger_accounts=ledger_accounts)
            start = time.perf_counter()
            store.commit_block(c)
            elapsed = time.perf_counter() - start
            total += elapsed
            worst = max(worst, elapsed)
        reopen_start = time.perf_counter()
        store.close()
        store = NodeStore.open(directory / "db")
        reopen = time.perf_counter() - reopen_start
    finally:
        store.close()
    return {
        "blocks": blocks,
        "txs_per_block": txs,
        "state_model": "random-small-nodes"
        if ledger_accounts is None
        else f"ledger-256ary-{ledger_accounts}-accounts",
        "blocks_per_s": round(blocks / total, 1),
        "txs_per_s": round(blocks * txs / total),
        "ms_per_synced_batch": round(1000 * total / blocks, 3),
        "ms_worst_batch": round(1000 * worst, 3),
        "ms_close_and_reopen": round(1000 * reopen, 3),
    }


def run_small_writes(directory: Path, count: int = 200) -> dict[str, float]:
    """Median milliseconds of the small durable writes on the signing path: SignStateFile.save (temp,
    fsync, rename, fsync dir), WAL.append(sync=True) of a vote, and WAL.end_height (rotation)."""
    signstate = SignStateFile.open(directory / "sign_state")
    wal, _ = WAL.open(directory / "cs.wal")
    vote = wal_pb2.WalRecord(
        message=wal_pb2.WalMessage(
            vote=block_pb2.Vote(
                type=block_pb2.VOTE_TYPE_PREVOTE,
                height=1,
                block_id=b"\x01" * 32,
                validator=b"\x02" * 20,
                signature=b"\x03" * 64,
            )
        )
    )
    locked = bytes(30_000)  # a locked block of ~100 txs
    save_ms: list[float] = []
    append_ms: list[float] = []
    rotate_ms: list[float] = []
    try:
        for i in range(1, count + 1):
            state = wal_pb2.LastSigned(
                height=i, step=block_pb2.STEP_PREVOTE, block_id=b"\x01" * 32, signature=b"s" * 64
            )
            start = time.perf_counter()
            signstate.save(state, locked_block=locked)
            save_ms.append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            wal.append(vote, sync=True)
            append_ms.append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            wal.end_height(i)
            rotate_ms.append(1000 * (time.perf_counter() - start))
    finally:
        wal.close()
    return {
        "ms_signstate_save_median": round(statistics.median(save_ms), 3),
        "ms_signstate_save_p99": round(sorted(save_ms)[int(0.99 * (len(save_ms) - 1))], 3),
        "ms_wal_append_synced_median": round(statistics.median(append_ms), 3),
        "ms_wal_end_height_median": round(statistics.median(rotate_ms), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--txs", type=int, default=500, help="txs per block")
    parser.add_argument(
        "--ledger-accounts",
        type=int,
        default=None,
        help="model node.ledger's 256-ary Merkle tree over this many accounts (default: 16 small random nodes per tx)",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to create the store (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="clearline-bench-", dir=args.dir))
    try:
        result: dict[str, float | int | str] = {
            **run(args.blocks, args.txs, directory, args.ledger_accounts),
            **run_small_writes(directory),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
