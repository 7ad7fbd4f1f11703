"""Faults through the `clearline` command line: isolate a node with `fault partition`, heal, and see it
catch up; a disk fault on a running node is refused; the chaos schedule is a function of the seed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.cluster.conftest import make_network, status  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]


def cli(home: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args, "--home", home],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


def test_partition_and_heal_from_the_command_line(make_network) -> None:  # noqa: F811
    net = make_network(4, faults=True)
    home = net.network.home
    proc = cli(home, "fault", "partition", "node0,node1,node2", "node3")
    assert proc.returncode == 0, proc.stderr
    cut = status(net.target(3)).height
    time.sleep(1)
    net.wait_height(cut + 5, ["node0", "node1", "node2"], timeout=60)
    assert status(net.target(3)).height <= cut + 1  # isolated: cannot commit on its own
    assert cli(home, "fault", "heal").returncode == 0
    net.wait_height(status(net.target(0)).height, ["node3"], timeout=60)
    refused = cli(home, "fault", "wal-truncate", "node1", "5")
    assert refused.returncode != 0 and "running" in refused.stderr.lower()


def test_chaos_schedule_is_a_function_of_the_seed() -> None:
    def schedule(seed: int) -> list:
        proc = subprocess.run(
            [sys.executable, "-m", "cluster.chaos", "--seed", str(seed), "--duration", "120", "--schedule-only"],
            capture_output=True, text=True, timeout=60, cwd=ROOT, check=True,
        )  # fmt: skip
        return json.loads(proc.stdout)

    a, b, c = schedule(5), schedule(5), schedule(6)
    assert a == b and a != c
    kinds = {ep["kind"] for ep in a}
    assert len(a) >= 8 and kinds <= {"kill", "pause", "partition", "link", "disk", "byzantine", "flood"}
    assert all(len(ep["nodes"]) <= 1 for ep in a if ep["kind"] == "byzantine")  # never more than f of 4
