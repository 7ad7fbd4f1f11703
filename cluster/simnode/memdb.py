"""An in-memory database with the part of plyvel's interface the block store uses, for the node
simulation: get, put, delete, write batches, snapshots and ordered iterators (prefix, start/stop,
reverse, keys or values only).

Durability is simulated: a write batch with sync=True, or a put with sync=True, is durable when it
returns; other writes reach "the OS" and survive a process crash (`crash`) but not a power loss
(`power_loss` drops them). The block store syncs every write that matters, so what a node keeps
across a crash is exactly what it synced.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any


class _Iterator:
    def __init__(self, items: list[tuple[bytes, bytes]], include_key: bool, include_value: bool) -> None:
        self._items = items
        self._k = include_key
        self._v = include_value
        self._pos = 0

    def __enter__(self) -> _Iterator:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._pos >= len(self._items):
            raise StopIteration
        key, value = self._items[self._pos]
        self._pos += 1
        if self._k and self._v:
            return key, value
        return key if self._k else value

    def close(self) -> None:
        pass


def _select(
    keys: list[bytes],
    data: dict[bytes, bytes],
    *,
    prefix: bytes | None = None,
    start: bytes | None = None,
    stop: bytes | None = None,
    reverse: bool = False,
) -> list[tuple[bytes, bytes]]:
    lo = bisect.bisect_left(keys, prefix) if prefix else bisect.bisect_left(keys, start) if start else 0
    if prefix:
        hi = lo
        while hi < len(keys) and keys[hi].startswith(prefix):
            hi += 1
    else:
        hi = bisect.bisect_left(keys, stop) if stop is not None else len(keys)
    out = [(k, data[k]) for k in keys[lo:hi]]
    return out[::-1] if reverse else out


class _View:
    """Reads over a fixed map (a snapshot) or the live one."""

    def __init__(self, data: dict[bytes, bytes], keys: list[bytes]) -> None:
        self._data = data
        self._keys = keys

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        return self._data.get(key, default)

    def iterator(
        self,
        *,
        prefix: bytes | None = None,
        start: bytes | None = None,
        stop: bytes | None = None,
        reverse: bool = False,
        include_key: bool = True,
        include_value: bool = True,
    ) -> _Iterator:
        items = _select(self._keys, self._data, prefix=prefix, start=start, stop=stop, reverse=reverse)
        return _Iterator(items, include_key, include_value)

    def close(self) -> None:
        pass


class _Batch:
    def __init__(self, db: MemDB, sync: bool) -> None:
        self._db = db
        self._sync = sync
        self._ops: list[tuple[bytes, bytes | None]] = []

    def put(self, key: bytes, value: bytes) -> None:
        self._ops.append((bytes(key), bytes(value)))

    def delete(self, key: bytes) -> None:
        self._ops.append((bytes(key), None))

    def write(self) -> None:
        self._db._apply(self._ops, self._sync)


class MemDB(_View):
    """One node's database, kept by the simulated disk across the node's restarts."""

    def __init__(self) -> None:
        super().__init__({}, [])
        # For writes not yet synced: each key's value before them (None: absent), to undo on power loss.
        self._undo: dict[bytes, bytes | None] = {}
        self.closed = False
        self.bytes_written = 0

    def reopen(self) -> MemDB:
        self.closed = False
        return self

    def put(self, key: bytes, value: bytes, sync: bool = False) -> None:
        self._apply([(bytes(key), bytes(value))], sync)

    def delete(self, key: bytes, sync: bool = False) -> None:
        self._apply([(bytes(key), None)], sync)

    def write_batch(self, sync: bool = False) -> _Batch:
        return _Batch(self, sync)

    def snapshot(self) -> _View:
        return _View(dict(self._data), list(self._keys))

    def close(self) -> None:
        self.closed = True

    def _apply(self, ops: list[tuple[bytes, bytes | None]], sync: bool) -> None:
        for key, value in ops:
            if not sync and key not in self._undo:
                self._undo[key] = self._data.get(key)
            self._set(key, value)
        if sync:
            self._undo.clear()

    def _set(self, key: bytes, value: bytes | None) -> None:
        if value is None:
            if key in self._data:
                del self._data[key]
                del self._keys[bisect.bisect_left(self._keys, key)]
        else:
            if key not in self._data:
                bisect.insort(self._keys, key)
            self._data[key] = value
            self.bytes_written += len(value)

    def power_loss(self) -> None:
        """Drop what was written but never synced."""
        undo, self._undo = self._undo, {}
        for key, old in undo.items():
            self._set(key, old)
