"""The validator's last-signed state file: the double-sign guard that must survive kill -9.

The runtime saves the position it is about to sign (height, round, step, block id, lock and valid
round) BEFORE the signed message leaves the node, together with the serialized locked and valid
blocks if it has them, so a restarted validator keeps its lock with the value and never signs a
message that conflicts with one it already sent (CometBFT privval's "last sign state"). For a
proposal it also saves the proposed block: a proposer killed after signing but before sending can
send the same proposal after its restart instead of losing the round.

File layout (small, rewritten whole on every save):

    MAGIC (8 bytes, b"CLSIGN\\x00\\x00\\x01") | crc32 of body (4 bytes, big-endian) | body
    body = field(last_signed) field(locked_block) field(valid_block) [field(proposal_block)]
    field = present (1 byte, 0 or 1) | length (4 bytes, big-endian) | bytes

(Files written before the proposal block was kept have three fields and still load.)

save() is atomic: write `<path>.tmp`, fsync it, rename over `<path>`, fsync the directory. A reader
sees the old state or the new one. A file that exists but fails its checks raises
SignStateCorruptError: it is never treated as "nothing signed yet".

save() also refuses (SignStateRegressionError) to store a position lower than the stored one, or a
different block id at the same (height, round, step): a second line of defense against double signs.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from clearline.v1 import wal_pb2
from node.storage.crash import crash_point
from node.storage.errors import SignStateCorruptError, SignStateRegressionError, StorageError

MAGIC = b"CLSIGN\x00\x00\x01"
_CRC = struct.Struct(">I")
_FIELD = struct.Struct(">BI")


@dataclass(frozen=True, slots=True)
class SignState:
    """The stored last-signed position and the blocks behind its lock and valid value (if saved)."""

    last_signed: wal_pb2.LastSigned
    locked_block: bytes | None = None
    valid_block: bytes | None = None
    proposal_block: bytes | None = None  # the block of a signed proposal (step PROPOSE)


def position_of(state: wal_pb2.LastSigned) -> tuple[int, int, int]:
    """(height, round, step): the order in which a validator signs."""
    return state.height, state.round, int(state.step)


def encode_sign_state(state: SignState) -> bytes:
    body = b"".join(
        _encode_field(part)
        for part in (
            state.last_signed.SerializeToString(deterministic=True),
            state.locked_block,
            state.valid_block,
            state.proposal_block,
        )
    )
    return MAGIC + _CRC.pack(zlib.crc32(body)) + body


def decode_sign_state(data: bytes, path: str) -> SignState:
    """Inverse of encode_sign_state; raises SignStateCorruptError naming path for anything wrong."""
    if not data.startswith(MAGIC):
        raise SignStateCorruptError(path, f"not a Clearline sign-state file (starts with {data[:8]!r})", 0)
    header_end = len(MAGIC) + _CRC.size
    if len(data) < header_end:
        raise SignStateCorruptError(path, f"truncated header ({len(data)} bytes)", len(MAGIC))
    (stored,) = _CRC.unpack_from(data, len(MAGIC))
    body = data[header_end:]
    if zlib.crc32(body) != stored:
        raise SignStateCorruptError(path, f"checksum mismatch (stored {stored:08x})", len(MAGIC))
    parts: list[bytes | None] = []
    offset = 0
    for name in ("last_signed", "locked_block", "valid_block", "proposal_block"):
        if name == "proposal_block" and offset == len(body):
            parts.append(None)  # a file from before the proposal block was kept
            break
        if offset + _FIELD.size > len(body):
            raise SignStateCorruptError(path, f"field {name} is missing", header_end + offset)
        present, length = _FIELD.unpack_from(body, offset)
        offset += _FIELD.size
        if present not in (0, 1) or offset + length > len(body) or (present == 0 and length != 0):
            raise SignStateCorruptError(path, f"field {name} is malformed", header_end + offset - _FIELD.size)
        parts.append(body[offset : offset + length] if present else None)
        offset += length
    if offset != len(body):
        raise SignStateCorruptError(path, f"{len(body) - offset} trailing bytes", header_end + offset)
    raw_signed = parts[0]
    if raw_signed is None:
        raise SignStateCorruptError(path, "no last-signed record", header_end)
    last_signed = wal_pb2.LastSigned()
    try:
        last_signed.ParseFromString(raw_signed)
    except DecodeError as exc:
        raise SignStateCorruptError(path, f"last-signed record does not decode: {exc}", header_end) from exc
    return SignState(last_signed, parts[1], parts[2], parts[3])


def _encode_field(value: bytes | None) -> bytes:
    if value is None:
        return _FIELD.pack(0, 0)
    return _FIELD.pack(1, len(value)) + value


class SignStateFile:
    """The last-signed state of one validator, at `path`. open() reads and checks the file at once."""

    __slots__ = ("_current", "_path")

    def __init__(self, path: Path, current: SignState | None) -> None:
        self._path = path
        self._current = current

    @classmethod
    def open(cls, path: str | Path) -> SignStateFile:
        """Open the file (it need not exist yet). Raises SignStateCorruptError if it exists but is
        damaged. A leftover `<path>.tmp` from a crash before the rename is removed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_path(path)
        if tmp.exists():
            tmp.unlink()
        return cls(path, _read(path))

    @property
    def path(self) -> Path:
        return self._path

    def load(self) -> wal_pb2.LastSigned | None:
        """The stored last-signed position (a copy), or None if nothing was ever saved."""
        state = self.load_state()
        return None if state is None else state.last_signed

    def load_state(self) -> SignState | None:
        """The stored position with its locked and valid blocks (re-read from disk), or None."""
        state = _read(self._path)
        self._current = state
        if state is None:
            return None
        copy = wal_pb2.LastSigned()
        copy.CopyFrom(state.last_signed)
        return SignState(copy, state.locked_block, state.valid_block, state.proposal_block)

    def save(
        self,
        state: wal_pb2.LastSigned,
        locked_block: bytes | None = None,
        valid_block: bytes | None = None,
        proposal_block: bytes | None = None,
    ) -> None:
        """Durably replace the stored state (temp file, fsync, rename, fsync directory). Raises
        SignStateRegressionError, without writing, if state is below the stored (height, round, step) or
        names another block id at the same position."""
        current = self._current
        if current is not None:
            old, new = position_of(current.last_signed), position_of(state)
            if new < old:
                raise SignStateRegressionError(
                    self._path, f"refusing to move last-signed (height, round, step) back from {old} to {new}"
                )
            if new == old and state.block_id != current.last_signed.block_id:
                raise SignStateRegressionError(
                    self._path,
                    f"refusing a second block id at {new}: stored {current.last_signed.block_id.hex() or 'nil'}, "
                    f"new {state.block_id.hex() or 'nil'} (a double sign)",
                )
        copy = wal_pb2.LastSigned()
        copy.CopyFrom(state)
        new_state = SignState(copy, locked_block, valid_block, proposal_block)
        data = encode_sign_state(new_state)
        tmp = _tmp_path(self._path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        crash_point("signstate:before-rename")
        os.replace(tmp, self._path)
        dir_fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._current = new_state


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _read(path: Path) -> SignState | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(path, f"cannot read the sign-state file: {exc}") from exc
    return decode_sign_state(data, os.fspath(path))
