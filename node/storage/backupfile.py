"""The backup file: one node's LevelDB store, sign state and configuration in one checksummed file.

Layout (integers big-endian; proto/clearline/v1/admin.proto carries the same description):

    "CLBACKUP" | format version (u32) | header length (u32) | header (admin.proto BackupHeader)
    record*    "R" | key length (u32) | value length (u32) | key | value     every LevelDB entry,
                                                                              in key order
    end        "E" | record count (u64)
    digest     sha256 of every byte before it (32 bytes)

Both ends stream: `encode` yields the file in chunks while it iterates the records (a LevelDB
snapshot), and `BackupReader` hands out one record at a time, so memory is bounded by one record
(and the header) whatever the size of the state. Records are handed out before the digest at the
end has been checked: whoever writes them somewhere keeps that place aside until the reader has
finished (restore writes into a staging directory and only then swaps it in).

A reader refuses, with BackupCorruptError naming the offset, a file that does not start with the
magic, a format version it does not know, a header or frame cut short (a truncated file), an unknown
tag, a length beyond the bounds below, a record count that differs from the records read, a digest
that differs (any flipped byte), and bytes after the digest.

`write_store` writes records into a new LevelDB and `check_not_in_use` tells whether a process (a
running node) holds a store's lock: plyvel stays inside node/storage.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, Final

import plyvel
from google.protobuf.message import DecodeError

from clearline.v1 import admin_pb2
from node.storage.errors import BackupCorruptError, StorageError
from node.storage.store import LEVELDB_OPTIONS

MAGIC: Final = b"CLBACKUP"
FORMAT_VERSION: Final = 1
TAG_RECORD: Final = b"R"
TAG_END: Final = b"E"
DIGEST_LEN: Final = 32
# Bounds a reader holds lengths to (a damaged length is refused, not allocated). The header carries
# at most three blocks of the sign state and a few small files; a value is at most a block.
MAX_HEADER_BYTES: Final = 64 << 20
MAX_KEY_BYTES: Final = 64 << 10
MAX_VALUE_BYTES: Final = 256 << 20
CHUNK_BYTES: Final = 1 << 20

_PREAMBLE = struct.Struct(">8sII")  # magic, format version, header length
_RECORD = struct.Struct(">II")  # key length, value length
_COUNT = struct.Struct(">Q")


def encode(
    header: admin_pb2.BackupHeader, records: Iterable[tuple[bytes, bytes]], chunk_bytes: int = CHUNK_BYTES
) -> Iterator[bytes]:
    """The backup file's bytes, in chunks of about chunk_bytes (the last ones smaller): header,
    every record in the order given, the end frame and the digest."""
    digest = hashlib.sha256()
    raw_header = header.SerializeToString(deterministic=True)
    if len(raw_header) > MAX_HEADER_BYTES:
        raise ValueError(f"backup header of {len(raw_header)} bytes (at most {MAX_HEADER_BYTES})")
    buf = bytearray(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(raw_header)))
    buf += raw_header
    count = 0
    pack = _RECORD.pack
    for key, value in records:
        buf += TAG_RECORD
        buf += pack(len(key), len(value))
        buf += key
        buf += value
        count += 1
        if len(buf) >= chunk_bytes:
            chunk = bytes(buf)
            buf.clear()
            digest.update(chunk)
            yield chunk
    buf += TAG_END + _COUNT.pack(count)
    digest.update(buf)
    buf += digest.digest()
    yield bytes(buf)


class _Source:
    """Exact reads from a stream, hashed as they go, with the offset for errors."""

    __slots__ = ("_digest", "_name", "_stream", "offset")

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self._stream = stream
        self._name = name
        self._digest = hashlib.sha256()
        self.offset = 0

    def corrupt(self, detail: str, offset: int | None = None) -> BackupCorruptError:
        return BackupCorruptError(self._name, detail, self.offset if offset is None else offset)

    def read(self, n: int, what: str, *, hashed: bool = True) -> bytes:
        data = self._stream.read(n)
        if len(data) != n:
            raise self.corrupt(
                f"the file is truncated: {what} needs {n} bytes, {len(data)} left "
                "(an interrupted copy or download?)"
            )
        if hashed:
            self._digest.update(data)
        self.offset += n
        return data

    def digest(self) -> bytes:
        return self._digest.digest()

    def at_end(self) -> bool:
        return self._stream.read(1) == b""


class BackupReader:
    """Reads a backup file from a stream: the header at once, then `records()` one at a time; once
    they are exhausted the end frame and the digest have been checked (`count`, `size`, `sha256`).
    Raises BackupCorruptError as the module docstring lists."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self._src = _Source(stream, name)
        magic, version, length = _PREAMBLE.unpack(self._src.read(_PREAMBLE.size, "the preamble"))
        if magic != MAGIC:
            raise self._src.corrupt(f"not a Clearline backup file (starts with {magic!r})", 0)
        if version != FORMAT_VERSION:
            raise self._src.corrupt(f"backup format version {version}; this node reads {FORMAT_VERSION}", 8)
        if length > MAX_HEADER_BYTES:
            raise self._src.corrupt(f"header length {length} is beyond {MAX_HEADER_BYTES}", 12)
        raw = self._src.read(length, "the header")
        header = admin_pb2.BackupHeader()
        try:
            header.ParseFromString(raw)
        except DecodeError as exc:
            raise self._src.corrupt(f"the header does not decode: {exc}", _PREAMBLE.size) from None
        self.header = header
        self.count = 0
        self.size = 0
        self.sha256 = ""
        self._done = False

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) in the file; the digest is checked when the last one has been taken."""
        if self._done or self.count:
            raise ValueError("the records of a backup can be read once")
        src = self._src
        read = src.read
        unpack = _RECORD.unpack
        while True:
            start = src.offset
            tag = read(1, "a frame")
            if tag == TAG_END:
                break
            if tag != TAG_RECORD:
                raise src.corrupt(f"unknown frame tag {tag!r}", start)
            key_len, value_len = unpack(read(_RECORD.size, "a record's lengths"))
            if key_len > MAX_KEY_BYTES or value_len > MAX_VALUE_BYTES:
                raise src.corrupt(f"record lengths {key_len}/{value_len} are beyond the bounds", start)
            data = read(key_len + value_len, "a record")
            self.count += 1
            yield data[:key_len], data[key_len:]
        end = src.offset - 1
        (count,) = _COUNT.unpack(read(_COUNT.size, "the record count"))
        expected = src.digest()
        stored = read(DIGEST_LEN, "the digest", hashed=False)
        if stored != expected:
            raise src.corrupt(
                f"checksum mismatch: the file's sha256 is {stored.hex()[:16]}..., its content's "
                f"{expected.hex()[:16]}... (damaged in storage or in transit)",
                src.offset - DIGEST_LEN,
            )
        if count != self.count:
            raise src.corrupt(f"the end frame counts {count} records, the file holds {self.count}", end)
        if not src.at_end():
            raise src.corrupt("bytes after the digest")
        self.size = src.offset
        self.sha256 = stored.hex()
        self._done = True


def read_header(path: str | os.PathLike[str]) -> admin_pb2.BackupHeader:
    """The header of the backup file at path (nothing else is read or checked)."""
    with open(path, "rb") as f:
        return BackupReader(f, os.fspath(path)).header


def write_store(records: Iterable[tuple[bytes, bytes]], path: Path, batch_bytes: int = 8 << 20) -> int:
    """Write records into a NEW LevelDB at path (refused if one exists there), in synced batches of
    about batch_bytes. Returns the number of records written."""
    try:
        db = plyvel.DB(os.fspath(path), create_if_missing=True, error_if_exists=True, **LEVELDB_OPTIONS)
    except plyvel.Error as exc:
        raise StorageError(path, f"cannot create the restored store: {exc}") from exc
    count = 0
    try:
        batch = db.write_batch(sync=True)
        pending = 0
        for key, value in records:
            batch.put(key, value)
            count += 1
            pending += len(key) + len(value)
            if pending >= batch_bytes:
                batch.write()
                batch = db.write_batch(sync=True)
                pending = 0
        batch.write()
    finally:
        db.close()
    return count


def check_not_in_use(path: Path) -> None:
    """StorageError if a process (a running node) holds the LevelDB lock of the store at path. A
    path without a store is not in use."""
    lock = path / "LOCK"
    if not lock.exists():
        return
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError as exc:
        raise StorageError(lock, f"cannot open the store's lock file: {exc}") from exc
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise StorageError(path, "the store is in use: a node is running on it (stop it first)") from None
    else:
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
