"""Start, stop and signal the nodes of a local network as real OS processes.

Each node runs `python -m node --home <node home>` with its output in `<node home>/stdout.log` and its
pid in `<node home>/node.pid`. `stop` sends SIGTERM, waits, then SIGKILL; `kill` is SIGKILL at once;
`pause`/`resume` are SIGSTOP/SIGCONT. Only processes this network started (by recorded pid, checked
against the command line) are ever signalled. `wait_serving` waits until a started node serves its
client API, or reports why it did not: a node that refuses to start prints one line
`clearline-node: <reason>` to stderr (node/__main__.py) and exits non-zero.

The network's observers (non-voting nodes) are started and stopped with its validators by start_all
and stop_all; `wait_until` without names waits for the validators only.

A fault-testing network with proxies (`clearline init --faults`) also has its fault proxy process
(cluster/faults/proxy.py): start_all starts it (and waits until it listens) before the nodes, stop_all
stops it after them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc
from cluster.client.tls import TlsConfig as ClientTls
from cluster.netgen import Network, NodeInfo


class LaunchError(Exception):
    """A node did not start or become healthy; the message names it and quotes its log."""


class NodeRefusedError(LaunchError):
    """A node exited instead of serving: its exit status, its stated reason and its last output."""

    def __init__(self, name: str, exit_code: int | None, reason: str, output: str) -> None:
        status = "" if exit_code is None else f" (exit status {exit_code})"
        super().__init__(f"{name} refused to start{status}: {reason}")
        self.name = name
        self.exit_code = exit_code
        self.reason = reason
        self.output = output


REFUSAL_PREFIX = "clearline-node: "
LEDGER_SERVICE = "clearline.v1.Ledger"


@dataclass(frozen=True, slots=True)
class NodeProcess:
    name: str
    pid: int | None
    alive: bool
    paused: bool


def _pid_file(node: NodeInfo) -> Path:
    return Path(node.home) / "node.pid"


def _log_file(node: NodeInfo) -> Path:
    return Path(node.home) / "stdout.log"


def _is_our_process(pid: int, node: NodeInfo) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(arg.decode(errors="replace") == node.home for arg in cmdline) and b"node" in b" ".join(cmdline)


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def read_pid(node: NodeInfo) -> int | None:
    try:
        pid = int(_pid_file(node).read_text().strip())
    except (OSError, ValueError):
        return None
    if not _is_our_process(pid, node) or _state(pid) in ("Z", "X", ""):
        return None
    return pid


def tail(path: Path, lines: int = 20) -> str:
    try:
        data = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(data[-lines:])


def refusal_reason(output: str) -> str:
    """The reason a node gave for stopping: its last `clearline-node: ...` line, else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(REFUSAL_PREFIX):
            return line.removeprefix(REFUSAL_PREFIX)
    return lines[-1] if lines else "it printed nothing"


def _channel(target: str, tls: ClientTls | None) -> grpc.Channel:
    """An unauthenticated channel (health and GetStatus need no identity): TLS verified with the
    network's CA, or plaintext for a network made without TLS (tls None)."""
    if tls is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, tls.credentials(), options=tls.channel_options())


def ledger_serving(target: str, timeout: float = 1.0, *, tls: ClientTls | None) -> bool:
    """Whether the node at target reports its Ledger service SERVING (it does once it runs)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with _channel(target, tls) as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=LEDGER_SERVICE), timeout=timeout
            )
    except grpc.RpcError:
        return False
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def stop_nodes_on_sigterm() -> None:
    """Make SIGTERM end this process as Ctrl-C does (SystemExit, so `finally: stop_all()` runs): a
    benchmark or chaos run that is terminated stops the nodes it started instead of leaving them."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


class Launcher:
    def __init__(
        self,
        network: Network,
        *,
        python: str | None = None,
        extra_env: dict[str, str] | None = None,
        wrappers: dict[str, list[str]] | None = None,
    ) -> None:
        self.network = network
        self.python = python or sys.executable
        self.extra_env = dict(extra_env or {})
        # A command prefix per node, e.g. ["ip", "netns", "exec", "ns1"] to run it in a namespace.
        self.wrappers = dict(wrappers or {})
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        # Where each node's stdout.log ended when this launcher last started it.
        self._log_offsets: dict[str, int] = {}

    # --- one node ---------------------------------------------------------------------------------

    def start(self, name: str, *, env: dict[str, str] | None = None, args: Iterable[str] = ()) -> int:
        node = self.network.node(name)
        if self.pid(node.name) is not None:
            raise LaunchError(f"{node.name} is already running (pid {self.pid(node.name)})")
        old = self._children.pop(node.name, None)
        if old is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                old.wait(timeout=5)
        log = open(_log_file(node), "ab")  # noqa: SIM115 - handed to the child
        self._log_offsets[node.name] = log.tell()
        full_env = {**os.environ, **self.extra_env, **(env or {})}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(
            [*self.wrappers.get(node.name, []), self.python, "-m", "node", "--home", node.home, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )
        log.close()
        self._children[node.name] = proc
        _pid_file(node).write_text(f"{proc.pid}\n")
        return proc.pid

    def output_since_start(self, name: str, max_bytes: int = 64 * 1024) -> str:
        """What the node wrote to stdout.log since this launcher last started it (its last max_bytes)."""
        node = self.network.node(name)
        start = self._log_offsets.get(node.name, 0)
        try:
            with open(_log_file(node), "rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(start, end - max_bytes))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_serving(self, name: str, timeout: float = 30.0, poll_s: float = 0.1) -> None:
        """Wait until the node started by this launcher serves its client API. NodeRefusedError if it
        exits first (with the reason it printed), LaunchError if it does not serve within timeout."""
        node = self.network.node(name)
        deadline = time.monotonic() + timeout
        while True:
            child = self._children.get(node.name)
            if self.pid(node.name) is None:
                code = child.wait(timeout=5) if child is not None else None
                output = self.output_since_start(node.name)
                raise NodeRefusedError(node.name, code, refusal_reason(output), output)
            if ledger_serving(
                node.api_target,
                timeout=min(1.0, max(0.1, deadline - time.monotonic())),
                tls=self.network.client_tls(),
            ):
                return
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"{node.name} is running but does not serve its client API at {node.api_target} "
                    f"after {timeout:.0f}s; last lines of its log:\n{tail(_log_file(node))}"
                )
            time.sleep(poll_s)

    def _signal(self, name: str, sig: signal.Signals) -> int | None:
        node = self.network.node(name)
        pid = self.pid(node.name)
        if pid is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        return pid

    def _reap(self, name: str, timeout: float) -> bool:
        node = self.network.node(name)
        child = self._children.get(node.name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child is not None and child.poll() is not None:
                self._children.pop(node.name, None)
                return True
            if read_pid(node) is None:
                if child is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        child.wait(timeout=max(0.1, deadline - time.monotonic()))
                    self._children.pop(node.name, None)
                return True
            time.sleep(0.05)
        return False

    def kill(self, name: str) -> int | None:
        """SIGKILL (after SIGCONT, so a paused node dies too)."""
        pid = self._signal(name, signal.SIGKILL)
        if pid is not None:
            self._reap(name, 5)
        return pid

    def stop(self, name: str, timeout: float = 10) -> int | None:
        """SIGTERM, wait for a graceful exit, then SIGKILL."""
        self._signal(name, signal.SIGCONT)
        pid = self._signal(name, signal.SIGTERM)
        if pid is None:
            return None
        if not self._reap(name, timeout):
            self._signal(name, signal.SIGKILL)
            self._reap(name, 5)
        return pid

    def pause(self, name: str) -> int | None:
        return self._signal(name, signal.SIGSTOP)

    def resume(self, name: str) -> int | None:
        return self._signal(name, signal.SIGCONT)

    def restart(self, name: str, **kwargs: object) -> int:
        self.stop(name)
        return self.start(name, **kwargs)  # type: ignore[arg-type]

    def pid(self, name: str) -> int | None:
        """The node's pid if it runs (a child still starting counts as running)."""
        node = self.network.node(name)
        child = self._children.get(node.name)
        if child is not None and child.poll() is None:
            return child.pid
        return read_pid(node)

    def status(self, name: str) -> NodeProcess:
        node = self.network.node(name)
        pid = self.pid(node.name)
        return NodeProcess(node.name, pid, pid is not None, pid is not None and _state(pid) == "T")

    # --- the whole network ------------------------------------------------------------------------

    def start_all(self, env: dict[str, str] | None = None) -> None:
        if self.network.faults and self.network.proxies:
            from cluster.faults.process import start_proxy

            start_proxy(self.network, python=self.python, env={**self.extra_env, **(env or {})})
        for node in self.network.all_nodes:
            if self.pid(node.name) is None:
                self.start(node.name, env=env)

    def stop_all(self, timeout: float = 10) -> None:
        for node in self.network.all_nodes:
            self._signal(node.name, signal.SIGCONT)
            self._signal(node.name, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in self.network.all_nodes:
            self._reap(node.name, max(0.1, deadline - time.monotonic()))
        for node in self.network.all_nodes:
            if self.pid(node.name) is not None:
                self.kill(node.name)
        for child in self._children.values():
            with contextlib.suppress(Exception):
                child.wait(timeout=1)
        self._children.clear()
        if self.network.proxies:
            from cluster.faults.process import stop_proxy

            stop_proxy(self.network)

    def wait_until(
        self,
        check: Callable[[NodeInfo], bool],
        names: Iterable[str] | None = None,
        *,
        timeout: float = 60,
        what: str = "healthy",
        progress: Callable[[str], None] | None = None,
    ) -> None:
        """Wait until check(node) holds for every named node; LaunchError names the one that did not."""
        pending = [self.network.node(n) for n in (names or [n.name for n in self.network.nodes])]
        deadline = time.monotonic() + timeout
        while pending:
            for node in list(pending):
                if self.pid(node.name) is None:
                    raise LaunchError(f"{node.name} exited; last lines of its log:\n{tail(_log_file(node))}")
                try:
                    ok = check(node)
                except Exception:
                    ok = False
                if ok:
                    pending.remove(node)
                    if progress is not None:
                        progress(f"{node.name} {what}")
            if pending and time.monotonic() > deadline:
                node = pending[0]
                raise LaunchError(
                    f"{node.name} not {what} after {timeout:.0f}s; last lines of its log:\n{tail(_log_file(node))}"
                )
            if pending:
                time.sleep(0.2)


def node_status(
    target: str, timeout: float = 1.0, *, tls: ClientTls | None
) -> ledger_api_pb2.GetStatusResponse | None:
    """GetStatus of the node whose client API is at target, or None if it does not answer. tls:
    the network's (Network.client_tls())."""
    try:
        with _channel(target, tls) as channel:
            stub = ledger_api_pb2_grpc.LedgerStub(channel)
            status: ledger_api_pb2.GetStatusResponse = stub.GetStatus(
                ledger_api_pb2.GetStatusRequest(), timeout=timeout
            )
            return status
    except grpc.RpcError:
        return None


def node_height(target: str, timeout: float = 1.0, *, tls: ClientTls | None) -> int | None:
    """The last committed height of the node at target, or None if it does not answer."""
    status = node_status(target, timeout, tls=tls)
    return None if status is None else int(status.height)
