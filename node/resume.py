"""What a restarted validator resumes its height from: the sign state (node/storage/signstate.py).

Before each own signature leaves, the driver saves the position it signs at with its lock and valid
value and their blocks, the block of a proposal it signs, and its earlier votes of the height.
After a restart `load` turns that back into what the consensus core and the driver need: the core
never signs against what it signed, keeps its lock, may send the same proposal again, and counts
and re-sends its earlier votes (a prevote signed just before a crash may never have left, and peers
may be waiting for exactly it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from clearline.v1 import block_pb2, wal_pb2
from node import blocks, wire
from node.consensus import SignState, Step
from node.storage import SignStateFile

log = logging.getLogger("clearline.consensus")


@dataclass(frozen=True, slots=True)
class Resume:
    """The saved state of the height being started (all empty if nothing was signed in it)."""

    state: SignState | None = None
    locked_block: block_pb2.Block | None = None
    valid_block: block_pb2.Block | None = None
    proposal: tuple[int, bytes, block_pb2.Block] | None = None  # (round, block id, block) signed
    votes: tuple[block_pb2.Vote, ...] = ()
    ahead_at: int = 0  # the height the sign state is at, when it is above the height being started


def load(sign_state: SignStateFile, height: int) -> Resume:
    stored = sign_state.load_state()
    if stored is None:
        return Resume()
    if stored.last_signed.height > height:
        log.warning(
            "sign state is at height %d, ahead of the chain (%d): block sync will catch up",
            stored.last_signed.height,
            height,
        )
    if stored.last_signed.height > height:
        return Resume(ahead_at=stored.last_signed.height)
    if stored.last_signed.height != height:
        return Resume()
    state = wire.sign_state_from_pb(stored.last_signed)
    proposal = None
    if stored.proposal_block and state.step == Step.PROPOSE and state.block_id:
        proposed = block_pb2.Block.FromString(stored.proposal_block)
        if blocks.block_hash(proposed.header) == state.block_id:
            proposal = (state.round, state.block_id, proposed)
    return Resume(
        state=state,
        locked_block=block_pb2.Block.FromString(stored.locked_block) if stored.locked_block else None,
        valid_block=block_pb2.Block.FromString(stored.valid_block) if stored.valid_block else None,
        proposal=proposal,
        votes=tuple(wal_pb2.OwnVotes.FromString(stored.own_votes).votes) if stored.own_votes else (),
    )


def save(
    sign_state: SignStateFile,
    state: SignState,
    *,
    locked: block_pb2.Block | None,
    valid: block_pb2.Block | None,
    proposed: block_pb2.Block | None,
    votes: list[block_pb2.Vote],
) -> None:
    """One pwrite and fdatasync (SignStateFile.save)."""
    sign_state.save(
        wire.sign_state_to_pb(state),
        locked.SerializeToString() if locked is not None else None,
        valid.SerializeToString() if valid is not None else None,
        proposed.SerializeToString() if proposed is not None else None,
        wal_pb2.OwnVotes(votes=votes).SerializeToString() if votes else None,
    )
