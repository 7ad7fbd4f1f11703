"""Ledger benchmark (`make bench-ledger`): prints ONE JSON object.

- apply_transfers_per_s: transfers per second through Ledger.execute_block (transactions, the
  serialization of every touched entry and the new state root), one core, signatures excluded
  (VerifiedTx objects are built directly), in blocks of --block transfers among --accounts funded
  accounts: the block size over the median CPU time of a block (the machine is shared, and the
  median is robust to a neighbour's burst); apply_transfers_per_s_mean is all the transfers over
  all the blocks' CPU time. apply_transfers_per_s_with_commit also counts writing each result to a MemoryKV and
  Ledger.commit; *_wall is elapsed time of the latter. With a client reference on every
  transaction (each adds a replay-protection entry to the state): apply_transfers_with_ref_per_s.
- state_root_ms_10k_of_1m: in a state of 1,000,000 accounts, a block of 5,000 transfers between
  10,000 distinct accounts; the time to compute the new state root from the block's 10,001 changed
  entries (hash each key and value, update the Merkle tree along their paths, produce the node
  writes: compute_state_root). serialize_and_root_ms_10k_of_1m adds serializing the changed
  records (compute_root_update: everything after the transactions ran). Medians of --rounds
  candidate blocks. block_10k_of_1m_execute_ms is the whole execute_block of that block.

Times are CPU time of this process (`time.process_time`): the cost on one core, which is what the
targets are about; the machine is shared, so elapsed times (the *_wall keys) also count other
processes' use of the core. The transfer blocks run after one untimed warm-up block that touches
every account once (a running node's committed-state cache is warm). The process uses a node's
garbage-collector thresholds (node/gctune.py).

Usage: python -m cluster.bench_ledger [--accounts N] [--block N] [--blocks N] [--big N] [--rounds N]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from clearline.v1 import state_pb2, tx_pb2
from node import crypto
from node.crypto import Address, Hash, PublicKey
from node.gctune import THRESHOLDS, tune_gc
from node.ledger import Ledger, MemoryKV, merkle
from node.ledger import ledger as ledger_module
from node.ledger.state import (
    INSTR,
    NO_ENTRIES,
    AccountRec,
    account_key,
    encode_account,
    frozen_approvals,
    instrument_key,
)
from node.txs import VerifiedTx

CHAIN = "bench"
T0 = 1_700_000_000


def _pk(i: int) -> PublicKey:
    return PublicKey(hashlib.sha256(b"bench-key:%d" % i).digest())


def base_genesis() -> tuple[state_pb2.Genesis, tx_pb2.InstrumentId]:
    issuer = _pk(-1)
    g = state_pb2.Genesis(chain_id=CHAIN, genesis_time=T0)
    g.validators.add(public_key=_pk(-2), power=1)
    g.accounts.add(public_key=issuer, roles=[tx_pb2.ROLE_ISSUER])
    usd = tx_pb2.InstrumentId(issuer=crypto.address_of(issuer), symbol="USD")
    g.instruments.add(
        id=usd, name="USD", currency="USD", decimals=2, kind=tx_pb2.INSTRUMENT_KIND_DEPOSIT_TOKEN
    )
    return g, usd


def build_state(n_accounts: int, balance: int) -> tuple[MemoryKV, list[bytes], tx_pb2.InstrumentId]:
    """A committed state with n funded, KYC-approved accounts, written in bulk (one Merkle build)."""
    g, usd = base_genesis()
    kv = MemoryKV()
    writes, _ = Ledger.genesis_writes(g)
    kv.apply(writes)
    ik = (usd.issuer, usd.symbol)
    addresses: list[bytes] = []
    entries: dict[bytes, bytes] = {}
    roles = frozenset({tx_pb2.ROLE_PARTICIPANT})
    approvals = frozen_approvals({b"": (tx_pb2.KYC_STATUS_APPROVED, 0)})  # the network's approval
    for i in range(n_accounts):
        pk = _pk(i)
        address = crypto.address_of(pk)
        addresses.append(address)
        rec = AccountRec(address, pk, roles, tx_pb2.KYC_STATUS_APPROVED, 0, False, 0,
                         {ik: (balance, 0, 0)}, NO_ENTRIES, NO_ENTRIES, False, b"", approvals)  # fmt: skip
        entries[account_key(address)] = encode_account(rec)
    inst = state_pb2.Instrument()
    raw_inst = kv.get(instrument_key(ik))
    assert raw_inst is not None and instrument_key(ik).startswith(INSTR)
    inst.ParseFromString(raw_inst)
    inst.supply = inst.minted = n_accounts * balance
    entries[instrument_key(ik)] = inst.SerializeToString(deterministic=True)
    sha = hashlib.sha256
    changes: dict[bytes, bytes | None] = {sha(k).digest(): sha(v).digest() for k, v in entries.items()}
    nodes = merkle.ChunkedNodes(kv)
    _root, node_writes = merkle.MerkleTree(nodes).update(changes)
    chunks = merkle.stored_node_writes(node_writes, nodes)
    kv.apply(entries)
    kv.apply(chunks)
    return kv, addresses, usd


class TxFactory:
    """Builds VerifiedTx transfers directly (no signing), tracking each sender's nonce."""

    def __init__(self, addresses: list[bytes], usd: tx_pb2.InstrumentId) -> None:
        self.addresses = addresses
        self.usd = usd
        self.nonces: dict[bytes, int] = {}
        self.serial = 0

    def transfer(self, src: bytes, dst: bytes, amount: int, client_ref: bool) -> VerifiedTx:
        nonce = self.nonces.get(src, 0)
        self.nonces[src] = nonce + 1
        self.serial += 1
        body = tx_pb2.TxBody(
            chain_id=CHAIN,
            signer=src,
            nonce=nonce,
            client_ref=f"ref-{self.serial}" if client_ref else "",
            transfer=tx_pb2.Transfer(instrument=self.usd, to=dst, amount=amount),
        )
        raw = body.SerializeToString()
        digest = Hash(hashlib.sha256(raw).digest())
        return VerifiedTx(digest, digest, raw, body, frozenset({Address(src)}), ())


def bench_transfers(n_accounts: int, block: int, blocks: int, client_ref: bool) -> dict[str, float]:
    kv, addresses, usd = build_state(n_accounts, 10**12)
    ledger = Ledger.open(kv)
    factory = TxFactory(addresses, usd)
    rng = random.Random(1)
    # Warm-up block (not timed): every account once, so the committed-state cache is warm as in a
    # running node (steady state), and the measured blocks do not pay one-off decoding.
    warm = [
        factory.transfer(addresses[i], addresses[(i + 1) % n_accounts], 1, False) for i in range(n_accounts)
    ]
    result = ledger.execute_block(warm, 1, (T0 + 1) * 1000)
    kv.apply(result.writes)
    ledger.commit(result)
    batches = []
    for _ in range(blocks):
        txs = []
        for _ in range(block):
            a, b = rng.sample(range(n_accounts), 2)
            txs.append(factory.transfer(addresses[a], addresses[b], rng.randint(1, 1000), client_ref))
        batches.append(txs)
    # The pre-built transactions and the state built above are long-lived: keep the cyclic
    # collector from rescanning them on every collection (as a node does after start-up).
    gc.collect()
    gc.freeze()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    ok = 0
    block_cpu: list[float] = []
    for txs in batches:
        t = time.process_time()
        result = ledger.execute_block(txs, ledger.height + 1, (T0 + ledger.height + 1) * 1000)
        block_cpu.append(time.process_time() - t)
        kv.apply(result.writes)
        ledger.commit(result)
        ok += sum(1 for r in result.receipts if r.status == 1)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    gc.unfreeze()
    if ok != block * blocks:
        raise SystemExit(f"bench: only {ok} of {block * blocks} transfers succeeded")
    n = block * blocks
    return {
        "per_s": block / statistics.median(block_cpu),
        "per_s_mean": n / sum(block_cpu),
        "per_s_with_commit": n / cpu,
        "per_s_wall": n / wall,
    }


class _Timer:
    """Wraps a function of node.ledger.ledger to record the CPU and wall time of each call."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cpu_ms: list[float] = []
        self.wall_ms: list[float] = []
        self.original: Callable[..., Any] = getattr(ledger_module, name)

    def __call__(self, *args: Any) -> Any:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        out = self.original(*args)
        self.cpu_ms.append((time.process_time() - cpu0) * 1000)
        self.wall_ms.append((time.perf_counter() - wall0) * 1000)
        return out

    def __enter__(self) -> _Timer:
        setattr(ledger_module, self.name, self)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(ledger_module, self.name, self.original)


def bench_root(n_accounts: int, touched: int, rounds: int) -> dict[str, float]:
    started = time.perf_counter()
    kv, addresses, usd = build_state(n_accounts, 10**9)
    build_s = time.perf_counter() - started
    ledger = Ledger.open(kv)
    gc.collect()
    gc.freeze()  # the million records built above are permanent; keep the collector off them
    exec_ms: list[float] = []
    rng = random.Random(2)
    entries = 0
    with _Timer("compute_root_update") as total, _Timer("compute_state_root") as root:
        for _ in range(rounds):
            chosen = rng.sample(range(n_accounts), touched)
            factory = TxFactory(addresses, usd)
            txs = [
                factory.transfer(addresses[chosen[i]], addresses[chosen[i + 1]], 1, False)
                for i in range(0, touched, 2)
            ]
            cpu0 = time.process_time()
            result = ledger.execute_block(txs, 1, (T0 + 1) * 1000)  # candidates of height 1
            exec_ms.append((time.process_time() - cpu0) * 1000)
            assert all(r.status == 1 for r in result.receipts)
            entries = sum(
                1 for k in result.writes if not k.startswith((merkle.CHUNK_PREFIX, merkle.NODE_PREFIX))
            )
    gc.unfreeze()
    return {
        "root_ms": statistics.median(root.cpu_ms),
        "root_ms_wall": statistics.median(root.wall_ms),
        "serialize_and_root_ms": statistics.median(total.cpu_ms),
        "exec_ms": statistics.median(exec_ms),
        "build_s": build_s,
        "kv_entries": len(kv),
        "entries_written": entries,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    # 5,000 = the node's default [consensus] max_block_txs: full blocks are the throughput case.
    parser.add_argument("--block", type=int, default=5_000)
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--big", type=int, default=1_000_000, help="accounts of the state-root benchmark")
    parser.add_argument("--touched", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    tune_gc()  # the collector settings of a node process (node/gctune.py)
    plain = bench_transfers(args.accounts, args.block, args.blocks, client_ref=False)
    small = bench_transfers(args.accounts, 1_000, 20, client_ref=False)
    with_ref = bench_transfers(args.accounts, args.block, args.blocks, client_ref=True)
    root = bench_root(args.big, args.touched, args.rounds)
    out = {
        "apply_transfers_per_s": round(plain["per_s"]),
        "apply_transfers_per_s_mean": round(plain["per_s_mean"]),
        "apply_transfers_with_ref_per_s": round(with_ref["per_s"]),
        "apply_transfers_per_s_with_commit": round(plain["per_s_with_commit"]),
        "apply_transfers_per_s_blocks_of_1000": round(small["per_s"]),
        "apply_transfers_per_s_wall": round(plain["per_s_wall"]),
        "state_root_ms_10k_of_1m": round(root["root_ms"], 1),
        "state_root_ms_10k_of_1m_wall": round(root["root_ms_wall"], 1),
        "serialize_and_root_ms_10k_of_1m": round(root["serialize_and_root_ms"], 1),
        "timing": "CPU time of this process (one core); *_wall = elapsed time on the shared machine",
        "block_10k_of_1m_execute_ms": round(root["exec_ms"], 1),
        "transfer_accounts": args.accounts,
        "transfer_block_size": args.block,
        "transfer_blocks": args.blocks,
        "big_state_accounts": args.big,
        "big_state_kv_entries": root["kv_entries"],
        "big_state_build_s": round(root["build_s"], 1),
        "keys_touched": root["entries_written"],
        "tree": "sparse 256-ary Merkle over sha256(key), leaf compression",
        "python": sys.version.split()[0],
        "gc_thresholds": list(THRESHOLDS),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
