"""Deliberately broken variants of the consensus core, to prove that the checkers bite.

Each mutant is a subclass of the real `Tendermint` overriding one of its documented hooks (or a
runtime-side flag the simulator honours). The real core has no switches. `python -m cluster.sim
--mutant NAME` runs a simulation with every honest validator using the broken variant.
"""

from __future__ import annotations

from dataclasses import dataclass

from node.consensus import BlockId, Power, Round, SignState, Step, Tendermint


class QuorumHalf(Tendermint):
    """Counts > 1/2 of the power as a quorum instead of > 2/3."""

    def _has_quorum(self, power: Power) -> bool:
        return power * 2 > self._validators.total_power


class NoLock(Tendermint):
    """Never locks: precommitting v does not constrain later prevotes."""

    def _lock(self, round_: Round, block_id: BlockId, block: object) -> None:
        return None


class LockNotPersisted(Tendermint):
    """Persists the last-signed position but not the lock, so a crash forgets it."""

    def _sign_state(self, step: Step, block_id: BlockId | None, signature: bytes) -> SignState:
        state = super()._sign_state(step, block_id, signature)
        return SignState(
            state.height, state.round, state.step, state.block_id, state.signature, -1, None, state.valid_round,
            state.valid_block_id,
        )  # fmt: skip


class SkipOnOne(Tendermint):
    """Jumps to a higher round on a message from ANY validator instead of f+1 of the power."""

    def _try_round_skip(self) -> bool:
        best = max((r for r in self._votes.sender_power if r > self._round), default=None)
        if best is None:
            return False
        self._start_round(best)
        return True


@dataclass(frozen=True, slots=True)
class Mutant:
    """A broken variant: the core class honest nodes run, and runtime-side flags."""

    name: str
    description: str
    core: type[Tendermint] = Tendermint
    forget_sign_state: bool = False
    """The runtime does not give the persisted sign state back at restart."""
    validators: int = 4
    """The network size at which the default budget catches it."""
    byzantine: int = 1


MUTANTS: dict[str, Mutant] = {
    m.name: m
    for m in (
        Mutant(
            "quorum-half", "quorum > 1/2 of the power instead of > 2/3", QuorumHalf, validators=7, byzantine=2
        ),
        Mutant("no-lock", "precommitting does not lock", NoLock),
        Mutant("lock-not-persisted", "the lock is not in the persisted sign state", LockNotPersisted),
        Mutant(
            "sign-state-not-persisted",
            "the last-signed state is not restored after a crash",
            forget_sign_state=True,
        ),
        Mutant("skip-on-one", "round skip on one message of a higher round instead of f+1", SkipOnOne),
    )
}
