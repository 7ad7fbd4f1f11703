"""The one block-validation path: may this block follow the last committed one?

Used for a peer's proposal (with `now_ms`: also held to this node's clock), for a block fetched by
block sync, and for this node's own proposals in tests. The rules, in the order they are checked
(cheap before expensive):

1. header chain: chain id, the next height, the previous block's hash, a time strictly after the
   previous block's (the one time rule everywhere), the validator-set hashes of this height and
   the next, a proposer that is a member;
2. size: transactions and bytes within the consensus limits;
3. body against header: the transaction root over the exact envelopes, the last commit's hash and
   the certificate itself against the previous height's validator set, the evidence root and each
   piece of evidence;
4. for a synced block, its own certificate against the validator set of its height
   (`check_certificate`).

Execution (state and receipts roots) is block execution's part (node/execution.py). A failed rule
raises `InvalidBlock` with the reason; whose fault it is, the caller knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from clearline.v1 import block_pb2
from node import blocks, crypto
from node.chain import Chain
from node.config import BLOCK_OVERHEAD_BYTES, ConsensusConfig
from node.consensus import Proposal
from node.errors import BlockFromTheFuture, InvalidBlock
from node.txs import VerifiedTx

# A live proposal's time may be at most this far ahead of this node's clock.
MAX_CLOCK_DRIFT_MS = 10_000
# Evidence one block may carry.
MAX_EVIDENCE_PER_BLOCK = 64


class EvidenceCheck(Protocol):
    def problem(self, pb: block_pb2.Evidence) -> str | None:
        """What is wrong with this evidence, or None if a block may carry it."""
        ...


def check_header_chain(chain: Chain, header: block_pb2.Header, *, now_ms: int | None) -> None:
    """Rule 1: header follows the last committed block (now_ms: the live clock bound, if any)."""
    height = header.height
    if header.chain_id != chain.chain_id:
        raise InvalidBlock("wrong chain id", height)
    if height != chain.height + 1:
        raise InvalidBlock(f"not the next height (at {chain.height})", height)
    if header.prev_block_hash != chain.last_block_hash:
        raise InvalidBlock("previous block hash does not match", height)
    if header.time_ms <= chain.last_time_ms:
        raise InvalidBlock("time does not increase", height)
    if now_ms is not None and header.time_ms > now_ms + MAX_CLOCK_DRIFT_MS:
        raise BlockFromTheFuture("time is too far in the future", height)
    vs = chain.validator_set(height)
    if header.validator_set_hash != blocks.validator_set_hash(vs):
        raise InvalidBlock("validator set hash does not match", height)
    if header.next_validator_set_hash != blocks.validator_set_hash(chain.validator_set(height + 1)):
        raise InvalidBlock("next validator set hash does not match", height)
    if chain.validator_key(height, header.proposer) is None:
        raise InvalidBlock("proposer is not a validator", height)


def check_size(block: block_pb2.Block, limits: ConsensusConfig) -> None:
    """Rule 2."""
    if (
        len(block.body.txs) > limits.max_block_txs
        or block.ByteSize() > limits.max_block_bytes + BLOCK_OVERHEAD_BYTES
    ):
        raise InvalidBlock("block too large", block.header.height)


def check_tx_root(block: block_pb2.Block) -> None:
    """The header's transaction root covers the exact envelopes of the body."""
    if block.header.tx_root != blocks.tx_root([crypto.sha256(raw) for raw in block.body.txs]):
        raise InvalidBlock("tx root does not match the body", block.header.height)


def check_body(chain: Chain, block: block_pb2.Block, evidence: EvidenceCheck) -> None:
    """Rule 3."""
    h = block.header
    height = h.height
    check_tx_root(block)
    if height > 1:
        if h.last_commit_hash != blocks.commit_hash(block.last_commit):
            raise InvalidBlock("last commit hash does not match", height)
        try:
            blocks.verify_commit(
                chain.chain_id,
                chain.validator_set(height - 1),
                block.last_commit,
                height=height - 1,
                block_hash=chain.last_block_hash,
            )
        except blocks.CommitError as exc:
            raise InvalidBlock(f"last commit invalid: {exc}", height) from None
    elif h.last_commit_hash != blocks.commit_hash(None) or block.HasField("last_commit"):
        raise InvalidBlock("the first block carries a last commit", height)
    if len(block.body.evidence) > MAX_EVIDENCE_PER_BLOCK:
        raise InvalidBlock("too much evidence", height)
    ev_bytes = [e.SerializeToString(deterministic=True) for e in block.body.evidence]
    if h.evidence_root != blocks.merkle_root(ev_bytes):
        raise InvalidBlock("evidence root does not match", height)
    for ev in block.body.evidence:
        problem = evidence.problem(ev)
        if problem is not None:
            raise InvalidBlock(f"invalid evidence: {problem}", height)


def check_block(
    chain: Chain,
    block: block_pb2.Block,
    *,
    limits: ConsensusConfig,
    evidence: EvidenceCheck,
    now_ms: int | None,
) -> None:
    """Rules 1-3: raises InvalidBlock unless `block` may follow the last committed block."""
    check_header_chain(chain, block.header, now_ms=now_ms)
    check_size(block, limits)
    check_body(chain, block, evidence)


def check_certificate(chain: Chain, block_id: bytes, height: int, cert: block_pb2.CommitCertificate) -> None:
    """Rule 4: `cert` commits `block_id` at `height`, signed by a quorum of that height's set."""
    try:
        blocks.verify_commit(
            chain.chain_id, chain.validator_set(height), cert, height=height, block_hash=block_id
        )
    except blocks.CommitError as exc:
        raise InvalidBlock(f"certificate invalid: {exc}", height) from None


def check_proposal(chain: Chain, proposal: Proposal, block: block_pb2.Block, limits: ConsensusConfig) -> None:
    """The cheap checks of a peer's proposal, before any of its transactions' signatures are
    verified: it is from the round's proposer, its block is the one it names, for this height and
    chain, within the size limits, and (for the next height) on the last committed block with a
    body that matches its header. The block's own proposer field may name an earlier round's
    proposer: a valid value is proposed again."""
    height = proposal.height
    expected = chain.core_set(height).proposer(height, proposal.round).address
    if proposal.proposer != expected:
        raise InvalidBlock(
            f"from {proposal.proposer.hex()[:16]}, not the proposer of round {proposal.round}", height
        )
    if not -1 <= proposal.pol_round < proposal.round:
        raise InvalidBlock(f"pol_round {proposal.pol_round} for round {proposal.round}", height)
    h = block.header
    if h.height != height or h.chain_id != chain.chain_id:
        raise InvalidBlock("its block's height or chain differs from the proposal's", height)
    if blocks.block_hash(h) != proposal.block_id:
        raise InvalidBlock("its block does not hash to the proposal's block id", height)
    check_size(block, limits)
    if height == chain.height + 1:
        if h.prev_block_hash != chain.last_block_hash:
            raise InvalidBlock("its block does not follow the last committed block", height)
        check_tx_root(block)


def check_no_duplicates(vtxs: Sequence[VerifiedTx], height: int) -> None:
    """Two envelopes of one transaction (same id) in a block."""
    if len({t.tx_hash for t in vtxs}) != len(vtxs):
        raise InvalidBlock("duplicate transaction in block", height)
