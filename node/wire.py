"""Conversion between the consensus core's values and the protobuf wire contract.

The pure core (node/consensus) works on frozen dataclasses; peers, the WAL and the block store speak
protobuf. Every conversion happens here, once, at the boundary. A proposal's opaque block is the
`block_pb2.Block` itself and its id is `node.blocks.block_hash(block.header)`.
"""

from __future__ import annotations

from clearline.v1 import block_pb2, wal_pb2
from node import blocks
from node.consensus import (
    CommitCertificate,
    DuplicateVoteEvidence,
    Proposal,
    SignState,
    Step,
    Vote,
    VoteType,
)


class WireError(ValueError):
    """A protobuf message does not describe a valid consensus value."""


def vote_to_pb(vote: Vote) -> block_pb2.Vote:
    return block_pb2.Vote(
        type=block_pb2.VoteType.ValueType(int(vote.type)),
        height=vote.height,
        round=vote.round,
        block_id=vote.block_id or b"",
        validator=vote.validator,
        signature=vote.signature,
    )


def vote_from_pb(pb: block_pb2.Vote) -> Vote:
    if pb.type not in (block_pb2.VOTE_TYPE_PREVOTE, block_pb2.VOTE_TYPE_PRECOMMIT):
        raise WireError(f"unknown vote type {pb.type}")
    if pb.block_id and len(pb.block_id) != 32:
        raise WireError("vote block id must be 32 bytes or empty")
    if len(pb.validator) != 20 or len(pb.signature) != 64:
        raise WireError("vote validator must be 20 bytes and signature 64 bytes")
    return Vote(
        type=VoteType(pb.type),
        height=pb.height,
        round=pb.round,
        block_id=pb.block_id or None,
        validator=pb.validator,
        signature=pb.signature,
    )


def proposal_to_pb(proposal: Proposal) -> block_pb2.Proposal:
    block = proposal.block
    if not isinstance(block, block_pb2.Block):
        raise WireError("proposal block is not a block_pb2.Block")
    return block_pb2.Proposal(
        height=proposal.height,
        round=proposal.round,
        pol_round=proposal.pol_round,
        block=block,
        proposer=proposal.proposer,
        signature=proposal.signature,
    )


def proposal_from_pb(pb: block_pb2.Proposal) -> Proposal:
    if not pb.HasField("block") or not pb.block.HasField("header"):
        raise WireError("proposal carries no block")
    if pb.pol_round < -1 or (pb.pol_round >= pb.round and pb.pol_round != -1):
        raise WireError(f"pol_round {pb.pol_round} must be -1 or below round {pb.round}")
    if len(pb.proposer) != 20 or len(pb.signature) != 64:
        raise WireError("proposer must be 20 bytes and signature 64 bytes")
    if pb.block.header.height != pb.height:
        raise WireError("proposal height differs from its block's height")
    return Proposal(
        height=pb.height,
        round=pb.round,
        pol_round=pb.pol_round,
        block_id=blocks.block_hash(pb.block.header),
        block=pb.block,
        proposer=pb.proposer,
        signature=pb.signature,
    )


def cert_to_pb(cert: CommitCertificate | None) -> block_pb2.CommitCertificate:
    if cert is None:
        return block_pb2.CommitCertificate()
    pb = block_pb2.CommitCertificate(height=cert.height, round=cert.round, block_id=cert.block_id)
    for validator, signature in cert.signatures:
        pb.signatures.add(validator=validator, signature=signature)
    return pb


def cert_from_pb(pb: block_pb2.CommitCertificate) -> CommitCertificate:
    return CommitCertificate(
        height=pb.height,
        round=pb.round,
        block_id=pb.block_id,
        signatures=tuple(sorted((s.validator, s.signature) for s in pb.signatures)),
    )


def evidence_to_pb(evidence: DuplicateVoteEvidence) -> block_pb2.Evidence:
    return block_pb2.Evidence(
        duplicate_vote=block_pb2.DuplicateVoteEvidence(
            vote_a=vote_to_pb(evidence.vote_a), vote_b=vote_to_pb(evidence.vote_b)
        )
    )


def evidence_from_pb(pb: block_pb2.Evidence) -> DuplicateVoteEvidence:
    if not pb.HasField("duplicate_vote"):
        raise WireError("unknown evidence kind")
    a, b = vote_from_pb(pb.duplicate_vote.vote_a), vote_from_pb(pb.duplicate_vote.vote_b)
    if (a.type, a.height, a.round, a.validator) != (b.type, b.height, b.round, b.validator):
        raise WireError("evidence votes are not for the same validator, height, round and type")
    if a.block_id == b.block_id:
        raise WireError("evidence votes do not conflict")
    return DuplicateVoteEvidence(vote_a=a, vote_b=b)


def evidence_key(evidence: DuplicateVoteEvidence) -> tuple[bytes, int, int, int]:
    """Identifies an equivocation regardless of which two votes prove it."""
    v = evidence.vote_a
    return (v.validator, v.height, v.round, int(v.type))


def sign_state_to_pb(state: SignState) -> wal_pb2.LastSigned:
    return wal_pb2.LastSigned(
        height=state.height,
        round=state.round,
        step=block_pb2.Step.ValueType(int(state.step)),
        block_id=state.block_id or b"",
        signature=state.signature,
        locked_round=state.locked_round,
        locked_block_id=state.locked_block_id or b"",
        valid_round=state.valid_round,
        valid_block_id=state.valid_block_id or b"",
    )


def sign_state_from_pb(pb: wal_pb2.LastSigned) -> SignState:
    return SignState(
        height=pb.height,
        round=pb.round,
        step=Step(pb.step),
        block_id=pb.block_id or None,
        signature=pb.signature,
        locked_round=pb.locked_round,
        locked_block_id=pb.locked_block_id or None,
        valid_round=pb.valid_round,
        valid_block_id=pb.valid_block_id or None,
    )
