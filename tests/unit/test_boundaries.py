"""The pure packages stay pure: node/consensus and node/ledger do no I/O and read no clock.

DESIGN.md: the consensus core and the ledger must be deterministic functions of their inputs, so
they may not import asyncio, grpc, plyvel, time, random, os or socket, directly or otherwise.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PURE = ("node/consensus", "node/ledger")
FORBIDDEN = {
    "asyncio",
    "grpc",
    "plyvel",
    "time",
    "random",
    "os",
    "socket",
    "datetime",
    "threading",
    "secrets",
}


def imported_modules(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_checker_catches_a_forbidden_import() -> None:
    assert imported_modules("import time\nfrom os import path\nimport grpc.aio") >= {"time", "os", "grpc"}


@pytest.mark.parametrize("package", PURE)
def test_pure_package_imports_nothing_forbidden(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    for path in files:
        bad = imported_modules(path.read_text()) & FORBIDDEN
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_importing_pure_packages_loads_no_io_framework() -> None:
    """Transitively too: importing them must not pull in grpc, plyvel or asyncio."""
    modules = [p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".") for pkg in PURE
               for p in (ROOT / pkg).rglob("*.py")]  # fmt: skip
    modules = [m.removesuffix(".__init__") for m in modules]
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(','.join(sorted(n for n in ('grpc', 'plyvel', 'asyncio', 'socket') if n in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"pure packages load {out.stdout.strip()}"
