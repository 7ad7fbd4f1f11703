"""The consensus write-ahead log: an append-only file of checksummed WalRecord frames (CometBFT-style).

File layout:

    MAGIC (8 bytes, b"CLWAL\\x00\\x00\\x01")
    frame*:  length (4 bytes, big-endian) | crc32 (4 bytes, big-endian, zlib.crc32 of payload) | payload

payload is a serialized wal_pb2.WalRecord (never empty: a record always has its oneof set).
Note: wal.proto's comment says CRC32C; the checksum actually used is zlib's CRC-32 (IEEE), which is
what the standard library offers without a dependency.

The file only ever holds the height in progress: `end_height(h)` atomically replaces it by a fresh file
whose first record is WalEndHeight(h) (write temp, rename; with durable=True also fsync the file and
the directory), so replay after a restart reads at most one height of records however long the chain is.

Opening replays the file:
- a torn tail (the last frame incomplete: its header or payload runs past the end of the file, the
  file ends in zeros where a frame should start, or the last frame's payload is all zeros, which no
  record encodes to, as after a crash or power loss mid-append) is truncated; the
  number of bytes dropped and the offset are reported in WalReplay.repaired;
- a complete frame with a bad checksum, an undecodable or empty payload, an impossible length, or a
  bad magic number raises WalCorruptError naming the file and the frame's offset. The node must stop:
  it may not sign from a state it cannot reconstruct.

Operators: `python -m node.storage.walcheck PATH` checks a WAL (record count, last end height, the first
damage and its offset) without changing it; `--truncate-at OFFSET` discards everything from OFFSET on
after copying the file to `PATH.corrupt-OFFSET`. Only do that knowing that the records lost are
consensus messages of the height in progress; the last-signed guard lives in the sign-state file.

Appends go straight to the OS (one write() per frame, no user-space buffer), so a killed process loses
nothing it appended; `sync=True` (or `sync()`) also survives power loss.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from clearline.v1 import wal_pb2
from node.storage.crash import crash_point
from node.storage.errors import StorageError, WalCorruptError

MAGIC = b"CLWAL\x00\x00\x01"
HEADER = struct.Struct(">II")  # length, crc32
MAX_RECORD_BYTES = 64 * 1024 * 1024  # a proposal carries a whole block; anything larger is corruption


@dataclass(frozen=True, slots=True)
class WalReplay:
    """What WAL.open found. records: the records after the last WalEndHeight, in order.
    last_end_height: the height of that WalEndHeight (None if the file has none, e.g. a new WAL).
    repaired: a human message if a torn tail was truncated, else None.
    truncated_bytes / truncated_at: what was dropped and where (0 / None if nothing)."""

    records: list[wal_pb2.WalRecord]
    last_end_height: int | None
    repaired: str | None = None
    truncated_bytes: int = 0
    truncated_at: int | None = None


def encode_frame(record: wal_pb2.WalRecord) -> bytes:
    """One on-disk frame for record."""
    payload = record.SerializeToString(deterministic=True)
    if not payload:
        raise ValueError("a WAL record must have its oneof set")
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"WAL record of {len(payload)} bytes exceeds {MAX_RECORD_BYTES}")
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def decode_frames(data: bytes, path: str) -> tuple[list[wal_pb2.WalRecord], int]:
    """Decode the frames of a whole WAL file. Returns (records, end of the last complete frame).
    Bytes after that offset are a torn tail. Raises WalCorruptError for anything else."""
    if len(data) < len(MAGIC):
        if MAGIC.startswith(data):
            return [], 0  # crashed while creating the file: torn
        raise WalCorruptError(path, f"not a Clearline WAL (starts with {data[:8]!r})", 0)
    if not data.startswith(MAGIC):
        raise WalCorruptError(path, f"not a Clearline WAL (bad magic {data[:8]!r})", 0)
    records: list[wal_pb2.WalRecord] = []
    offset = len(MAGIC)
    size = len(data)
    while offset < size:
        if offset + HEADER.size > size:
            break  # torn header
        length, checksum = HEADER.unpack_from(data, offset)
        if length == 0:
            if checksum == 0 and not any(data[offset:]):
                break  # zero-filled tail: space allocated but never written before a crash
            raise WalCorruptError(path, "frame of length 0", offset)
        if length > MAX_RECORD_BYTES:
            raise WalCorruptError(path, f"frame length {length} exceeds {MAX_RECORD_BYTES}", offset)
        end = offset + HEADER.size + length
        if end > size:
            break  # torn payload
        payload = data[offset + HEADER.size : end]
        actual = zlib.crc32(payload)
        if actual != checksum and end == size and not any(payload):
            break  # last frame's header reached the disk, its payload never did (all zeros): torn
        if actual != checksum:
            raise WalCorruptError(
                path, f"checksum mismatch (stored {checksum:08x}, computed {actual:08x})", offset
            )
        record = wal_pb2.WalRecord()
        try:
            record.ParseFromString(payload)
        except DecodeError as exc:
            raise WalCorruptError(path, f"record does not decode: {exc}", offset) from exc
        if record.WhichOneof("record") is None:
            raise WalCorruptError(path, "record has no content", offset)
        records.append(record)
        offset = end
    return records, offset


def fsync_dir(directory: Path) -> None:
    """fsync a directory: a file created, renamed or removed in it is durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WAL:
    """An open WAL file (one writer; an exclusive flock on `<path>.lock` keeps a second process out)."""

    __slots__ = ("_fd", "_lock_fd", "_path", "_size", "rotate_bytes")

    def __init__(self, path: Path, fd: int, lock_fd: int, size: int) -> None:
        self._path = path
        self._fd = fd
        self._lock_fd = lock_fd
        self._size = size
        self.rotate_bytes = 0
        """end_height appends its marker while the file is below this size, and starts a fresh file
        once it is not (0 = a fresh file at every height). Replay reads the whole file, so this
        bounds the restart cost whatever the chain's length."""

    @classmethod
    def open(cls, path: str | Path, *, rotate_bytes: int = 0) -> tuple[WAL, WalReplay]:
        """Open (creating if missing) and replay the WAL at path. Truncates a torn tail (reported in
        the replay); raises WalCorruptError for a damaged complete frame, StorageError if locked.
        rotate_bytes: see WAL.rotate_bytes."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(lock_fd)
            raise StorageError(path, "the WAL is locked by another process") from exc
        try:
            wal, replay = cls._open_locked(path, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise
        wal.rotate_bytes = rotate_bytes
        return wal, replay

    @classmethod
    def _open_locked(cls, path: Path, lock_fd: int) -> tuple[WAL, WalReplay]:
        stale = path.with_name(path.name + ".tmp")  # a rotation interrupted before its rename
        if stale.exists():
            stale.unlink()
        created = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            with open(fd, "rb", closefd=False) as f:
                data = f.read()
            records, good_end = decode_frames(data, os.fspath(path))
            repaired: str | None = None
            dropped = 0
            truncated_at: int | None = None
            if good_end < len(MAGIC):  # new, empty, or torn while being created
                if data:
                    dropped, truncated_at = len(data), 0
                    repaired = f"WAL {path}: dropped {len(data)} bytes of an incomplete file header"
                os.ftruncate(fd, 0)
                os.write(fd, MAGIC)
                os.fsync(fd)
                if created:
                    fsync_dir(path.parent)
                good_end = len(MAGIC)
            elif good_end < len(data):
                dropped, truncated_at = len(data) - good_end, good_end
                repaired = (
                    f"WAL {path}: truncated a torn tail of {dropped} bytes at offset {good_end} "
                    f"(an append interrupted by a crash); {len(records)} complete records kept"
                )
                os.ftruncate(fd, good_end)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        last_end: int | None = None
        start = 0
        for i, record in enumerate(records):
            if record.WhichOneof("record") == "end_height":
                last_end = record.end_height.height
                start = i + 1
        replay = WalReplay(records[start:], last_end, repaired, dropped, truncated_at)
        return cls(path, fd, lock_fd, good_end), replay

    @property
    def path(self) -> Path:
        return self._path

    @property
    def size(self) -> int:
        """Current file size in bytes."""
        return self._size

    def _live_fd(self) -> int:
        if self._fd < 0:
            raise StorageError(self._path, "the WAL is closed")
        return self._fd

    def append(self, record: wal_pb2.WalRecord, *, sync: bool = False) -> None:
        """Append one record (a single write to the OS); with sync=True also fsync before returning."""
        fd = self._live_fd()
        frame = encode_frame(record)
        written = os.write(fd, frame)
        if written != len(frame):  # regular files do not short-write unless the disk is full
            raise StorageError(self._path, f"short write: {written} of {len(frame)} bytes", self._size)
        self._size += written
        if sync:
            crash_point("wal:before-fsync")
            os.fsync(fd)

    def sync(self) -> None:
        """fsync everything appended so far."""
        fd = self._live_fd()
        crash_point("wal:before-fsync")
        os.fsync(fd)

    def end_height(self, height: int, *, durable: bool = False) -> None:
        """Mark `height` finished (its block is committed) and start a fresh file for the next one.
        The new file, holding only WalEndHeight(height), is written beside the old one and renamed
        over it: after a crash the WAL is either the old file or the new one, never a mix.

        Not fsynced unless durable=True: the node calls this only after the block is durably in the
        store, and replay keeps only records of the height after the store's, so after a power loss
        the old file (records of a committed height) or an empty new one (a torn header, repaired
        on open) both replay to nothing. An fsync here would stall the event loop for milliseconds
        at every height for no gain.

        Below rotate_bytes the marker is appended instead (one write): records before the last
        marker are not replayed."""
        record = wal_pb2.WalRecord(end_height=wal_pb2.WalEndHeight(height=height))
        if self._size < self.rotate_bytes:
            self.append(record, sync=durable)
            return
        old_fd = self._live_fd()
        tmp = self._path.with_name(self._path.name + ".tmp")
        content = MAGIC + encode_frame(record)
        new_fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            os.write(new_fd, content)
            if durable:
                os.fsync(new_fd)
            crash_point("wal:before-rotate")
            os.replace(tmp, self._path)
        except BaseException:
            os.close(new_fd)
            raise
        os.close(old_fd)
        self._fd = new_fd
        self._size = len(content)
        if durable:
            fsync_dir(self._path.parent)

    def close(self) -> None:
        """Close the file (appended data stays in the OS; call sync() first for durability). Idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> WAL:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
