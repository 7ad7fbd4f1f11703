"""The evidence pool: proof that a validator signed two conflicting votes, until a block carries it.

Evidence arrives from the consensus core (this node saw the double vote) and from peers; it is
checked (both votes signed by a member of that height), kept until a proposal includes it, and
forgotten once committed. Everything is bounded: a Byzantine validator can sign any number of
conflicting votes, and one proof per validator is enough to hold it accountable.

Evidence expires: a block of height H may carry evidence of votes at heights H - MAX_AGE_HEIGHTS and
later only. So whether evidence was already committed is decided by the blocks of the last
MAX_AGE_HEIGHTS heights alone, which every node keeps (a pruning node keeps at least that many:
node.config.MIN_RETAIN_BLOCKS), and the same block is valid or invalid on every node, archive or
pruned, however long ago it restarted.
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
# A block of height H carries evidence of votes at heights H - MAX_AGE_HEIGHTS .. H only (a
# consensus rule). Equivocation is seen at the height in progress and proposed within a few heights.
MAX_AGE_HEIGHTS = 100
EvidenceKey = tuple[bytes, int, int, int]


def is_expired(vote_height: int, block_height: int) -> bool:
    """May a block of block_height no longer carry evidence of votes at vote_height?"""
    return vote_height + MAX_AGE_HEIGHTS < block_height


class EvidencePool:
    def __init__(self, chain: Chain) -> None:
        self._chain = chain
        self._pending: OrderedDict[EvidenceKey, DuplicateVoteEvidence] = OrderedDict()
        self._committed: set[EvidenceKey] = set()

    def load_committed(self, store: NodeStore) -> None:
        """Remember the evidence blocks already carry (it is not valid in a block again): that of the
        last MAX_AGE_HEIGHTS blocks, the only evidence the next block could carry again."""
        since = max(0, store.latest_height() + 1 - MAX_AGE_HEIGHTS)
        for _h, ev in store.load_evidence(since, 100_000):
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
        if is_expired(ev.vote_a.height, self._chain.height + 1):
            return "too old"
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
        if is_expired(key[1], self._chain.height + 1):
            return False
        if len(self._pending) >= MAX_PENDING_EVIDENCE:
            return False
        if sum(1 for k in self._pending if k[0] == key[0]) >= MAX_PENDING_EVIDENCE_PER_VALIDATOR:
            return False
        self._pending[key] = evidence
        log.warning("equivocation by %s at height %d round %d", evidence.validator.hex()[:16], key[1], key[2])
        return True

    def for_block(self, limit: int) -> list[block_pb2.Evidence]:
        """The oldest pending evidence that the next block may carry, for a proposal."""
        height = self._chain.height + 1
        fresh = [e for k, e in self._pending.items() if not is_expired(k[1], height)]
        return [wire.evidence_to_pb(e) for e in fresh[:limit]]

    def mark_committed(self, block: block_pb2.Block) -> None:
        """Block `block` is committed: its evidence is not valid again, and what has expired for
        the next block is forgotten (pending or committed)."""
        for ev in block.body.evidence:
            with contextlib.suppress(wire.WireError):
                key = wire.evidence_key(wire.evidence_from_pb(ev))
                self._committed.add(key)
                self._pending.pop(key, None)
        following = block.header.height + 1
        for key in [k for k in self._pending if is_expired(k[1], following)]:
            log.warning(
                "evidence against %s at height %d expired before a block carried it",
                key[0].hex()[:16],
                key[1],
            )
            del self._pending[key]
        if any(is_expired(k[1], following) for k in self._committed):
            self._committed = {k for k in self._committed if not is_expired(k[1], following)}
