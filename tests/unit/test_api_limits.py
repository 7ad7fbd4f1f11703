"""The client API's response limit covers the largest block: node.config derives it from the
consensus limits and refuses a smaller one, and the bounds it adds up (block overhead, certificate,
receipts) are checked here against the largest such things the node makes."""

from __future__ import annotations

from pathlib import Path

import pytest

from clearline.v1 import block_pb2, receipt_pb2, tx_pb2
from cluster.client.aio import MAX_MESSAGE_BYTES as CLIENT_MAX_MESSAGE_BYTES
from cluster.netgen import init_network
from node.config import (
    BLOCK_OVERHEAD_BYTES,
    DEFAULT_API_MAX_MESSAGE_BYTES,
    MAX_COMMIT_BYTES,
    RECEIPT_BASE_BYTES,
    RECEIPT_BYTES_PER_TX_BYTE,
    ApiConfig,
    ConfigError,
    ConsensusConfig,
    MempoolConfig,
    load_config,
    max_block_response_bytes,
    parse_config,
)
from node.ledger.ops import MAX_LEGS, MAX_REF_LEN, MAX_VALIDATORS
from node.txs import VerifiedTx
from node.validation import MAX_EVIDENCE_PER_BLOCK
from tests.unit.ledger.helpers import ALICE, BOB, COMPLIANCE, USD, World

BASE = 'chain_id = "c"\n'
MIB = 1 << 20
U64 = 2**64 - 1


def test_default_limits_agree() -> None:
    consensus = ConsensusConfig()
    need = max_block_response_bytes(consensus.max_block_bytes, consensus.max_block_txs)
    assert ApiConfig().max_message_bytes == DEFAULT_API_MAX_MESSAGE_BYTES >= need
    # A response carries more than the block's transactions: the old limit (equal) was too small.
    assert need > consensus.max_block_bytes + BLOCK_OVERHEAD_BYTES
    # Requests stay bounded on their own, well below responses, and fit the largest transaction.
    assert MempoolConfig().max_tx_bytes < ApiConfig().max_request_bytes < ApiConfig().max_message_bytes
    # The client library accepts what a node with default limits sends.
    assert CLIENT_MAX_MESSAGE_BYTES >= DEFAULT_API_MAX_MESSAGE_BYTES
    parse_config(BASE, Path("/tmp/home"))  # the defaults pass the check


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # The old default: a full block with its receipts does not fit.
        (BASE + "[api]\nmax_message_bytes = 4194304\n", r"\[api\] max_message_bytes: 4194304 is too small"),
        # Bigger blocks need a bigger response limit, and the error says how big.
        (
            BASE + "[consensus]\nmax_block_bytes = 16777216\n",
            r"\[api\] max_message_bytes: .* set it to at least "
            + str(max_block_response_bytes(16 * MIB, ConsensusConfig().max_block_txs)),
        ),
        (BASE + "[api]\nmax_request_bytes = 1000\n", r"\[api\] max_request_bytes: 1000 cannot carry one"),
        (BASE + "[api]\nmax_request_bytes = 0\n", r"\[api\] max_request_bytes: must be > 0"),
        (BASE + "[api]\nmax_batch_txs = 0\n", r"\[api\] max_batch_txs: must be > 0"),
        (
            BASE + "[mempool]\nmax_tx_bytes = 8388608\n",
            r"\[api\] max_request_bytes: 4194304 cannot carry one transaction of \[mempool\] max_tx_bytes",
        ),
    ],
)
def test_limits_that_disagree_are_refused_naming_the_setting(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, Path("/tmp/home"))


def test_a_limit_raised_with_the_blocks_is_accepted() -> None:
    need = max_block_response_bytes(16 * MIB, ConsensusConfig().max_block_txs)
    text = BASE + f"[consensus]\nmax_block_bytes = {16 * MIB}\n[api]\nmax_message_bytes = {need}\n"
    assert parse_config(text, Path("/tmp/home")).api.max_message_bytes == need


def test_init_sizes_the_response_limit_for_its_consensus_limits(tmp_path: Path) -> None:
    consensus = ConsensusConfig(max_block_bytes=16 * MIB, max_block_txs=20_000)
    net = init_network(tmp_path / "net", validators=1, consensus=consensus)
    cfg = load_config(net.nodes[0].home)  # would raise ConfigError if it were too small
    assert cfg.api.max_message_bytes >= max_block_response_bytes(16 * MIB, 20_000)


def largest_commit(validators: int) -> block_pb2.CommitCertificate:
    cert = block_pb2.CommitCertificate(height=U64, round=2**32 - 1, block_id=bytes(32))
    for i in range(validators):
        cert.signatures.add(validator=i.to_bytes(20, "big"), signature=bytes(64))
    return cert


def largest_vote() -> block_pb2.Vote:
    return block_pb2.Vote(
        type=block_pb2.VOTE_TYPE_PRECOMMIT, height=U64, round=2**32 - 1, block_id=bytes(32),
        validator=bytes(20), signature=bytes(64), timestamp_ms=U64,
    )  # fmt: skip


def test_a_certificate_of_the_most_validators_fits_its_bound() -> None:
    assert largest_commit(MAX_VALIDATORS).ByteSize() <= MAX_COMMIT_BYTES


def test_a_block_beyond_its_transactions_fits_the_overhead_bound() -> None:
    header = block_pb2.Header(
        chain_id="c" * 50, height=U64, time_ms=U64, prev_block_hash=bytes(32), tx_root=bytes(32),
        state_root=bytes(32), validator_set_hash=bytes(32), next_validator_set_hash=bytes(32),
        proposer=bytes(20), last_commit_hash=bytes(32), receipts_root=bytes(32), evidence_root=bytes(32),
    )  # fmt: skip
    block = block_pb2.Block(header=header, last_commit=largest_commit(MAX_VALIDATORS))
    for _ in range(MAX_EVIDENCE_PER_BLOCK):
        block.body.evidence.add().duplicate_vote.CopyFrom(
            block_pb2.DuplicateVoteEvidence(vote_a=largest_vote(), vote_b=largest_vote())
        )
    assert block.ByteSize() <= BLOCK_OVERHEAD_BYTES


def _receipt_cases(w: World) -> list[tuple[str, VerifiedTx, int]]:
    """(name, tx, its status) of the transactions whose receipts are largest for their size."""
    S = receipt_pb2
    zeros = "\x00" * 30_000  # repr writes 4 characters for each
    legs = [
        tx_pb2.Leg(instrument=USD, amount=1, to=BOB.address if n % 2 == 0 else ALICE.address,
                   **{"from": ALICE.address if n % 2 == 0 else BOB.address})
        for n in range(MAX_LEGS)
    ]  # fmt: skip
    settle = tx_pb2.Settle(settlement_ref="s" * MAX_REF_LEN, legs=legs)
    unknown = tx_pb2.Transfer(
        instrument=tx_pb2.InstrumentId(issuer=USD.issuer, symbol=zeros), to=BOB.address, amount=1
    )
    pay = tx_pb2.Transfer(instrument=USD, to=BOB.address, amount=1)
    assert w.run1(w.tx(ALICE, "transfer", pay, client_ref=zeros)).status == S.TX_STATUS_OK
    freeze = tx_pb2.FreezeAccount(account=BOB.address, reason="r" * 60_000)
    return [
        ("settlement of the most legs", w.tx(ALICE, "settle", settle, cosigners=[BOB]), S.TX_STATUS_OK),
        ("failure quoting a symbol", w.tx(ALICE, "transfer", unknown), S.TX_STATUS_UNKNOWN_INSTRUMENT),
        ("failure quoting a hold id", w.tx(ALICE, "release_hold", tx_pb2.ReleaseHold(hold_id=zeros)), S.TX_STATUS_UNKNOWN_HOLD),
        ("reused client reference", w.tx(ALICE, "transfer", pay, client_ref=zeros), S.TX_STATUS_DUPLICATE_CLIENT_REF),
        ("freeze with a long reason", w.tx(COMPLIANCE, "freeze_account", freeze), S.TX_STATUS_OK),
    ]  # fmt: skip


def test_receipts_fit_their_bound_per_transaction_byte() -> None:
    w = World.create()
    for name, tx, status in _receipt_cases(w):
        (receipt,) = w.execute(tx).receipts
        assert receipt.status == status, f"{name}: {receipt.message[:80]}"
        # tx.raw here is the body alone: a signed transaction is larger, so the check is conservative.
        bound = RECEIPT_BASE_BYTES + RECEIPT_BYTES_PER_TX_BYTE * len(tx.raw)
        assert receipt.ByteSize() <= bound, f"{name}: receipt of {receipt.ByteSize()} bytes, bound {bound}"
