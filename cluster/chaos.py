"""`clearline chaos`: a seeded, randomized fault schedule against a fresh network under a workload,
then the checker.

    clearline chaos --duration 120 --seed 7 [--validators 4]
                    [--faults kill,pause,partition,link,disk,byzantine,flood] [--retain-blocks K] [--json]

The schedule is a pure function of the seed (printed with the result): a sequence of episodes, each
one fault held for a few seconds and then healed. Never more than f validators are Byzantine at
once; crashes, pauses and partitions may take down more than f, since every episode heals. A flood
is a hostile client (cluster/faults/attacks.py: throwaway-key, nonce-gap or oversized transactions)
hammering one node's client API for the episode. After each heal the time until every node has
committed two more blocks is measured (recovery). At the end everything is healed, the workload
stops, and the checker reads every node: no fork, no acknowledged transaction lost, nothing
committed twice, supplies conserved, every equivocation as evidence; and two properties observed
during the run: while at most f validators were faulty the chain never went longer than the
liveness bound without a commit (`max_commit_gap_s`), and no node's RSS, sampled every second,
exceeded its memory budget (`max_rss_mib`). Exit status 0 only if there is no violation and every
recovery stayed within the bound.

With --retain-blocks K every node prunes ([storage] retain_blocks = K, snapshots every K/2 heights so
that the oldest one served does not hold the base back): the chain is recorded while it runs
(cluster/recorder.py) for the checker, each node's blocks are compared from its base on, and the
result names every node's base height (`base_heights`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster.checker import (
    FaultWindow,
    check,
    compute_liveness,
    compute_memory,
    liveness_bound_s,
)
from cluster.client import ClientError
from cluster.faults import Nemesis
from cluster.faults.attacks import (
    ATTACKS,
    CALL_TIMEOUT_S,
    AttackError,
    RssSampler,
    load_senders,
    node_budgets,
    run_attack,
)
from cluster.launcher import Launcher, node_height, stop_nodes_on_sigterm
from cluster.netgen import Network, init_network
from cluster.ports import free_base_port
from cluster.progress import Progress
from cluster.recorder import ChainRecorder
from cluster.workload import Workload, funded, workload_accounts
from node.config import BYZANTINE_MODES, MIN_RETAIN_BLOCKS, ConfigError, ConsensusConfig

FAULT_KINDS = ("kill", "pause", "partition", "link", "disk", "byzantine", "flood")
EQUIVOCATING = {"equivocate", "double-vote"}
RECOVERY_BOUND_S = 60.0
# The hostile clients' accounts (funded at genesis, never used by the workload): the gap flood's
# senders, whose missing nonces never come.
ATTACKERS = ("mallory0", "mallory1", "mallory2")
# Transactions per flood episode, by attack (the flood also stops when the episode's hold ends).
FLOOD_COUNTS = {"throwaway": (500, 1000, 2500), "gap": (150, 600, 1500), "oversized": (100, 300)}
RSS_INTERVAL_S = 1.0


@dataclass
class Episode:
    kind: str
    nodes: list[str]
    hold_s: float
    pause_after_s: float
    params: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    applied: bool = False
    recovery_s: float | None = None
    # Wall-clock span (time.time()) from the fault's start to the end of its recovery: the fault
    # window the liveness check sees.
    wall_start: float = 0.0
    wall_end: float = 0.0
    result: dict[str, Any] | None = None  # a flood's summary


def faulty_count(ep: Episode, n: int) -> int:
    """How many of n validators an episode counts as faulty, conservatively: killed, paused,
    Byzantine and stopped nodes; for a partition, everyone outside the largest group (one-way: the
    smaller side); a link fault with message loss on every link, all n. A flood (a hostile client)
    and delays or duplicates alone make no validator faulty: the chain must stay live through them."""
    if ep.kind in ("kill", "pause", "byzantine", "disk"):
        return len(ep.nodes)
    if ep.kind == "partition":
        sizes = [len(g) for g in ep.params["groups"]]
        return min(sizes) if ep.params.get("one_way") else n - max(sizes)
    if ep.kind == "link":
        return n if ep.params.get("loss", 0.0) > 0 else 0
    return 0


def make_schedule(seed: int, duration: float, names: list[str], kinds: list[str]) -> list[Episode]:
    """The fault schedule for a seed: the same seed always gives the same schedule."""
    rng = random.Random(seed)
    n = len(names)
    f = (n - 1) // 3
    episodes: list[Episode] = []
    t = 3.0
    while t < duration:
        kind = rng.choice(kinds)
        hold = round(rng.uniform(2.0, 6.0), 1)
        pause = round(rng.uniform(1.0, 3.0), 1)
        params: dict[str, Any] = {}
        if kind == "kill":
            nodes = rng.sample(names, rng.randint(1, max(1, n - 1)))
        elif kind == "pause":
            nodes = rng.sample(names, rng.randint(1, n))
        elif kind == "partition":
            shuffled = rng.sample(names, n)
            cut = rng.randint(1, n - 1)
            nodes = shuffled
            params = {
                "groups": [sorted(shuffled[:cut]), sorted(shuffled[cut:])],
                "one_way": rng.random() < 0.3,
            }
        elif kind == "link":
            nodes = list(names)
            params = {
                "delay_ms": rng.choice([0, 5, 20, 50]),
                "jitter_ms": rng.choice([0, 5, 20]),
                "loss": rng.choice([0.0, 0.01, 0.05]),
                "duplicate": rng.choice([0.0, 0.01, 0.05]),
            }
        elif kind == "disk":
            nodes = [rng.choice(names)]
            params = {"truncate_bytes": rng.randint(1, 24)}
        elif kind == "flood":  # one hostile client against one node's API
            nodes = [rng.choice(names)]
            attack = rng.choice(ATTACKS)
            params = {"attack": attack, "count": rng.choice(FLOOD_COUNTS[attack])}
        else:  # byzantine: at most f at once
            nodes = rng.sample(names, max(1, f))
            params = {"mode": rng.choice(BYZANTINE_MODES)}
        episodes.append(
            Episode(kind=kind, nodes=sorted(nodes), hold_s=hold, pause_after_s=pause, params=params)
        )
        t += hold + pause + 2.0
    return episodes


def wait_recovery(network: Network, bound_s: float) -> float | None:
    """Seconds until every node has committed two blocks past the highest height seen now."""
    start = time.monotonic()
    heights = [node_height(n.api_target, tls=network.client_tls()) for n in network.nodes]
    goal = max((h for h in heights if h is not None), default=0) + 2
    while time.monotonic() - start < bound_s:
        if all((node_height(n.api_target, tls=network.client_tls()) or 0) >= goal for n in network.nodes):
            return round(time.monotonic() - start, 2)
        time.sleep(0.2)
    return None


class Chaos:
    def __init__(self, network: Network, launcher: Launcher, nemesis: Nemesis, log: Any) -> None:
        self.network = network
        self.launcher = launcher
        self.nemesis = nemesis
        self.log = log
        self.equivocators: set[bytes] = set()
        self._floods: dict[int, threading.Thread] = {}

    def apply(self, ep: Episode) -> None:
        n = self.nemesis
        if ep.kind == "kill":
            n.kill(*ep.nodes)
        elif ep.kind == "pause":
            n.pause(*ep.nodes)
        elif ep.kind == "partition":
            groups = ep.params["groups"]
            if ep.params.get("one_way"):
                for src in groups[0]:
                    for dst in groups[1]:
                        n.one_way(src, dst)
            else:
                n.partition(*groups)
        elif ep.kind == "link":
            n.link_all(
                delay_ms=ep.params["delay_ms"], jitter_ms=ep.params["jitter_ms"],
                loss=ep.params["loss"], duplicate=ep.params["duplicate"],
            )  # fmt: skip
        elif ep.kind == "disk":
            name = ep.nodes[0]
            n.stop(name)
            removed = n.truncate_wal(name, ep.params["truncate_bytes"])
            self.log(f"    truncated {removed} bytes of {name}'s WAL")
            n.start(name)
        elif ep.kind == "byzantine":
            mode = ep.params["mode"]
            for name in ep.nodes:
                self.launcher.stop(name)
                self.launcher.start(name, args=["--byzantine", mode])
                if mode in EQUIVOCATING:
                    self.equivocators.add(bytes.fromhex(self.network.node(name).address))
        elif ep.kind == "flood":
            thread = threading.Thread(target=self._flood, args=(ep,), name="flood", daemon=True)
            self._floods[id(ep)] = thread
            thread.start()

    def _flood(self, ep: Episode) -> None:
        """Runs in its own thread for at most the episode's hold; its summary goes to ep.result."""
        try:
            senders = load_senders(self.network, [a for a in ATTACKERS if a in self.network.accounts])
            summary = run_attack(
                self.network, ep.params["attack"], ep.nodes[0], count=ep.params["count"],
                max_seconds=ep.hold_s, senders=senders,
            )  # fmt: skip
            ep.result = summary.as_dict()
        except (AttackError, ClientError, ConfigError, OSError) as exc:
            # Reported with the episode: a flood that could not run does not stop the run.
            ep.result = {"error": f"{type(exc).__name__}: {exc}"}

    def heal(self, ep: Episode) -> None:
        n = self.nemesis
        if ep.kind == "kill":
            n.start(*ep.nodes)
        elif ep.kind == "pause":
            n.resume(*ep.nodes)
        elif ep.kind in ("partition", "link"):
            n.heal()
        elif ep.kind == "byzantine":
            for name in ep.nodes:
                self.launcher.stop(name)
                self.launcher.start(name)
        elif ep.kind == "flood":
            thread = self._floods.pop(id(ep), None)
            if thread is not None:
                thread.join(timeout=ep.hold_s + CALL_TIMEOUT_S + 30)
                if ep.result is None:
                    ep.result = {"error": "the flood did not finish (see the traceback above)"}
                self.log(f"    flood: {ep.result}")

    def heal_all(self) -> None:
        self.nemesis.heal()
        for node in self.network.nodes:
            self.launcher.resume(node.name)
            if self.launcher.pid(node.name) is None:
                self.launcher.start(node.name)


def _run_workload(workload: Workload, stop: threading.Event) -> threading.Thread:
    def main() -> None:
        async def go() -> None:
            ev = asyncio.Event()

            async def watch() -> None:
                while not stop.is_set():
                    await asyncio.sleep(0.1)
                ev.set()

            watcher = asyncio.create_task(watch())
            await workload.run(ev)
            await watcher

        asyncio.run(go())

    thread = threading.Thread(target=main, name="workload", daemon=True)
    thread.start()
    return thread


CHAOS_CONSENSUS = ConsensusConfig(
    timeout_propose_ms=1500, timeout_prevote_ms=500, timeout_precommit_ms=500, timeout_commit_ms=50
)


def fault_windows(schedule: list[Episode], n: int) -> list[FaultWindow]:
    """The applied episodes as fault windows (fault start to end of recovery) for compute_liveness."""
    return [
        FaultWindow(ep.wall_start, ep.wall_end, faulty_count(ep, n), f"{ep.kind} {','.join(ep.nodes)}")
        for ep in schedule
        if ep.applied and ep.wall_end > ep.wall_start
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown:
        raise SystemExit(f"clearline chaos: unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
    names = [f"node{i}" for i in range(args.validators)]
    f = (args.validators - 1) // 3
    schedule = make_schedule(args.seed, args.duration, names, kinds)
    # The episodes done, as a bar on a terminal; the log lines either way (none with --json).
    bar = Progress("episodes", len(schedule), enabled=not args.json)
    log = bar.line
    accounts = workload_accounts(args.clients)
    bound_s = liveness_bound_s(CHAOS_CONSENSUS, f)
    with tempfile.TemporaryDirectory(prefix="clearline-chaos-") as tmp:
        home = Path(args.home) if args.home else Path(tmp) / "net"
        network = init_network(
            home, validators=args.validators, base_port=free_base_port(args.validators * 4, stride=10),
            demo_accounts=accounts + ATTACKERS, funded=funded(accounts + ATTACKERS), faults=True, force=True,
            consensus=CHAOS_CONSENSUS, observers=args.observers, retain_blocks=args.retain_blocks,
            snapshot_interval=max(1, args.retain_blocks // 2) if args.retain_blocks else None,
        )  # fmt: skip
        # Observers are read too: the same chain, the same supply as every validator.
        everyone = [n.name for n in network.all_nodes]
        launcher = Launcher(network)
        nemesis = Nemesis(network, launcher, seed=args.seed)
        chaos = Chaos(network, launcher, nemesis, log)
        history = Path(home) / "history.jsonl"
        stop = threading.Event()
        started = time.monotonic()
        sampler = RssSampler(names, launcher.pid, interval_s=RSS_INTERVAL_S)
        budgets = node_budgets(network)
        recorder = ChainRecorder(network, everyone) if args.retain_blocks else None
        try:
            launcher.start_all()
            launcher.wait_until(
                lambda n: (node_height(n.api_target, tls=network.client_tls()) or 0) >= 1,
                timeout=90,
                what="committing",
            )
            sampler.start()
            if recorder is not None:
                recorder.start()
            log(f"chaos: seed {args.seed}, {len(schedule)} episodes over {args.duration:.0f}s, "
                f"{args.validators} validators, faults {','.join(kinds)}")  # fmt: skip
            workload = Workload(network, accounts, seed=args.seed, history=history, think_s=0.05)
            thread = _run_workload(workload, stop)
            t0 = time.monotonic()
            observed_from = time.time()
            with bar:
                for i, ep in enumerate(schedule):
                    if time.monotonic() - t0 > args.duration:
                        break
                    ep.started_at = round(time.monotonic() - t0, 1)
                    log(
                        f"  [{ep.started_at:6.1f}s] {i + 1}/{len(schedule)} {ep.kind} {ep.nodes} {ep.params or ''}"
                    )
                    ep.wall_start = time.time()
                    chaos.apply(ep)
                    ep.applied = True
                    time.sleep(ep.hold_s)
                    chaos.heal(ep)
                    ep.recovery_s = wait_recovery(network, RECOVERY_BOUND_S)
                    ep.wall_end = time.time()
                    log(f"           healed; recovered in {ep.recovery_s}s" if ep.recovery_s is not None
                        else f"           NOT recovered within {RECOVERY_BOUND_S:.0f}s")  # fmt: skip
                    time.sleep(ep.pause_after_s)
                    bar.advance()
            chaos.heal_all()
            final_recovery = wait_recovery(network, RECOVERY_BOUND_S)
            observed_to = time.time()
            time.sleep(1.0)
            stop.set()
            thread.join(timeout=60)
            # Let every node reach the same height before reading them.
            time.sleep(2.0)
            sampler.stop()
            if recorder is not None:
                recorder.catch_up()
            report = check(
                network, Workload.load_history(history), honest=everyone, equivocators=chaos.equivocators,
                recorded=recorder.blocks if recorder is not None else None,
            )  # fmt: skip
            if recorder is not None:
                report.violations.extend(recorder.gaps)
            report.add_liveness(
                compute_liveness(
                    (t / 1000 for t in report.block_times_ms), fault_windows(schedule, len(names)), f=f,
                    start_s=observed_from, end_s=observed_to, bound_s=bound_s,
                )
            )  # fmt: skip
            report.add_memory(compute_memory(sampler.peak_bytes(), budgets, sampler.samples))
        finally:
            stop.set()
            sampler.stop()
            if recorder is not None:
                recorder.stop()
            launcher.stop_all()
        recoveries = [ep.recovery_s for ep in schedule if ep.applied]
        not_recovered = sum(1 for ep in schedule if ep.applied and ep.recovery_s is None)
        if final_recovery is None:
            not_recovered += 1
        result = report.as_dict()
        result.update(
            seed=args.seed,
            validators=args.validators,
            nodes_checked=everyone,
            duration_s=round(time.monotonic() - started, 1),
            episodes=sum(1 for ep in schedule if ep.applied),
            max_recovery_s=max(
                [r for r in recoveries if r is not None] + [final_recovery or 0.0], default=0.0
            ),
            final_recovery_s=final_recovery,
            not_recovered=not_recovered,
            floods=[ep.result for ep in schedule if ep.applied and ep.kind == "flood"],
            schedule=[asdict(ep) for ep in schedule],
        )
        if not_recovered:
            result["violations"] = [*result["violations"], f"{not_recovered} heal(s) without recovery within "
                                                            f"{RECOVERY_BOUND_S:.0f}s"]  # fmt: skip
        result["ok"] = not result["violations"]
        return result


def summary(r: dict[str, Any]) -> str:
    rss = ", ".join(f"{n} {v:.0f}" for n, v in r["max_rss_mib"].items())
    budget = max(r["memory_budget_mib"].values(), default=0.0)
    lines = [
        f"chaos seed {r['seed']}: {r['episodes']} fault episodes on {r['validators']} validators in {r['duration_s']}s",
        f"  acknowledged {r['acknowledged']}, committed {r['committed']}, unknown {r['unknown']}, failed {r['failed']}",
        f"  lost {r['lost']}, duplicated {r['duplicated']}, forks {r['forks']}, supply ok {r['supply_ok']}, "
        f"evidence ok {r['evidence_ok']} ({r['evidence']} on chain)",
        f"  max recovery {r['max_recovery_s']}s; longest time without a commit with at most f faulty "
        f"{r['max_commit_gap_s']}s (bound {r['liveness_bound_s']}s)",
        f"  peak RSS MiB: {rss} (budget {budget:.0f}); {len(r['floods'])} floods",
        *(
            [
                "  base heights (pruning): "
                + ", ".join(f"{n} {b}" for n, b in sorted(r["base_heights"].items()))
            ]
            if any(b > 1 for b in r.get("base_heights", {}).values())
            else []
        ),
        "  RESULT: " + ("OK" if r["ok"] else "VIOLATIONS:\n    " + "\n    ".join(r["violations"])),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clearline chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validators", type=int, default=4)
    p.add_argument("--faults", default=",".join(FAULT_KINDS))
    p.add_argument("--clients", type=int, default=6)
    p.add_argument(
        "--observers",
        type=int,
        default=0,
        help="non-voting nodes that follow the chain and are checked like the validators (no faults "
        "are injected on them or their links, so one may carry messages across a partition)",
    )
    p.add_argument(
        "--retain-blocks",
        type=int,
        default=0,
        help="every node prunes, keeping this many blocks ([storage] retain_blocks; at least "
        f"{MIN_RETAIN_BLOCKS}); 0 keeps every block",
    )
    p.add_argument("--home", default="", help="network directory (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--schedule-only", action="store_true", help="print the schedule for the seed and exit")
    args = p.parse_args(argv)
    if 0 < args.retain_blocks < MIN_RETAIN_BLOCKS:
        p.error(f"--retain-blocks: at least {MIN_RETAIN_BLOCKS} (or 0: keep every block)")
    stop_nodes_on_sigterm()
    if args.schedule_only:
        names = [f"node{i}" for i in range(args.validators)]
        kinds = [k for k in args.faults.split(",") if k]
        print(json.dumps([asdict(e) for e in make_schedule(args.seed, args.duration, names, kinds)]))
        return 0
    result = run(args)
    if not args.json:
        print(summary(result))
    out = {k: v for k, v in result.items() if k != "schedule"} if not args.json else result
    print(json.dumps(out))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
