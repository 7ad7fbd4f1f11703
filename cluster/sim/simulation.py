"""The deterministic simulator: N validators, one process, a seeded virtual network, virtual time.

Time is a virtual millisecond clock driven by a heap of events (deliveries, timeouts, crashes,
restarts), so nothing waits. Each node runs the real `node.consensus.Tendermint` (or a mutant
subclass) behind a small runtime that carries out its actions as the real runtime would: `Persist`
is kept across crashes, `Decide` appends to the node's durable chain and is followed by
`StartHeight`, `ScheduleTimeout` pushes a timer, `Broadcast` goes through the network.

Network model (partial synchrony): before GST links may lose, duplicate, delay (reorder) and be
partitioned (also one way); after GST every link between up nodes delivers within DELTA_MS. Gossip
is modelled by its guarantee: a message one honest node received is relayed to every node that has
not had it, arriving by max(now, GST) + DELTA_MS, and a restarted node is re-sent the messages of the
heights it is working on. Byzantine validators run an honest core whose output a strategy rewrites
(see scenario.STRATEGIES); Twins are two honest copies sharing a key.

Everything random comes from one `random.Random(seed)`; same seed, same run.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from cluster.sim.app import EvidenceKey, FakeSigner, SimApp, SimBlock, evidence_key, is_valid_block
from cluster.sim.mutants import Mutant
from cluster.sim.scenario import DELTA_MS, STRATEGIES, Crash, Scenario, make_scenario
from node.consensus import (
    Action,
    Address,
    BlockId,
    Broadcast,
    CommitCertificate,
    CommitReceived,
    Decide,
    DuplicateVoteEvidence,
    Height,
    Persist,
    Proposal,
    ProposalReceived,
    RecordEvidence,
    Round,
    ScheduleTimeout,
    SignState,
    StartHeight,
    Step,
    Tendermint,
    TimeoutConfig,
    TimeoutFired,
    Validator,
    ValidatorSchedule,
    ValidatorSet,
    Vote,
    VoteReceived,
    VoteType,
)

TIMEOUTS = TimeoutConfig(
    propose_ms=300,
    propose_delta_ms=100,
    prevote_ms=150,
    prevote_delta_ms=75,
    precommit_ms=150,
    precommit_delta_ms=75,
)
HEIGHT_BUDGET_MS = 15_000
"""Liveness: every height must be decided within this much virtual time after GST."""
LIVENESS_HONEST_ROUNDS = 2
"""Liveness: after GST a height may fail at most this many rounds with an honest proposer."""
MAX_EXTENSIONS = 3
"""Times the last height is pushed back while late evidence waits for a block."""

_DELIVER, _TIMER, _CRASH, _RESTART, _EVIDENCE, _SYNC = range(6)

Message = Proposal | Vote


@dataclass(frozen=True, slots=True)
class Violation:
    """A property the run broke."""

    seed: int
    description: str


@dataclass(slots=True)
class Node:
    """One simulated validator process (a Twin is a second Node with the same address)."""

    index: int
    validator: int
    address: Address
    strategy: str | None
    app: SimApp
    core: Tendermint | None = None
    up: bool = True
    incarnation: int = 0
    persisted: SignState | None = None
    blocks: dict[BlockId, object] = field(default_factory=dict)
    future: dict[Height, list[Message]] = field(default_factory=dict)
    last_commit: CommitCertificate | None = None
    start_times: dict[Height, int] = field(default_factory=dict)
    twin: bool = False
    delivered: dict[EvidenceKey, BlockId | None] = field(default_factory=dict)
    """First vote delivered per (validator, height, round, type) since the last restart."""

    @property
    def honest(self) -> bool:
        return self.strategy is None


@dataclass(slots=True)
class Result:
    """What one seed's run produced."""

    seed: int
    heights_decided: int
    max_round: int
    violations: list[Violation]
    deliveries: int
    end_time: int


class Simulation:
    """One seed's run."""

    def __init__(
        self,
        seed: int,
        validators: int,
        byzantine: int,
        heights: int,
        mutant: Mutant | None = None,
        strategies: Sequence[str] | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.n = validators
        self.f = byzantine
        self.heights = heights
        self.mutant = mutant
        chosen = STRATEGIES if strategies is None else tuple(strategies)
        self.sc: Scenario = make_scenario(seed, validators, byzantine, self.rng, chosen)
        self.addresses = [bytes([i + 1]) * 20 for i in range(validators)]
        self.valset = ValidatorSet(
            [Validator(self.addresses[i], bytes([i + 1]) * 32, self.sc.powers[i]) for i in range(validators)]
        )
        self.byz_addresses = {self.addresses[i] for i in self.sc.strategies}
        self.schedule = ValidatorSchedule(self.valset)
        self.power_change: tuple[Height, ValidatorSet] | None = None
        self._draw_power_change(seed)
        self.tail = 2 + byzantine
        self.last_height = heights + self.tail
        """The last height to decide: fixed at GST to max(heights, heights decided by then) + tail."""
        self.target_fixed = False
        self.extensions = 0
        self.now = 0
        self.seq = 0
        self.heap: list[tuple[int, int, int, int, object]] = []
        self.nodes: list[Node] = []
        self.known: dict[object, set[int]] = {}
        self.log: dict[Height, list[Message]] = {}
        self.deliveries = 0
        # Records for the checkers.
        self.decisions: dict[Height, dict[int, tuple[BlockId, Round, SimBlock]]] = {}
        self.proposed: set[BlockId] = set()
        self.signed: dict[tuple[Address, Height, Round, Step], BlockId | None] = {}
        self.violations: list[Violation] = []
        self.observed_equivocations: dict[EvidenceKey, int] = {}
        self.certificates: dict[Height, tuple[CommitCertificate, SimBlock]] = {}
        self.relayed: set[object] = set()
        self.splits: dict[tuple[Height, Round], tuple[Proposal, Proposal, frozenset[int]]] = {}
        self.twin_groups: dict[int, frozenset[int]] = {}
        self.round_proposal: dict[tuple[Height, Round], BlockId] = {}
        self.attacked: dict[Height, BlockId] = {}
        self.attack_part: dict[tuple[Height, Round], frozenset[int]] = {}
        self.stalled = False
        self._build_nodes()

    # --- setup ------------------------------------------------------------------------------------------

    def _draw_power_change(self, seed: int) -> None:
        """Sometimes a block changes the voting powers (a governance change): effective at H + 2.

        Drawn from its own generator so the rest of the seed's schedule is unchanged by it."""
        rng = random.Random(f"clearline-sim/valset-change/{seed}")
        if rng.random() >= 0.3:
            return
        at = rng.randint(1, self.heights)
        powers = [rng.randint(1, 4) for _ in range(self.n)]
        honest = [i for i in range(self.n) if i not in self.sc.strategies]
        while 3 * sum(powers[i] for i in self.sc.strategies) >= sum(powers):
            powers[rng.choice(honest)] += 1
        new_set = ValidatorSet(
            [Validator(v.address, v.public_key, powers[i]) for i, v in enumerate(self.valset)]
        )
        self.schedule.record_change(at, new_set)
        self.power_change = (at, new_set)

    def _core_class(self, node: Node) -> type[Tendermint]:
        if self.mutant is not None and node.honest:
            return self.mutant.core
        return Tendermint

    def _build_nodes(self) -> None:
        for i in range(self.n):
            strategy = self.sc.strategies.get(i)
            self.nodes.append(Node(i, i, self.addresses[i], strategy, SimApp(self.addresses[i], self.valset)))
        everyone = [i for i in range(self.n) if i not in self.sc.strategies]
        for i, strategy in sorted(self.sc.strategies.items()):
            if strategy == "twins":
                twin = Node(
                    len(self.nodes), i, self.addresses[i], strategy, SimApp(self.addresses[i], self.valset)
                )
                twin.twin = True
                self.nodes.append(twin)
                group = frozenset(self.rng.sample(everyone, len(everyone) // 2))
                self.twin_groups[i] = group
                self.twin_groups[twin.index] = frozenset(everyone) - group
            if strategy == "amnesia" and self.sc.gst > 0:
                for _ in range(self.rng.randint(1, 3)):
                    at = self.rng.randint(0, self.sc.gst)
                    self.sc.crashes.append(Crash(i, at, min(self.sc.gst, at + self.rng.randint(0, 500))))
        for crash in self.sc.crashes:
            self._push(crash.at, _CRASH, crash.node, None)
            self._push(crash.restart_at, _RESTART, crash.node, None)
        for node in self.nodes:
            self._boot(node, restored=None)

    def _boot(self, node: Node, restored: SignState | None) -> None:
        height = len(node.app.chain) + 1
        locked = valid = None
        if restored is not None:
            locked = node.blocks.get(restored.locked_block_id) if restored.locked_block_id else None
            valid = node.blocks.get(restored.valid_block_id) if restored.valid_block_id else None
        app = _TwinApp(node.app) if node.twin else node.app
        node.core = self._core_class(node)(
            validators=self.schedule.validators_for(height),
            signer=FakeSigner(node.address),
            app=app,
            timeouts=TIMEOUTS,
            height=height,
            restored=restored,
            locked_block=locked,
            valid_block=valid,
            last_commit=node.last_commit,
        )
        node.start_times.setdefault(height, self.now)
        self._execute(node, node.core.start())
        if node.up and node.core is not None:
            self._catch_up(node)

    # --- event loop -------------------------------------------------------------------------------------

    def _push(self, at: int, kind: int, node: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (at, self.seq, kind, node, payload))

    def run(self) -> Result:
        while self.heap:
            if self._all_done():
                break
            at, _seq, kind, idx, payload = heapq.heappop(self.heap)
            if at > self.sc.gst + HEIGHT_BUDGET_MS * (self.heights + self.tail * (1 + self.extensions)):
                self.stalled = True
                break
            self.now = at
            if not self.target_fixed and at >= self.sc.gst:
                self._fix_target()
            node = self.nodes[idx]
            if kind == _DELIVER:
                self._deliver(node, payload)  # type: ignore[arg-type]
            elif kind == _TIMER:
                assert isinstance(payload, _Timer)
                if node.up and payload.incarnation == node.incarnation and node.core is not None:
                    self._execute(node, node.core.step(payload.event))
            elif kind == _CRASH:
                self._crash(node)
            elif kind == _RESTART:
                self._restart(node)
            elif kind == _EVIDENCE:
                node.app.add_evidence(payload)  # type: ignore[arg-type]
            elif kind == _SYNC:
                self._sync(node)
        if not self.heap and not self._all_done():
            self.stalled = True
        return self._check()

    def _fix_target(self) -> None:
        self.target_fixed = True
        reached = max((len(n.app.chain) for n in self.nodes if n.honest), default=0)
        self.last_height = max(self.heights, reached) + self.tail

    def _all_done(self) -> bool:
        if not self.target_fixed:
            return False
        if not all(len(n.app.chain) >= self.last_height for n in self.nodes if n.honest):
            return False
        if self.extensions < MAX_EXTENSIONS and self._evidence_pending():
            # Evidence found late is still in the pools: give the proposers more heights.
            self.extensions += 1
            self.last_height += self.tail
            for node in self.nodes:
                if node.up and node.core is not None and node.core.decision is not None:
                    self._start_next(node, node.core.decision.height + 1)
            return False
        return True

    def _evidence_pending(self) -> bool:
        return any(
            k[1] <= self.heights and k not in n.app.committed_evidence
            for n in self.nodes
            if n.honest
            for k in n.app.pending_evidence
        )

    # --- node runtime -----------------------------------------------------------------------------------

    def _execute(self, node: Node, actions: list[Action]) -> None:
        core = node.core
        assert core is not None
        for action in actions:
            if not node.up or node.core is not core:
                return
            if isinstance(action, Persist):
                node.persisted = action.sign_state
                if action.block is not None and action.sign_state.block_id is not None:
                    node.blocks[action.sign_state.block_id] = action.block
                st = action.sign_state
                p_crash = self.sc.crash_after_persist
                if st.step is Step.PRECOMMIT and st.block_id is not None:
                    p_crash = max(p_crash, self.sc.crash_after_lock)
                if node.honest and self.now < self.sc.gst and p_crash and self.rng.random() < p_crash:
                    # Crash between the durable Persist and the Broadcast it protects.
                    self._crash(node)
                    self._push(
                        min(self.sc.gst, self.now + self.rng.randint(0, 800)), _RESTART, node.index, None
                    )
                    return
            elif isinstance(action, Broadcast):
                msg = action.message
                if isinstance(msg, DuplicateVoteEvidence):
                    self._gossip_evidence(node, msg)
                else:
                    self._send_own(node, msg)
            elif isinstance(action, ScheduleTimeout):
                ev = TimeoutFired(action.height, action.round, action.step)
                self._push(self.now + action.delay_ms, _TIMER, node.index, _Timer(node.incarnation, ev))
            elif isinstance(action, Decide):
                self._on_decide(node, action)
            elif isinstance(action, RecordEvidence):
                node.app.add_evidence(action.evidence)

    def _on_decide(self, node: Node, d: Decide) -> None:
        block = d.block
        assert isinstance(block, SimBlock)
        node.app.commit(block)
        node.last_commit = d.certificate
        if node.honest or node.strategy == "twins":
            self.decisions.setdefault(d.height, {})[node.index] = (d.block_id, d.round, block)
        if node.honest:
            self.certificates.setdefault(d.height, (d.certificate, block))
        if d.height >= self.last_height and self.target_fixed:
            return
        self._start_next(node, d.height + 1)

    def _start_next(self, node: Node, h: Height) -> None:
        core = node.core
        assert core is not None
        node.start_times.setdefault(h, self.now)
        self._execute(node, core.step(StartHeight(h, self.schedule.validators_for(h))))
        if node.core is core and node.up:
            for msg in node.future.pop(h, []):
                if node.core is not core or not node.up:
                    return
                self._feed(node, msg)
            if node.core is core and node.up:
                self._catch_up(node)

    def _catch_up(self, node: Node) -> None:
        """Block sync: if some honest node already decided this node's height, fetch it."""
        if node.core is None:
            return
        h = node.core.height
        if h in self.certificates and node.core.decision is None:
            self._push(self.now + self.rng.randint(1, DELTA_MS), _SYNC, node.index, None)

    def _sync(self, node: Node) -> None:
        if not node.up or node.core is None or node.core.decision is not None:
            return
        got = self.certificates.get(node.core.height)
        if got is not None:
            self._execute(node, node.core.step(CommitReceived(got[0], got[1])))

    def _crash(self, node: Node) -> None:
        if not node.up:
            return
        node.up = False
        node.core = None
        node.incarnation += 1
        node.future.clear()
        node.delivered.clear()

    def _restart(self, node: Node) -> None:
        if node.up:
            return
        node.up = True
        forget = node.strategy == "amnesia" or (
            self.mutant is not None and self.mutant.forget_sign_state and node.honest
        )
        self._boot(node, restored=None if forget else node.persisted)
        if node.core is None:
            return
        # Gossip catch-up: peers re-send what they have for the heights this node works on.
        h = node.core.height
        for height in sorted(k for k in self.log if k >= h):
            for msg in self.log[height]:
                if self.now < self.sc.gst and self.rng.random() < self.sc.loss:
                    at = self.sc.gst + self._latency_after_gst()
                else:
                    at = self.now + self._latency()
                self._schedule_delivery(node.index, msg, at)

    # --- network ----------------------------------------------------------------------------------------

    def _latency(self) -> int:
        if self.now >= self.sc.gst:
            return self._latency_after_gst()
        lat = self.rng.randint(1, DELTA_MS)
        if self.rng.random() < self.sc.slow_fraction:
            lat += self.rng.randint(0, self.sc.max_latency)
        return lat

    def _latency_after_gst(self) -> int:
        return self.rng.randint(1, DELTA_MS)

    def _link_cut(self, src: Node, dst: int) -> bool:
        if self.now >= self.sc.gst:
            return False
        group = self.twin_groups.get(src.index)
        if group is not None and dst not in group:
            return True
        group = self.twin_groups.get(dst)
        if group is not None and src.index not in group:
            return True
        return any(p.blocks(src.validator, self.nodes[dst].validator, self.now) for p in self.sc.partitions)

    def _send(self, src: Node, dst: int, msg: Message) -> None:
        if dst == src.index:
            return
        if self._link_cut(src, dst):
            return
        if self.now < self.sc.gst and self.rng.random() < self.sc.loss:
            return
        at = self.now + self._latency()
        self._schedule_delivery(dst, msg, at)
        if self.rng.random() < self.sc.duplication:
            self._push(at + self._latency(), _DELIVER, dst, msg)

    def _schedule_delivery(self, dst: int, msg: Message, at: int) -> None:
        self.known.setdefault(msg, set()).add(dst)
        self._push(at, _DELIVER, dst, msg)

    def _relay(self, msg: Message) -> None:
        """The gossip guarantee: a message an honest node has reaches every node by max(now, GST) + Δ."""
        if msg in self.relayed:
            return
        self.relayed.add(msg)
        self.log.setdefault(msg.height, []).append(msg)
        have = self.known.setdefault(msg, set())
        base = max(self.now, self.sc.gst)
        for other in self.nodes:
            if other.index not in have:
                have.add(other.index)
                self._push(base + self._latency_after_gst(), _DELIVER, other.index, msg)

    def _deliver(self, node: Node, msg: Message) -> None:
        self.deliveries += 1
        if not node.up or node.core is None:
            self.known.get(msg, set()).discard(node.index)
            return
        self._feed(node, msg)

    def _feed(self, node: Node, msg: Message) -> None:
        core = node.core
        assert core is not None
        if msg.height > core.height + 1:
            node.future.setdefault(msg.height, []).append(msg)
            return
        if isinstance(msg, Vote) and node.honest and core.height == msg.height:
            key = (msg.validator, msg.height, msg.round, msg.type)
            prev = node.delivered.get(key, _UNSET)
            if prev is _UNSET:
                node.delivered[key] = msg.block_id
            elif prev != msg.block_id and msg.height <= self.heights:
                self.observed_equivocations.setdefault(key, node.index)
        event = ProposalReceived(msg) if isinstance(msg, Proposal) else VoteReceived(msg)
        self._execute(node, core.step(event))
        if node.honest and msg.height >= core.height - 1:
            self._relay(msg)

    def _gossip_evidence(self, src: Node, evidence: DuplicateVoteEvidence) -> None:
        """Evidence travels like any message; what is lost before GST arrives by GST + Δ."""
        for other in self.nodes:
            if other.index == src.index:
                continue
            if self._link_cut(src, other.index) or (
                self.now < self.sc.gst and self.rng.random() < self.sc.loss
            ):
                at = max(self.now, self.sc.gst) + self._latency_after_gst()
            else:
                at = self.now + self._latency()
            self._push(at, _EVIDENCE, other.index, evidence)

    # --- own messages and Byzantine strategies ------------------------------------------------------------

    def _record_signature(self, node: Node, msg: Message) -> None:
        if isinstance(msg, Proposal):
            self.proposed.add(msg.block_id)
            self.round_proposal.setdefault((msg.height, msg.round), msg.block_id)
            key = (msg.proposer, msg.height, msg.round, Step.PROPOSE)
            block_id: BlockId | None = msg.block_id
        else:
            key = (
                msg.validator,
                msg.height,
                msg.round,
                Step.PREVOTE if msg.type is VoteType.PREVOTE else Step.PRECOMMIT,
            )
            block_id = msg.block_id
        if not node.honest:
            return
        earlier = self.signed.get(key, _UNSET)
        if earlier is _UNSET:
            self.signed[key] = block_id
        elif earlier != block_id:
            assert earlier is None or isinstance(earlier, bytes)
            what = f"{key[3].name} at height {key[1]} round {key[2]}: {_hex(earlier)} and {_hex(block_id)}"
            self.violations.append(
                Violation(self.seed, f"honest validator {node.index} signed conflicting {what}")
            )

    def _send_own(self, node: Node, msg: Message) -> None:
        strategy = node.strategy
        if strategy is not None and msg.height > self.heights and strategy not in ("silent", "twins"):
            strategy = None  # the tail heights are clean so evidence can be committed
        if strategy == "silent":
            return
        targets = [i for i in range(len(self.nodes)) if i != node.index]
        if strategy in (None, "twins", "amnesia"):
            self._record_signature(node, msg)
            for dst in targets:
                self._send(node, dst, msg)
            if node.honest:
                self._relay_own(node, msg)
            return
        for dst, out in self._byzantine(node, strategy, msg, targets):
            self._record_signature(node, out)
            self._send(node, dst, out)

    def _relay_own(self, node: Node, msg: Message) -> None:
        self.known.setdefault(msg, set()).add(node.index)
        self._relay(msg)

    def _byzantine(
        self, node: Node, strategy: str, msg: Message, targets: list[int]
    ) -> list[tuple[int, Message]]:
        rng = self.rng
        honest = [i for i in targets if self.nodes[i].honest]
        signer = FakeSigner(node.address)
        out: list[tuple[int, Message]] = []
        if strategy == "withhold":
            return [(d, msg) for d in targets if rng.random() < 0.5]
        if strategy == "invalid-proposal" and isinstance(msg, Proposal):
            bad = SimBlock.make(msg.height, msg.round, node.address, rng.randint(0, 1 << 30), invalid=True)
            p = Proposal(msg.height, msg.round, -1, bad.id, bad, node.address)
            p = Proposal(p.height, p.round, -1, bad.id, bad, node.address, signer.sign_proposal(p))
            return [(d, p) for d in targets]
        if strategy in ("equivocate", "double-vote", "invalid-proposal") and isinstance(msg, Proposal):
            if strategy != "equivocate":
                return [(d, msg) for d in targets]
            other = SimBlock.make(msg.height, msg.round, node.address, rng.randint(0, 1 << 30))
            q = Proposal(msg.height, msg.round, -1, other.id, other, node.address)
            q = Proposal(q.height, q.round, -1, other.id, other, node.address, signer.sign_proposal(q))
            group = (
                frozenset(rng.sample(honest, len(honest) // 2 + rng.randint(0, 1))) if honest else frozenset()
            )
            self.splits[(msg.height, msg.round)] = (msg, q, group)
            for d in targets:
                out.append((d, msg if d in group or not self.nodes[d].honest else q))
            # Other Byzantines learn both blocks (they collude).
            return out
        if strategy == "lock-breaker":
            return self._lock_breaker(node, msg, targets, honest, signer)
        if isinstance(msg, Proposal):
            return [(d, msg) for d in targets]
        vote = msg
        split = self.splits.get((vote.height, vote.round))
        if strategy == "equivocate" and split is not None and vote.block_id is not None:
            a, b, group = split
            va = _resign(signer, vote, a.block_id)
            vb = _resign(signer, vote, b.block_id)
            return [(d, va if d in group else vb) for d in targets]
        if strategy in ("equivocate", "double-vote"):
            alt_id = None if vote.block_id is not None else (split[1].block_id if split else b"\xee" * 16)
            alt = _resign(signer, vote, alt_id)
            half = frozenset(rng.sample(honest, len(honest) // 2)) if honest else frozenset()
            return [(d, alt if d in half else vote) for d in targets]
        if strategy == "other-rounds":
            out = [(d, vote) for d in targets]
            for dr in (rng.randint(1, 3), -rng.randint(1, 2)):
                r = vote.round + dr
                if r >= 0:
                    extra = Vote(vote.type, vote.height, r, rng.choice((None, vote.block_id)), node.address)
                    extra = _resign(signer, extra, extra.block_id)
                    out.extend((d, extra) for d in targets)
            return out
        return [(d, vote) for d in targets]

    def _lock_breaker(
        self, node: Node, msg: Message, targets: list[int], honest: list[int], signer: FakeSigner
    ) -> list[tuple[int, Message]]:
        """An adversary against locking. In the first round of a height where it votes for a block A,
        it prevotes A only to a random part of the honest nodes (nil to the rest) and precommits A to
        one of them: some nodes lock A, one may decide it, the others stay free. In later rounds of
        that height it votes nil on A and pushes any other block with everything, and proposes fresh
        blocks itself, hoping nodes that locked A switch (they must not)."""
        rng = self.rng
        key = (msg.height, msg.round)
        if isinstance(msg, Proposal):
            fresh = SimBlock.make(msg.height, msg.round, node.address, rng.randint(0, 1 << 30))
            p = Proposal(msg.height, msg.round, -1, fresh.id, fresh, node.address)
            p = Proposal(p.height, p.round, -1, fresh.id, fresh, node.address, signer.sign_proposal(p))
            self.round_proposal[key] = fresh.id
            if msg.height not in self.attacked and honest:
                part = self._attack_part(honest, msg.height)
                self.attacked[msg.height] = fresh.id
                self.attack_part[key] = part
                return [(d, p) for d in targets if d in part or not self.nodes[d].honest]
            return [(d, p) for d in targets]
        target = self.round_proposal.get(key, msg.block_id)
        if target is None or not honest:
            return [(d, msg) for d in targets]
        if msg.height not in self.attacked:
            self.attacked[msg.height] = target
            self.attack_part[key] = self._attack_part(honest, msg.height)
        yes, no = _resign(signer, msg, target), _resign(signer, msg, None)
        voters = self.attack_part.get(key)
        chosen: frozenset[int]
        if voters is not None:
            chosen = voters if msg.type is VoteType.PREVOTE else frozenset((rng.choice(sorted(voters)),))
        elif target == self.attacked[msg.height]:
            chosen = frozenset()
        else:
            chosen = frozenset(honest)
        return [(d, yes if d in chosen or not self.nodes[d].honest else no) for d in targets]

    def _attack_part(self, honest: list[int], height: Height) -> frozenset[int]:
        """A random set of honest nodes that, with the Byzantine power, just reaches a quorum."""
        vs = self.schedule.validators_for(height)
        need = vs.quorum - sum(vs.power_of(a) for a in self.byz_addresses)
        part: list[int] = []
        power = 0
        for i in self.rng.sample(honest, len(honest)):
            if power >= need and part:
                break
            part.append(i)
            power += vs.power_of(self.nodes[i].address)
        if len(part) == len(honest) and len(part) > 1:
            part.pop()
        return frozenset(part)

    # --- checkers -----------------------------------------------------------------------------------------

    def _check(self) -> Result:
        v = self.violations
        honest = [n for n in self.nodes if n.honest]
        max_round = 0
        committed_evidence: set[EvidenceKey] = set()
        decided_heights = 0
        for h in range(1, self.last_height + 1):
            ds = self.decisions.get(h, {})
            honest_ds = {i: d for i, d in ds.items() if self.nodes[i].honest}
            ids = sorted({d[0] for d in honest_ds.values()})
            if len(ids) > 1:
                v.append(
                    Violation(
                        self.seed, f"agreement: height {h} decided as {', '.join(x.hex()[:12] for x in ids)}"
                    )
                )
            if not honest_ds:
                continue
            decided_heights += 1
            block_id, _r, block = next(iter(honest_ds.values()))
            rounds = [d[1] for d in honest_ds.values()]
            max_round = max(max_round, min(rounds) + 1)
            if block_id not in self.proposed:
                v.append(
                    Violation(
                        self.seed, f"validity: height {h} decided {block_id.hex()[:12]} nobody proposed"
                    )
                )
            if not is_valid_block(block, h, block_id, self.valset, committed_evidence):
                v.append(
                    Violation(
                        self.seed, f"validity: height {h} decided an invalid block {block_id.hex()[:12]}"
                    )
                )
            committed_evidence.update(evidence_key(e) for e in block.evidence)
            self._check_liveness_rounds(h, honest, min(rounds))
        if self.stalled or not self._all_done():
            behind = {n.index: len(n.app.chain) for n in honest if len(n.app.chain) < self.last_height}
            what = f"{self.last_height} heights by t={self.now} ms (GST {self.sc.gst}); behind: {behind}"
            v.append(Violation(self.seed, f"liveness: not all honest nodes decided {what}"))
        else:
            for key, idx in sorted(self.observed_equivocations.items()):
                if key not in committed_evidence:
                    what = f"{key[0].hex()[:8]} at height {key[1]} round {key[2]} {key[3].name} (seen by node {idx})"
                    v.append(Violation(self.seed, f"evidence: equivocation of {what} never committed"))
        return Result(self.seed, decided_heights, max_round, v, self.deliveries, self.now)

    def _check_liveness_rounds(self, h: Height, honest: list[Node], decided_round: Round) -> None:
        starts = [n.start_times.get(h) for n in honest]
        if any(s is None or s < self.sc.gst for s in starts):
            return
        failed = [
            r
            for r in range(decided_round)
            if self.schedule.validators_for(h).proposer(h, r).address not in self.byz_addresses
        ]
        if len(failed) > LIVENESS_HONEST_ROUNDS:
            self.violations.append(
                Violation(
                    self.seed,
                    f"liveness: height {h} (started after GST) decided in round {decided_round}; "
                    f"rounds {failed} with an honest proposer failed",
                )
            )


class _Unset:
    pass


@dataclass(frozen=True, slots=True)
class _Timer:
    incarnation: int
    event: TimeoutFired


_UNSET: object = _Unset()


class _TwinApp:
    """The second Twin builds different blocks than the first (same key, different value)."""

    def __init__(self, app: SimApp) -> None:
        self._app = app

    def propose_block(self, height: Height, round: Round) -> tuple[BlockId, object]:
        block = SimBlock.make(height, round, self._app.address, payload=-(height * 1000 + round) - 1)
        return block.id, block

    def validate_block(self, height: Height, block_id: BlockId, block: object) -> bool:
        return self._app.validate_block(height, block_id, block)


def _resign(signer: FakeSigner, vote: Vote, block_id: BlockId | None) -> Vote:
    unsigned = Vote(vote.type, vote.height, vote.round, block_id, vote.validator)
    return Vote(vote.type, vote.height, vote.round, block_id, vote.validator, signer.sign_vote(unsigned))


def _hex(block_id: BlockId | None) -> str:
    return "nil" if block_id is None else block_id.hex()[:12]


def run_seed(
    seed: int,
    validators: int,
    byzantine: int,
    heights: int,
    mutant: Mutant | None = None,
    strategies: Sequence[str] | None = None,
) -> Result:
    """Run one seed and check it."""
    return Simulation(seed, validators, byzantine, heights, mutant, strategies).run()
