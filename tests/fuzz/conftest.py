"""One fuzzed node for the whole fuzz session (see harness.py), the state it starts from, and the
valid inputs the fuzzers start from.

Before the baseline is read, two real transactions commit: bank-a approves dave's KYC (a block with
a receipt and events; resubmitting this transaction must be answered with its receipt, so it is the
seed of every SubmitTx mutation) and alice puts 300 USD on hold for bob (so GetHold and the
account's holds have something to return). After that, nothing the fuzzers send may change the
state. The node's process is stopped by pid and its directory removed at teardown.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clearline.v1 import ledger_api_pb2, receipt_pb2, tx_pb2
from cluster.client import builders
from node import txs
from node.crypto import SigningKey
from tests.fuzz.harness import FuzzNode, Snapshot

HOLD_ID = "fuzz-hold-1"


@dataclass(frozen=True)
class Seeds:
    """Valid inputs the fuzzers mutate, and values the node knows."""

    committed_tx: bytes  # already in a block: resubmitting it is answered with its receipt
    committed_hash: bytes
    fresh_txs: tuple[bytes, ...]  # valid now and never submitted: only CheckTx may see them intact
    fresh_ids: frozenset[bytes]  # their ids, as the node computes them
    block_hash: bytes
    addresses: tuple[bytes, ...]
    usd: tx_pb2.InstrumentId

    def __repr__(self) -> str:
        return "Seeds(...)"

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:  # how Hypothesis prints it
        printer.text(repr(self))  # type: ignore[attr-defined]


def _signed(
    node: FuzzNode, signer: SigningKey, nonce: int, ref: str, op: builders.Op, *co: SigningKey
) -> bytes:
    body = builders.make_body(node.chain_id, signer.address, nonce, ref, op)
    return txs.sign_tx(body, [signer, *co])


def _commit(node: FuzzNode, raw: bytes) -> ledger_api_pb2.SubmitTxResponse:
    resp = node.ledger.SubmitTx(
        ledger_api_pb2.SubmitTxRequest(tx=raw, wait=ledger_api_pb2.WAIT_FOR_COMMITTED), timeout=30
    )
    assert resp.receipt.status == receipt_pb2.TX_STATUS_OK, (
        receipt_pb2.TxStatus.Name(resp.receipt.status),
        resp.receipt.message,
    )
    return resp


@pytest.fixture(scope="session")
def fuzz_node() -> Iterator[FuzzNode]:
    root = Path(tempfile.mkdtemp(prefix="clearline-fuzz-"))
    node = FuzzNode(root)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def seeds(fuzz_node: FuzzNode) -> Seeds:
    node = fuzz_node
    k = node.key
    usd = builders.instrument(k("bank-a").address, "USD")
    bond = builders.instrument(k("bank-a").address, "BOND-2030")
    kyc = _signed(
        node, k("bank-a"), 0, "fuzz-kyc-dave",
        builders.set_kyc(k("dave").address, tx_pb2.KYC_STATUS_APPROVED, public_key=k("dave").public_key),
    )  # fmt: skip
    committed = _commit(node, kyc)
    hold = builders.create_hold(
        HOLD_ID, usd, payee=k("bob").address, notary=k("compliance").address, amount=300,
        expires_at_height=10**9,
    )  # fmt: skip
    _commit(node, _signed(node, k("alice"), 0, "fuzz-hold", hold))
    fresh = (
        _signed(node, k("alice"), 1, "fuzz-pay", builders.transfer(usd, k("bob").address, 10)),
        _signed(node, k("bank-a"), 1, "fuzz-mint", builders.mint(usd, k("carol").address, 5, "fuzz-dep")),
        _signed(node, k("compliance"), 0, "fuzz-freeze", builders.freeze_account(k("bob").address, "fuzz")),
        _signed(node, k("compliance"), 0, "fuzz-exec", builders.execute_hold(HOLD_ID)),
        _signed(
            node, k("alice"), 1, "fuzz-dvp",
            builders.settle("fuzz-dvp", [builders.leg(bond, k("carol").address, k("alice").address, 1),
                                         builders.leg(usd, k("alice").address, k("carol").address, 100)]),
            k("carol"),
        ),
    )  # fmt: skip
    fresh_ids = frozenset(
        node.ledger.CheckTx(ledger_api_pb2.SubmitTxRequest(tx=raw), timeout=5).tx_hash for raw in fresh
    )
    block = node.ledger.GetBlock(ledger_api_pb2.GetBlockRequest(height=committed.height), timeout=5)
    return Seeds(
        committed_tx=kyc,
        committed_hash=committed.tx_hash,
        fresh_txs=fresh,
        fresh_ids=fresh_ids,
        block_hash=block.block_hash,
        addresses=tuple(key.address for _, key in sorted(node.accounts.items())),
        usd=usd,
    )


@pytest.fixture(scope="session")
def baseline(fuzz_node: FuzzNode, seeds: Seeds) -> Snapshot:
    """The state after the seed transactions: every fuzz test must leave it as it is."""
    fuzz_node.wait_height(fuzz_node.height() + 1)
    return fuzz_node.snapshot()
