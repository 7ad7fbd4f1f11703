"""The checker passes a healthy run and bites on deliberately introduced violations: a node built to
acknowledge without committing (lost transactions), and more than f colluding Byzantine validators
(a fork)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from cluster.checker import check
from cluster.workload import Workload, funded, workload_accounts
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
