"""Disk faults on a stopped node's consensus WAL (`<node home>/data/consensus.wal`).

The WAL format is node/storage/wal.py's: an 8-byte magic, then frames of a 4-byte big-endian length,
a 4-byte big-endian zlib CRC-32 of the payload, and the payload. These functions work on any such
file; they never run against a live node (the Nemesis checks that first, and they take the WAL's
flock, so a node starting meanwhile cannot open it).

- truncate_wal(path, nbytes): cut the last nbytes, as a crash in the middle of an append leaves the
  file. The node repairs this at start (truncates the torn frame) and logs "WAL repaired: ...".
- corrupt_wal(path, at_tail): flip one payload byte of the last frame (or of the middle frame), as bit
  rot would. The checksum no longer matches: the node refuses to start with WalCorruptError naming the
  file and the frame's offset. The operator then runs `python -m node.storage.walcheck PATH` and
  either `--truncate-at OFFSET` (keeps the frames before the damage, copies the file aside) or moves
  the WAL away; the node restarts with the records of its height in progress lost (its last-signed
  guard lives in sign_state.bin, so it cannot sign a conflicting vote) and rejoins.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node.storage.wal import HEADER, MAGIC


class DiskFaultError(Exception):
    """A disk fault cannot be applied; path names the file, reason says why. Nothing was changed."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete WAL frame: offset of its header, and its payload length."""

    offset: int
    length: int

    @property
    def payload_offset(self) -> int:
        return self.offset + HEADER.size

    @property
    def end(self) -> int:
        return self.payload_offset + self.length


def wal_path(node_home: str | os.PathLike[str]) -> Path:
    return Path(node_home) / "data" / "consensus.wal"


def frames(data: bytes) -> list[Frame]:
    """The complete frames of a WAL image (stops at the first incomplete one; checks no checksum)."""
    found: list[Frame] = []
    offset = len(MAGIC)
    while offset + HEADER.size <= len(data):
        length, _crc = HEADER.unpack_from(data, offset)
        if length == 0 or offset + HEADER.size + length > len(data):
            break
        found.append(Frame(offset, length))
        offset += HEADER.size + length
    return found


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the WAL's flock (the node takes it at start): refuse if a process has the WAL open."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DiskFaultError(path, "the WAL is locked: a node is running on it") from None
        yield
    finally:
        os.close(fd)


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DiskFaultError(path, "no WAL here (has the node ever run?)") from None
    if not data.startswith(MAGIC):
        raise DiskFaultError(path, "not a Clearline WAL (bad magic)")
    return data


def truncate_wal(path: str | os.PathLike[str], nbytes: int) -> int:
    """Cut the last nbytes of the WAL (at most down to its magic); returns the bytes removed."""
    path = Path(path)
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes <= 0:
        raise DiskFaultError(path, f"nbytes must be a positive integer, not {nbytes!r}")
    with _locked(path):
        data = _read(path)
        if len(data) <= len(MAGIC):
            raise DiskFaultError(path, "the WAL holds no frame to truncate")
        removed = min(nbytes, len(data) - len(MAGIC))
        os.truncate(path, len(data) - removed)
    return removed


def corrupt_wal(path: str | os.PathLike[str], *, at_tail: bool = True) -> int:
    """Flip one payload byte of the last complete frame (at_tail) or of the middle one.
    Returns the frame's offset, which is what the node's WalCorruptError reports."""
    path = Path(path)
    with _locked(path):
        data = _read(path)
        found = frames(data)
        if not found:
            raise DiskFaultError(path, "the WAL holds no complete frame to corrupt")
        frame = found[-1] if at_tail else found[(len(found) - 1) // 2]
        at = frame.payload_offset + frame.length // 2
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(bytes([data[at] ^ 0xFF]))
            f.flush()
            os.fsync(f.fileno())
    return frame.offset
