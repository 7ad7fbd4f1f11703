"""Start, find and stop the fault proxy process of a network (used by the Launcher's start_all/stop_all).

The proxy runs `python -m cluster.faults.proxy --home <network home>`; its output goes to
`<home>/faults/proxy.log`, its pid to `<home>/faults/proxy.pid`, and it reports readiness, the rules
generation it applied and per-direction counters in `<home>/faults/status.json`. Only a process whose
command line names the proxy module and this network home is ever signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cluster.netgen import Network

PROXY_MODULE = "cluster.faults.proxy"
_children: dict[str, subprocess.Popen[bytes]] = {}


class ProxyError(Exception):
    """The fault proxy did not start, or is needed and not running. The message quotes its log."""


def faults_dir(network: Network) -> Path:
    return Path(network.home) / "faults"


def log_path(network: Network) -> Path:
    return faults_dir(network) / "proxy.log"


def pid_path(network: Network) -> Path:
    return faults_dir(network) / "proxy.pid"


def status_path(network: Network) -> Path:
    return faults_dir(network) / "status.json"


def _is_proxy(pid: int, home: str) -> bool:
    try:
        cmdline = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return PROXY_MODULE in cmdline and home in cmdline and state not in ("Z", "X")


def proxy_pid(network: Network) -> int | None:
    """The running proxy's pid, or None."""
    child = _children.get(network.home)
    if child is not None and child.poll() is None:
        return child.pid
    try:
        pid = int(pid_path(network).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_proxy(pid, network.home) else None


def read_status(network: Network) -> dict[str, Any]:
    """The proxy's last status report ({} if none)."""
    try:
        doc = json.loads(status_path(network).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_proxy(
    network: Network, *, python: str | None = None, env: dict[str, str] | None = None, timeout: float = 15
) -> int:
    """Start the network's proxy unless it runs; wait until it listens on every link. Returns its pid."""
    if not network.proxies:
        raise ProxyError(f"{network.home}: this network has no fault proxies (made without `init --faults`)")
    pid = proxy_pid(network)
    if pid is not None:
        return pid
    directory = faults_dir(network)
    directory.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        status_path(network).unlink()
    log = open(log_path(network), "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [python or sys.executable, "-m", PROXY_MODULE, "--home", network.home],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        start_new_session=True,
    )
    log.close()
    _children[network.home] = proc
    pid_path(network).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _children.pop(network.home, None)
            raise ProxyError(f"fault proxy exited with {proc.returncode}; log:\n{_tail(log_path(network))}")
        status = read_status(network)
        if status.get("pid") == proc.pid and status.get("ready"):
            return proc.pid
        time.sleep(0.05)
    stop_proxy(network)
    raise ProxyError(f"fault proxy not ready after {timeout:.0f}s; log:\n{_tail(log_path(network))}")


def stop_proxy(network: Network, timeout: float = 5) -> int | None:
    """SIGTERM the proxy, wait, then SIGKILL. Returns the pid it stopped (None if none ran)."""
    pid = proxy_pid(network)
    child = _children.pop(network.home, None)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _is_proxy(pid, network.home):
            if child is not None and child.poll() is not None:
                break
            time.sleep(0.05)
        if _is_proxy(pid, network.home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)
    return pid
