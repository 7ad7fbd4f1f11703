"""One seed's adversarial schedule: network faults, crashes and Byzantine strategies.

Everything is drawn from `random.Random(seed)` so a seed replays exactly. Faults happen before the
global stabilization time (GST); after it every link between up nodes delivers within `DELTA_MS`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

DELTA_MS = 50
"""Upper bound of message latency after GST."""

STRATEGIES = (
    "silent",  # withholds everything
    "equivocate",  # as proposer sends different blocks to different peers; coalition votes split
    "double-vote",  # every vote also has a conflicting twin sent to other peers
    "other-rounds",  # adds votes for higher and lower rounds
    "withhold",  # sends each message to a random subset only
    "amnesia",  # crashes and restarts without its persisted lock and last-signed state
    "twins",  # two honest copies sharing one key, placed in different partitions
    "invalid-proposal",  # proposes blocks every honest validator must reject
    "lock-breaker",  # proposes fresh blocks, prevotes every proposal, precommits to one peer only
)


@dataclass(frozen=True, slots=True)
class Partition:
    """Links from `side_a` to `side_b` are cut in [start, end); both ways unless `one_way`."""

    start: int
    end: int
    side_a: frozenset[int]
    side_b: frozenset[int]
    one_way: bool

    def blocks(self, src: int, dst: int, now: int) -> bool:
        """Whether a message src -> dst sent at `now` is cut."""
        if not self.start <= now < self.end:
            return False
        if src in self.side_a and dst in self.side_b:
            return True
        return not self.one_way and src in self.side_b and dst in self.side_a


@dataclass(frozen=True, slots=True)
class Crash:
    """Node `node` stops at `at` and restarts at `restart_at` (keeping only what it persisted)."""

    node: int
    at: int
    restart_at: int


@dataclass(slots=True)
class Scenario:
    """The faults of one seed."""

    seed: int
    gst: int
    loss: float
    duplication: float
    slow_fraction: float
    max_latency: int
    partitions: list[Partition] = field(default_factory=list)
    crashes: list[Crash] = field(default_factory=list)
    crash_after_persist: float = 0.0
    crash_after_lock: float = 0.0
    """Probability that an honest node crashes right after persisting a precommit for a block."""
    powers: list[int] = field(default_factory=list)
    strategies: dict[int, str] = field(default_factory=dict)
    """Validator index -> Byzantine strategy."""

    def describe(self) -> str:
        """A one-line summary for violation reports."""
        strat = ",".join(f"v{i}:{s}" for i, s in sorted(self.strategies.items()))
        return (
            f"gst={self.gst} loss={self.loss:.2f} dup={self.duplication:.2f} partitions={len(self.partitions)} "
            f"crashes={len(self.crashes)} powers={self.powers} byz=[{strat}]"
        )


def make_scenario(
    seed: int,
    validators: int,
    byzantine: int,
    rng: random.Random,
    strategies: tuple[str, ...] = STRATEGIES,
    crashes: bool = True,
) -> Scenario:
    """Draw the faults of one seed for `validators` validators, the last `byzantine` of them Byzantine."""
    gst = rng.choice((0, rng.randint(200, 1500), rng.randint(1500, 4000)))
    sc = Scenario(
        seed=seed,
        gst=gst,
        loss=rng.choice((0.0, rng.uniform(0.0, 0.15), rng.uniform(0.15, 0.4))),
        duplication=rng.uniform(0.0, 0.1),
        slow_fraction=rng.uniform(0.0, 0.3),
        max_latency=rng.choice((100, 400, 1500)),
        crash_after_persist=rng.choice((0.0, 0.0, 0.02, 0.08)) if crashes else 0.0,
        crash_after_lock=rng.choice((0.0, 0.0, 0.3)) if crashes else 0.0,
    )
    honest = list(range(validators - byzantine))
    # Powers: mostly equal; sometimes weighted with the Byzantine power kept below 1/3.
    if rng.random() < 0.3:
        powers = [rng.randint(1, 4) for _ in range(validators)]
        while 3 * sum(powers[len(honest) :]) >= sum(powers):
            powers[rng.choice(honest)] += 1
    else:
        powers = [1] * validators
    sc.powers = powers
    coalition = rng.choice(strategies) if rng.random() < 0.4 else None
    for i in range(validators - byzantine, validators):
        sc.strategies[i] = coalition or rng.choice(strategies)
    everyone = list(range(validators))
    for _ in range(rng.choice((0, 1, 2, 3)) if gst > 0 else 0):
        start = rng.randint(0, gst)
        end = rng.randint(start, gst)
        side = frozenset(rng.sample(everyone, rng.randint(1, validators - 1)))
        sc.partitions.append(Partition(start, end, side, frozenset(everyone) - side, rng.random() < 0.3))
    if crashes and gst > 0:
        for _ in range(rng.choice((0, 0, 1, 2))):
            node = rng.choice(honest)
            at = rng.randint(0, gst)
            sc.crashes.append(Crash(node, at, min(gst, at + rng.randint(0, 1500))))
    return sc
