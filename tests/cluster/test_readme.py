"""The README's examples, run as written: the shell blocks of "Driving a cluster by hand" (init, up,
status, logs, every `clearline tx` and `query` line, down), its Python client block, and "Killing a
node and watching it recover", against real node processes in a temporary directory. `make run` /
`make test` (the two commands), `make bench` and `clearline chaos` have tests of their own and are
not run here; the test fails if the README gains a shell or Python block it does not account for."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent


def blocks_by_section() -> list[tuple[str, str, str]]:
    """(section heading, language, code) of every fenced block with a language."""
    out: list[tuple[str, str, str]] = []
    section = ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        m = re.match(r"^```(\w+)$", line)
        if m:
            j = i + 1
            while lines[j] != "```":
                j += 1
            out.append((section, m.group(1), "\n".join(lines[i + 1 : j])))
            i = j
        i += 1
    return out


RUN = {"Driving a cluster by hand", "From Python", "Killing a node and watching it recover"}
# Observers: tests/cluster/test_observer.py runs init --observers, observer add, node start, status
# and revoke-role.
COVERED_ELSEWHERE = {"Two commands", "Fault injection", "Performance", "Observers: non-voting nodes"}


def test_every_readme_block_is_run_here_or_covered_elsewhere() -> None:
    sections = {section for section, lang, _ in blocks_by_section() if lang in ("sh", "python")}
    assert sections <= RUN | COVERED_ELSEWHERE, sections - RUN - COVERED_ELSEWHERE


def _bash(script: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (
        f"{script}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    )
    return done.stdout


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    if (tmp_path / "net").exists():
        subprocess.run(
            [BIN / "clearline", "down", "--home", str(tmp_path / "net")], capture_output=True, timeout=60
        )


def test_the_readme_examples_run_as_written(workdir: Path) -> None:
    blocks = [(s, lang, code) for s, lang, code in blocks_by_section() if s in RUN]
    sh = [code for s, lang, code in blocks if lang == "sh"]
    py = [code for s, lang, code in blocks if lang == "python"]
    assert len(sh) == 3 and len(py) == 1, [s for s, _, _ in blocks]
    lifecycle, txs, recovery = sh
    down = [line for line in lifecycle.splitlines() if line.startswith("clearline down")]
    start = "\n".join(line for line in lifecycle.splitlines() if not line.startswith("clearline down"))
    _bash(start, workdir)
    # The tx block's last line names a placeholder: the transfer's hash stands in for it.
    first, _, last = txs.rpartition("\n")
    assert "<hash>" in last
    _bash(first, workdir)
    sent = json.loads(
        _bash(
            "clearline tx transfer --home ./net --as alice --instrument bank-a:USD --to carol --amount 1 --json",
            workdir,
        ).strip()
    )
    tx_hash = sent.get("tx_hash") or sent["result"]["tx_hash"]
    queried = _bash("export CLEARLINE_HOME=./net\n" + last.replace("<hash>", tx_hash), workdir)
    assert tx_hash[:16] in queried
    frozen = _bash("clearline query account bob --home ./net --as compliance --json", workdir)
    assert "frozen" in frozen.lower()
    done = subprocess.run(
        [sys.executable, "-c", py[0]], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "OK", done.stdout
    _bash(
        recovery.replace("clearline ", "clearline --home ./net ", 0)
        if False
        else "export CLEARLINE_HOME=./net\n" + recovery,
        workdir,
    )
    _bash("\n".join(down), workdir)
