"""Shared fixtures for the consensus unit tests: a 4-validator set, a fake signer and app, builders."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from node.consensus import (
    Action,
    BlockId,
    Broadcast,
    Persist,
    Proposal,
    ProposalReceived,
    SignState,
    Step,
    Tendermint,
    TimeoutConfig,
    Validator,
    ValidatorSet,
    Vote,
    VoteReceived,
    VoteType,
)

TIMEOUTS = TimeoutConfig(
    propose_ms=1000,
    propose_delta_ms=100,
    prevote_ms=500,
    prevote_delta_ms=50,
    precommit_ms=400,
    precommit_delta_ms=40,
)


def addr(i: int) -> bytes:
    return bytes([i + 1]) * 20


def make_set(powers: list[int]) -> ValidatorSet:
    return ValidatorSet([Validator(addr(i), bytes([i + 1]) * 32, p) for i, p in enumerate(powers)])


VALS = make_set([1, 1, 1, 1])


def bid(name: str) -> BlockId:
    """A block id for a named test block."""
    return hashlib.sha256(name.encode()).digest()


@dataclass(frozen=True, slots=True)
class Block:
    name: str
    height: int


class FakeSigner:
    def __init__(self, address: bytes) -> None:
        self.address = address
        self.calls = 0

    def sign_vote(self, vote: Vote) -> bytes:
        self.calls += 1
        return b"V" + bytes([vote.type]) + vote.height.to_bytes(4, "big") + vote.round.to_bytes(4, "big") + (
            vote.block_id or b"nil"
        )[:4]  # fmt: skip

    def sign_proposal(self, proposal: Proposal) -> bytes:
        self.calls += 1
        return (
            b"P"
            + proposal.height.to_bytes(4, "big")
            + proposal.round.to_bytes(4, "big")
            + proposal.block_id[:4]
        )


@dataclass
class FakeApp:
    invalid: set[BlockId] = field(default_factory=set)
    proposed: list[tuple[int, int]] = field(default_factory=list)
    validated: list[BlockId] = field(default_factory=list)

    def propose_block(self, height: int, round: int) -> tuple[BlockId, object]:
        self.proposed.append((height, round))
        name = f"new-{height}-{round}"
        return bid(name), Block(name, height)

    def validate_block(self, height: int, block_id: BlockId, block: object) -> bool:
        self.validated.append(block_id)
        return isinstance(block, Block) and block.height == height and bid(block.name) == block_id and (
            block_id not in self.invalid
        )  # fmt: skip


def block(name: str, height: int = 1) -> tuple[BlockId, Block]:
    return bid(name), Block(name, height)


def proposer_index(height: int, round_: int, vals: ValidatorSet = VALS) -> int:
    p = vals.proposer(height, round_).address
    return [v.address for v in vals].index(p)


def make_core(
    me: int,
    *,
    height: int = 1,
    vals: ValidatorSet = VALS,
    app: FakeApp | None = None,
    restored: SignState | None = None,
    locked_block: object | None = None,
    valid_block: object | None = None,
    cls: type[Tendermint] = Tendermint,
) -> tuple[Tendermint, FakeApp, FakeSigner]:
    app = app or FakeApp()
    signer = FakeSigner(addr(me))
    core = cls(
        validators=vals,
        signer=signer,
        app=app,
        timeouts=TIMEOUTS,
        height=height,
        restored=restored,
        locked_block=locked_block,
        valid_block=valid_block,
    )
    return core, app, signer


def vote(t: VoteType, who: int, round_: int, block_id: BlockId | None, height: int = 1) -> VoteReceived:
    return VoteReceived(Vote(t, height, round_, block_id, addr(who), b"sig-%d" % who))


def prevote(who: int, round_: int, block_id: BlockId | None, height: int = 1) -> VoteReceived:
    return vote(VoteType.PREVOTE, who, round_, block_id, height)


def precommit(who: int, round_: int, block_id: BlockId | None, height: int = 1) -> VoteReceived:
    return vote(VoteType.PRECOMMIT, who, round_, block_id, height)


def proposal(
    round_: int, name: str, pol_round: int = -1, height: int = 1, proposer: int | None = None
) -> ProposalReceived:
    who = proposer_index(height, round_) if proposer is None else proposer
    block_id, body = block(name, height)
    return ProposalReceived(Proposal(height, round_, pol_round, block_id, body, addr(who), b"psig"))


def own_votes(actions: list[Action]) -> list[Vote]:
    return [a.message for a in actions if isinstance(a, Broadcast) and isinstance(a.message, Vote)]


def own_proposals(actions: list[Action]) -> list[Proposal]:
    return [a.message for a in actions if isinstance(a, Broadcast) and isinstance(a.message, Proposal)]


def persisted(actions: list[Action]) -> list[SignState]:
    return [a.sign_state for a in actions if isinstance(a, Persist)]


def snapshot(core: Tendermint) -> tuple[object, ...]:
    """Everything observable about the core's state (to show an input changed nothing)."""
    tallies = tuple(
        (
            k,
            tuple(sorted((a, v.block_id) for a, v in rv.votes.items())),
            tuple(rv.power_by_block.items()),
            rv.total,
        )
        for k, rv in sorted(core._votes.rounds.items())
        if rv.votes
    )
    proposals = tuple(sorted((r, tuple(ps)) for r, ps in core._proposals.items()))
    return (
        core.height,
        core.round,
        core.current_step,
        core.locked,
        core.valid,
        core.decision,
        core.last_signed,
        core.buffered,
        tallies,
        proposals,
        tuple(sorted(core._votes.sender_power.items())),
    )


def feed(core: Tendermint, *events: object) -> list[Action]:
    out: list[Action] = []
    for ev in events:
        out.extend(core.step(ev))  # type: ignore[arg-type]
    return out


STEP_OF = {VoteType.PREVOTE: Step.PREVOTE, VoteType.PRECOMMIT: Step.PRECOMMIT}
