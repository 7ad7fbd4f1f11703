"""Tendermint.relay_votes: the votes a stalled height re-sends, and why the proof of lock is among them.

4 validators of power 1 (quorum 3); proposers at height 1: r0 -> 1, r1 -> 2, r2 -> 3, r3 -> 0.
"""

from __future__ import annotations

from node.consensus import Step, TimeoutFired, VoteReceived, VoteType
from tests.unit.consensus.helpers import bid, feed, make_core, own_votes, precommit, prevote, proposal


def test_relay_votes_hold_the_proof_of_lock_and_the_current_round() -> None:
    core, _app, _s = make_core(0)
    core.start()
    assert core.relay_votes() == []
    feed(core, proposal(0, "A"), prevote(1, 0, bid("A")), prevote(2, 0, bid("A")), prevote(3, 0, None))
    assert core.locked == (0, bid("A")) and core.valid == (0, bid("A"))
    feed(core, precommit(1, 0, None), precommit(2, 0, None), TimeoutFired(1, 0, Step.PRECOMMIT))
    feed(core, precommit(3, 1, None))  # a vote of the current round (1)
    assert core.round == 1
    relayed = core.relay_votes()
    pol = [(v.type, v.round, v.validator[0] - 1) for v in relayed if v.round == 0]
    assert sorted(pol) == [(VoteType.PREVOTE, 0, 0), (VoteType.PREVOTE, 0, 1), (VoteType.PREVOTE, 0, 2)]
    assert all(v.block_id == bid("A") for v in relayed if v.round == 0)  # not validator 3's nil
    assert [(v.type, v.round, v.block_id) for v in relayed if v.round == 1] == [(VoteType.PRECOMMIT, 1, None)]


def test_a_relayed_prevote_completes_the_proof_of_lock_a_re_proposal_needs() -> None:
    """Validator 3 holds only two of the three round-0 prevotes for A (it missed the proposal, and
    the third prevote was lost, say with a restart of its sender). It cannot accept the round-3
    re-proposal of A (pol_round 0), while the validators locked on A refuse anything else: no
    progress, round after round. Validator 0, locked on A, relays its proof of lock; with it,
    validator 3 prevotes A at once."""
    locked, _a, _s = make_core(0)
    locked.start()
    feed(locked, proposal(0, "A"), prevote(1, 0, bid("A")), prevote(2, 0, bid("A")))
    assert locked.locked == (0, bid("A"))
    for r in range(2):  # on to round 2: the round-0 prevotes are no longer current-round votes
        feed(locked, precommit(1, r, None), precommit(2, r, None), precommit(3, r, None))
        feed(locked, TimeoutFired(1, r, Step.PRECOMMIT))
    assert locked.round == 2 and locked.valid == (0, bid("A"))

    lagging, _app, _signer = make_core(3)
    lagging.start()
    feed(lagging, prevote(1, 0, bid("A")), prevote(2, 0, bid("A")))  # 2 of the 3 POL prevotes
    for r in range(3):
        feed(lagging, TimeoutFired(1, r, Step.PROPOSE))
        feed(lagging, precommit(0, r, None), precommit(1, r, None), precommit(2, r, None))
        feed(lagging, TimeoutFired(1, r, Step.PRECOMMIT))
    assert lagging.round == 3 and lagging.locked == (-1, None)
    assert own_votes(feed(lagging, proposal(3, "A", pol_round=0))) == []  # no proof of lock: waits
    relayed: list[object] = []
    for v in locked.relay_votes():
        relayed.extend(own_votes(feed(lagging, VoteReceived(v))))
    assert [(v.type, v.round, v.block_id) for v in relayed] == [(VoteType.PREVOTE, 3, bid("A"))]
