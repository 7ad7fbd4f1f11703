"""A short mixed chaos run end to end: every fault kind may be drawn (floods by hostile clients
included), the checker finds nothing lost, duplicated or forked, the chain stayed live while at most
f validators were faulty, no node outgrew its memory budget, and the command prints the JSON keys
other tools rely on. The schedule itself is checked as a pure function of the seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cluster.chaos import (
    BYZANTINE_MODES,
    FAULT_KINDS,
    Episode,
    fault_windows,
    faulty_count,
    make_schedule,
)
from cluster.faults.attacks import ATTACKS, MAX_COUNT

ROOT = Path(__file__).resolve().parents[2]
KEYS = {
    "acknowledged",
    "committed",
    "lost",
    "duplicated",
    "forks",
    "supply_ok",
    "evidence_ok",
    "max_recovery_s",
    "max_commit_gap_s",
    "liveness_bound_s",
    "max_rss_mib",
    "memory_budget_mib",
    "floods",
}
NAMES = [f"node{i}" for i in range(4)]


def test_short_mixed_chaos_run_is_clean(tmp_path: Path) -> None:
    # Seed 5 draws a WAL truncation, a throwaway-key flood, a link fault and a Byzantine proposer.
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.chaos", "--duration", "35", "--seed", "5", "--json",
         "--observers", "1", "--home", str(tmp_path / "net")],
        capture_output=True, text=True, timeout=400, cwd=ROOT,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) >= KEYS
    # The observer followed the chain and was read like every validator (same blocks, same supply).
    assert result["nodes_checked"] == [*NAMES, "obs0"]
    assert result["episodes"] >= 3
    assert result["acknowledged"] > 0
    assert (result["lost"], result["duplicated"], result["forks"]) == (0, 0, 0), result["violations"]
    assert result["supply_ok"] and result["evidence_ok"]
    assert 0 < result["max_commit_gap_s"] <= result["liveness_bound_s"], result["violations"]
    assert set(result["max_rss_mib"]) == set(NAMES)
    assert all(result["max_rss_mib"][n] <= result["memory_budget_mib"][n] for n in NAMES)
    (flood,) = result["floods"]
    assert flood["attack"] == "throwaway" and flood["sent"] > 0 and flood["accepted"] == 0, flood
    assert proc.returncode == 0, result["violations"]


def test_short_chaos_run_with_every_node_pruning_is_clean(tmp_path: Path) -> None:
    # Seed 11 draws lossy links, two validators paused, a partition, an equivocating validator and a
    # kill, while every node keeps its last 100 blocks: the checker reads the chain recorded during
    # the run and each node's blocks from its base on.
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.chaos", "--duration", "35", "--seed", "11", "--json",
         "--retain-blocks", "100", "--home", str(tmp_path / "net")],
        capture_output=True, text=True, timeout=400, cwd=ROOT,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["episodes"] >= 4 and result["acknowledged"] > 0
    assert (result["lost"], result["duplicated"], result["forks"]) == (0, 0, 0), result["violations"]
    assert result["supply_ok"] and result["evidence_ok"] and result["evidence"] >= 1
    assert set(result["base_heights"]) == set(NAMES)
    assert all(base > 1 for base in result["base_heights"].values()), result["base_heights"]
    assert proc.returncode == 0, result["violations"]


def test_schedule_is_a_pure_function_of_the_seed() -> None:
    kinds = list(FAULT_KINDS)
    assert make_schedule(7, 120, NAMES, kinds) == make_schedule(7, 120, NAMES, kinds)
    assert make_schedule(7, 120, NAMES, kinds) != make_schedule(8, 120, NAMES, kinds)


def test_default_mix_floods_and_every_byzantine_mode_within_f() -> None:
    episodes = [ep for seed in range(40) for ep in make_schedule(seed, 120, NAMES, list(FAULT_KINDS))]
    floods = [ep for ep in episodes if ep.kind == "flood"]
    assert {ep.params["attack"] for ep in floods} == set(ATTACKS)
    assert all(len(ep.nodes) == 1 and 0 < ep.params["count"] <= MAX_COUNT for ep in floods)
    byzantine = [ep for ep in episodes if ep.kind == "byzantine"]
    assert {"lying-status", "stall-sync", "tamper-sync", "out-of-turn"} <= set(BYZANTINE_MODES)
    assert {ep.params["mode"] for ep in byzantine} == set(BYZANTINE_MODES)
    assert all(len(ep.nodes) <= 1 for ep in byzantine)  # f = 1 of 4


def _ep(kind: str, nodes: list[str], **params: object) -> Episode:
    return Episode(kind=kind, nodes=nodes, hold_s=1.0, pause_after_s=1.0, params=dict(params))


def test_faulty_count_is_conservative() -> None:
    n = 4
    assert faulty_count(_ep("kill", ["node0", "node1"]), n) == 2
    assert faulty_count(_ep("pause", ["node3"]), n) == 1
    assert faulty_count(_ep("byzantine", ["node2"], mode="silent"), n) == 1
    assert faulty_count(_ep("disk", ["node1"]), n) == 1
    split = [["node0"], ["node1", "node2", "node3"]]
    assert faulty_count(_ep("partition", NAMES, groups=split, one_way=False), n) == 1
    halves = [["node0", "node1"], ["node2", "node3"]]
    assert faulty_count(_ep("partition", NAMES, groups=halves, one_way=False), n) == 2
    assert faulty_count(_ep("partition", NAMES, groups=split, one_way=True), n) == 1
    assert faulty_count(_ep("link", NAMES, delay_ms=50, loss=0.0), n) == 0
    assert faulty_count(_ep("link", NAMES, delay_ms=0, loss=0.01), n) == n
    assert faulty_count(_ep("flood", ["node0"], attack="gap", count=100), n) == 0


def test_fault_windows_are_the_applied_episodes() -> None:
    applied = _ep("kill", ["node0", "node1"])
    applied.applied, applied.wall_start, applied.wall_end = True, 100.0, 110.0
    skipped = _ep("pause", ["node2"])
    (window,) = fault_windows([applied, skipped], 4)
    assert (window.start_s, window.end_s, window.faulty) == (100.0, 110.0, 2)
