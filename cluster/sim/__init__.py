"""Deterministic consensus simulator: many validators, one process, seeded faults and Byzantines.

`python -m cluster.sim --validators 4 --byzantine 1 --seeds 1000 --seed-start 0 [--mutant NAME]`
runs one simulation per seed and prints one JSON object (see `__main__`). Modules: `scenario` (the
faults one seed draws), `app` (blocks, validity, fake signer), `simulation` (network, node runtime,
Byzantine strategies, checkers), `mutants` (deliberately broken cores).
"""

from cluster.sim.mutants import MUTANTS, Mutant
from cluster.sim.simulation import Result, Simulation, Violation, run_seed

__all__ = ["MUTANTS", "Mutant", "Result", "Simulation", "Violation", "run_seed"]
