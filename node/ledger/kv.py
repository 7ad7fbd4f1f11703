"""The key-value interface between the pure ledger and whatever stores its state.

The ledger reads state entries and Merkle nodes through `KVReader.get` and never writes directly:
executing a block yields `Writes` (key -> new value, or None to delete) that the caller commits in
one atomic batch with the block (node/storage does it in one synced LevelDB write batch). So the
ledger stays pure, a node restarts without replaying the chain, and unit tests use `MemoryKV`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

Writes = dict[bytes, bytes | None]


class KVReader(Protocol):
    """Read access to committed state: the value of key, or None if absent."""

    def get(self, key: bytes) -> bytes | None: ...


class MemoryKV:
    """An in-memory KVReader that can apply Writes, for tests, benchmarks and the simulator."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[bytes, bytes] | None = None) -> None:
        self._data: dict[bytes, bytes] = dict(data or {})

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def apply(self, writes: Mapping[bytes, bytes | None]) -> None:
        for key, value in writes.items():
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """All entries in key order (deterministic)."""
        for key in sorted(self._data):
            yield key, self._data[key]

    def __len__(self) -> int:
        return len(self._data)
