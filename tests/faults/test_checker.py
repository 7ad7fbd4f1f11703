"""The checker passes a healthy run and bites on deliberately introduced violations: a node built to
acknowledge without committing (lost transactions), and more than f colluding Byzantine validators
(a fork). The liveness and memory properties are checked on synthetic observations: each fails when
it should (a stall while at most f are faulty, a node over its budget) and not otherwise."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cluster.checker import (
    LIVENESS_SLACK_S,
    MIB,
    FaultWindow,
    LivenessResult,
    Report,
    check,
    compute_excluded,
    compute_liveness,
    compute_memory,
    liveness_bound_s,
)
from cluster.workload import Workload, funded, workload_accounts
from node.config import ConsensusConfig
from tests.cluster.conftest import RunningNetwork, make_network, status  # noqa: F401 - fixture

ACCOUNTS = workload_accounts(6)


def run_workload(net: RunningNetwork, seconds: float, history: Path, seed: int = 1) -> Workload:
    workload = Workload(net.network, ACCOUNTS, seed=seed, history=history, think_s=0.05)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(workload.run(stop))
        await asyncio.sleep(seconds)
        stop.set()
        await task

    asyncio.run(main())
    return workload


def test_checker_passes_a_healthy_run(make_network, tmp_path: Path) -> None:  # noqa: F811
    net = make_network(4, demo_accounts=ACCOUNTS, funded=funded(ACCOUNTS))
    workload = run_workload(net, 8, tmp_path / "history.jsonl")
    history = Workload.load_history(tmp_path / "history.jsonl")
    assert len(history) == len(workload.ops) > 20
    kinds = {op.kind for op in history if op.status == "ok"}
    assert {"mint", "transfer", "hold", "settle"} <= kinds, kinds
    report = check(net.network, history)
    assert report.ok, report.violations
    assert report.acknowledged > 20 and report.lost == 0 and report.duplicated == 0 and report.forks == 0
    assert report.supply_ok


def test_checker_catches_acknowledged_but_not_committed(make_network, tmp_path: Path) -> None:  # noqa: F811
    net = make_network(4, faults=True, demo_accounts=ACCOUNTS, funded=funded(ACCOUNTS))
    net.launcher.stop("node3")
    net.launcher.start("node3", args=["--byzantine", "fake-ack"])
    net.wait_height(status(net.target(0)).height + 2, ["node3"], timeout=60)
    run_workload(net, 8, tmp_path / "history.jsonl")
    report = check(net.network, Workload.load_history(tmp_path / "history.jsonl"))
    assert report.lost > 0
    assert any("is not committed" in v for v in report.violations)


def test_checker_catches_a_fork_by_more_than_f_colluders(make_network) -> None:  # noqa: F811
    net = make_network(4, faults=True)
    for name in ("node2", "node3"):
        net.launcher.stop(name)
        net.launcher.start(name, args=["--byzantine", "collude"])
    honest = ["node0", "node1"]
    deadline = time.monotonic() + 60
    report = None
    while time.monotonic() < deadline:
        time.sleep(3)
        report = check(net.network, [], honest=honest)
        if report.forks:
            break
    assert report is not None and report.forks > 0, "two colluding validators of four did not fork the chain"
    assert any("fork at height" in v for v in report.violations)


# --- liveness and memory: the checking logic on synthetic observations ------------------------------

F = 1
BOUND = 10.0


def _liveness(commits: list[float], windows: list[FaultWindow], end: float = 100.0) -> LivenessResult:
    return compute_liveness(commits, windows, f=F, start_s=0.0, end_s=end, bound_s=BOUND)


def _steady(start: float, end: float, every: float = 1.0) -> list[float]:
    return [start + i * every for i in range(int((end - start) / every) + 1)]


def test_liveness_passes_a_chain_that_commits_every_second() -> None:
    result = _liveness(_steady(0, 100), [])
    assert result.violations == ()
    assert result.max_commit_gap_s == pytest.approx(1.0)
    assert result.commits == 101


def test_liveness_fails_a_stall_while_at_most_f_are_faulty() -> None:
    commits = _steady(0, 40) + _steady(55, 100)  # nothing from 40 s to 55 s
    one_killed = [FaultWindow(38, 60, faulty=1, what="kill node3")]
    result = _liveness(commits, one_killed)
    assert result.max_commit_gap_s == pytest.approx(15.0)
    assert (result.gap_from_s, result.gap_to_s) == (pytest.approx(40.0), pytest.approx(55.0))
    assert len(result.violations) == 1 and "no commit for 15.0s" in result.violations[0]


def test_liveness_leaves_out_time_when_more_than_f_are_faulty() -> None:
    commits = _steady(0, 40) + _steady(55, 100)
    two_paused = [FaultWindow(39, 56, faulty=2, what="pause node0,node1")]
    result = _liveness(commits, two_paused)
    assert result.violations == ()
    assert result.excluded_s == pytest.approx(17.0)
    # The gap's parts outside the window still count: 40 -> 39 is nothing, 56 -> 55 nothing.
    assert result.max_commit_gap_s == pytest.approx(1.0)


def test_liveness_counts_the_part_of_a_gap_after_an_excluded_window() -> None:
    """The chain must be live again once the faults are healed: a stall that outlasts its window
    counts from the window's end."""
    commits = _steady(0, 40) + _steady(70, 100)
    result = _liveness(commits, [FaultWindow(40, 50, faulty=3, what="kill three")])
    assert result.max_commit_gap_s == pytest.approx(20.0)  # 50 -> 70
    assert result.violations


def test_liveness_adds_up_overlapping_windows() -> None:
    """Two overlapping windows of one faulty validator each are two faulty at once: left out."""
    commits = _steady(0, 40) + _steady(60, 100)
    windows = [
        FaultWindow(38, 61, faulty=1, what="kill node3"),
        FaultWindow(39, 62, faulty=1, what="pause node2"),
    ]
    assert compute_excluded(windows, F) == [(39, 61)]
    assert _liveness(commits, windows).violations == ()
    # Each alone is within f: the stall counts.
    assert _liveness(commits, windows[:1]).violations


def test_liveness_fails_a_chain_that_stops_before_the_end() -> None:
    result = _liveness(_steady(0, 50), [], end=100.0)
    assert result.max_commit_gap_s == pytest.approx(50.0)
    assert result.violations


def test_liveness_fails_a_chain_that_never_commits() -> None:
    result = _liveness([], [], end=30.0)
    assert result.commits == 0 and result.violations


def test_liveness_bound_follows_the_consensus_timeouts() -> None:
    chaos = ConsensusConfig(
        timeout_propose_ms=1500, timeout_prevote_ms=500, timeout_precommit_ms=500, timeout_commit_ms=50
    )
    # f = 1: round 0 (1.5 + 0.5 + 0.5 s) and round 1 (2.0 + 1.0 + 1.0 s), the commit pause, the
    # empty-block interval and the slack.
    assert liveness_bound_s(chaos, 1) == pytest.approx(2.5 + 4.0 + 0.05 + 1.0 + LIVENESS_SLACK_S)
    assert liveness_bound_s(chaos, 2) > liveness_bound_s(chaos, 1)
    slower = ConsensusConfig(timeout_propose_ms=3000, create_empty_blocks_interval_ms=5000)
    assert liveness_bound_s(slower, 1) > liveness_bound_s(ConsensusConfig(), 1)


def test_memory_passes_nodes_within_their_budget() -> None:
    result = compute_memory(
        {"node0": 300 * MIB, "node1": 400 * MIB}, {"node0": 500 * MIB, "node1": 500 * MIB}, 30
    )
    assert result.violations == ()
    assert result.as_dict()["max_rss_mib"] == {"node0": 300.0, "node1": 400.0}


def test_memory_fails_a_node_over_its_budget_and_a_node_never_sampled() -> None:
    budgets = {"node0": 500 * MIB, "node1": 500 * MIB, "node2": 500 * MIB}
    result = compute_memory({"node0": 300 * MIB, "node1": 501 * MIB}, budgets, 30)
    assert len(result.violations) == 2
    assert "node1: RSS reached 501 MiB, over its memory budget of 500 MiB" in result.violations
    assert any(v.startswith("node2: no RSS sample") for v in result.violations)


def test_report_lists_liveness_and_memory_violations() -> None:
    report = Report()
    report.add_liveness(_liveness(_steady(0, 40), []))
    report.add_memory(compute_memory({"node0": 600 * MIB}, {"node0": 500 * MIB}, 3))
    assert not report.ok and len(report.violations) == 2
    out = report.as_dict()
    assert out["max_commit_gap_s"] == 60.0 and out["liveness_bound_s"] == BOUND
    assert out["max_rss_mib"] == {"node0": 600.0} and out["memory_budget_mib"] == {"node0": 500.0}
