"""Runtime mutants: the bugs the adversary found before the hardening, put back into one honest node's
parts, to prove the node simulation catches them (as cluster/sim/mutants.py does for the core).

Each mutant patches the parts of an opened node (`apply(node)`); honest code has no switch for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from node.runtime import Node


@dataclass(frozen=True)
class RuntimeMutant:
    name: str
    description: str
    apply: Callable[[Node], None]
    byzantine_mode: str = ""  # the adversary that exposes it (drawn for the Byzantine validator)


MUTANTS: dict[str, RuntimeMutant] = {}
