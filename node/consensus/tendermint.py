"""The Tendermint state machine (Algorithm 1 of Buchman, Kwon, Milosevic 2018), pure.

`Tendermint.step(event)` returns the actions the runtime must carry out, in order. Nothing here
reads a clock, draws randomness or does I/O: time comes in as `TimeoutFired`, signing and block
building/validation are injected (`Signer`, `Application`).

Rules (numbered as in /work/shared/TENDERMINT.md) are "upon" conditions: after EVERY event all of
them are re-evaluated until none fires, so the order in which proposals and votes arrive does not
matter (a POL completing after its proposal still triggers rule 3). Each rule that must fire only
"the first time" per round keeps a per-round flag; each timeout acts only if (height, round, step)
is unchanged; input for a past height, a far-future round or from a non-member is dropped and the
reason is left in `dropped`.

Crash safety: every own signature is preceded in the action list by a `Persist` of the new
`SignState` (last-signed height/round/step/block id and the lock). The last signed state is a guard:
the core never signs a message at a (height, round, step) below it, nor a different block id at the
same position (it re-uses the stored signature for the identical message).

Hooks named `_lock`, `_sign_state` and `_has_quorum` exist so the simulator can build deliberately
broken variants by subclassing; this class itself has no switches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

from node.consensus.errors import InvalidEvent, InvalidRestoreState
from node.consensus.messages import (
    Action,
    Application,
    Broadcast,
    CommitReceived,
    Decide,
    Dropped,
    DropReason,
    Event,
    Persist,
    ProposalReceived,
    RecordEvidence,
    ScheduleTimeout,
    Signer,
    StartHeight,
    TimeoutFired,
    VoteReceived,
)
from node.consensus.types import (
    NO_ROUND,
    Address,
    BlockId,
    CommitCertificate,
    DuplicateVoteEvidence,
    Height,
    Power,
    Proposal,
    Round,
    SignState,
    Step,
    TimeoutConfig,
    Vote,
    VoteType,
    step_of,
)
from node.consensus.validators import ValidatorSet
from node.consensus.votes import AddResult, HeightVotes

ROUND_WINDOW = 1000
"""Messages for rounds more than this far above the current round are dropped (bounded memory)."""
MAX_PROPOSALS_PER_ROUND = 4
"""Distinct proposals kept per round (more than one only if the proposer equivocates)."""
BUFFER_PER_SENDER = 64
"""Next-height messages buffered per sender until StartHeight."""


class Tendermint:
    """One validator's consensus state for the current height."""

    _round: Round
    _step: Step
    _decided: Decide | None
    _locked_round: Round
    _locked_id: BlockId | None
    _locked_block: object | None
    _valid_round: Round
    _valid_id: BlockId | None
    _valid_block: object | None
    _proposals: dict[Round, dict[BlockId, Proposal]]
    _blocks: dict[BlockId, object]
    _valid_cache: set[BlockId]
    _prevote_timeout_set: set[Round]
    _precommit_timeout_set: set[Round]
    _polka_seen: set[Round]
    _polka_rounds: set[Round]
    _commit_rounds: set[Round]
    _evidence_seen: set[tuple[Address, Height, Round, VoteType, BlockId | None, BlockId | None]]
    _votes: HeightVotes

    def __init__(
        self,
        *,
        validators: ValidatorSet,
        signer: Signer,
        app: Application,
        timeouts: TimeoutConfig,
        height: Height,
        restored: SignState | None = None,
        locked_block: object | None = None,
        valid_block: object | None = None,
        last_commit: CommitCertificate | None = None,
    ) -> None:
        if height < 1:
            raise InvalidEvent("heights start at 1", height)
        if restored is not None and restored.height > height:
            raise InvalidRestoreState("signed at a height above the one to start", restored.height, height)
        self._validators = validators
        self._signer = signer
        self._app = app
        self._timeouts = timeouts
        self._height: Height = height
        self._last_signed: SignState | None = restored
        self._last_commit = last_commit
        self.dropped: Dropped | None = None
        """Why the last event was ignored (None if it was not)."""
        self._out: list[Action] = []
        self._buffer: list[Event] = []
        self._buffered_per_sender: dict[Address, int] = {}
        self._started = False
        self._prev_votes: HeightVotes | None = None
        self._evidence_seen = set()
        self._reset_height()
        if restored is not None and restored.height == height:
            self._round = restored.round
            self._locked_round = restored.locked_round
            self._locked_id = restored.locked_block_id
            self._locked_block = locked_block
            if restored.valid_round >= 0 and restored.valid_block_id is not None:
                body = valid_block
                if body is None and restored.valid_block_id == restored.locked_block_id:
                    body = locked_block
                if body is not None:
                    self._valid_round = restored.valid_round
                    self._valid_id = restored.valid_block_id
                    self._valid_block = body
            if locked_block is not None and restored.locked_block_id is not None:
                self._blocks[restored.locked_block_id] = locked_block
            if self._valid_id is not None and self._valid_block is not None:
                self._blocks[self._valid_id] = self._valid_block

    def _reset_height(self) -> None:
        self._round = 0
        self._step = Step.PROPOSE
        self._decided = None
        self._locked_round = NO_ROUND
        self._locked_id = None
        self._locked_block = None
        self._valid_round = NO_ROUND
        self._valid_id = None
        self._valid_block = None
        self._proposals = {}
        self._blocks = {}
        self._valid_cache = set()
        self._votes = HeightVotes(self._validators)
        self._prevote_timeout_set = set()
        self._precommit_timeout_set = set()
        self._polka_seen = set()
        self._polka_rounds = set()
        self._commit_rounds = set()

    # --- read-only view -----------------------------------------------------------------------------

    @property
    def height(self) -> Height:
        """The height being decided (or, after Decide, the height just decided)."""
        return self._height

    @property
    def round(self) -> Round:
        """The current round."""
        return self._round

    @property
    def current_step(self) -> Step:
        """The current step (named so because `step` is the event entry point)."""
        return self._step

    @property
    def validators(self) -> ValidatorSet:
        """The validator set of the current height."""
        return self._validators

    @property
    def address(self) -> Address:
        """This validator's address."""
        return self._signer.address

    @property
    def last_commit(self) -> CommitCertificate | None:
        """The commit certificate of the previous height (None at the first height or unknown)."""
        return self._last_commit

    @property
    def decision(self) -> Decide | None:
        """The decision of the current height, once made."""
        return self._decided

    @property
    def locked(self) -> tuple[Round, BlockId | None]:
        """(lockedRound, id(lockedValue))."""
        return self._locked_round, self._locked_id

    @property
    def valid(self) -> tuple[Round, BlockId | None]:
        """(validRound, id(validValue))."""
        return self._valid_round, self._valid_id

    def relay_votes(self) -> list[Vote]:
        """Votes of this height that peers may lack, for a runtime to send again when the height
        stalls (votes are signed by their validators, so any node may relay them):

        - the prevotes for validValue in validRound, which a re-proposal of it needs as its proof of
          lock: a peer that missed one would refuse the re-proposal for ever while the locked
          validators refuse everything else;
        - the votes of the current round;
        - the precommits of the latest earlier round that holds 2f+1 of them, the quorum that moved
          this node on (or decides the height). A peer still in that round may be waiting for just
          one of them, from a validator that sent it to this node alone; with them it times out
          into the next round or commits. This node's own votes of the round do not suffice: it may
          have moved on by the precommit timeout without precommitting there.
        """
        out: list[Vote] = []
        seen: set[Vote] = set()

        def add(votes: Iterable[Vote]) -> None:
            for v in votes:
                if v not in seen:
                    seen.add(v)
                    out.append(v)

        if self._valid_round != NO_ROUND and self._valid_id is not None:
            pol = self._votes.rounds.get((self._valid_round, VoteType.PREVOTE))
            if pol is not None:
                add(pol.votes_for(self._valid_id))
        for vote_type in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            current = self._votes.rounds.get((self._round, vote_type))
            if current is not None:
                add(current.votes.values())
        earlier = [
            r
            for (r, t), rv in self._votes.rounds.items()
            if t is VoteType.PRECOMMIT and r < self._round and self._has_quorum(rv.total)
        ]
        if earlier:
            rv = self._votes.precommits(max(earlier))
            add(rv.votes.values())
            for block_id, power in rv.power_by_block.items():
                if block_id is not None and self._has_quorum(power):
                    add(rv.votes_for(block_id))  # with an equivocator's second vote, if it counts
        return out

    @property
    def last_signed(self) -> SignState | None:
        """The sign state last persisted (or restored)."""
        return self._last_signed

    @property
    def buffered(self) -> int:
        """Number of next-height messages waiting for StartHeight."""
        return len(self._buffer)

    def take_buffered(self) -> list[Event]:
        """The next-height messages waiting for StartHeight, handed over to the core that replaces
        this one for that height (a runtime that starts the height with another signer)."""
        buffered, self._buffer = self._buffer, []
        self._buffered_per_sender = {}
        return buffered

    # --- entry points -------------------------------------------------------------------------------

    def start(self) -> list[Action]:
        """StartRound of the current height (round 0, or the restored round). Idempotent."""
        self._out = []
        self.dropped = None
        if not self._started:
            self._start()
            self._check_rules()
        return self._take()

    def step(self, event: Event) -> list[Action]:
        """Feed one event; returns the actions to carry out in order."""
        self._out = []
        self.dropped = None
        if not self._started and not isinstance(event, StartHeight):
            self._start()
            self._check_rules()
        match event:
            case ProposalReceived(proposal=proposal):
                if self._on_proposal(proposal):
                    self._check_rules()
            case VoteReceived(vote=vote):
                if self._on_vote(vote):
                    self._check_rules()
            case TimeoutFired(height=h, round=r, step=s):
                self._on_timeout(h, r, s)
                self._check_rules()
            case CommitReceived(certificate=cert, block=block):
                self._on_commit(cert, block)
            case StartHeight(height=h, validators=vs):
                self._on_start_height(h, vs, event)
        return self._take()

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _drop(self, reason: DropReason, detail: str = "") -> bool:
        self.dropped = Dropped(reason, detail)
        return False

    # --- starting -----------------------------------------------------------------------------------

    def _start(self) -> None:
        self._started = True
        restored = self._last_signed
        if (
            restored is not None
            and restored.height == self._height
            and restored.step is not Step.PROPOSE
            and self._is_member()
        ):
            # Resume after a restart inside the round where we last signed a vote: do not re-enter
            # propose; count and re-send our own vote (same signature: not a new signature).
            self._step = restored.step
            vote_type = VoteType.PREVOTE if restored.step is Step.PREVOTE else VoteType.PRECOMMIT
            vote = Vote(
                vote_type, self._height, restored.round, restored.block_id, self.address, restored.signature
            )
            self._emit(Broadcast(vote))
            self._add_vote(vote)
            return
        # Otherwise start the round. If we signed a proposal in it before the restart, the application
        # is asked for the block again: the same block gets the stored signature back and the same
        # proposal goes out (it may never have left); any other block is refused by _authorize (never
        # a second proposal), and the round waits for the proposal from the WAL or times out.
        self._start_round(self._round)

    def _on_start_height(self, height: Height, validators: ValidatorSet, event: StartHeight) -> None:
        if height <= self._height:
            raise InvalidEvent("StartHeight must move to a higher height", event)
        if self._decided is not None and height == self._height + 1:
            self._last_commit = self._decided.certificate
        else:
            self._last_commit = None
        self._prev_votes = self._votes if height == self._height + 1 else None
        self._evidence_seen = {k for k in self._evidence_seen if k[1] == height - 1}
        self._height = height
        self._validators = validators
        self._reset_height()
        self._started = True
        buffered, self._buffer = self._buffer, []
        self._buffered_per_sender = {}
        self._start_round(0)
        self._check_rules()
        for ev in buffered:
            if isinstance(ev, ProposalReceived):
                if ev.proposal.height == height and self._on_proposal(ev.proposal):
                    self._check_rules()
            elif isinstance(ev, VoteReceived) and ev.vote.height == height and self._on_vote(ev.vote):
                self._check_rules()
        self.dropped = None

    def _start_round(self, round_: Round) -> None:
        """Rule 1: StartRound(round)."""
        self._round = round_
        self._step = Step.PROPOSE
        self._learn_valid()
        proposer = self._validators.proposer(self._height, round_)
        if proposer.address == self.address and self._is_member():
            if self._valid_id is not None and self._valid_block is not None:
                block_id, block, pol_round = self._valid_id, self._valid_block, self._valid_round
            else:
                block_id, block = self._app.propose_block(self._height, round_)
                pol_round = NO_ROUND
            unsigned = Proposal(self._height, round_, pol_round, block_id, block, self.address)
            signature = self._authorize(
                Step.PROPOSE, block_id, block, lambda: self._signer.sign_proposal(unsigned)
            )
            if signature is not None:
                proposal = Proposal(self._height, round_, pol_round, block_id, block, self.address, signature)
                self._emit(Broadcast(proposal))
                self._on_proposal(proposal)
        self._schedule(Step.PROPOSE)

    # --- input handling -----------------------------------------------------------------------------

    def _buffer_next_height(self, event: Event, sender: Address) -> bool:
        n = self._buffered_per_sender.get(sender, 0)
        if n >= BUFFER_PER_SENDER:
            return self._drop(DropReason.BUFFER_FULL, sender.hex())
        self._buffered_per_sender[sender] = n + 1
        self._buffer.append(event)
        return False

    def _check_window(self, height: Height, round_: Round, sender: Address, event: Event) -> bool:
        """Common admission checks; False (and `dropped` set) if the message must not be used now."""
        if height < self._height:
            return self._drop(DropReason.STALE_HEIGHT, f"{height} < {self._height}")
        if height > self._height + 1:
            return self._drop(DropReason.FUTURE_HEIGHT, f"{height} > {self._height + 1}")
        if round_ < 0:
            return self._drop(DropReason.BAD_VOTE, f"negative round {round_}")
        if height == self._height + 1:
            # Membership of the next set is unknown until StartHeight; it is checked on replay.
            return self._buffer_next_height(event, sender)
        if sender not in self._validators:
            return self._drop(DropReason.NOT_A_VALIDATOR, sender.hex())
        if self._decided is not None:
            return self._drop(DropReason.ALREADY_DECIDED)
        if round_ > self._round + ROUND_WINDOW:
            return self._drop(DropReason.ROUND_TOO_FAR, f"{round_} > {self._round} + {ROUND_WINDOW}")
        return True

    def _on_proposal(self, proposal: Proposal) -> bool:
        if not self._check_window(
            proposal.height, proposal.round, proposal.proposer, ProposalReceived(proposal)
        ):
            return False
        expected = self._validators.proposer(proposal.height, proposal.round).address
        if proposal.proposer != expected:
            return self._drop(DropReason.WRONG_PROPOSER, f"{proposal.proposer.hex()} != {expected.hex()}")
        if not NO_ROUND <= proposal.pol_round < proposal.round:
            return self._drop(
                DropReason.BAD_POL_ROUND, f"pol_round {proposal.pol_round}, round {proposal.round}"
            )
        in_round = self._proposals.get(proposal.round)
        if in_round is None:
            in_round = self._proposals[proposal.round] = {}
        if proposal.block_id in in_round:
            return self._drop(DropReason.DUPLICATE)
        if len(in_round) >= MAX_PROPOSALS_PER_ROUND:
            return self._drop(DropReason.TOO_MANY_PROPOSALS)
        in_round[proposal.block_id] = proposal
        self._blocks.setdefault(proposal.block_id, proposal.block)
        self._votes.note_sender(proposal.round, proposal.proposer)
        return True

    def _on_vote(self, vote: Vote) -> bool:
        if vote.type not in (VoteType.PREVOTE, VoteType.PRECOMMIT):
            return self._drop(DropReason.BAD_VOTE, f"type {vote.type!r}")
        if type(vote.type) is not VoteType:  # a plain int from a decoder: normalise once
            vote = replace(vote, type=VoteType(vote.type))
        if vote.height == self._height - 1 and self._prev_votes is not None:
            # Late votes of the previous height still reveal equivocation.
            if vote.validator in self._prev_votes.validators:
                self._add_vote(vote, self._prev_votes)
            return self._drop(DropReason.STALE_HEIGHT, f"{vote.height} < {self._height}")
        if self._decided is not None and vote.height == self._height and vote.validator in self._validators:
            self._add_vote(vote)
            return self._drop(DropReason.ALREADY_DECIDED)
        if not self._check_window(vote.height, vote.round, vote.validator, VoteReceived(vote)):
            return False
        return self._add_vote(vote)

    def _add_vote(self, vote: Vote, tally: HeightVotes | None = None) -> bool:
        votes = self._votes if tally is None else tally
        result, earlier = votes.add(vote)
        if result is AddResult.DUPLICATE:
            return self._drop(DropReason.DUPLICATE)
        if result is AddResult.TOO_MANY:
            return self._drop(DropReason.TOO_MANY_VOTES, vote.validator.hex())
        if result is AddResult.CONFLICT:
            assert earlier is not None
            key = (vote.validator, vote.height, vote.round, vote.type, earlier.block_id, vote.block_id)
            if key not in self._evidence_seen:
                self._evidence_seen.add(key)
                evidence = DuplicateVoteEvidence(earlier, vote)
                self._emit(RecordEvidence(evidence))
                self._emit(Broadcast(evidence))
        # Rounds where a value reached 2f+1: prevotes (a proof of lock, _learn_valid) or precommits
        # (a decision, _try_decide).
        if (
            tally is None
            and vote.block_id is not None
            and self._has_quorum(self._votes.get(vote.round, vote.type).power_for(vote.block_id))
        ):
            rounds = self._polka_rounds if vote.type is VoteType.PREVOTE else self._commit_rounds
            rounds.add(vote.round)
        return tally is None

    def _on_timeout(self, height: Height, round_: Round, step: Step) -> None:
        """Rule 10: a timeout acts only if (height, round, step) is unchanged."""
        step = Step(step)
        if height != self._height or round_ != self._round or self._decided is not None:
            self._drop(DropReason.STALE_TIMEOUT, f"({height}, {round_}, {step.name})")
            return
        if step is Step.PROPOSE and self._step is Step.PROPOSE:
            self._enter_prevote(None)
        elif step is Step.PREVOTE and self._step is Step.PREVOTE:
            self._enter_precommit(None)
        elif step is Step.PRECOMMIT:
            self._start_round(round_ + 1)
        else:
            self._drop(DropReason.STALE_TIMEOUT, f"({height}, {round_}, {step.name}) in {self._step.name}")

    def _on_commit(self, cert: CommitCertificate, block: object) -> None:
        """Catch-up: a verified certificate for the current height decides it."""
        if self._decided is not None:
            self._drop(DropReason.ALREADY_DECIDED)
            return
        if cert.height != self._height:
            self._drop(DropReason.BAD_CERTIFICATE, f"height {cert.height} != {self._height}")
            return
        seen: set[Address] = set()
        power: Power = 0
        for address, _sig in cert.signatures:
            if address in seen or address not in self._validators:
                self._drop(DropReason.BAD_CERTIFICATE, f"duplicate or unknown signer {address.hex()}")
                return
            seen.add(address)
            power += self._validators.power_of(address)
        if not self._has_quorum(power):
            self._drop(DropReason.BAD_CERTIFICATE, f"power {power} of {self._validators.total_power}")
            return
        if not self._is_valid(cert.block_id, block):
            self._drop(DropReason.BAD_CERTIFICATE, "block does not validate")
            return
        self._decided = Decide(self._height, cert.round, cert.block_id, block, cert)
        self._emit(self._decided)

    # --- the rules ----------------------------------------------------------------------------------

    def _check_rules(self) -> None:
        """Re-evaluate every upon-rule until none fires."""
        while self._decided is None:
            if self._try_decide():
                return
            if self._try_round_skip():
                continue
            self._learn_valid()
            if self._try_current_round():
                continue
            return

    def _try_decide(self) -> bool:
        """Rule 8: a proposal for v and 2f+1 precommits for id(v) in any round decide v."""
        for r in sorted(self._commit_rounds):
            precommits = self._votes.precommits(r)
            for block_id, power in precommits.power_by_block.items():
                if block_id is None or not self._has_quorum(power):
                    continue
                block = self._blocks.get(block_id)
                if block is None or not self._is_valid(block_id, block):
                    continue
                signatures = tuple((v.validator, v.signature) for v in precommits.votes_for(block_id))
                cert = CommitCertificate(self._height, r, block_id, signatures)
                self._decided = Decide(self._height, r, block_id, block, cert)
                self._emit(self._decided)
                return True
        return False

    def _try_round_skip(self) -> bool:
        """Rule 9: f+1 of the power sent messages of a higher round: move to that round."""
        best: Round | None = None
        for r, power in self._votes.sender_power.items():
            if r > self._round and self._validators.has_one_third(power) and (best is None or r > best):
                best = r
        if best is None:
            return False
        self._start_round(best)
        return True

    def _learn_valid(self) -> None:
        """validValue from an earlier round: 2f+1 prevotes for v in a round above validRound, and v
        known (from any round's proposal) and valid. Rule 5 learns it only in the round of the
        prevotes, with that round's proposal; a validator that saw them later (relayed) or got the
        block from a re-proposal would otherwise propose a fresh block that every validator locked
        on v refuses, and the height waits for a locked proposer. Safe: a proposal of v with
        polRound r is checked by its receivers against the prevotes themselves."""
        best: tuple[Round, BlockId, object] | None = None
        for r in self._polka_rounds:
            if not self._valid_round < r < self._round or (best is not None and r <= best[0]):
                continue
            for block_id, power in self._votes.prevotes(r).power_by_block.items():
                if block_id is None or not self._has_quorum(power):
                    continue
                block = self._blocks.get(block_id)
                if block is not None and self._is_valid(block_id, block):
                    best = (r, block_id, block)
        if best is not None:
            self._valid_round, self._valid_id, self._valid_block = best

    def _try_current_round(self) -> bool:
        """Rules 2-7 for the current round; True if one changed the step or round."""
        r = self._round
        proposals = self._proposals.get(r, {})
        prevotes = self._votes.prevotes(r)
        if self._step is Step.PROPOSE:
            for p in proposals.values():
                if p.pol_round == NO_ROUND:
                    # Rule 2.
                    ok = self._is_valid(p.block_id, p.block) and (
                        self._locked_round == NO_ROUND or self._locked_id == p.block_id
                    )
                    self._enter_prevote(p.block_id if ok else None, p.block)
                    return True
                if 0 <= p.pol_round < r and self._has_quorum(
                    self._votes.prevotes(p.pol_round).power_for(p.block_id)
                ):
                    # Rule 3.
                    ok = self._is_valid(p.block_id, p.block) and (
                        self._locked_round <= p.pol_round or self._locked_id == p.block_id
                    )
                    self._enter_prevote(p.block_id if ok else None, p.block)
                    return True
        if (
            self._step is Step.PREVOTE
            and r not in self._prevote_timeout_set
            and self._has_quorum(prevotes.total)
        ):
            # Rule 4.
            self._prevote_timeout_set.add(r)
            self._schedule(Step.PREVOTE)
        if self._step >= Step.PREVOTE and r not in self._polka_seen:
            for block_id, power in prevotes.power_by_block.items():
                if block_id is None or block_id not in proposals or not self._has_quorum(power):
                    continue
                p = proposals[block_id]
                if not self._is_valid(block_id, p.block):
                    continue
                # Rule 5.
                self._polka_seen.add(r)
                self._valid_round, self._valid_id, self._valid_block = r, block_id, p.block
                if self._step is Step.PREVOTE:
                    self._lock(r, block_id, p.block)
                    self._enter_precommit(block_id, p.block)
                return True
        if self._step is Step.PREVOTE and self._has_quorum(prevotes.power_for(None)):
            # Rule 6.
            self._enter_precommit(None)
            return True
        if r not in self._precommit_timeout_set and self._has_quorum(self._votes.precommits(r).total):
            # Rule 7.
            self._precommit_timeout_set.add(r)
            self._schedule(Step.PRECOMMIT)
        return False

    # --- steps --------------------------------------------------------------------------------------

    def _enter_prevote(self, block_id: BlockId | None, block: object | None = None) -> None:
        self._step = Step.PREVOTE
        self._sign_vote(VoteType.PREVOTE, block_id, block)

    def _enter_precommit(self, block_id: BlockId | None, block: object | None = None) -> None:
        self._step = Step.PRECOMMIT
        self._sign_vote(VoteType.PRECOMMIT, block_id, block)

    def _sign_vote(self, vote_type: VoteType, block_id: BlockId | None, block: object | None) -> None:
        if not self._is_member():
            return  # an observer, or a node whose key is not in this height's set, only follows
        unsigned = Vote(vote_type, self._height, self._round, block_id, self.address)
        signature = self._authorize(
            step_of(vote_type), block_id, block, lambda: self._signer.sign_vote(unsigned)
        )
        if signature is None:
            return
        vote = Vote(vote_type, self._height, self._round, block_id, self.address, signature)
        self._emit(Broadcast(vote))
        self._add_vote(vote)

    def _authorize(
        self, step: Step, block_id: BlockId | None, block: object | None, sign: Callable[[], bytes]
    ) -> bytes | None:
        """The signature for a message at (height, round, step), persisted first; None if it would
        conflict with the last signed state (after a restart)."""
        position = (self._height, self._round, step)
        last = self._last_signed
        if last is not None:
            if position < last.position():
                return None
            if position == last.position():
                return last.signature if last.block_id == block_id else None
        signature = sign()
        state = self._sign_state(step, block_id, signature)
        self._last_signed = state
        self._emit(Persist(state, block))
        return signature

    # --- hooks (overridden only by the simulator's deliberately broken variants) ---------------------

    def _has_quorum(self, power: Power) -> bool:
        """ "2f+1" of the current validator set."""
        return self._validators.has_quorum(power)

    def _lock(self, round_: Round, block_id: BlockId, block: object) -> None:
        """lockedValue <- v; lockedRound <- round (rule 5)."""
        self._locked_round, self._locked_id, self._locked_block = round_, block_id, block

    def _sign_state(self, step: Step, block_id: BlockId | None, signature: bytes) -> SignState:
        """The state persisted before a signature at the current (height, round, step) leaves."""
        return SignState(
            height=self._height,
            round=self._round,
            step=step,
            block_id=block_id,
            signature=signature,
            locked_round=self._locked_round,
            locked_block_id=self._locked_id,
            valid_round=self._valid_round,
            valid_block_id=self._valid_id,
        )

    # --- helpers ------------------------------------------------------------------------------------

    def _is_member(self) -> bool:
        """Whether this node signs at this height: only a member of the height's validator set does.
        Anyone else (an observer, a validator removed from the set) follows the steps and decides
        from others' votes without a message of its own: its votes would only be dropped by every
        peer as a non-member's, and counted against it."""
        return self.address in self._validators

    def _is_valid(self, block_id: BlockId, block: object) -> bool:
        """valid(v), with only a "yes" remembered: a "no" may change. A block from this node's
        future is refused until its clock reaches the block's time, and a refusal kept for the
        height left a validator (node simulation, 4 validators, seed 100055) refusing for ever the
        block its peers were locked on, and the height with it. The application remembers its own
        final refusals, so asking again costs a lookup."""
        if block_id in self._valid_cache:
            return True
        if not self._app.validate_block(self._height, block_id, block):
            return False
        self._valid_cache.add(block_id)
        return True

    def _schedule(self, step: Step) -> None:
        delay = self._timeouts.for_step(step, self._round)
        self._emit(ScheduleTimeout(self._height, self._round, step, delay))

    def _emit(self, action: Action) -> None:
        self._out.append(action)
