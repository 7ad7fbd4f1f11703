"""The deterministic simulator: replayable, zero violations with the real core under every Byzantine
strategy, checkers that flag what they should, and every deliberately broken core caught within its
stated seed budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.sim import MUTANTS, Simulation, run_seed
from cluster.sim.app import SimBlock
from cluster.sim.scenario import STRATEGIES
from node.consensus import VoteType

ROOT = Path(__file__).resolve().parents[2]


def run_range(start: int, count: int, n: int, f: int, **kw: object) -> list:  # type: ignore[type-arg]
    return [run_seed(s, n, f, 4, **kw) for s in range(start, start + count)]  # type: ignore[arg-type]


# --- determinism ------------------------------------------------------------------------------------------


def test_same_seed_same_run() -> None:
    a, b = Simulation(11, 4, 1, 4), Simulation(11, 4, 1, 4)
    ra, rb = a.run(), b.run()
    assert (ra.heights_decided, ra.max_round, ra.deliveries, ra.end_time) == (
        rb.heights_decided, rb.max_round, rb.deliveries, rb.end_time,
    )  # fmt: skip
    assert ra.violations == rb.violations
    assert {h: {i: d[0] for i, d in ds.items()} for h, ds in a.decisions.items()} == {
        h: {i: d[0] for i, d in ds.items()} for h, ds in b.decisions.items()
    }


def cli(*args: str, hashseed: str = "0") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    return subprocess.run(
        [sys.executable, "-m", "cluster.sim", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


def test_cli_replays_a_seed_identically_across_processes_and_hash_seeds() -> None:
    one = cli("--validators", "4", "--byzantine", "1", "--seed-start", "5", "--seeds", "3", hashseed="1")
    two = cli("--validators", "4", "--byzantine", "1", "--seed-start", "5", "--seeds", "3", hashseed="2")
    assert one.returncode == 0, one.stderr
    assert one.stdout == two.stdout
    out = json.loads(one.stdout)
    assert {"seeds", "heights_decided", "max_rounds_per_height", "violations"} <= set(out)
    assert out["seeds"] == 3 and out["violations"] == [] and out["heights_decided"] >= 3 * 4


def test_cli_exits_non_zero_on_violations_and_names_the_seed() -> None:
    res = cli("--mutant", "sign-state-not-persisted", "--seed-start", "0", "--seeds", "20", "--stop-on-first")
    assert res.returncode == 1
    out = json.loads(res.stdout)
    assert out["violations"] and out["violations"][0]["seed"] == out["first_violation_seed"]
    replay = cli(
        "--mutant",
        "sign-state-not-persisted",
        "--seed-start",
        str(out["first_violation_seed"]),
        "--seeds",
        "1",
    )
    assert replay.returncode == 1
    assert json.loads(replay.stdout)["violations"] == [
        v for v in out["violations"] if v["seed"] == out["first_violation_seed"]
    ]


def test_cli_rejects_bad_arguments() -> None:
    assert cli("--strategies", "nonsense").returncode == 2
    assert cli("--validators", "4", "--byzantine", "4").returncode == 2


# --- the real core: no violations ---------------------------------------------------------------------------


def test_no_violations_n4_f1_mixed_faults_300_seeds() -> None:
    results = run_range(0, 300, 4, 1)
    assert [v for r in results for v in r.violations] == []
    assert all(r.heights_decided >= 4 for r in results)


def test_no_violations_n7_f2_mixed_faults_120_seeds() -> None:
    results = run_range(0, 120, 7, 2)
    assert [v for r in results for v in r.violations] == []


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_byzantine_strategy_alone(strategy: str) -> None:
    results = run_range(1000, 25, 4, 1, strategies=[strategy])
    assert [v for r in results for v in r.violations] == []


@pytest.mark.parametrize("strategy", ["double-vote", "equivocate", "twins", "other-rounds"])
def test_injected_equivocations_are_observed_and_committed_as_evidence(strategy: str) -> None:
    observed = committed = 0
    for seed in range(2000, 2020):
        sim = Simulation(seed, 4, 1, 4, strategies=[strategy])
        result = sim.run()
        assert result.violations == []
        honest = next(n for n in sim.nodes if n.honest)
        observed += len(sim.observed_equivocations)
        committed += sum(1 for k in sim.observed_equivocations if k in honest.app.committed_evidence)
    assert observed > 0  # the strategy really equivocates, so the check is not vacuous
    assert committed == observed


def test_schedules_really_contain_crashes_partitions_and_weighted_sets() -> None:
    sims = [Simulation(s, 4, 1, 4) for s in range(60)]
    assert sum(len(s.sc.crashes) for s in sims) > 10
    assert sum(len(s.sc.partitions) for s in sims) > 10
    assert any(p.one_way for s in sims for p in s.sc.partitions)
    assert any(len(set(s.sc.powers)) > 1 for s in sims)
    assert sum(1 for s in sims if s.sc.gst == 0) < len(sims)


def test_voting_power_changes_take_effect_two_heights_after_their_block() -> None:
    changed = 0
    for seed in range(40):
        sim = Simulation(seed, 4, 1, 4)
        if sim.power_change is None:
            continue
        at, new_set = sim.power_change
        assert sim.run().violations == []
        changed += 1
        assert sim.schedule.validators_for(at + 1) == sim.valset
        assert sim.schedule.validators_for(at + 2) == new_set
        honest = next(n for n in sim.nodes if n.honest and n.core is not None)
        assert honest.core is not None and honest.core.validators == new_set  # the final height uses it
    assert changed >= 5


# --- the checkers flag what they should ----------------------------------------------------------------------


def finished(seed: int = 3) -> Simulation:
    sim = Simulation(seed, 4, 1, 4)
    assert sim.run().violations == []
    sim.violations = []
    return sim


def test_agreement_checker_flags_two_decisions() -> None:
    sim = finished()
    i, (_block_id, rnd, block) = next(iter(sim.decisions[2].items()))
    other = SimBlock.make(2, 0, block.proposer, 12345)
    sim.decisions[2][i] = (other.id, rnd, other)
    assert any(v.description.startswith("agreement: height 2") for v in sim._check().violations)


def test_validity_checker_flags_an_unproposed_or_invalid_block() -> None:
    sim = finished()
    forged = SimBlock.make(2, 0, sim.addresses[0], 999, invalid=True)
    for i in sim.decisions[2]:
        sim.decisions[2][i] = (forged.id, 0, forged)
    found = [v.description for v in sim._check().violations]
    assert any("nobody proposed" in d for d in found) and any("invalid block" in d for d in found)


def test_evidence_checker_flags_an_uncommitted_equivocation() -> None:
    sim = finished()
    sim.observed_equivocations[(sim.addresses[3], 1, 7, VoteType.PREVOTE)] = 0
    assert any(v.description.startswith("evidence:") for v in sim._check().violations)


def test_liveness_checker_flags_a_stall() -> None:
    sim = Simulation(3, 4, 1, 4)
    sim.last_height = 10**6  # cannot be reached before the virtual deadline
    sim.target_fixed = True
    result = sim.run()
    assert any(v.description.startswith("liveness:") for v in result.violations)


# --- each broken core is caught within its stated budget --------------------------------------------------

# (mutant, validators, byzantine, strategies, seed budget from seed 0, what catches it)
BUDGETS = [
    ("quorum-half", 7, 2, ["equivocate"], 100, "agreement"),
    ("no-lock", 4, 1, ["lock-breaker"], 100, "agreement"),
    ("lock-not-persisted", 4, 1, ["lock-breaker"], 400, "agreement"),
    ("sign-state-not-persisted", 4, 1, None, 30, "honest validator"),
    ("skip-on-one", 4, 1, ["other-rounds"], 10, "liveness"),
]


@pytest.mark.parametrize(
    ("name", "n", "f", "strategies", "budget", "kind"), BUDGETS, ids=[b[0] for b in BUDGETS]
)
def test_mutant_is_caught_within_budget(
    name: str, n: int, f: int, strategies: list[str] | None, budget: int, kind: str
) -> None:
    mutant = MUTANTS[name]
    for seed in range(budget):
        result = run_seed(seed, n, f, 4, mutant, strategies)
        if result.violations:
            assert any(v.description.startswith(kind) for v in result.violations), result.violations
            return
    pytest.fail(f"mutant {name} not caught in {budget} seeds")


def test_every_mutant_has_a_budget() -> None:
    assert sorted(MUTANTS) == sorted(b[0] for b in BUDGETS)


# --- long runs (not in CI) ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("n", "f", "seeds"), [(4, 1, 3000), (7, 2, 1500), (10, 3, 600)])
def test_long_run_no_violations(n: int, f: int, seeds: int) -> None:
    results = run_range(50_000, seeds, n, f)
    assert [v for r in results for v in r.violations] == []
