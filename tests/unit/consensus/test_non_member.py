"""A core whose signer is not in the height's validator set (an observer, a validator removed from
the set) follows the height and decides from the members' votes without signing anything: no
proposal, no vote, no Persist, not even the re-send of a vote restored from a sign state."""

from __future__ import annotations

from node.consensus import Decide, Persist, SignState, Step, TimeoutFired
from tests.unit.consensus.helpers import (
    bid,
    feed,
    make_core,
    own_proposals,
    own_votes,
    precommit,
    prevote,
    proposal,
)

OUTSIDER = 9  # addr(9) is not in VALS (members 0..3)


def test_a_non_member_decides_from_the_members_votes_and_signs_nothing() -> None:
    core, _app, signer = make_core(OUTSIDER)
    actions = core.start()
    actions += feed(
        core,
        proposal(0, "A"),
        *(prevote(i, 0, bid("A")) for i in (0, 1, 2)),
        *(precommit(i, 0, bid("A")) for i in (0, 1, 2)),
    )
    assert [a.height for a in actions if isinstance(a, Decide)] == [1]
    assert signer.calls == 0
    assert own_votes(actions) == [] and own_proposals(actions) == []
    assert not any(isinstance(a, Persist) for a in actions)


def test_a_non_member_signs_nothing_through_timeouts_and_rounds() -> None:
    core, _app, signer = make_core(OUTSIDER)
    actions = core.start()
    for round_ in range(6):  # every member is proposer of some round: the outsider never is
        for step in (Step.PROPOSE, Step.PREVOTE, Step.PRECOMMIT):
            actions += feed(core, TimeoutFired(1, round_, step))
        actions += feed(
            core,
            *(prevote(i, round_, None) for i in (0, 1, 2)),
            *(precommit(i, round_, None) for i in (0, 1, 2)),
        )
    assert core.round >= 5
    assert signer.calls == 0 and own_votes(actions) == [] and own_proposals(actions) == []


def test_a_restored_sign_state_is_not_resent_by_a_non_member() -> None:
    restored = SignState(
        height=1,
        round=0,
        step=Step.PREVOTE,
        block_id=bid("A"),
        signature=b"old",
        locked_round=-1,
        locked_block_id=None,
        valid_round=-1,
        valid_block_id=None,
    )
    core, _app, signer = make_core(OUTSIDER, restored=restored)
    actions = core.start()
    assert own_votes(actions) == [] and signer.calls == 0
