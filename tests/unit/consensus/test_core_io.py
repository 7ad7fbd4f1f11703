"""Input handling of the core: bad and stale input, evidence, next-height buffering, catch-up,
heights, and restart safety from a persisted SignState."""

from __future__ import annotations

import pytest

from node.consensus import (
    BUFFER_PER_SENDER,
    ROUND_WINDOW,
    Broadcast,
    CommitCertificate,
    CommitReceived,
    Decide,
    DropReason,
    DuplicateVoteEvidence,
    InvalidEvent,
    InvalidRestoreState,
    Persist,
    RecordEvidence,
    SignState,
    StartHeight,
    Step,
    TimeoutFired,
    Vote,
    VoteReceived,
    VoteType,
)
from node.consensus.types import BlockId
from tests.unit.consensus.helpers import (
    VALS,
    Block,
    FakeApp,
    addr,
    bid,
    block,
    feed,
    make_core,
    make_set,
    own_proposals,
    own_votes,
    persisted,
    precommit,
    prevote,
    proposal,
    snapshot,
)


def started(me: int = 0):  # type: ignore[no-untyped-def]
    core, app, signer = make_core(me)
    core.start()
    return core, app, signer


def decide_height_1(core) -> Decide:  # type: ignore[no-untyped-def]
    actions = feed(core, proposal(0, "A"), *(precommit(i, 0, bid("A")) for i in (1, 2, 3)))
    (d,) = [a for a in actions if isinstance(a, Decide)]
    return d


# --- invalid and stale input is dropped with its reason and changes nothing ---------------------------


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (VoteReceived(Vote(VoteType.PREVOTE, 1, 0, None, b"\x99" * 20, b"s")), DropReason.NOT_A_VALIDATOR),
        (proposal(0, "A", proposer=2), DropReason.WRONG_PROPOSER),
        (proposal(2, "A", pol_round=2), DropReason.BAD_POL_ROUND),
        (proposal(2, "A", pol_round=-2), DropReason.BAD_POL_ROUND),
        (prevote(1, ROUND_WINDOW + 1, None), DropReason.ROUND_TOO_FAR),
        (prevote(1, 0, None, height=3), DropReason.FUTURE_HEIGHT),
        (prevote(1, -1, None), DropReason.BAD_VOTE),
    ],
)
def test_bad_input_is_dropped_with_its_reason_and_leaves_state_unchanged(
    event: object, reason: DropReason
) -> None:
    core, _app, _s = started()
    feed(core, prevote(2, 0, None))
    before = snapshot(core)
    assert feed(core, event) == []
    assert core.dropped is not None and core.dropped.reason is reason
    assert snapshot(core) == before


def test_stale_height_votes_are_dropped() -> None:
    core, _app, _s = make_core(0, height=5)
    core.start()
    before = snapshot(core)
    assert feed(core, prevote(1, 0, bid("A"), height=4)) == []
    assert core.dropped is not None and core.dropped.reason is DropReason.STALE_HEIGHT
    assert snapshot(core) == before


def test_duplicate_vote_is_dropped_and_counted_once() -> None:
    core, _app, _s = started()
    feed(core, prevote(1, 0, bid("A")))
    before = snapshot(core)
    assert feed(core, prevote(1, 0, bid("A"))) == []
    assert core.dropped is not None and core.dropped.reason is DropReason.DUPLICATE
    assert snapshot(core) == before
    assert core._votes.prevotes(0).power_for(bid("A")) == 1


def test_a_fifth_distinct_proposal_of_an_equivocating_proposer_is_dropped() -> None:
    core, _app, _s = started()
    feed(core, *(proposal(5, f"P{i}") for i in range(4)))
    before = snapshot(core)
    assert feed(core, proposal(5, "P4")) == []
    assert core.dropped is not None and core.dropped.reason is DropReason.TOO_MANY_PROPOSALS
    assert snapshot(core) == before


# --- evidence ---------------------------------------------------------------------------------------------


def test_equivocation_becomes_evidence_once_per_pair() -> None:
    core, _app, _s = started()
    first = prevote(2, 0, bid("A"))
    second = prevote(2, 0, bid("B"))
    assert feed(core, first) == []
    actions = feed(core, second)
    (rec,) = [a for a in actions if isinstance(a, RecordEvidence)]
    assert rec.evidence == DuplicateVoteEvidence(first.vote, second.vote)
    assert Broadcast(rec.evidence) in actions
    assert rec.evidence.validator == addr(2)
    assert [a for a in feed(core, second) if isinstance(a, RecordEvidence)] == []  # same pair again
    third = prevote(2, 0, None)
    (rec3,) = [a for a in feed(core, third) if isinstance(a, RecordEvidence)]
    assert rec3.evidence == DuplicateVoteEvidence(first.vote, third.vote)
    # A fourth value is beyond the per-validator limit: dropped.
    assert feed(core, prevote(2, 0, bid("C"))) == []
    assert core.dropped is not None and core.dropped.reason is DropReason.TOO_MANY_VOTES


def test_votes_of_different_types_or_rounds_are_not_equivocation() -> None:
    core, _app, _s = started()
    actions = feed(core, prevote(2, 0, bid("A")), precommit(2, 0, None), prevote(2, 1, bid("B")))
    assert [a for a in actions if isinstance(a, RecordEvidence)] == []


def test_late_conflicting_vote_of_the_previous_height_still_becomes_evidence() -> None:
    core, _app, _s = started()
    decide_height_1(core)
    feed(core, StartHeight(2, VALS))
    actions = feed(core, precommit(3, 0, bid("B")))
    assert core.dropped is not None and core.dropped.reason is DropReason.STALE_HEIGHT
    (rec,) = [a for a in actions if isinstance(a, RecordEvidence)]
    assert (rec.evidence.vote_a.block_id, rec.evidence.vote_b.block_id) == (bid("A"), bid("B"))


# --- next height: buffering, StartHeight, last_commit ------------------------------------------------------


def test_next_height_messages_are_buffered_and_replayed_after_start_height() -> None:
    core, _app, _s = started()
    h2_proposal = proposal(0, "H2", height=2)  # proposer of (2, 0) is validator 2
    feed(core, h2_proposal, prevote(2, 0, bid("H2"), height=2), prevote(3, 0, bid("H2"), height=2))
    assert core.buffered == 3
    d = decide_height_1(core)
    assert core.height == 1
    actions = feed(core, StartHeight(2, VALS))
    assert core.height == 2 and core.buffered == 0
    assert core.last_commit == d.certificate
    votes = own_votes(actions)
    assert [(v.type, v.height, v.block_id) for v in votes] == [
        (VoteType.PREVOTE, 2, bid("H2")),
        (VoteType.PRECOMMIT, 2, bid("H2")),
    ]
    assert core.start() == []  # the round already started


def test_next_height_buffer_is_bounded_per_sender() -> None:
    core, _app, _s = started()
    feed(core, *(prevote(1, r, None, height=2) for r in range(BUFFER_PER_SENDER)))
    assert core.buffered == BUFFER_PER_SENDER
    before = snapshot(core)
    assert feed(core, prevote(1, BUFFER_PER_SENDER, None, height=2)) == []
    assert core.dropped is not None and core.dropped.reason is DropReason.BUFFER_FULL
    assert snapshot(core) == before
    feed(core, prevote(2, 0, None, height=2))  # other senders still buffer
    assert core.buffered == BUFFER_PER_SENDER + 1


def test_buffered_messages_from_non_members_of_the_new_set_are_dropped_on_replay() -> None:
    core, _app, _s = started()
    feed(core, prevote(3, 0, bid("X"), height=2))
    decide_height_1(core)
    smaller = make_set([1, 1, 1])  # validator 3 left
    feed(core, StartHeight(2, smaller))
    assert core.validators == smaller
    assert core._votes.prevotes(0).power_for(bid("X")) == 0


def test_start_height_must_move_forward() -> None:
    core, _app, _s = started()
    with pytest.raises(InvalidEvent) as e:
        core.step(StartHeight(1, VALS))
    assert e.value.problem == "StartHeight must move to a higher height"


def test_new_height_uses_the_new_validator_set_for_proposer_and_quorum() -> None:
    core, _app, _s = started()
    decide_height_1(core)
    bigger = make_set([1, 1, 1, 1, 1, 1, 1])  # quorum 5
    feed(core, StartHeight(2, bigger))
    assert core.validators.quorum == 5
    feed(core, proposal(0, "B", height=2))  # proposer (2, 0) of the bigger set: validator 2
    feed(core, *(prevote(i, 0, bid("B"), height=2) for i in (1, 2, 3)))
    assert core.current_step is Step.PREVOTE  # 4 of 7 is not a quorum
    feed(core, prevote(4, 0, bid("B"), height=2))
    assert core.current_step is Step.PRECOMMIT


# --- catch-up ---------------------------------------------------------------------------------------------


def cert(signers: list[int], height: int = 1, name: str = "A") -> CommitCertificate:
    return CommitCertificate(height, 0, bid(name), tuple((addr(i), b"s") for i in signers))


def test_commit_received_decides_the_current_height() -> None:
    core, _app, _s = started()
    c = cert([1, 2, 3])
    actions = feed(core, CommitReceived(c, Block("A", 1)))
    assert actions == [Decide(1, 0, bid("A"), Block("A", 1), c)]


@pytest.mark.parametrize(
    "bad",
    [cert([1, 2]), cert([1, 1, 2]), cert([1, 2, 9]), cert([1, 2, 3], height=2)],
    ids=["too-little-power", "duplicate-signer", "unknown-signer", "wrong-height"],
)
def test_bad_certificates_are_rejected_and_change_nothing(bad: CommitCertificate) -> None:
    core, _app, _s = started()
    before = snapshot(core)
    assert feed(core, CommitReceived(bad, Block("A", bad.height))) == []
    assert core.dropped is not None and core.dropped.reason is DropReason.BAD_CERTIFICATE
    assert snapshot(core) == before


def test_certificate_for_a_block_that_does_not_validate_is_rejected() -> None:
    core, app, _s = started()
    app.invalid.add(bid("A"))
    assert feed(core, CommitReceived(cert([1, 2, 3]), Block("A", 1))) == []
    assert core.dropped is not None and core.dropped.detail == "block does not validate"


def test_a_certificate_asks_the_application_again_after_an_earlier_no() -> None:
    """A verdict may have depended on this node's clock (a block from its future, refused in round 0):
    once 2f+1 validators certify the block, it is validated afresh and decided (the clock step that
    wedged a node in the node simulation)."""
    core, app, _s = started()
    app.invalid.add(bid("A"))
    feed(core, proposal(0, "A"))
    assert app.validated.count(bid("A")) >= 1 and core.decision is None
    app.invalid.discard(bid("A"))  # the clock is right again
    c = cert([1, 2, 3])
    assert feed(core, CommitReceived(c, Block("A", 1))) == [Decide(1, 0, bid("A"), Block("A", 1), c)]


def test_a_block_refused_in_one_round_is_asked_about_again_in_a_later_one() -> None:
    """Found by the node simulation (4 validators, seed 100055): validator 2 refused block A in round 0
    because A was from its future, and the core kept that "no" for the whole height. Validators
    locked on A re-proposed it round after round (with its proof of lock), 2 refused it each time,
    and the height stalled. Only a "yes" is kept now: once its clock has caught up, 2 prevotes A."""
    core, app, _s = make_core(2)
    core.start()
    app.invalid.add(bid("A"))  # from this node's future, for now
    assert [(v.round, v.block_id) for v in own_votes(feed(core, proposal(0, "A")))] == [(0, None)]
    feed(core, prevote(0, 0, bid("A")), prevote(1, 0, bid("A")), prevote(3, 0, bid("A")))  # a polka for A
    assert core.locked == (-1, None)  # refused: no lock on it
    feed(core, prevote(0, 4, None), prevote(3, 4, None))  # f+1 in round 4: skip there
    assert core.round == 4 and core.current_step is Step.PROPOSE
    app.invalid.discard(bid("A"))  # the clock has reached A's time
    votes = own_votes(feed(core, proposal(4, "A", pol_round=0)))
    assert [(v.type, v.round, v.block_id) for v in votes] == [(VoteType.PREVOTE, 4, bid("A"))]


# --- restart safety ----------------------------------------------------------------------------------------


def last_state(actions: list[object]) -> SignState:
    states = persisted(actions)  # type: ignore[arg-type]
    return states[-1]


def test_restart_after_prevote_resends_the_same_vote_and_never_signs_another() -> None:
    core, _app, _s = started()
    actions = feed(core, proposal(0, "A"))
    (sent,) = own_votes(actions)
    state = last_state(actions)
    # Crash; restart with what was persisted.
    again, _app2, signer = make_core(0, restored=state)
    actions = again.start()
    assert own_votes(actions) == [sent]  # the identical signed vote, nothing new signed
    assert signer.calls == 0
    assert again.round == 0 and again.current_step is Step.PREVOTE
    # Its propose timeout must not make it prevote nil now.
    assert own_votes(feed(again, TimeoutFired(1, 0, Step.PROPOSE))) == []
    # Another proposal for round 0 does not make it prevote again either.
    assert own_votes(feed(again, proposal(0, "B"))) == []
    assert signer.calls == 0


def test_restart_after_proposing_sends_the_same_proposal_or_none() -> None:
    """A proposer restarted after signing its proposal asks the application for the block again. The
    same block goes out as the same proposal with the stored signature (nothing new is signed or
    persisted); any other block is never proposed, and the round waits in PROPOSE."""
    core, _app, _s = make_core(1)
    actions = core.start()
    state = persisted(actions)[0]
    first = own_proposals(actions)
    assert state.step is Step.PROPOSE and len(first) == 1
    again, app2, signer = make_core(1, restored=state)
    actions = again.start()
    assert own_proposals(actions) == first and app2.proposed == [(1, 0)]
    # Nothing new is signed for the proposal; the round goes on with the prevote for that block.
    assert [(v.type, v.block_id) for v in own_votes(actions)] == [(VoteType.PREVOTE, first[0].block_id)]
    assert signer.calls == 1 and [p.step for p in persisted(actions)] == [Step.PREVOTE]

    class OtherBlock(FakeApp):
        def propose_block(self, height: int, round: int) -> tuple[BlockId, object]:
            self.proposed.append((height, round))
            return bid("other"), Block("other", height)

    other, app3, signer3 = make_core(1, restored=state, app=OtherBlock())
    actions = other.start()
    assert own_proposals(actions) == [] and app3.proposed == [(1, 0)]
    assert signer3.calls == 0 and persisted(actions) == []
    assert other.current_step is Step.PROPOSE


def test_restart_keeps_the_lock() -> None:
    core, _app, _s = started()
    actions = feed(core, proposal(0, "A"), prevote(1, 0, bid("A")), prevote(2, 0, bid("A")))
    state = last_state(actions)
    assert (state.step, state.locked_round, state.locked_block_id) == (Step.PRECOMMIT, 0, bid("A"))
    _id, body = block("A")
    again, _app2, _signer = make_core(0, restored=state, locked_block=body)
    again.start()
    assert again.locked == (0, bid("A")) and again.valid == (0, bid("A"))
    feed(again, *(precommit(i, 0, None) for i in (1, 2, 3)), TimeoutFired(1, 0, Step.PRECOMMIT))
    assert again.round == 1
    (v,) = own_votes(feed(again, proposal(1, "B")))
    assert v.block_id is None  # still locked on A


def test_restored_state_of_an_earlier_height_only_guards() -> None:
    state = SignState(1, 4, Step.PRECOMMIT, bid("A"), b"sig", 2, bid("A"), 2, bid("A"))
    core, _app, _s = make_core(0, height=2, restored=state)
    core.start()
    assert core.round == 0 and core.locked == (-1, None)
    (v,) = own_votes(feed(core, TimeoutFired(2, 0, Step.PROPOSE)))
    assert v.height == 2


def test_restored_state_of_a_later_height_is_refused() -> None:
    state = SignState(3, 0, Step.PREVOTE, None, b"sig", -1, None, -1, None)
    with pytest.raises(InvalidRestoreState) as e:
        make_core(0, height=2, restored=state)
    assert (e.value.restored_height, e.value.height) == (3, 2)


def test_the_signing_guard_refuses_a_conflicting_message_at_the_last_signed_position() -> None:
    # The last signed message was a PREVOTE for A at (1, 0); a restart that (wrongly) re-entered the
    # propose step would try to prevote nil at the same position: the guard refuses to sign it.
    core, _app, signer = make_core(0)
    core.start()
    core._last_signed = SignState(1, 0, Step.PREVOTE, bid("A"), b"old", -1, None, -1, None)
    actions = feed(core, TimeoutFired(1, 0, Step.PROPOSE))
    assert own_votes(actions) == [] and not [a for a in actions if isinstance(a, Persist)]
    assert signer.calls == 0
    # The identical message is allowed: it re-uses the stored signature.
    core2, _app, signer2 = make_core(0)
    core2.start()
    core2._last_signed = SignState(1, 0, Step.PREVOTE, None, b"old", -1, None, -1, None)
    (v,) = own_votes(feed(core2, TimeoutFired(1, 0, Step.PROPOSE)))
    assert v.signature == b"old" and signer2.calls == 0


def test_plain_int_vote_types_and_steps_from_a_decoder_work() -> None:
    core, _app, _s = started()
    feed(core, proposal(0, "A"))
    for i in (1, 2, 3):
        feed(core, VoteReceived(Vote(2, 1, 0, bid("A"), addr(i), b"s")))  # type: ignore[arg-type]
    assert core.decision is not None and core.decision.block_id == bid("A")
    core2, _app2, _s2 = started()
    (v,) = own_votes(feed(core2, TimeoutFired(1, 0, 1)))  # type: ignore[arg-type]
    assert v.type is VoteType.PREVOTE and v.block_id is None
    assert feed(core2, VoteReceived(Vote(7, 1, 0, None, addr(1), b"s"))) == []  # type: ignore[arg-type]
    assert core2.dropped is not None and core2.dropped.reason is DropReason.BAD_VOTE
