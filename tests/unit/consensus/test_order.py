"""Every rule is re-checked on every arrival: the outcome does not depend on the arrival order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from node.consensus import Decide, Step, VoteType
from tests.unit.consensus.helpers import bid, feed, make_core, own_votes, precommit, prevote, proposal

DECIDE_A = [proposal(0, "A"), *(prevote(i, 0, bid("A")) for i in (1, 2, 3))] + [
    precommit(i, 0, bid("A")) for i in (1, 2, 3)
]


@settings(max_examples=60, deadline=None)
@given(st.permutations(DECIDE_A))
def test_decision_does_not_depend_on_arrival_order(events: list[object]) -> None:
    core, _app, _s = make_core(0)
    core.start()
    actions = feed(core, *events)
    decisions = [a for a in actions if isinstance(a, Decide)]
    assert [(d.round, d.block_id) for d in decisions] == [(0, bid("A"))]


# Round 2 reached by f+1 messages; a proposal of B with POL round 1; the POL itself.
POL_B = [
    prevote(1, 2, None),
    prevote(2, 2, None),
    proposal(2, "B", pol_round=1),
    prevote(1, 1, bid("B")),
    prevote(2, 1, bid("B")),
    prevote(3, 1, bid("B")),
]


@settings(max_examples=60, deadline=None)
@given(st.permutations(POL_B))
def test_pol_rule_fires_whatever_the_order(events: list[object]) -> None:
    core, _app, _s = make_core(0)
    core.start()
    votes = own_votes(feed(core, *events))
    prevotes = [(v.round, v.block_id) for v in votes if v.type is VoteType.PREVOTE]
    assert prevotes == [(2, bid("B"))]
    assert core.round == 2 and core.current_step is Step.PREVOTE
