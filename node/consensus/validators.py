"""Validator sets: voting power thresholds and the weighted round-robin proposer.

Thresholds are by voting power: `has_quorum` is "2f+1" (> 2/3 of the total power) and
`has_one_third` is "f+1" (> 1/3). The proposer of (height, round) is a pure function of the set and
`height + round`: a smooth weighted round-robin (the priority scheme of CometBFT: every step each
validator gains its power, the highest priority proposes and pays the total). Starting from zero
priorities, the schedule repeats every `total_power / gcd(powers)` steps and in one period every
validator proposes exactly power/gcd times, so proposer frequencies are proportional to power.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from node.consensus.errors import InvalidValidatorSet
from node.consensus.types import Address, Height, Power, Round

MAX_SCHEDULE_PERIOD = 1 << 16
"""Longer proposer periods are approximated by scaling powers down to this total (deterministic)."""


@dataclass(frozen=True, slots=True)
class Validator:
    """One member of a validator set."""

    address: Address
    """node.crypto.address_of(public_key)."""
    public_key: bytes
    """Ed25519 public key (32 bytes)."""
    power: Power
    """Voting power, > 0."""


def _length_prefixed(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


class ValidatorSet:
    """An immutable set of validators, sorted by address."""

    __slots__ = (
        "_by_address",
        "_hash",
        "_period",
        "_priorities",
        "_schedule",
        "_validators",
        "_weights",
        "total_power",
    )

    def __init__(self, validators: Sequence[Validator]) -> None:
        if not validators:
            raise InvalidValidatorSet("a validator set needs at least one validator")
        by_address: dict[Address, Validator] = {}
        for v in validators:
            if v.power <= 0:
                raise InvalidValidatorSet(f"validator {v.address.hex()} has non-positive power {v.power}")
            if v.address in by_address:
                raise InvalidValidatorSet(f"duplicate validator address {v.address.hex()}")
            by_address[v.address] = v
        self._validators: tuple[Validator, ...] = tuple(sorted(validators, key=lambda v: v.address))
        self._by_address = by_address
        self.total_power: Power = sum(v.power for v in self._validators)
        self._hash: bytes | None = None
        powers = [v.power for v in self._validators]
        g = math.gcd(*powers)
        weights = [p // g for p in powers]
        if sum(weights) > MAX_SCHEDULE_PERIOD:
            weights = [max(1, p * MAX_SCHEDULE_PERIOD // self.total_power) for p in powers]
        self._weights: tuple[int, ...] = tuple(weights)
        self._period = sum(weights)
        self._schedule: list[int] = []
        self._priorities: list[int] = [0] * len(weights)

    # --- membership -------------------------------------------------------------------------------

    @property
    def validators(self) -> tuple[Validator, ...]:
        """The validators, sorted by address."""
        return self._validators

    def __len__(self) -> int:
        return len(self._validators)

    def __iter__(self) -> Iterator[Validator]:
        return iter(self._validators)

    def __contains__(self, address: object) -> bool:
        return address in self._by_address

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValidatorSet) and self._validators == other._validators

    def __hash__(self) -> int:
        return hash(self._validators)

    def __repr__(self) -> str:
        inner = ", ".join(f"{v.address.hex()[:8]}:{v.power}" for v in self._validators)
        return f"ValidatorSet({inner})"

    def get(self, address: Address) -> Validator | None:
        """The validator with this address, or None."""
        return self._by_address.get(address)

    def power_of(self, address: Address) -> Power:
        """Voting power of address (0 if it is not a member)."""
        v = self._by_address.get(address)
        return 0 if v is None else v.power

    # --- thresholds -------------------------------------------------------------------------------

    def has_quorum(self, power: Power) -> bool:
        """ "2f+1": more than 2/3 of the total voting power."""
        return power * 3 > self.total_power * 2

    def has_one_third(self, power: Power) -> bool:
        """ "f+1": more than 1/3 of the total voting power."""
        return power * 3 > self.total_power

    @property
    def quorum(self) -> Power:
        """The least power that is more than 2/3 of the total."""
        return self.total_power * 2 // 3 + 1

    @property
    def one_third(self) -> Power:
        """The least power that is more than 1/3 of the total."""
        return self.total_power // 3 + 1

    # --- proposer ---------------------------------------------------------------------------------

    def proposer(self, height: Height, round: Round) -> Validator:
        """The proposer of (height, round): position height + round of the weighted round-robin."""
        if height < 0 or round < 0:
            raise ValueError(f"negative height or round: ({height}, {round})")
        index = (height + round) % self._period
        while len(self._schedule) <= index:
            self._schedule.append(self._next_in_schedule())
        return self._validators[self._schedule[index]]

    def _next_in_schedule(self) -> int:
        prio = self._priorities
        best = 0
        for i, w in enumerate(self._weights):
            prio[i] += w
            if prio[i] > prio[best]:
                best = i
        prio[best] -= self._period
        return best

    # --- identity ---------------------------------------------------------------------------------

    def hash(self) -> bytes:
        """SHA-256 over (address, public key, power) of every validator in address order."""
        if self._hash is None:
            h = hashlib.sha256(b"clearline/validator-set/v1")
            for v in self._validators:
                h.update(
                    _length_prefixed(v.address) + _length_prefixed(v.public_key) + struct.pack(">Q", v.power)
                )
            self._hash = h.digest()
        return self._hash
