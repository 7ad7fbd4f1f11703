"""The backup file (node/storage/backupfile.py): a round trip gives back the header and every record
with the file's sha256; a truncated or damaged file is refused at any offset, never read as a
shorter backup; memory stays bounded by a chunk and a record however large the state; records
written into a new LevelDB read back the same; a store held by another process is "in use". And
the restore guard beside the sign state (node/storage/signstate.py): round trip, damage refused,
and its rule at the boundary."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import plyvel
import pytest

from clearline.v1 import admin_pb2, wal_pb2
from node.storage import SignStateCorruptError, SignStateFile, StorageError
from node.storage.backupfile import (
    CHUNK_BYTES,
    MAX_VALUE_BYTES,
    BackupReader,
    check_not_in_use,
    encode,
    write_store,
)
from node.storage.errors import BackupCorruptError
from node.storage.signstate import RestoreGuard, encode_guard, guard_path, load_guard, save_guard


def header(**fields: object) -> admin_pb2.BackupHeader:
    doc: dict[str, object] = {
        "format_version": 1,
        "chain_id": "clearline-test",
        "node_name": "node0",
        "node_address": b"\x0a" * 20,
        "height": 42,
        "block_hash": b"\x0b" * 32,
        "created_ms": 1_800_000_000_000,
        "files": [admin_pb2.BackupFile(path="config.toml", data=b'chain_id = "clearline-test"\n')],
        "sign_state": admin_pb2.BackupSignState(
            last_signed=wal_pb2.LastSigned(height=43, round=1, step=2, signature=b"\x05" * 64),
            locked_block=b"block",
        ),
    }
    doc.update(fields)
    return admin_pb2.BackupHeader(**doc)  # type: ignore[arg-type]


RECORDS = [(b"\x00schema", b"\x00\x00\x00\x01"), (b"b" + bytes(8), b"x" * 3000), (b"s" + b"k" * 40, b"")]


def file_bytes(records: list[tuple[bytes, bytes]] = RECORDS, chunk_bytes: int = 1024) -> bytes:
    return b"".join(encode(header(), iter(records), chunk_bytes))


def read_all(data: bytes) -> tuple[BackupReader, list[tuple[bytes, bytes]]]:
    reader = BackupReader(io.BytesIO(data), "test.backup")
    return reader, list(reader.records())


def test_a_round_trip_gives_back_the_header_every_record_and_the_sha256() -> None:
    data = file_bytes()
    reader, records = read_all(data)
    assert reader.header == header()
    assert records == RECORDS
    assert (reader.count, reader.size) == (3, len(data))
    assert reader.sha256 == hashlib.sha256(data[:-32]).hexdigest() == data[-32:].hex()
    # The chunking does not change the bytes.
    assert file_bytes(chunk_bytes=1) == data == file_bytes(chunk_bytes=1 << 20)
    # An empty store is a backup too.
    reader, records = read_all(file_bytes([]))
    assert records == [] and reader.count == 0


def test_every_truncation_is_refused_and_never_read_as_a_shorter_backup() -> None:
    data = file_bytes()
    for cut in range(len(data)):
        with pytest.raises(BackupCorruptError) as info:
            read_all(data[:cut])
        assert "truncated" in str(info.value), cut


def test_every_flipped_byte_is_refused() -> None:
    data = file_bytes()
    for offset in range(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        with pytest.raises(BackupCorruptError):
            read_all(bytes(damaged))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: b"NOTABACK" + d[8:], "not a Clearline backup file"),
        (lambda d: d[:8] + (2).to_bytes(4, "big") + d[12:], "format version 2"),
        (lambda d: d[:12] + (1 << 30).to_bytes(4, "big") + d[16:], "header length"),
        (lambda d: d + b"\x00", "bytes after the digest"),
        (lambda d: d[:-32] + bytes(32), "checksum mismatch"),
    ],
    ids=["magic", "version", "header-length", "trailing-bytes", "digest"],
)
def test_a_damaged_file_is_refused_with_what_is_wrong(damage, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BackupCorruptError) as info:
        read_all(damage(file_bytes()))
    assert expected in str(info.value)


def test_lengths_beyond_the_bounds_are_refused_before_anything_is_allocated() -> None:
    data = file_bytes([(b"k", b"v")])
    start = data.index(b"R\x00\x00\x00\x01")  # the record frame: tag, key length 1, value length 1
    huge = data[:start] + b"R" + (1).to_bytes(4, "big") + (MAX_VALUE_BYTES + 1).to_bytes(4, "big")
    with pytest.raises(BackupCorruptError, match="beyond the bounds"):
        read_all(huge + data[start + 9 :])
    unknown = data[:start] + b"X" + data[start + 1 :]
    with pytest.raises(BackupCorruptError, match="unknown frame tag"):
        read_all(unknown)


class _Stream(io.RawIOBase):
    """A file-like view of a chunk generator, read without keeping what was read."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def test_memory_stays_bounded_by_a_chunk_and_a_record_whatever_the_state_size() -> None:
    """64 MiB of records go through encode and back through the reader, produced and consumed one
    at a time: the peak of what Python allocates stays a few chunks."""
    count, value = 16_384, b"v" * 4096

    def records() -> Iterator[tuple[bytes, bytes]]:
        for i in range(count):
            yield i.to_bytes(8, "big"), value

    tracemalloc.start()
    try:
        reader = BackupReader(io.BufferedReader(_Stream(encode(header(), records())), 1 << 16), "stream")
        seen = sum(1 for _ in reader.records())
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count and reader.size > count * len(value)
    assert peak < 4 * CHUNK_BYTES, peak


def test_records_written_into_a_new_leveldb_read_back_the_same(tmp_path: Path) -> None:
    records = [(i.to_bytes(4, "big"), bytes([i % 256]) * (i % 50)) for i in range(5000)]
    assert write_store(iter(records), tmp_path / "db", batch_bytes=4096) == len(records)
    db = plyvel.DB(str(tmp_path / "db"))
    try:
        assert list(db.iterator()) == records
    finally:
        db.close()
    with pytest.raises(StorageError, match="cannot create the restored store"):
        write_store(iter(records), tmp_path / "db")  # never over an existing store


def test_a_store_held_by_another_process_is_in_use(tmp_path: Path) -> None:
    path = tmp_path / "db"
    plyvel.DB(str(path), create_if_missing=True).close()
    check_not_in_use(path)  # closed: not in use
    check_not_in_use(tmp_path / "nothing-here")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import plyvel, sys; db = plyvel.DB(sys.argv[1]); print('open', flush=True); "
         "sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"open"
        with pytest.raises(StorageError, match="in use"):
            check_not_in_use(path)
    finally:
        holder.communicate(b"", timeout=10)
    check_not_in_use(path)


# --- the restore guard ----------------------------------------------------------------------------------


def test_the_restore_guard_round_trips_and_is_loaded_with_the_sign_state(tmp_path: Path) -> None:
    path = tmp_path / "sign_state.bin"
    assert load_guard(path) is None and SignStateFile.open(path).guard is None
    guard = RestoreGuard(restored_at_ms=1_800_000_000_000, margin_ms=30_000, backup_height=42)
    save_guard(path, guard)
    assert load_guard(path) == guard
    opened = SignStateFile.open(path)
    assert opened.guard == guard and opened.load() is None  # a guard without any signature stored
    opened.close()


def test_a_damaged_restore_guard_is_an_error_never_no_guard(tmp_path: Path) -> None:
    path = tmp_path / "sign_state.bin"
    data = encode_guard(RestoreGuard(1_800_000_000_000, 30_000, 42))
    for damaged in (data[:-1], data + b"\x00", b"X" + data[1:], data[:12] + b"\xff" + data[13:], b""):
        guard_path(path).write_bytes(damaged)
        with pytest.raises(SignStateCorruptError):
            SignStateFile.open(path)


def test_the_guard_allows_only_heights_whose_previous_block_is_timed_after_its_mark() -> None:
    guard = RestoreGuard(restored_at_ms=1_000_000, margin_ms=30_000, backup_height=7)
    assert guard.signs_after_ms == 1_030_000
    assert not guard.allows(999_000)  # committed before the restore: it may have signed the next
    assert not guard.allows(1_030_000)  # within the margin: a proposer's clock may run 10 s ahead
    assert guard.allows(1_030_001)
