"""The whole node under deterministic simulation (cluster/simnode): a small campaign passes, a seed
replays exactly, every runtime mutant is caught within its seed budget, and `make sim-node`'s command
prints its JSON and exits non-zero on a violation. The long campaigns are `make sim-node ARGS=...`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.simnode.mutants import MUTANTS
from cluster.simnode.world import Settings, run_seed

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("validators", "byzantine", "seeds"), [(4, 1, range(0, 6)), (7, 2, range(100, 102))])
def test_a_small_campaign_has_no_violation(validators: int, byzantine: int, seeds: range) -> None:
    for seed in seeds:
        outcome = run_seed(Settings(validators=validators, byzantine=byzantine, seed=seed, duration_s=45))
        assert outcome.violations == [], (seed, outcome.modes, outcome.violations, outcome.trace[-30:])
        assert min(outcome.heights.values()) > 20 and outcome.acknowledged > 0, (seed, outcome.heights)


def test_a_seed_replays_exactly() -> None:
    first = run_seed(Settings(seed=3, duration_s=30))
    again = run_seed(Settings(seed=3, duration_s=30))
    assert (first.heights, first.acknowledged, first.trace) == (
        again.heights,
        again.acknowledged,
        again.trace,
    )
    other = run_seed(Settings(seed=4, duration_s=30))
    assert other.trace != first.trace  # the seed is what decides


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_each_runtime_mutant_is_caught_within_its_budget(name: str) -> None:
    mutant = MUTANTS[name]
    for seed in range(mutant.budget):
        outcome = run_seed(Settings(seed=seed, duration_s=60, mutant=name))
        if outcome.violations:
            return
    pytest.fail(f"mutant {name} survived {mutant.budget} seeds")


def _cli(*args: str) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "cluster.simnode", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_the_command_prints_its_summary_and_fails_on_a_violation() -> None:
    code, out = _cli("--seeds", "2", "--duration", "20", "--jobs", "2")
    assert code == 0 and out["violations"] == []
    for key in ("seeds", "heights_decided", "simulated_seconds", "wall_seconds", "violations"):
        assert key in out, key
    assert out["seeds"] == 2 and out["simulated_seconds"] == 40.0
    code, out = _cli("--seeds", "1", "--duration", "60", "--mutant", "unchecked-sync", "--jobs", "1")
    assert code == 1 and out["violations"] and out["first_violation_seed"] == 0


def test_a_hundred_seeds_on_four_validators_pass() -> None:
    """The CI-sized campaign (the long ones are `make sim-node`)."""
    code, out = _cli("--seeds", "100", "--seed-start", "1000", "--duration", "30", "--jobs", "2")
    assert code == 0 and out["violations"] == [], out["violations"]
    assert (
        out["seeds"] == 100 and isinstance(out["heights_decided"], int) and out["heights_decided"] > 100 * 20
    )
