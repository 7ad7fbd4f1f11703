"""Command line of the simulator: run a range of seeds and print one JSON summary.

    python -m cluster.sim --validators 4 --byzantine 1 --seeds 1000 --seed-start 0 [--mutant NAME]
        [--heights H] [--strategies a,b] [--stop-on-first]

Output keys: seeds, seed_start, validators, byzantine, heights, mutant, heights_decided (sum over
seeds), max_rounds_per_height, deliveries, violations (list of {seed, description}) and
first_violation_seed. Exit code 1 when there is any violation, 0 otherwise. `--seed-start S --seeds 1`
replays one seed exactly.
"""

from __future__ import annotations

import argparse
import json
import sys

from cluster.sim.mutants import MUTANTS
from cluster.sim.scenario import STRATEGIES
from cluster.sim.simulation import run_seed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster.sim", description=__doc__.splitlines()[0])
    p.add_argument("--validators", type=int, default=4)
    p.add_argument(
        "--byzantine", type=int, default=1, help="number of Byzantine validators (power < 1/3 enforced)"
    )
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--seed-start", type=int, default=0)
    p.add_argument(
        "--heights", type=int, default=4, help="heights with Byzantine activity (plus a clean tail)"
    )
    p.add_argument("--mutant", choices=sorted(MUTANTS), default=None)
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated Byzantine strategies")
    p.add_argument("--stop-on-first", action="store_true", help="stop at the first seed with a violation")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.validators < 1 or not 0 <= args.byzantine < args.validators:
        print("need validators >= 1 and 0 <= byzantine < validators", file=sys.stderr)
        return 2
    strategies = tuple(s for s in args.strategies.split(",") if s)
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or not strategies:
        print(f"unknown strategies {unknown}; known: {', '.join(STRATEGIES)}", file=sys.stderr)
        return 2
    mutant = MUTANTS[args.mutant] if args.mutant else None
    violations: list[dict[str, object]] = []
    heights_decided = max_rounds = deliveries = ran = 0
    first: int | None = None
    for seed in range(args.seed_start, args.seed_start + args.seeds):
        result = run_seed(seed, args.validators, args.byzantine, args.heights, mutant, strategies)
        ran += 1
        heights_decided += result.heights_decided
        max_rounds = max(max_rounds, result.max_round)
        deliveries += result.deliveries
        violations.extend({"seed": v.seed, "description": v.description} for v in result.violations)
        if result.violations and first is None:
            first = seed
            if args.stop_on_first:
                break
    out = {
        "seeds": ran,
        "seed_start": args.seed_start,
        "validators": args.validators,
        "byzantine": args.byzantine,
        "heights": args.heights,
        "mutant": args.mutant,
        "heights_decided": heights_decided,
        "max_rounds_per_height": max_rounds,
        "deliveries": deliveries,
        "first_violation_seed": first,
        "violations": violations,
    }
    print(json.dumps(out, sort_keys=True))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
