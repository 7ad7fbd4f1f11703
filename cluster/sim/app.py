"""The simulator's application and signer: tiny blocks, deterministic ids, a fast fake signature.

A `SimBlock` is (height, round, proposer, payload, evidence, invalid flag); its id is a hash of
those fields. Honest proposers put the evidence they know of and that is not yet committed in their
chain into the block, so the checker can verify that every equivocation ends up committed. A
Byzantine proposer may build a block marked `invalid`, which every honest validator rejects.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from node.consensus import (
    Address,
    BlockId,
    DuplicateVoteEvidence,
    Height,
    Proposal,
    Round,
    ValidatorSet,
    Vote,
    VoteType,
)

EvidenceKey = tuple[Address, Height, Round, VoteType]
"""What identifies an equivocation: who, and at which (height, round, type)."""


def evidence_key(evidence: DuplicateVoteEvidence) -> EvidenceKey:
    """The equivocation an evidence proves."""
    v = evidence.vote_a
    return (v.validator, v.height, v.round, v.type)


def is_valid_evidence(evidence: DuplicateVoteEvidence, validators: ValidatorSet) -> bool:
    """Two votes of one member for one (height, round, type) with different block ids."""
    a, b = evidence.vote_a, evidence.vote_b
    return (
        a.validator == b.validator
        and a.validator in validators
        and (a.height, a.round, a.type) == (b.height, b.round, b.type)
        and a.block_id != b.block_id
    )


@dataclass(frozen=True, slots=True)
class SimBlock:
    """A block of the simulated chain."""

    height: Height
    round: Round
    proposer: Address
    payload: int
    evidence: tuple[DuplicateVoteEvidence, ...] = ()
    invalid: bool = False
    id: BlockId = field(default=b"", compare=False)

    @staticmethod
    def make(
        height: Height,
        round_: Round,
        proposer: Address,
        payload: int,
        evidence: tuple[DuplicateVoteEvidence, ...] = (),
        invalid: bool = False,
    ) -> SimBlock:
        """A block with its id computed."""
        ev = ";".join(f"{k[0].hex()}/{k[1]}/{k[2]}/{int(k[3])}" for k in map(evidence_key, evidence))
        text = f"{height}|{round_}|{proposer.hex()}|{payload}|{ev}|{int(invalid)}"
        block_id = hashlib.blake2b(text.encode(), digest_size=16).digest()
        return SimBlock(height, round_, proposer, payload, evidence, invalid, block_id)


class FakeSigner:
    """A signer whose 'signature' is a short hash of the signer and the signed fields (fast)."""

    __slots__ = ("address",)

    def __init__(self, address: Address) -> None:
        self.address = address

    def sign_vote(self, vote: Vote) -> bytes:
        text = f"v|{self.address.hex()}|{int(vote.type)}|{vote.height}|{vote.round}|{(vote.block_id or b'').hex()}"
        return hashlib.blake2b(text.encode(), digest_size=8).digest()

    def sign_proposal(self, proposal: Proposal) -> bytes:
        text = f"p|{self.address.hex()}|{proposal.height}|{proposal.round}|{proposal.pol_round}|{proposal.block_id.hex()}"
        return hashlib.blake2b(text.encode(), digest_size=8).digest()


class SimApp:
    """Block building and validation for one simulated node, against that node's own chain."""

    def __init__(self, address: Address, validators: ValidatorSet) -> None:
        self.address = address
        self.validators = validators
        self.chain: dict[Height, SimBlock] = {}
        """The node's committed blocks (durable: survives crashes)."""
        self.committed_evidence: set[EvidenceKey] = set()
        self.pending_evidence: dict[EvidenceKey, DuplicateVoteEvidence] = {}
        self.validations = 0

    def add_evidence(self, evidence: DuplicateVoteEvidence) -> None:
        """Keep evidence to include in a later block (unless already committed)."""
        key = evidence_key(evidence)
        if key not in self.committed_evidence and is_valid_evidence(evidence, self.validators):
            self.pending_evidence.setdefault(key, evidence)

    def commit(self, block: SimBlock) -> None:
        """Append a decided block to the chain."""
        self.chain[block.height] = block
        for ev in block.evidence:
            key = evidence_key(ev)
            self.committed_evidence.add(key)
            self.pending_evidence.pop(key, None)

    def propose_block(self, height: Height, round: Round) -> tuple[BlockId, object]:
        evidence = tuple(self.pending_evidence[k] for k in sorted(self.pending_evidence))
        block = SimBlock.make(height, round, self.address, payload=height * 1000 + round, evidence=evidence)
        return block.id, block

    def validate_block(self, height: Height, block_id: BlockId, block: object) -> bool:
        self.validations += 1
        return is_valid_block(block, height, block_id, self.validators, self.committed_evidence)


def is_valid_block(
    block: object,
    height: Height,
    block_id: BlockId,
    validators: ValidatorSet,
    committed_evidence: set[EvidenceKey],
) -> bool:
    """The validity predicate every honest node applies (and the checker re-applies)."""
    if not isinstance(block, SimBlock) or block.invalid or block.height != height or block.id != block_id:
        return False
    if block.proposer not in validators:
        return False
    seen: set[EvidenceKey] = set()
    for ev in block.evidence:
        key = evidence_key(ev)
        if key in seen or key in committed_evidence or not is_valid_evidence(ev, validators):
            return False
        seen.add(key)
    return (
        SimBlock.make(
            block.height, block.round, block.proposer, block.payload, block.evidence, block.invalid
        ).id
        == block_id
    )
