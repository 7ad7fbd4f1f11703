"""`python -m cluster.simnode` (`make sim-node ARGS=...`): the whole node under deterministic simulation,
over a range of seeds, in parallel processes; one JSON summary on stdout.

    python -m cluster.simnode --validators 4 --byzantine 1 --seeds 200 --seed-start 0 [--mutant NAME]
        [--duration 60] [--jobs N] [--trace]

Output keys: seeds, seed_start, validators, byzantine, mutant, duration_s, heights_decided (the
lowest honest height of each seed, summed), acknowledged, simulated_seconds, wall_seconds,
speedup (simulated seconds per wall second of one process), max_commit_gap_s, peak_holdings (the
highest share of each bounded structure's bound seen on an honest node), violations (a list of
{seed, description}), first_violation_seed, and with --trace trace_reproduced (the failing seed
replayed with every message recorded gave the same violations; the events that led to the first
one go to stderr, every event to --trace-file). Exit code 1 when there is a violation. `--seed-start S --seeds 1` replays one seed
exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cluster.simnode.mutants import MUTANTS
from cluster.simnode.world import Outcome, Settings, run_seed
from node.config import BYZANTINE_MODES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster.simnode", description=__doc__.splitlines()[0])
    p.add_argument("--validators", type=int, default=4)
    p.add_argument("--byzantine", type=int, default=1, help="Byzantine validators (at most f)")
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--seed-start", type=int, default=0)
    p.add_argument("--duration", type=float, default=60.0, help="simulated seconds per seed")
    p.add_argument("--mutant", choices=sorted(MUTANTS), default=None)
    p.add_argument(
        "--byzantine-mode", choices=BYZANTINE_MODES, default=None,
        help="every Byzantine validator runs this strategy (default: drawn per seed)",
    )  # fmt: skip
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes")
    p.add_argument("--no-faults", action="store_true", help="no crashes, partitions or bad links")
    p.add_argument(
        "--state-sync", action="store_true",
        help="the adversary also wipes honest nodes' disks (all but the sign state): they rejoin by state sync",
    )  # fmt: skip
    p.add_argument(
        "--trace", action="store_true",
        help="replay the first failing seed with every message recorded; print the events that led to "
        "its first violation to stderr",
    )  # fmt: skip
    p.add_argument("--max-memory-gib", type=float, default=4.0, help="per seed process")
    p.add_argument("--trace-file", default=None, help="with --trace: write every event of that seed here")
    return p


def _limit_memory(gib: float) -> None:
    """One runaway seed must not take the machine (or the other seeds) down: past this, MemoryError
    ends that seed, reported as its violation."""
    limit = int(gib * (1 << 30))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _one(args: tuple[Settings]) -> tuple[Outcome, float]:
    started = time.perf_counter()
    try:
        outcome = run_seed(args[0])
    except Exception as exc:  # MemoryError included: the simulation itself failed on this seed: report it
        outcome = Outcome(
            seed=args[0].seed,
            heights={},
            simulated_seconds=0.0,
            acknowledged=0,
            violations=[f"the simulation of this seed failed: {exc!r}"],
        )
    return outcome, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    f = (args.validators - 1) // 3
    if args.validators < 1 or not 0 <= args.byzantine <= f:
        print(f"need validators >= 1 and 0 <= byzantine <= f ({f})", file=sys.stderr)
        return 2
    settings = [
        Settings(
            validators=args.validators,
            byzantine=args.byzantine,
            seed=seed,
            duration_s=args.duration,
            faults=not args.no_faults,
            mutant=args.mutant or "",
            byzantine_mode=args.byzantine_mode or "",
            state_sync=args.state_sync or dict(MUTANTS[args.mutant].settings).get("state_sync", False)
            if args.mutant
            else args.state_sync,
        )
        for seed in range(args.seed_start, args.seed_start + args.seeds)
    ]
    started = time.perf_counter()
    if args.jobs > 1 and len(settings) > 1:
        with ProcessPoolExecutor(
            max_workers=args.jobs, initializer=_limit_memory, initargs=(args.max_memory_gib,)
        ) as pool:
            results = list(pool.map(_one, [(s,) for s in settings]))
    else:
        _limit_memory(args.max_memory_gib)
        results = [_one((s,)) for s in settings]
    wall = time.perf_counter() - started
    violations = [{"seed": o.seed, "description": v} for o, _ in results for v in o.violations]
    failing = next((o for o, _ in results if o.violations), None)
    simulated = sum(o.simulated_seconds for o, _ in results)
    busy = sum(w for _, w in results)
    out = {
        "seeds": len(results),
        "seed_start": args.seed_start,
        "validators": args.validators,
        "byzantine": args.byzantine,
        "mutant": args.mutant,
        "duration_s": args.duration,
        "heights_decided": sum(
            min((h for name, h in o.heights.items() if name not in o.modes), default=0) for o, _ in results
        ),
        "acknowledged": sum(o.acknowledged for o, _ in results),
        "simulated_seconds": round(simulated, 1),
        "wall_seconds": round(wall, 1),
        "speedup": round(simulated / busy, 1) if busy else None,
        "max_commit_gap_s": max((o.max_commit_gap_s for o, _ in results), default=0.0),
        "peak_holdings": {
            what: max(o.peak_holdings.get(what, 0.0) for o, _ in results)
            for what in sorted({w for o, _ in results for w in o.peak_holdings})
        },
        "first_violation_seed": failing.seed if failing else None,
        "violations": violations,
    }
    if args.trace and failing is not None:
        # The seed replays exactly; this time with every message, commit and client call recorded.
        replay = run_seed(dataclasses.replace(settings[failing.seed - args.seed_start], trace=True))
        out["trace_reproduced"] = replay.violations == failing.violations
        print("\n".join(replay.focused_trace or failing.trace), file=sys.stderr)
        if args.trace_file:
            Path(args.trace_file).write_text("\n".join(replay.full_trace) + "\n")
    print(json.dumps(out, sort_keys=True))
    return 1 if violations else 0


if __name__ == "__main__":
    raise SystemExit(main())
