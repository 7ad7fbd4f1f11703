"""A short mixed chaos run end to end: every fault kind may be drawn, the checker finds nothing lost,
duplicated or forked, and the command prints the JSON keys other tools rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
}


def test_short_mixed_chaos_run_is_clean(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.chaos", "--duration", "35", "--seed", "11", "--json",
         "--home", str(tmp_path / "net")],
        capture_output=True, text=True, timeout=400, cwd=ROOT,
    )  # fmt: skip
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) >= KEYS
    assert result["episodes"] >= 3
    assert result["acknowledged"] > 0
    assert (result["lost"], result["duplicated"], result["forks"]) == (0, 0, 0), result["violations"]
    assert result["supply_ok"] and result["evidence_ok"]
    assert proc.returncode == 0, result["violations"]
