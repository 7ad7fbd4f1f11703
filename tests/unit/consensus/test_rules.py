"""The Tendermint rules one by one (numbered as in /work/shared/TENDERMINT.md).

4 validators of power 1 (quorum 3, f+1 = 2); the validator under test is index 0, which is not the
proposer of rounds 0-2 at height 1 (proposers: r0 -> 1, r1 -> 2, r2 -> 3, r3 -> 0).
"""

from __future__ import annotations

from node.consensus import (
    Broadcast,
    Decide,
    DropReason,
    Persist,
    ScheduleTimeout,
    Step,
    TimeoutFired,
    VoteType,
)
from tests.unit.consensus.helpers import (
    TIMEOUTS,
    addr,
    bid,
    feed,
    make_core,
    own_proposals,
    own_votes,
    precommit,
    prevote,
    proposal,
    snapshot,
)


def started(me: int = 0):  # type: ignore[no-untyped-def]
    core, app, signer = make_core(me)
    core.start()
    return core, app, signer


def lock_on_a_in_round_0(core) -> None:  # type: ignore[no-untyped-def]
    feed(core, proposal(0, "A"), prevote(1, 0, bid("A")), prevote(2, 0, bid("A")))
    assert core.locked == (0, bid("A"))


def to_round(core, r: int) -> None:  # type: ignore[no-untyped-def]
    """Move to round r through precommit timeouts (2f+1 nil precommits, then the timeout)."""
    while core.round < r:
        cur = core.round
        feed(core, *(precommit(i, cur, None) for i in (1, 2, 3)))
        feed(core, TimeoutFired(1, cur, Step.PRECOMMIT))
        assert core.round == cur + 1


# --- rule 1: StartRound ---------------------------------------------------------------------------------


def test_non_proposer_schedules_the_propose_timeout() -> None:
    core, _app, _s = make_core(0)
    actions = core.start()
    assert actions == [ScheduleTimeout(1, 0, Step.PROPOSE, TIMEOUTS.propose_ms)]
    assert core.start() == []  # idempotent


def test_proposer_proposes_a_new_block_and_persists_before_broadcasting() -> None:
    core, app, _s = make_core(1)
    actions = core.start()
    assert app.proposed == [(1, 0)]
    kinds = [type(a).__name__ for a in actions]
    # proposal: Persist then Broadcast; the propose timeout; its own prevote: Persist then Broadcast.
    assert kinds == ["Persist", "Broadcast", "ScheduleTimeout", "Persist", "Broadcast"]
    (p,) = own_proposals(actions)
    assert (p.height, p.round, p.pol_round, p.block_id) == (1, 0, -1, bid("new-1-0"))
    assert actions[0].sign_state.step is Step.PROPOSE and actions[0].sign_state.block_id == p.block_id  # type: ignore[union-attr]
    (v,) = own_votes(actions)
    assert (v.type, v.block_id) == (VoteType.PREVOTE, p.block_id)


def test_every_own_broadcast_is_preceded_by_a_persist_of_exactly_that_message() -> None:
    core, _app, _s = make_core(1)
    actions = core.start() + feed(
        core, prevote(0, 0, bid("new-1-0")), prevote(2, 0, bid("new-1-0")), precommit(0, 0, bid("new-1-0"))
    )
    last = None
    checked = 0
    for a in actions:
        if isinstance(a, Persist):
            last = a.sign_state
        elif isinstance(a, Broadcast) and not hasattr(a.message, "vote_a"):
            m = a.message
            assert last is not None
            step = Step.PROPOSE if not hasattr(m, "type") else Step(int(m.type) + 1)  # type: ignore[union-attr]
            assert (last.height, last.round, last.step, last.block_id, last.signature) == (
                m.height, m.round, step, m.block_id, m.signature,
            )  # fmt: skip
            last = None
            checked += 1
    assert checked == 3  # proposal, prevote, precommit


def test_proposer_re_proposes_its_valid_value_with_its_round_as_pol() -> None:
    core, app, _s = make_core(3)  # proposer of round 2
    core.start()
    feed(core, proposal(0, "A"))
    feed(core, prevote(0, 0, bid("A")), prevote(1, 0, bid("A")))  # with its own: polka -> valid A
    assert core.valid == (0, bid("A"))
    feed(core, precommit(0, 0, None), precommit(1, 0, None))
    actions = feed(core, TimeoutFired(1, 0, Step.PRECOMMIT))
    assert core.round == 1
    feed(core, precommit(0, 1, None), precommit(1, 1, None), precommit(2, 1, None))
    actions = feed(core, TimeoutFired(1, 1, Step.PRECOMMIT))
    (p,) = own_proposals(actions)
    assert (p.round, p.block_id, p.pol_round) == (2, bid("A"), 0)
    assert app.proposed == []  # no new block was built


# --- rule 2 ---------------------------------------------------------------------------------------------


def test_rule2_prevotes_a_valid_fresh_proposal() -> None:
    core, _app, _s = started()
    actions = feed(core, proposal(0, "A"))
    (v,) = own_votes(actions)
    assert (v.type, v.round, v.block_id) == (VoteType.PREVOTE, 0, bid("A"))
    assert core.current_step is Step.PREVOTE


def test_rule2_prevotes_nil_on_an_invalid_block() -> None:
    core, app, _s = started()
    app.invalid.add(bid("A"))
    (v,) = own_votes(feed(core, proposal(0, "A")))
    assert v.block_id is None


def test_locked_validator_prevotes_nil_not_its_lock_on_a_conflicting_fresh_proposal() -> None:
    core, _app, _s = started()
    lock_on_a_in_round_0(core)
    to_round(core, 1)
    (v,) = own_votes(feed(core, proposal(1, "B")))
    assert v.block_id is None  # nil, never the locked value A
    assert core.locked == (0, bid("A"))


def test_locked_validator_prevotes_its_locked_value_again() -> None:
    core, _app, _s = started()
    lock_on_a_in_round_0(core)
    to_round(core, 1)
    (v,) = own_votes(feed(core, proposal(1, "A")))
    assert v.block_id == bid("A")


# --- rule 3 ---------------------------------------------------------------------------------------------


def test_rule3_pol_arriving_after_the_proposal_still_triggers_the_prevote() -> None:
    core, _app, _s = started()
    to_round(core, 2)
    before = feed(core, proposal(2, "B", pol_round=1))
    assert own_votes(before) == [] and core.current_step is Step.PROPOSE  # waits for the POL
    feed(core, prevote(1, 1, bid("B")), prevote(2, 1, bid("B")))
    assert own_votes([]) == []
    (v,) = own_votes(feed(core, prevote(3, 1, bid("B"))))
    assert (v.round, v.block_id) == (2, bid("B"))


def test_rule3_accepts_a_pol_newer_than_the_lock() -> None:
    core, _app, _s = started()
    lock_on_a_in_round_0(core)
    to_round(core, 2)
    feed(core, prevote(1, 1, bid("B")), prevote(2, 1, bid("B")), prevote(3, 1, bid("B")))
    (v,) = own_votes(feed(core, proposal(2, "B", pol_round=1)))
    assert v.block_id == bid("B")


def test_rule3_rejects_a_pol_older_than_the_lock() -> None:
    core, _app, _s = started()
    to_round(core, 1)
    # Lock on A in round 1.
    feed(core, proposal(1, "A"), prevote(1, 1, bid("A")), prevote(2, 1, bid("A")))
    assert core.locked == (1, bid("A"))
    to_round(core, 2)
    # B has a POL from round 0 (< lockedRound 1): prevote nil.
    feed(core, prevote(1, 0, bid("B")), prevote(2, 0, bid("B")), prevote(3, 0, bid("B")))
    (v,) = own_votes(feed(core, proposal(2, "B", pol_round=0)))
    assert v.block_id is None


def test_pol_round_not_below_the_round_is_rejected_and_changes_nothing() -> None:
    core, _app, _s = started()
    before = snapshot(core)
    assert feed(core, proposal(0, "A", pol_round=0)) == []
    assert core.dropped is not None and core.dropped.reason is DropReason.BAD_POL_ROUND
    assert snapshot(core) == before


# --- rules 4 to 7 ---------------------------------------------------------------------------------------


def test_rule4_prevote_timeout_is_scheduled_once_on_2f1_mixed_prevotes() -> None:
    core, _app, _s = started()
    feed(core, proposal(0, "A"))
    assert not [a for a in feed(core, prevote(1, 0, None)) if isinstance(a, ScheduleTimeout)]
    actions = feed(core, prevote(2, 0, bid("X")))
    assert ScheduleTimeout(1, 0, Step.PREVOTE, TIMEOUTS.prevote_ms) in actions
    assert not [a for a in feed(core, prevote(3, 0, None)) if isinstance(a, ScheduleTimeout)]
    (v,) = own_votes(feed(core, TimeoutFired(1, 0, Step.PREVOTE)))
    assert (v.type, v.block_id) == (VoteType.PRECOMMIT, None)


def test_rule5_locks_and_precommits_on_a_polka() -> None:
    core, _app, _s = started()
    feed(core, proposal(0, "A"), prevote(1, 0, bid("A")))
    (v,) = own_votes(feed(core, prevote(2, 0, bid("A"))))
    assert (v.type, v.block_id) == (VoteType.PRECOMMIT, bid("A"))
    assert core.locked == (0, bid("A")) and core.valid == (0, bid("A"))
    assert core.last_signed is not None and core.last_signed.locked_block_id == bid("A")


def test_rule5_polka_after_precommitting_nil_updates_valid_but_not_the_lock() -> None:
    core, _app, _s = started()
    feed(core, proposal(0, "A"), prevote(1, 0, None), prevote(2, 0, None))
    feed(core, prevote(3, 0, None))  # 2f+1 nil (with a late A vote counted for A later)
    assert core.current_step is Step.PRECOMMIT and core.locked == (-1, None)
    feed(core, prevote(1, 0, bid("A")), prevote(2, 0, bid("A")))  # equivocators count for A too
    assert core.valid == (0, bid("A"))
    assert core.locked == (-1, None)


def test_rule6_precommits_nil_on_2f1_nil_prevotes() -> None:
    core, _app, _s = started()
    feed(core, proposal(0, "A"))
    (v,) = own_votes(feed(core, prevote(1, 0, None), prevote(2, 0, None), prevote(3, 0, None)))
    assert (v.type, v.block_id) == (VoteType.PRECOMMIT, None)


def test_no_unlocking_on_nil_prevotes() -> None:
    core, _app, _s = started()
    lock_on_a_in_round_0(core)
    to_round(core, 1)
    feed(core, TimeoutFired(1, 1, Step.PROPOSE))
    feed(core, prevote(1, 1, None), prevote(2, 1, None), prevote(3, 1, None))
    assert core.current_step is Step.PRECOMMIT
    assert core.locked == (0, bid("A"))


def test_rule7_precommit_timeout_then_next_round_with_linear_timeouts() -> None:
    core, _app, _s = started()
    actions = feed(core, precommit(1, 0, None), precommit(2, 0, bid("X")), precommit(3, 0, None))
    assert ScheduleTimeout(1, 0, Step.PRECOMMIT, TIMEOUTS.precommit_ms) in actions
    actions = feed(core, TimeoutFired(1, 0, Step.PRECOMMIT))
    assert core.round == 1 and core.current_step is Step.PROPOSE
    assert ScheduleTimeout(1, 1, Step.PROPOSE, TIMEOUTS.propose_ms + TIMEOUTS.propose_delta_ms) in actions
    to_round(core, 7)
    assert TIMEOUTS.for_step(Step.PROPOSE, 7) == 1000 + 7 * 100  # linear, not exponential


# --- rule 8 ---------------------------------------------------------------------------------------------


def test_decides_in_a_later_round_on_an_earlier_rounds_precommits() -> None:
    core, _app, _s = started()
    feed(core, prevote(1, 2, None), prevote(2, 2, None))  # f+1 in round 2: skip there
    assert core.round == 2
    feed(core, proposal(0, "A"))
    feed(core, precommit(1, 0, bid("A")), precommit(2, 0, bid("A")))
    assert core.decision is None
    actions = feed(core, precommit(3, 0, bid("A")))
    (d,) = [a for a in actions if isinstance(a, Decide)]
    assert (d.height, d.round, d.block_id) == (1, 0, bid("A"))
    assert d.certificate.block_id == bid("A") and d.certificate.round == 0
    assert [a for a, _ in d.certificate.signatures] == [addr(1), addr(2), addr(3)]


def test_precommits_of_equivocators_count_for_the_block_they_signed() -> None:
    core, _app, _s = started()
    feed(core, proposal(0, "A"), *(precommit(i, 0, None) for i in (1, 2, 3)))
    actions = feed(core, precommit(1, 0, bid("A")), precommit(2, 0, bid("A")))
    assert core.decision is None  # A has 2 signers (plus nothing from us)
    actions = feed(core, precommit(3, 0, bid("A")))
    (d,) = [a for a in actions if isinstance(a, Decide)]
    assert [a for a, _ in d.certificate.signatures] == [addr(1), addr(2), addr(3)]


def test_no_decision_without_the_block() -> None:
    core, _app, _s = started()
    feed(core, precommit(1, 0, bid("A")), precommit(2, 0, bid("A")), precommit(3, 0, bid("A")))
    assert core.decision is None
    (d,) = [a for a in feed(core, proposal(0, "A")) if isinstance(a, Decide)]
    assert d.block_id == bid("A")


def test_no_decision_on_an_invalid_block() -> None:
    core, app, _s = started()
    app.invalid.add(bid("A"))
    feed(core, proposal(0, "A"), *(precommit(i, 0, bid("A")) for i in (1, 2, 3)))
    assert core.decision is None


def test_after_deciding_input_for_the_height_is_dropped() -> None:
    core, _app, _s = started()
    feed(core, proposal(0, "A"), *(precommit(i, 0, bid("A")) for i in (1, 2, 3)))
    assert core.decision is not None
    assert feed(core, TimeoutFired(1, 0, Step.PROPOSE)) == []
    assert core.dropped is not None and core.dropped.reason is DropReason.STALE_TIMEOUT
    assert feed(core, proposal(1, "B")) == []
    assert core.dropped is not None and core.dropped.reason is DropReason.ALREADY_DECIDED


# --- rule 9 ---------------------------------------------------------------------------------------------


def test_round_skip_on_f_plus_1_messages_of_any_type() -> None:
    core, _app, _s = started()
    feed(core, prevote(1, 5, None))
    assert core.round == 0  # one validator (1/4) is not f+1
    actions = feed(core, precommit(2, 5, bid("Z")))
    assert core.round == 5 and core.current_step is Step.PROPOSE
    assert ScheduleTimeout(1, 5, Step.PROPOSE, TIMEOUTS.propose(5)) in actions


def test_the_same_validator_twice_is_not_f_plus_1() -> None:
    core, _app, _s = started()
    feed(core, prevote(1, 5, None), precommit(1, 5, None))
    assert core.round == 0


def test_proposal_counts_towards_the_round_skip() -> None:
    core, _app, _s = started()
    feed(core, proposal(4, "P"))  # proposer of round 4 is validator 1
    assert core.round == 0
    feed(core, prevote(2, 4, None))
    assert core.round == 4


# --- rule 10: timeouts ----------------------------------------------------------------------------------


def test_propose_timeout_prevotes_nil() -> None:
    core, _app, _s = started()
    (v,) = own_votes(feed(core, TimeoutFired(1, 0, Step.PROPOSE)))
    assert (v.type, v.block_id) == (VoteType.PREVOTE, None)


def test_stale_timeouts_are_ignored_and_change_nothing() -> None:
    core, _app, _s = started()
    feed(core, proposal(0, "A"))  # now in prevote
    for stale in (
        TimeoutFired(1, 0, Step.PROPOSE),  # step moved on
        TimeoutFired(0, 0, Step.PRECOMMIT),  # old height
        TimeoutFired(1, 5, Step.PRECOMMIT),  # another round
        TimeoutFired(1, 0, Step.PREVOTE) if False else TimeoutFired(2, 0, Step.PROPOSE),  # future height
    ):
        before = snapshot(core)
        assert feed(core, stale) == []
        assert core.dropped is not None and core.dropped.reason is DropReason.STALE_TIMEOUT
        assert snapshot(core) == before
    to_round(core, 1)
    before = snapshot(core)
    assert feed(core, TimeoutFired(1, 0, Step.PRECOMMIT)) == []
    assert snapshot(core) == before
