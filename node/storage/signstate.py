"""The validator's last-signed state file: the double-sign guard that must survive kill -9.

The runtime saves the position it is about to sign (height, round, step, block id, lock and valid
round) BEFORE the signed message leaves the node, together with the serialized locked and valid
blocks if it has them, so a restarted validator keeps its lock with the value and never signs a
message that conflicts with one it already sent (CometBFT privval's "last sign state"). For a
proposal it also saves the proposed block: a proposer killed after signing but before sending can
send the same proposal after its restart instead of losing the round.

Two slot files, `<path>.0` and `<path>.1`, take the saves in turn: save number n (counting from 1)
overwrites slot n % 2 in place and fdatasyncs it. The other slot keeps the previous state intact,
so a save torn by a power loss leaves a slot that fails its checksum beside a good one, and the
good one is loaded: it is the last state whose save returned, because a signature leaves the node
only after save() returns. One pwrite and one fdatasync on a file that stays open, instead of a
temp file, fsync, rename and directory fsync: a fraction of the cost, and the runtime saves three
times on the critical path of every height.

Slot layout (what follows the record is stale bytes of a longer earlier record, ignored):

    MAGIC (8 bytes, b"CLSIGN\x00\x00\x02") | save number (8) | body length (4) | crc32 (4) | body
    crc32 covers save number, length and body (big-endian integers)
    body = field(last_signed) field(locked_block) field(valid_block) field(proposal_block) field(own_votes)
    field = present (1 byte, 0 or 1) | length (4 bytes, big-endian) | bytes

own_votes (a serialized wal.proto `OwnVotes`) holds the validator's other votes of the height it signs
at: a restarted validator sends them again, because a peer may still need a prevote that left only
as far as a crash (the last-signed record keeps just the latest signature). A slot of a version
without it has four fields and loads with own_votes None.

A node whose sign state was written by an earlier version has one file at `<path>` (MAGIC ending
in \x01: crc32 of body | body, with three or four fields). It is loaded while no slot exists; the
first save writes slot 1 and removes it.

Loading: no slot and no old file is "nothing signed yet". An empty slot (created, never written)
counts as absent. A slot that fails its checks beside a good slot is taken for a torn save and
ignored. Every other failure raises SignStateCorruptError: both slots damaged, an old-format file
that is damaged, or a good slot holding a save number that belongs in the other slot. A damaged
state is never treated as "nothing signed yet".

save() also refuses (SignStateRegressionError) to store a position lower than the stored one, or a
different block id at the same (height, round, step): a second line of defense against double signs.

The restore guard, `<path>.guard`, is written by a restore (node/backup.py) that could not keep the
validator's own sign state (its disk was lost, or held an older state than the backup's): what the
validator signed after the backup was taken is then unknown. The file records when the restore ran
and a margin; the node signs nothing at a height whose previous block is timed at or before
restored_at + margin (`RestoreGuard.allows`, enforced by node/driver.py). Why that suffices: the
node was stopped when it was restored (restore refuses a running node), so it signed nothing after
restored_at; it signed at a height h only after committing h - 1; and block h - 1 was committed with
the prevotes of more than 2/3 of the voting power, honest validators among them, each of which
refuses a proposal timed more than 10 s past its own clock (node/validation.py MAX_CLOCK_DRIFT_MS).
So block h - 1 is timed at most restored_at + 10 s + the clocks' disagreement: a margin above that
covers every height the lost state may have signed at. The rule needs no peer's word (block times
are certified) and lapses by itself once the chain's time passes the mark; the file stays.

    GUARD_MAGIC (9 bytes, b"CLGUARD\x00\x01") | restored_at_ms (8) | margin_ms (8) | backup height (8)
    | crc32 of the three (4)
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from clearline.v1 import wal_pb2
from node.storage.crash import crash_point
from node.storage.errors import SignStateCorruptError, SignStateRegressionError, StorageError
from node.storage.wal import fsync_dir

MAGIC = b"CLSIGN\x00\x00\x01"  # the single file of earlier versions
SLOT_MAGIC = b"CLSIGN\x00\x00\x02"
_CRC = struct.Struct(">I")
_FIELD = struct.Struct(">BI")
_SLOT_HEADER = struct.Struct(">QII")  # save number, body length, crc32


GUARD_MAGIC = b"CLGUARD\x00\x01"
_GUARD = struct.Struct(">QQQ")  # restored at (ms), margin (ms), backup height


@dataclass(frozen=True, slots=True)
class RestoreGuard:
    """A restored validator whose own sign state was not kept signs nothing at a height whose
    previous block is timed at or before restored_at_ms + margin_ms (the module docstring says why)."""

    restored_at_ms: int  # the restore's wall-clock time: the node was stopped then
    margin_ms: int  # at least the allowed proposal clock drift plus the clocks' disagreement
    backup_height: int  # the height of the backup restored (for people)

    @property
    def signs_after_ms(self) -> int:
        """Heights whose previous block is timed after this may be signed."""
        return self.restored_at_ms + self.margin_ms

    def allows(self, previous_block_time_ms: int) -> bool:
        """Whether the validator may sign at a height whose previous block has this time."""
        return previous_block_time_ms > self.signs_after_ms


def guard_path(path: Path) -> Path:
    """The restore guard beside the sign state at path."""
    return path.with_name(path.name + ".guard")


def encode_guard(guard: RestoreGuard) -> bytes:
    body = _GUARD.pack(guard.restored_at_ms, guard.margin_ms, guard.backup_height)
    return GUARD_MAGIC + body + _CRC.pack(zlib.crc32(body))


def decode_guard(data: bytes, path: str) -> RestoreGuard:
    """Inverse of encode_guard; SignStateCorruptError naming path for anything wrong."""
    if not data.startswith(GUARD_MAGIC):
        raise SignStateCorruptError(path, f"not a Clearline restore guard (starts with {data[:9]!r})", 0)
    body = data[len(GUARD_MAGIC) : len(GUARD_MAGIC) + _GUARD.size]
    if len(data) != len(GUARD_MAGIC) + _GUARD.size + _CRC.size:
        raise SignStateCorruptError(path, f"a restore guard of {len(data)} bytes", len(GUARD_MAGIC))
    (stored,) = _CRC.unpack_from(data, len(GUARD_MAGIC) + _GUARD.size)
    if zlib.crc32(body) != stored:
        raise SignStateCorruptError(path, f"checksum mismatch (stored {stored:08x})", len(GUARD_MAGIC))
    return RestoreGuard(*_GUARD.unpack(body))


def load_guard(path: Path) -> RestoreGuard | None:
    """The restore guard beside the sign state at path, None if there is none. A damaged one raises
    SignStateCorruptError: never taken for "no guard"."""
    p = guard_path(path)
    data = _read_file(p)
    return None if data is None else decode_guard(data, os.fspath(p))


def save_guard(path: Path, guard: RestoreGuard) -> None:
    """Durably write the restore guard beside the sign state at path (temp file, fsync, rename)."""
    p = guard_path(path)
    tmp = p.with_name(p.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(encode_guard(guard))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        fsync_dir(p.parent)
    except OSError as exc:
        raise StorageError(p, f"cannot write the restore guard: {exc}") from exc


@dataclass(frozen=True, slots=True)
class SignState:
    """The stored last-signed position and the blocks behind its lock and valid value (if saved)."""

    last_signed: wal_pb2.LastSigned
    locked_block: bytes | None = None
    valid_block: bytes | None = None
    proposal_block: bytes | None = None  # the block of a signed proposal (step PROPOSE)
    own_votes: bytes | None = None  # wal_pb2.OwnVotes: earlier own votes of the same height


def position_of(state: wal_pb2.LastSigned) -> tuple[int, int, int]:
    """(height, round, step): the order in which a validator signs."""
    return state.height, state.round, int(state.step)


def _body(state: SignState) -> bytes:
    return b"".join(
        _encode_field(part)
        for part in (
            state.last_signed.SerializeToString(deterministic=True),
            state.locked_block,
            state.valid_block,
            state.proposal_block,
            state.own_votes,
        )
    )


def encode_sign_state(state: SignState) -> bytes:
    """The single-file format of earlier versions (still loaded, no longer written)."""
    body = _body(state)
    return MAGIC + _CRC.pack(zlib.crc32(body)) + body


def encode_slot(state: SignState, number: int) -> bytes:
    """The record that save number `number` writes into its slot."""
    body = _body(state)
    head = _SLOT_HEADER.pack(number, len(body), 0)[:12]
    return SLOT_MAGIC + head + _CRC.pack(zlib.crc32(head + body)) + body


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
    return _decode_body(body, path, header_end, old_format=True)


def decode_slot(data: bytes, path: str) -> tuple[int, SignState]:
    """(save number, state) of a slot's record; raises SignStateCorruptError naming path."""
    if not data.startswith(SLOT_MAGIC):
        raise SignStateCorruptError(path, f"not a Clearline sign-state slot (starts with {data[:8]!r})", 0)
    header_end = len(SLOT_MAGIC) + _SLOT_HEADER.size
    if len(data) < header_end:
        raise SignStateCorruptError(path, f"truncated header ({len(data)} bytes)", len(SLOT_MAGIC))
    number, length, stored = _SLOT_HEADER.unpack_from(data, len(SLOT_MAGIC))
    if header_end + length > len(data):
        raise SignStateCorruptError(path, f"record of {length} bytes is cut short", len(SLOT_MAGIC))
    body = data[header_end : header_end + length]
    if zlib.crc32(data[len(SLOT_MAGIC) : len(SLOT_MAGIC) + 12] + body) != stored:
        raise SignStateCorruptError(path, f"checksum mismatch (stored {stored:08x})", len(SLOT_MAGIC))
    return number, _decode_body(body, path, header_end, old_format=False)


def _decode_body(body: bytes, path: str, header_end: int, *, old_format: bool) -> SignState:
    parts: list[bytes | None] = []
    offset = 0
    for name in ("last_signed", "locked_block", "valid_block", "proposal_block", "own_votes"):
        if offset == len(body) and (
            (name == "proposal_block" and old_format)  # a file from before the proposal block was kept
            or name == "own_votes"  # a slot from before own votes were kept
        ):
            parts += [None] * (5 - len(parts))
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
    return SignState(last_signed, parts[1], parts[2], parts[3], parts[4])


def _encode_field(value: bytes | None) -> bytes:
    if value is None:
        return _FIELD.pack(0, 0)
    return _FIELD.pack(1, len(value)) + value


class SignStateFile:
    """The last-signed state of one validator, in the two slot files beside `path` (see the module
    docstring). open() reads and checks them at once; close() closes the slots kept open."""

    __slots__ = ("_current", "_fds", "_guard", "_number", "_path")

    def __init__(
        self, path: Path, current: SignState | None, number: int, guard: RestoreGuard | None = None
    ) -> None:
        self._path = path
        self._current = current
        self._number = number  # of the last save (0: none in slots yet)
        self._fds: list[int | None] = [None, None]
        self._guard = guard

    @classmethod
    def open(cls, path: str | Path) -> SignStateFile:
        """Open the state and its restore guard (nothing need exist yet). Raises
        SignStateCorruptError if either cannot be trusted. A leftover `<path>.tmp` of an earlier
        version's interrupted save is removed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            tmp.unlink()
        current, number = _read(path)
        return cls(path, current, number, load_guard(path))

    @property
    def path(self) -> Path:
        return self._path

    @property
    def guard(self) -> RestoreGuard | None:
        """The restore guard read at open (None: the sign state is the validator's own, whole)."""
        return self._guard

    def slot_path(self, slot: int) -> Path:
        """The file of slot 0 or 1."""
        return slot_path(self._path, slot)

    def load(self) -> wal_pb2.LastSigned | None:
        """The stored last-signed position (a copy), or None if nothing was ever saved."""
        state = self.load_state()
        return None if state is None else state.last_signed

    def load_state(self) -> SignState | None:
        """The stored position with its locked and valid blocks (re-read from disk), or None."""
        state, number = _read(self._path)
        self._current, self._number = state, number
        if state is None:
            return None
        copy = wal_pb2.LastSigned()
        copy.CopyFrom(state.last_signed)
        return SignState(copy, state.locked_block, state.valid_block, state.proposal_block, state.own_votes)

    def save(
        self,
        state: wal_pb2.LastSigned,
        locked_block: bytes | None = None,
        valid_block: bytes | None = None,
        proposal_block: bytes | None = None,
        own_votes: bytes | None = None,
    ) -> None:
        """Durably store state (one pwrite and fdatasync of the slot not holding the current
        state). Raises SignStateRegressionError, without writing, if state is below the stored
        (height, round, step) or names another block id at the same position."""
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
        new_state = SignState(copy, locked_block, valid_block, proposal_block, own_votes)
        number = self._number + 1
        record = encode_slot(new_state, number)
        slot = number % 2
        fd, created = self._slot_fd(slot)
        crash_point("signstate:before-write")
        try:
            written = os.pwrite(fd, record, 0)
            if written != len(record):
                raise StorageError(self.slot_path(slot), f"short write: {written} of {len(record)} bytes", 0)
            os.fdatasync(fd)
            if created:
                fsync_dir(self._path.parent)  # the new slot file's name is durable too
        except OSError as exc:
            raise StorageError(self.slot_path(slot), f"cannot write the sign state: {exc}") from exc
        self._current, self._number = new_state, number
        if number == 1:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()  # an earlier version's single file, now superseded

    def close(self) -> None:
        for i, fd in enumerate(self._fds):
            if fd is not None:
                os.close(fd)
                self._fds[i] = None

    def _slot_fd(self, slot: int) -> tuple[int, bool]:
        fd = self._fds[slot]
        if fd is not None:
            return fd, False
        path = self.slot_path(slot)
        created = not path.exists()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(path, f"cannot open the sign-state slot: {exc}") from exc
        self._fds[slot] = fd
        return fd, created


def slot_path(path: Path, slot: int) -> Path:
    return path.with_name(f"{path.name}.{slot}")


def _read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(path, f"cannot read the sign-state file: {exc}") from exc


def _read(path: Path) -> tuple[SignState | None, int]:
    """(the stored state or None, the number of its save; 0 for the old single file or nothing)."""
    found: list[tuple[int, int, SignState]] = []  # (save number, slot, state)
    damaged: list[SignStateCorruptError] = []
    for slot in (0, 1):
        p = slot_path(path, slot)
        data = _read_file(p)
        if not data:
            continue  # absent, or created and never written
        try:
            number, state = decode_slot(data, os.fspath(p))
        except SignStateCorruptError as exc:
            damaged.append(exc)
            continue
        if number % 2 != slot or number == 0:
            raise SignStateCorruptError(
                p, f"holds save number {number}, which does not belong in slot {slot}", 0
            )
        found.append((number, slot, state))
    if found:
        number, _slot, state = max(found, key=lambda f: f[0])
        return state, number  # a damaged other slot is a save torn by a crash: never acknowledged
    if damaged:
        raise damaged[0]
    data = _read_file(path)
    if data is None:
        return None, 0
    return decode_sign_state(data, os.fspath(path)), 0


def read_state(path: Path) -> SignState | None:
    """The sign state stored at path (its slots, or an earlier version's file), read without
    opening it for saves. SignStateCorruptError if it cannot be trusted."""
    return _read(Path(path))[0]


def files_of(path: Path) -> list[Path]:
    """The files that hold the sign state at path and exist: its slots, an earlier version's file,
    the restore guard."""
    path = Path(path)
    candidates = [slot_path(path, 0), slot_path(path, 1), path, guard_path(path)]
    return [p for p in candidates if p.exists()]
