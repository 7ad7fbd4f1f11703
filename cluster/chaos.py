"""`clearline chaos`: a seeded, randomized fault schedule against a fresh network under a workload,
then the checker.

    clearline chaos --duration 120 --seed 7 [--validators 4]
                    [--faults kill,pause,partition,link,disk,byzantine] [--json]

The schedule is a pure function of the seed (printed with the result): a sequence of episodes, each
one fault held for a few seconds and then healed. Never more than f validators are Byzantine at
once; crashes, pauses and partitions may take down more than f, since every episode heals. After
each heal the time until every node has committed two more blocks is measured (recovery). At the end
everything is healed, the workload stops, and the checker reads every node: no fork, no acknowledged
transaction lost, nothing committed twice, supplies conserved, every equivocation as evidence.
Exit status 0 only if there is no violation and every recovery stayed within the bound.
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

from cluster.checker import check
from cluster.faults import Nemesis
from cluster.launcher import Launcher, node_height, stop_nodes_on_sigterm
from cluster.netgen import Network, init_network
from cluster.ports import free_base_port
from cluster.workload import Workload, funded, workload_accounts
from node.config import ConsensusConfig

FAULT_KINDS = ("kill", "pause", "partition", "link", "disk", "byzantine")
BYZANTINE_MODES = ("equivocate", "double-vote", "bad-state-root", "forged-tx", "garbage", "silent")
EQUIVOCATING = {"equivocate", "double-vote"}
RECOVERY_BOUND_S = 60.0


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
    heights = [node_height(n.api_target) for n in network.nodes]
    goal = max((h for h in heights if h is not None), default=0) + 2
    while time.monotonic() - start < bound_s:
        if all((node_height(n.api_target) or 0) >= goal for n in network.nodes):
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


def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown:
        raise SystemExit(f"clearline chaos: unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
    quiet = args.json

    def log(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    names = [f"node{i}" for i in range(args.validators)]
    schedule = make_schedule(args.seed, args.duration, names, kinds)
    accounts = workload_accounts(args.clients)
    with tempfile.TemporaryDirectory(prefix="clearline-chaos-") as tmp:
        home = Path(args.home) if args.home else Path(tmp) / "net"
        network = init_network(
            home, validators=args.validators, base_port=free_base_port(args.validators * 4, stride=10),
            demo_accounts=accounts, funded=funded(accounts), faults=True, force=True,
            consensus=ConsensusConfig(timeout_propose_ms=1500, timeout_prevote_ms=500, timeout_precommit_ms=500,
                                      timeout_commit_ms=50),
        )  # fmt: skip
        launcher = Launcher(network)
        nemesis = Nemesis(network, launcher, seed=args.seed)
        chaos = Chaos(network, launcher, nemesis, log)
        history = Path(home) / "history.jsonl"
        stop = threading.Event()
        started = time.monotonic()
        try:
            launcher.start_all()
            launcher.wait_until(
                lambda n: (node_height(n.api_target) or 0) >= 1, timeout=90, what="committing"
            )
            log(f"chaos: seed {args.seed}, {len(schedule)} episodes over {args.duration:.0f}s, "
                f"{args.validators} validators, faults {','.join(kinds)}")  # fmt: skip
            workload = Workload(network, accounts, seed=args.seed, history=history, think_s=0.05)
            thread = _run_workload(workload, stop)
            t0 = time.monotonic()
            for i, ep in enumerate(schedule):
                if time.monotonic() - t0 > args.duration:
                    break
                ep.started_at = round(time.monotonic() - t0, 1)
                log(
                    f"  [{ep.started_at:6.1f}s] {i + 1}/{len(schedule)} {ep.kind} {ep.nodes} {ep.params or ''}"
                )
                chaos.apply(ep)
                ep.applied = True
                time.sleep(ep.hold_s)
                chaos.heal(ep)
                ep.recovery_s = wait_recovery(network, RECOVERY_BOUND_S)
                log(f"           healed; recovered in {ep.recovery_s}s" if ep.recovery_s is not None
                    else f"           NOT recovered within {RECOVERY_BOUND_S:.0f}s")  # fmt: skip
                time.sleep(ep.pause_after_s)
            chaos.heal_all()
            final_recovery = wait_recovery(network, RECOVERY_BOUND_S)
            time.sleep(1.0)
            stop.set()
            thread.join(timeout=60)
            # Let every node reach the same height before reading them.
            time.sleep(2.0)
            report = check(network, Workload.load_history(history), equivocators=chaos.equivocators)
        finally:
            stop.set()
            launcher.stop_all()
        recoveries = [ep.recovery_s for ep in schedule if ep.applied]
        not_recovered = sum(1 for ep in schedule if ep.applied and ep.recovery_s is None)
        if final_recovery is None:
            not_recovered += 1
        result = report.as_dict()
        result.update(
            seed=args.seed,
            validators=args.validators,
            duration_s=round(time.monotonic() - started, 1),
            episodes=sum(1 for ep in schedule if ep.applied),
            max_recovery_s=max(
                [r for r in recoveries if r is not None] + [final_recovery or 0.0], default=0.0
            ),
            final_recovery_s=final_recovery,
            not_recovered=not_recovered,
            schedule=[asdict(ep) for ep in schedule],
        )
        if not_recovered:
            result["violations"] = [*result["violations"], f"{not_recovered} heal(s) without recovery within "
                                                            f"{RECOVERY_BOUND_S:.0f}s"]  # fmt: skip
        result["ok"] = not result["violations"]
        return result


def summary(r: dict[str, Any]) -> str:
    lines = [
        f"chaos seed {r['seed']}: {r['episodes']} fault episodes on {r['validators']} validators in {r['duration_s']}s",
        f"  acknowledged {r['acknowledged']}, committed {r['committed']}, unknown {r['unknown']}, failed {r['failed']}",
        f"  lost {r['lost']}, duplicated {r['duplicated']}, forks {r['forks']}, supply ok {r['supply_ok']}, "
        f"evidence ok {r['evidence_ok']} ({r['evidence']} on chain)",
        f"  max recovery {r['max_recovery_s']}s",
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
    p.add_argument("--home", default="", help="network directory (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--schedule-only", action="store_true", help="print the schedule for the seed and exit")
    args = p.parse_args(argv)
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
