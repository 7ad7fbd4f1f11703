"""The committed chain as the rest of the node sees it: the tip and the validator set of each height.

`Chain` is read by every part (execution, validation, the client service) and advanced by one:
block execution, right after a block is durably committed. The validator sets follow the core's
schedule (node/consensus/schedule.py: a change committed in block H signs from H + 2), restored at
startup from the changes the block store keeps.
"""

from __future__ import annotations

from collections.abc import Sequence

from clearline.v1 import block_pb2
from node import blocks, crypto
from node.consensus import Validator, ValidatorSchedule, ValidatorSet, activation_height
from node.errors import InvariantBroken
from node.storage import NodeStore


def to_core_set(vs: block_pb2.ValidatorSet) -> ValidatorSet:
    return ValidatorSet(
        [Validator(address=v.address, public_key=v.public_key, power=v.power) for v in vs.validators]
    )


def apply_validator_updates(
    vs: block_pb2.ValidatorSet, updates: Sequence[tuple[bytes, int]]
) -> block_pb2.ValidatorSet:
    """The set after ChangeValidator updates (power 0 removes), sorted by address."""
    by_key = {v.public_key: (v.power, v.name) for v in vs.validators}
    for public_key, power in updates:
        if power == 0:
            by_key.pop(public_key, None)
        else:
            by_key[public_key] = (power, by_key.get(public_key, (0, ""))[1])
    out = block_pb2.ValidatorSet()
    for public_key, (power, name) in sorted(by_key.items(), key=lambda kv: crypto.address_of(kv[0])):
        out.validators.add(
            address=crypto.address_of(public_key), public_key=public_key, power=power, name=name
        )
    return out


class Chain:
    """The last committed block (header, hash, certificate) and the validator-set schedule."""

    def __init__(self, store: NodeStore, chain_id: str, genesis_time_ms: int) -> None:
        self.chain_id = chain_id
        self.genesis_time_ms = genesis_time_ms
        self.height = store.latest_height()
        self.last_header: block_pb2.Header | None = None
        self.last_block_hash = b""
        self.last_commit = block_pb2.CommitCertificate()
        if self.height > 0:
            block = store.load_block(self.height)
            commit = store.load_commit(self.height)
            if block is None or commit is None:
                raise InvariantBroken(
                    "the block store lacks the block or commit of its latest height", self.height
                )
            self.last_header = block.header
            self.last_block_hash = blocks.block_hash(block.header)
            self.last_commit = commit
        changes = store.validator_set_changes()
        first = store.load_validator_set(1) if changes else None
        if first is None:
            raise InvariantBroken("the block store has no genesis validator set", self.height)
        self._schedule: ValidatorSchedule[block_pb2.ValidatorSet] = ValidatorSchedule(first)
        for start in changes[1:]:
            vs = store.load_validator_set(start)
            if vs is None:
                raise InvariantBroken(f"the validator set of height {start} is listed but unreadable")
            self._schedule.record_change(start - 2, vs)
        self._core_sets: dict[int, ValidatorSet] = {}
        self._members: dict[int, dict[bytes, bytes]] = {}

    # --- the tip ----------------------------------------------------------------------------------

    @property
    def last_time_ms(self) -> int:
        """The last block's time (the genesis time before the first block): the next must be later."""
        return self.last_header.time_ms if self.last_header is not None else self.genesis_time_ms

    def advance(self, block: block_pb2.Block, block_hash: bytes, cert: block_pb2.CommitCertificate) -> None:
        """Block `block` is durably committed."""
        if block.header.height != self.height + 1:
            raise InvariantBroken(f"advancing to block {block.header.height}", self.height)
        self.height = block.header.height
        self.last_header = block.header
        self.last_block_hash = block_hash
        self.last_commit = cert

    # --- validator sets ---------------------------------------------------------------------------

    def is_final(self, height: int) -> bool:
        """Is the set of `height` fixed (no block still to commit can change it)?"""
        return height <= self.height + 2

    def known_validator_set(self, height: int) -> block_pb2.ValidatorSet | None:
        """The set that signs `height`, or None before genesis. Beyond the last committed height + 2
        the answer is provisional."""
        if height < 1:
            return None
        return self._schedule.validators_for(height)

    def validator_set(self, height: int) -> block_pb2.ValidatorSet:
        vs = self.known_validator_set(height)
        if vs is None:
            raise InvariantBroken(f"no validator set known for height {height}", self.height)
        return vs

    def core_set(self, height: int) -> ValidatorSet:
        """The set of `height` as the consensus core takes it (cached while final)."""
        core = self._core_sets.get(height)
        if core is None:
            core = to_core_set(self.validator_set(height))
            if self.is_final(height):
                if len(self._core_sets) > 64:
                    self._core_sets.clear()
                self._core_sets[height] = core
        return core

    def validator_key(self, height: int, address: bytes) -> bytes | None:
        """The public key of validator `address` at `height`, or None if it is not a member."""
        members = self._members.get(height)
        if members is None:
            vs = self.known_validator_set(height)
            if vs is None:
                return None
            members = {v.address: v.public_key for v in vs.validators}
            if self.is_final(height):
                if len(self._members) > 64:
                    self._members.clear()
                self._members[height] = members
        return members.get(address)

    def next_sets(
        self, height: int, updates: Sequence[tuple[bytes, int]]
    ) -> dict[int, block_pb2.ValidatorSet]:
        """The validator set block `height` schedules, keyed by the height it takes effect (empty
        without updates): what the block store writes with the block."""
        if not updates:
            return {}
        return {activation_height(height): apply_validator_updates(self.validator_set(height + 1), updates)}

    def record_sets(self, height: int, sets: dict[int, block_pb2.ValidatorSet]) -> None:
        """Block `height`, now committed, scheduled `sets` (from next_sets)."""
        for _at, vs in sets.items():
            self._schedule.record_change(height, vs)
