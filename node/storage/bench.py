"""Storage benchmark and synthetic chains: commit N blocks of K txs of realistic sizes, print JSON.

    .venv/bin/python -m node.storage.bench --blocks 200 --txs 500

Sizes per tx (defaults): a 250-byte SignedTx, a receipt with one transfer event naming two accounts,
two 120-byte state entries and 16 Merkle nodes of 68 bytes (what a sparse Merkle tree update of two
accounts writes), two account-history entries; a 4-signature commit certificate per block.
`synthetic_commit` is also what the storage tests use to build chains.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from clearline.v1 import block_pb2, receipt_pb2
from node.blocks import block_hash
from node.ledger.kv import Writes
from node.storage.store import BlockCommit, NodeStore, account_touches_of
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
    evidence: int = 0,
    next_validator_sets: dict[int, block_pb2.ValidatorSet] | None = None,
    extra_writes: Writes | None = None,
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
    writes: Writes = {}
    for index, raw in enumerate(txs):
        sender, receiver = rng.randbytes(20), rng.randbytes(20)
        receipt = receipt_pb2.Receipt(
            tx_hash=tx_hash(raw), status=receipt_pb2.TX_STATUS_OK, height=height, index=index, signer=sender
        )
        receipt.events.add(kind="transfer", accounts=[sender, receiver], amount=rng.randrange(1, 10**9))
        receipts.append(receipt)
        for _ in range(state_entries_per_tx):
            writes[b"acct/" + rng.randbytes(20)] = rng.randbytes(120)
        for _ in range(merkle_nodes_per_tx):
            writes[b"smt/" + rng.randbytes(32)] = rng.randbytes(68)
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


def run(blocks: int, txs: int, directory: Path) -> dict[str, float | int]:
    """Commit `blocks` blocks of `txs` txs into a fresh store under directory; timings of commit_block
    only (building the synthetic blocks is excluded)."""
    store = NodeStore.open(directory / "db")
    try:
        init_store(store)
        rng = random.Random(1)
        total = 0.0
        worst = 0.0
        for height in range(1, blocks + 1):
            c = synthetic_commit(store, height, txs, rng=rng)
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
        "blocks_per_s": round(blocks / total, 1),
        "txs_per_s": round(blocks * txs / total),
        "ms_per_synced_batch": round(1000 * total / blocks, 3),
        "ms_worst_batch": round(1000 * worst, 3),
        "ms_close_and_reopen": round(1000 * reopen, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--txs", type=int, default=500, help="txs per block")
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to create the store (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="clearline-bench-", dir=args.dir))
    try:
        result = run(args.blocks, args.txs, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
