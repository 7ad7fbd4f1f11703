"""Fault injection for Clearline networks: the Nemesis (process, network and disk faults).

    from cluster.faults import Nemesis
    nemesis = Nemesis(network, launcher)          # network made with init_network(..., faults=True)
    nemesis.partition(["node0", "node1"], ["node2", "node3"])
    nemesis.heal()

Process faults wrap the Launcher (SIGKILL, restart, SIGSTOP/SIGCONT). Network faults are rules for the
fault proxy (cluster/faults/proxy.py) that sits on every peer link of a network made with
`clearline init --faults`; they are kept in `<home>/faults/rules.json` (schema in
cluster/faults/rules.py), so a Nemesis made later (another `clearline` command) sees and amends the
rules in force. Every network-fault call returns once the running proxy has applied it. Disk faults
damage the consensus WAL of a stopped node (cluster/faults/disk.py).

Errors: FaultError (base; a fault cannot be applied, nothing changed) with NoProxyError (the network
has no fault proxies), UnknownNodeError, NodeRunningError (a disk fault on a running node); plus
FaultRuleError (an invalid rule value) from rules.py and DiskFaultError from disk.py.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.faults import disk, process
from cluster.faults.disk import DiskFaultError
from cluster.faults.process import ProxyError
from cluster.faults.rules import (
    Effect,
    FaultRuleError,
    LinkRule,
    NodeName,
    RuleKind,
    RuleSet,
    load_rules,
    rules_path,
    save_rules,
)
from cluster.netgen import Network

if TYPE_CHECKING:
    from cluster.launcher import Launcher

__all__ = [
    "DiskFaultError",
    "Effect",
    "FaultError",
    "FaultRuleError",
    "LinkRule",
    "Nemesis",
    "NoProxyError",
    "NodeRunningError",
    "ProxyError",
    "RuleSet",
    "UnknownNodeError",
]


class FaultError(Exception):
    """A fault cannot be applied; nothing was changed."""


class NoProxyError(FaultError):
    """Network faults need the fault proxies of a network made with `clearline init --faults`."""

    def __init__(self, home: str) -> None:
        self.home = home
        super().__init__(
            f"{home}: this network has no fault proxies; create it with `clearline init --faults`"
        )


class UnknownNodeError(FaultError):
    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(f"no node {name!r} in this network (nodes: {', '.join(known)})")


class NodeRunningError(FaultError):
    """Disk faults only apply to a stopped node."""

    def __init__(self, name: str, pid: int) -> None:
        self.name = name
        self.pid = pid
        super().__init__(f"{name} is running (pid {pid}); stop it before damaging its disk")


class Nemesis:
    """Injects faults into one network; `launcher` runs its processes."""

    def __init__(self, network: Network, launcher: Launcher, *, seed: int | None = None) -> None:
        self.network = network
        self.launcher = launcher
        self._names = tuple(n.name for n in network.nodes)
        if seed is not None and network.proxies:
            self._update(lambda rules: rules, seed=seed, wait=False)

    # --- process faults ---------------------------------------------------------------------------

    def kill(self, *names: str) -> None:
        """SIGKILL the named nodes."""
        for name in self._check_names(names):
            self.launcher.kill(name)

    def stop(self, *names: str) -> None:
        """SIGTERM (then SIGKILL) the named nodes and wait until they are gone."""
        for name in self._check_names(names):
            self.launcher.stop(name)

    def start(self, *names: str) -> None:
        """Start the named nodes (those not running)."""
        for name in self._check_names(names):
            if self.launcher.pid(name) is None:
                self.launcher.start(name)

    def restart(self, *names: str) -> None:
        for name in self._check_names(names):
            self.launcher.restart(name)

    def pause(self, *names: str) -> None:
        """SIGSTOP the named nodes."""
        for name in self._check_names(names):
            self.launcher.pause(name)

    def resume(self, *names: str) -> None:
        """SIGCONT the named nodes."""
        for name in self._check_names(names):
            self.launcher.resume(name)

    # --- network faults ---------------------------------------------------------------------------

    def partition(self, *groups: Sequence[str]) -> None:
        """Nodes in different groups cannot talk (both directions); nodes in no group are isolated.
        Replaces the previous partition; one-way, link and sever rules stay."""
        self._need_proxies()
        group_of: dict[str, int] = {}
        for i, group in enumerate(groups):
            if isinstance(group, str):
                raise FaultError(f"partition group {group!r} must be a list of node names, not a string")
            for name in self._check_names(group):
                if name in group_of:
                    raise FaultError(f"{name} is in two partition groups")
                group_of[name] = i
        cut = [
            LinkRule(NodeName(a), NodeName(b), "partition", drop=True)
            for a in self._names
            for b in self._names
            if a != b and (a not in group_of or b not in group_of or group_of[a] != group_of[b])
        ]
        self._replace("partition", lambda r: True, cut)

    def isolate(self, *names: str) -> None:
        """Partition the named nodes away from everyone (each alone)."""
        names = self._check_names(names)
        self.partition([n for n in self._names if n not in names])

    def one_way(self, src: str, dst: str) -> None:
        """Messages src -> dst are dropped; dst -> src still flow. Adds to the one-way rules in force."""
        self._need_proxies()
        src, dst = self._check_pair(src, dst)
        rule = LinkRule(NodeName(src), NodeName(dst), "one_way", drop=True)
        self._replace("one_way", lambda r: (r.src, r.dst) == (src, dst), [rule])

    def link(
        self,
        src: str,
        dst: str,
        *,
        delay_ms: float = 0,
        jitter_ms: float = 0,
        loss: float = 0,
        duplicate: float = 0,
        reorder: bool = False,
    ) -> None:
        """Degrade the direction src -> dst (replaces its previous link rule; all zero removes it)."""
        self._need_proxies()
        src, dst = self._check_pair(src, dst)
        rule = LinkRule(
            NodeName(src),
            NodeName(dst),
            "link",
            delay_ms=float(delay_ms),
            jitter_ms=float(jitter_ms),
            loss=float(loss),
            duplicate=float(duplicate),
            reorder=reorder,
        )
        self._replace("link", lambda r: (r.src, r.dst) == (src, dst), [] if rule.is_noop else [rule])

    def link_all(
        self,
        *,
        delay_ms: float = 0,
        jitter_ms: float = 0,
        loss: float = 0,
        duplicate: float = 0,
        reorder: bool = False,
    ) -> None:
        """link(src, dst, ...) for every ordered pair of nodes, in one rules update (replaces every
        link rule; all zero removes them)."""
        self._need_proxies()
        rules = [
            LinkRule(
                NodeName(a),
                NodeName(b),
                "link",
                delay_ms=float(delay_ms),
                jitter_ms=float(jitter_ms),
                loss=float(loss),
                duplicate=float(duplicate),
                reorder=reorder,
            )
            for a in self._names
            for b in self._names
            if a != b
        ]
        self._replace("link", lambda r: True, [r for r in rules if not r.is_noop])

    def sever(self, a: str, b: str) -> None:
        """Break every stream between a and b and refuse new ones (both directions) until healed."""
        self._need_proxies()
        a, b = self._check_pair(a, b)
        rules = [
            LinkRule(NodeName(a), NodeName(b), "sever", sever=True),
            LinkRule(NodeName(b), NodeName(a), "sever", sever=True),
        ]
        self._replace("sever", lambda r: {r.src, r.dst} == {a, b}, rules)

    def heal(self) -> None:
        """Remove every network rule (partitions, one-way, link degradations, severed links)."""
        self._need_proxies()
        self._update(lambda rules: replace(rules, rules=()), reset=True)

    def rules(self) -> RuleSet:
        """The rules in force (as written in rules.json)."""
        return load_rules(self.network.home)

    def stats(self) -> dict[str, Any]:
        """The proxy's last status report: generation applied, counters per direction ("node0->node1":
        forwarded, dropped, lost, duplicated, delayed, overflow) and per link port."""
        return process.read_status(self.network)

    # --- disk faults ------------------------------------------------------------------------------

    def wal_path(self, name: str) -> Path:
        return disk.wal_path(self.network.node(self._check_names([name])[0]).home)

    def truncate_wal(self, name: str, nbytes: int) -> int:
        """Cut the tail of a stopped node's WAL; returns the bytes removed."""
        return disk.truncate_wal(self._stopped_wal(name), nbytes)

    def corrupt_wal(self, name: str, *, at_tail: bool = True) -> int:
        """Flip a byte in the last (or middle) frame of a stopped node's WAL; returns the frame offset."""
        return disk.corrupt_wal(self._stopped_wal(name), at_tail=at_tail)

    def remove_wal(self, name: str) -> Path:
        """The operator's remedy for a corrupt WAL: move it aside (to consensus.wal.removed-<unix time>).
        Returns where it went. The node restarts without the records of its height in progress."""
        path = self._stopped_wal(name)
        if not path.exists():
            raise DiskFaultError(path, "no WAL here")
        target = path.with_name(f"{path.name}.removed-{int(time.time())}")
        path.rename(target)
        return target

    # --- internals --------------------------------------------------------------------------------

    def _check_names(self, names: Iterable[str]) -> tuple[str, ...]:
        checked = []
        for name in names:
            try:
                checked.append(self.network.node(name).name)
            except KeyError:
                raise UnknownNodeError(str(name), self._names) from None
        return tuple(checked)

    def _check_pair(self, a: str, b: str) -> tuple[str, str]:
        a, b = self._check_names([a, b])
        if a == b:
            raise FaultError(f"a link joins two different nodes, not {a} and itself")
        return a, b

    def _need_proxies(self) -> None:
        if not self.network.proxies:
            raise NoProxyError(self.network.home)

    def _stopped_wal(self, name: str) -> Path:
        (name,) = self._check_names([name])
        pid = self.launcher.pid(name)
        if pid is not None:
            raise NodeRunningError(name, pid)
        return disk.wal_path(self.network.node(name).home)

    def _replace(self, kind: RuleKind, match: Any, new: list[LinkRule]) -> None:
        def change(rules: RuleSet) -> RuleSet:
            kept = tuple(r for r in rules.rules if not (r.kind == kind and match(r)))
            return replace(rules, rules=(*kept, *new))

        self._update(change)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        directory = Path(self.network.home) / "faults"
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / "rules.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _update(
        self, change: Any, *, seed: int | None = None, wait: bool = True, reset: bool = False
    ) -> None:
        """Read-modify-write rules.json under a lock, then wait until the running proxy applied it.
        A damaged rules.json is refused (FaultError) unless reset (heal), which replaces it."""
        with self._lock():
            try:
                current = load_rules(self.network.home)
            except FaultRuleError as exc:
                if not reset:
                    raise FaultError(
                        f"{rules_path(self.network.home)} is damaged ({exc}); heal() rewrites it"
                    ) from exc
                applied = process.read_status(self.network).get("generation")
                current = RuleSet(generation=applied if isinstance(applied, int) and applied > 0 else 0)
            new = change(current)
            new = RuleSet(
                generation=current.generation + 1,
                seed=current.seed if seed is None else seed,
                rules=new.rules,
            )
            written_at = time.time()
            save_rules(self.network.home, new)
        if wait:
            self._wait_applied(new.generation, written_at)

    def _wait_applied(self, generation: int, written_at: float, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if process.proxy_pid(self.network) is None:
                return  # nothing running: the proxy reads the rules when it starts
            status = process.read_status(self.network)
            if isinstance(status.get("generation"), int) and status["generation"] >= generation:
                return
            fresh = isinstance(status.get("time"), float) and status["time"] > written_at
            if fresh and status.get("rules_error"):
                raise FaultError(f"the fault proxy refused the rules: {status['rules_error']}")
            if time.monotonic() > deadline:
                raise ProxyError(
                    f"the fault proxy did not apply rules generation {generation} within {timeout:.0f}s"
                )
            time.sleep(0.02)
