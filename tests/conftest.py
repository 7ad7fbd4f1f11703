"""Session-wide guard: no node process started by the tests may outlive the test run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _our_node_processes() -> list[str]:
    me = os.getpid()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        state = stat.rsplit(")", 1)[1].split()[0]
        if ppid == me and state != "Z" and b"node" in cmdline and b"--home" in cmdline:
            found.append(f"{proc.name}: {b' '.join(cmdline).decode(errors='replace')}")
    return found


@pytest.fixture(scope="session", autouse=True)
def no_node_outlives_the_tests():
    yield
    left = _our_node_processes()
    assert not left, f"node processes left running: {left}"
