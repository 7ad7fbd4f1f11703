"""Validator-set changes committed at height H take effect at H + 2, and the core follows the set
it is given at StartHeight."""

from __future__ import annotations

import pytest

from node.consensus import ACTIVATION_DELAY, Decide, InvalidEvent, StartHeight, Step, ValidatorSchedule
from tests.unit.consensus.helpers import VALS, bid, feed, make_core, make_set, precommit, prevote, proposal


def test_change_committed_at_h_takes_effect_at_h_plus_2() -> None:
    bigger = make_set([1] * 7)
    sched = ValidatorSchedule(VALS)
    assert sched.record_change(5, bigger) == 5 + ACTIVATION_DELAY == 7
    assert [sched.validators_for(h) for h in (1, 5, 6)] == [VALS, VALS, VALS]
    assert sched.validators_for(7) == bigger and sched.validators_for(100) == bigger


def test_changes_must_be_recorded_in_order_and_before_genesis_is_refused() -> None:
    sched = ValidatorSchedule(VALS, first_height=3)
    with pytest.raises(InvalidEvent):
        sched.validators_for(2)
    sched.record_change(5, make_set([2, 1]))
    with pytest.raises(InvalidEvent) as e:
        sched.record_change(4, make_set([1]))
    assert e.value.problem == "validator-set changes must be recorded in height order"
    assert sched.validators_for(7) == make_set([2, 1])  # unchanged by the refused change


def test_core_switches_sets_exactly_at_the_activation_height() -> None:
    bigger = make_set([1] * 7)  # quorum 5
    sched = ValidatorSchedule(VALS)
    core, _app, _s = make_core(0)
    core.start()
    sched.record_change(1, bigger)  # block 1 carries the change
    actions = feed(core, proposal(0, "A"), *(precommit(i, 0, bid("A")) for i in (1, 2, 3)))
    assert any(isinstance(a, Decide) for a in actions)
    feed(core, StartHeight(2, sched.validators_for(2)))
    assert core.validators == VALS  # height 2 still signed by the old set: 3 of 4 is a quorum
    actions = feed(
        core, proposal(0, "B", height=2), *(precommit(i, 0, bid("B"), height=2) for i in (1, 2, 3))
    )
    assert any(isinstance(a, Decide) for a in actions)
    feed(core, StartHeight(3, sched.validators_for(3)))
    assert core.validators == bigger
    feed(core, proposal(0, "C", height=3, proposer=3))  # proposer of (3, 0) in the 7-set
    assert core.current_step is Step.PREVOTE
    feed(core, *(prevote(i, 0, bid("C"), height=3) for i in (1, 2, 4)))
    assert core.current_step is Step.PREVOTE  # 4 of 7 (with its own) is no longer a quorum
    feed(core, prevote(5, 0, bid("C"), height=3))
    assert core.current_step is Step.PRECOMMIT and core.locked == (0, bid("C"))
