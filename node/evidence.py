"""The evidence pool: proof that a validator signed two conflicting votes, until a block carries it.

Evidence arrives from the consensus core (this node saw the double vote) and from peers; it is
checked (both votes signed by a member of that height), kept until a proposal includes it, and
forgotten once committed. Everything is bounded: a Byzantine validator can sign any number of
conflicting votes, and one proof per validator is enough to hold it accountable.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict

from clearline.v1 import block_pb2
from node import blocks, crypto, wire
from node.chain import Chain
from node.consensus import DuplicateVoteEvidence
from node.storage import NodeStore

log = logging.getLogger("clearline.evidence")

MAX_PENDING_EVIDENCE = 256
MAX_PENDING_EVIDENCE_PER_VALIDATOR = 4
EvidenceKey = tuple[bytes, int, int, int]


class EvidencePool:
    def __init__(self, chain: Chain) -> None:
        self._chain = chain
        self._pending: OrderedDict[EvidenceKey, DuplicateVoteEvidence] = OrderedDict()
        self._committed: set[EvidenceKey] = set()

    def load_committed(self, store: NodeStore) -> None:
        """Remember the evidence blocks already carry (it is not valid in a block again)."""
        for _h, ev in store.load_evidence(0, 100_000):
            with contextlib.suppress(wire.WireError):
                self._committed.add(wire.evidence_key(wire.evidence_from_pb(ev)))

    def __len__(self) -> int:
        return len(self._pending)

    def is_known(self, pb: block_pb2.Evidence) -> bool:
        """Is this evidence pending or committed already? (Cheap: no signature is checked, so a
        validator that gossips one proof again and again costs its peers nothing.)"""
        try:
            key = wire.evidence_key(wire.evidence_from_pb(pb))
        except wire.WireError:
            return False
        return key in self._pending or key in self._committed

    def problem(self, pb: block_pb2.Evidence) -> str | None:
        """What is wrong with this evidence, or None if a block may carry it."""
        try:
            ev = wire.evidence_from_pb(pb)
        except wire.WireError as exc:
            return str(exc)
        if wire.evidence_key(ev) in self._committed:
            return "already committed"
        if self._chain.known_validator_set(ev.vote_a.height) is None:
            return "unknown height"
        member_key = self._chain.validator_key(ev.vote_a.height, ev.validator)
        if member_key is None:
            return "not a validator"
        for vote in (ev.vote_a, ev.vote_b):
            msg = blocks.vote_sign_bytes(
                self._chain.chain_id, int(vote.type), vote.height, vote.round, vote.block_id or b""
            )
            if not crypto.verify_raw(member_key, vote.signature, msg):
                return "bad vote signature"
        return None

    def add(self, evidence: DuplicateVoteEvidence) -> bool:
        """Keep `evidence` for a future block; False if it is known or the pool is full for it."""
        key = wire.evidence_key(evidence)
        if key in self._committed or key in self._pending:
            return False
        if len(self._pending) >= MAX_PENDING_EVIDENCE:
            return False
        if sum(1 for k in self._pending if k[0] == key[0]) >= MAX_PENDING_EVIDENCE_PER_VALIDATOR:
            return False
        self._pending[key] = evidence
        log.warning("equivocation by %s at height %d round %d", evidence.validator.hex()[:16], key[1], key[2])
        return True

    def for_block(self, limit: int) -> list[block_pb2.Evidence]:
        """The oldest pending evidence, for a proposal."""
        return [wire.evidence_to_pb(e) for e in list(self._pending.values())[:limit]]

    def mark_committed(self, block: block_pb2.Block) -> None:
        for ev in block.body.evidence:
            with contextlib.suppress(wire.WireError):
                key = wire.evidence_key(wire.evidence_from_pb(ev))
                self._committed.add(key)
                self._pending.pop(key, None)
