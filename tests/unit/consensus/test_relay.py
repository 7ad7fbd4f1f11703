"""Tendermint.relay_votes: the votes a stalled height re-sends, and why the proof of lock is among them.

4 validators of power 1 (quorum 3); proposers at height 1: r0 -> 1, r1 -> 2, r2 -> 3, r3 -> 0.
"""

from __future__ import annotations

from node.consensus import Step, TimeoutFired, VoteReceived, VoteType
from tests.unit.consensus.helpers import (
    addr,
    bid,
    feed,
    make_core,
    own_proposals,
    own_votes,
    precommit,
    prevote,
    proposal,
)


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
    pol = [(v.validator[0] - 1, v.block_id) for v in relayed if v.round == 0 and v.type is VoteType.PREVOTE]
    assert sorted(pol) == [(0, bid("A")), (1, bid("A")), (2, bid("A"))]  # not validator 3's nil
    # The round-0 precommit quorum that moved this validator on, for peers still in round 0.
    moved_on = [
        (v.validator[0] - 1, v.block_id) for v in relayed if v.round == 0 and v.type is VoteType.PRECOMMIT
    ]
    assert sorted(moved_on) == [(0, bid("A")), (1, None), (2, None)]
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


def test_a_relayed_precommit_of_an_earlier_round_lets_a_peer_still_in_it_commit() -> None:
    """Found by the node simulation (4 validators, seed 198): validators 0 and 1 precommitted A in
    round 0 and wait in round 0 for a third precommit. Byzantine validator 3 sent its precommit for A
    to validator 2 alone; 2 never got the proposal, so with 2f+1 precommits it timed out into
    round 1 without precommitting in round 0. Relaying only its own votes and round 1's, 2 left 0
    and 1 waiting for ever (f+1 round-1 messages would move them on, and 2 is one). 2 relays the
    round-0 precommit quorum as well: 0 commits A."""
    waiting, _a, _s = make_core(0)
    waiting.start()
    feed(waiting, proposal(0, "A"), prevote(1, 0, bid("A")), prevote(3, 0, bid("A")))
    feed(waiting, precommit(1, 0, bid("A")))
    assert waiting.current_step is Step.PRECOMMIT and waiting.decision is None

    moved_on, _app, _signer = make_core(2)
    moved_on.start()
    feed(moved_on, TimeoutFired(1, 0, Step.PROPOSE))  # the proposal never came: prevote nil
    feed(moved_on, precommit(0, 0, bid("A")), precommit(1, 0, bid("A")), precommit(3, 0, bid("A")))
    feed(moved_on, TimeoutFired(1, 0, Step.PRECOMMIT))
    assert moved_on.round == 1 and moved_on.decision is None  # no block A: cannot decide
    relayed = moved_on.relay_votes()
    assert (VoteType.PRECOMMIT, 0, addr(3)) in [(v.type, v.round, v.validator) for v in relayed]
    for v in relayed:
        feed(waiting, VoteReceived(v))
    decision = waiting.decision
    assert decision is not None and decision.block_id == bid("A") and decision.round == 0


def test_a_validator_that_learns_a_proof_of_lock_late_re_proposes_its_value() -> None:
    """Found by the node simulation (4 validators, seeds 636 and 1686): validators 1 and 2 are locked
    on A from round 0. Validator 0 saw the round-0 prevotes only later, relayed, and the block A
    only in a re-proposal it could not accept then. Rule 5 learns validValue only in the round of
    the prevotes, so 0, proposing in round 3, offered a fresh block that 1 and 2 refuse, and the
    height waited for a locked proposer. 0 now takes A (valid round 0) as its valid value and
    re-proposes it with that proof of lock."""
    core, app, _s = make_core(0)
    core.start()
    for r in range(2):  # rounds 0 and 1 pass without a proposal it can use
        feed(core, TimeoutFired(1, r, Step.PROPOSE))
        feed(core, precommit(1, r, None), precommit(2, r, None), precommit(3, r, None))
        feed(core, TimeoutFired(1, r, Step.PRECOMMIT))
    assert core.round == 2 and core.valid == (-1, None)
    feed(core, prevote(1, 0, bid("A")), prevote(2, 0, bid("A")), prevote(3, 0, bid("A")))  # relayed
    feed(core, proposal(2, "A", pol_round=0))  # round 2's proposer re-proposes A: the block is known
    assert core.valid == (0, bid("A"))
    feed(core, precommit(1, 2, None), precommit(2, 2, None), precommit(3, 2, None))
    started = feed(core, TimeoutFired(1, 2, Step.PRECOMMIT))
    assert core.round == 3
    assert [(p.round, p.pol_round, p.block_id) for p in own_proposals(started)] == [(3, 0, bid("A"))]
    assert (1, 3) not in app.proposed  # no fresh block asked for
