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
from cluster.simnode.world import Outcome, Settings, World, run_seed

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("validators", "byzantine", "seeds"), [(4, 1, range(0, 6)), (7, 2, range(100, 102))])
def test_a_small_campaign_has_no_violation(validators: int, byzantine: int, seeds: range) -> None:
    for seed in seeds:
        outcome = run_seed(Settings(validators=validators, byzantine=byzantine, seed=seed, duration_s=45))
        assert outcome.violations == [], (seed, outcome.modes, outcome.violations, outcome.trace[-30:])
        assert min(outcome.heights.values()) > 20 and outcome.acknowledged > 0, (seed, outcome.heights)


def test_wiped_nodes_rejoin_by_state_sync_among_lying_peers_and_every_property_holds() -> None:
    """The adversary also wipes honest nodes' disks (all but the sign state); they rejoin by state
    sync while the Byzantine validator serves tampered or no snapshot data. Seed 7 found that a
    validator whose sign state was ahead of its synced chain sat out every height after, not only
    those below it: two such validators stalled the network."""
    joined = 0
    for seed, mode in ((7, ""), (0, "tamper-sync"), (1, "stall-sync"), (2, "tamper-sync")):
        outcome = run_seed(Settings(seed=seed, duration_s=60, state_sync=True, byzantine_mode=mode))
        assert outcome.violations == [], (seed, outcome.modes, outcome.violations, outcome.trace[-30:])
        assert min(outcome.heights.values()) > 20, (seed, outcome.heights)
        joined += sum("state-synced at height" in line for line in outcome.trace)
    assert joined >= 4


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
        outcome = run_seed(Settings(seed=seed, duration_s=60, mutant=name, **dict(mutant.settings)))
        if outcome.violations:
            expected = mutant.expect.split("|")
            assert any(e in v for e in expected for v in outcome.violations), outcome.violations
            return
    pytest.fail(f"mutant {name} survived {mutant.budget} seeds")


def test_a_failing_seed_replays_with_the_events_that_led_to_its_violation() -> None:
    """The trace of a stall is what the stalled node sent, heard and did from just before its last
    commit to the end: here the lying validator's claimed height, heard while nothing commits."""
    plain = run_seed(Settings(seed=0, duration_s=40, mutant="sync-inline"))
    traced = run_seed(Settings(seed=0, duration_s=40, mutant="sync-inline", trace=True))
    assert plain.violations and traced.violations == plain.violations  # recording changes nothing
    assert plain.focused_trace == [] and plain.full_trace == []
    header, *lines = traced.focused_trace
    assert header == f"violation: {plain.violations[0]}"
    stalled = plain.violations[0].split()[0]
    events = [line for line in lines if not line.startswith("(")]
    assert 0 < len(events) <= 400
    assert any("status committed 18446744073709551615" in line for line in events)  # the lie
    # Every event is about the stalled node, or a fault or restart (shown whatever the focus).
    assert all(stalled in line or "->" not in line for line in events), events[:5]
    assert len(traced.full_trace) > len(events)


def test_a_replaying_validator_costs_one_check_per_message_and_leaves_the_network_live() -> None:
    outcome = run_seed(Settings(seed=1, duration_s=30, byzantine_mode="replay"))
    assert outcome.violations == [] and min(outcome.heights.values()) > 20
    assert outcome.peak_holdings["replayed-message filter"] > 0
    assert all(share <= 1.0 for share in outcome.peak_holdings.values()), outcome.peak_holdings


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
    code, out = _cli(
        "--seeds", "1", "--duration", "60", "--mutant", "unchecked-sync", "--jobs", "1", "--trace"
    )
    assert code == 1 and out["violations"] and out["first_violation_seed"] == 0
    assert out["trace_reproduced"] is True


@pytest.mark.parametrize(
    ("validators", "byzantine", "seeds", "duration"), [(4, 1, 200, 30), (7, 2, 60, 20)], ids=["4v", "7v"]
)
def test_the_ci_sized_campaign_passes(validators: int, byzantine: int, seeds: int, duration: int) -> None:
    """A few hundred seeds through make sim-node's command, on seeds the long campaigns start from
    elsewhere (those are `make sim-node ARGS=...`, docs/faults.md)."""
    code, out = _cli(
        "--validators", str(validators), "--byzantine", str(byzantine), "--seeds", str(seeds),
        "--seed-start", "100000", "--duration", str(duration), "--jobs", "2",
    )  # fmt: skip
    assert code == 0 and out["violations"] == [], out["violations"]
    assert out["seeds"] == seeds and isinstance(out["heights_decided"], int)
    assert out["heights_decided"] > seeds * 10
    peaks = out["peak_holdings"]
    assert isinstance(peaks, dict) and peaks and all(share <= 1.0 for share in peaks.values()), peaks


def test_the_supply_check_catches_money_that_does_not_add_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per instrument, genesis balances + minted - redeemed must equal the instrument's supply and the
    sum of all balances on every honest node: a genesis balance the nodes never had is reported."""
    real = World.check

    def with_phantom_balance(self: World) -> Outcome:
        usd = self.genesis.instruments[0].id
        self.genesis.accounts[0].balances.add(instrument=usd, amount=5)
        return real(self)

    monkeypatch.setattr(World, "check", with_phantom_balance)
    outcome = run_seed(Settings(validators=4, byzantine=0, seed=3, duration_s=5.0, faults=False))
    supply = [v for v in outcome.violations if "supply" in v]
    assert len(supply) == 4 and all("minted-redeemed" in v for v in supply), outcome.violations
