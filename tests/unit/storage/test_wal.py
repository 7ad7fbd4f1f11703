"""WAL: records replay in order, rotation bounds the file, a torn tail is truncated and reported,
anything else damaged stops the open with the file and offset (and leaves the file as it was)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from clearline.v1 import block_pb2, wal_pb2
from node.storage import WAL, StorageError, WalCorruptError
from node.storage.wal import HEADER, MAGIC, MAX_RECORD_BYTES, encode_frame
from node.storage.walcheck import main as wal_main


def vote_record(height: int, round_: int = 0) -> wal_pb2.WalRecord:
    vote = block_pb2.Vote(
        type=block_pb2.VOTE_TYPE_PREVOTE, height=height, round=round_, block_id=b"\x01" * 32,
        validator=b"\x02" * 20, signature=b"\x03" * 64,
    )  # fmt: skip
    return wal_pb2.WalRecord(message=wal_pb2.WalMessage(vote=vote))


def timeout_record(height: int) -> wal_pb2.WalRecord:
    return wal_pb2.WalRecord(timeout=wal_pb2.WalTimeout(height=height, round=1, step=block_pb2.STEP_PREVOTE))


def signed_record(height: int) -> wal_pb2.WalRecord:
    return wal_pb2.WalRecord(last_signed=wal_pb2.LastSigned(height=height, step=block_pb2.STEP_PRECOMMIT))


def write_records(path: Path, records: list[wal_pb2.WalRecord]) -> list[int]:
    """Append records to a fresh WAL; return each frame's offset."""
    wal, _ = WAL.open(path)
    offsets = []
    for record in records:
        offsets.append(wal.size)
        wal.append(record)
    wal.close()
    return offsets


RECORDS = [vote_record(1), timeout_record(1), signed_record(1), vote_record(1, 1)]


def test_new_wal_is_empty(tmp_path: Path) -> None:
    wal, replay = WAL.open(tmp_path / "wal" / "cs.wal")
    assert (replay.records, replay.last_end_height, replay.repaired) == ([], None, None)
    assert (tmp_path / "wal" / "cs.wal").read_bytes() == MAGIC
    wal.close()


def test_append_and_replay_in_order(tmp_path: Path) -> None:
    path = tmp_path / "cs.wal"
    wal, _ = WAL.open(path)
    for i, record in enumerate(RECORDS):
        wal.append(record, sync=(i % 2 == 0))
    wal.sync()
    wal.close()
    wal, replay = WAL.open(path)
    assert replay.records == RECORDS
    assert replay.last_end_height is None and replay.repaired is None
    wal.close()


def test_end_height_rotates_so_the_file_does_not_grow(tmp_path: Path) -> None:
    path = tmp_path / "cs.wal"
    wal, _ = WAL.open(path)
    sizes_after_end = set()
    sizes_before_end = set()
    for height in range(1, 41):
        for record in (vote_record(height), timeout_record(height), vote_record(height, 1)):
            wal.append(record)
        sizes_before_end.add(wal.size)
        wal.end_height(height)
        sizes_after_end.add(path.stat().st_size)
    assert len(sizes_after_end) == 1  # the same few bytes after every height
    assert max(sizes_before_end) < 400  # one height's records, never 40 heights' worth
    wal.append(vote_record(41))
    wal.close()
    wal, replay = WAL.open(path)
    assert replay.last_end_height == 40
    assert replay.records == [vote_record(41)]
    assert not path.with_name("cs.wal.tmp").exists()
    wal.close()


def test_end_height_appends_below_rotate_bytes_and_rotates_above(tmp_path: Path) -> None:
    """With rotate_bytes (as the node opens it), a height's end is one appended marker while the
    file is small, and a fresh file once it reaches the limit: the file never exceeds the limit by
    more than one height, and replay after any height gives only the records after its marker."""
    path = tmp_path / "cs.wal"
    wal, _ = WAL.open(path, rotate_bytes=3000)
    sizes = []
    rotations = 0
    for height in range(1, 61):
        for record in (vote_record(height), timeout_record(height), vote_record(height, 1)):
            wal.append(record)
        before = wal.size
        wal.end_height(height)
        rotations += wal.size < before
        sizes.append(path.stat().st_size)
        assert path.stat().st_size == wal.size
    assert rotations >= 4  # 60 heights of ~300 bytes: rotated every ~10 heights
    assert max(sizes) < 3000 + 400  # the limit plus at most one height's records
    assert len(set(sizes)) >= 8  # and in between, appended (the size grows)
    wal.append(vote_record(61))
    wal.close()
    wal, replay = WAL.open(path, rotate_bytes=3000)
    assert replay.last_end_height == 60
    assert replay.records == [vote_record(61)]
    wal.close()


def test_records_before_the_last_end_height_are_not_replayed(tmp_path: Path) -> None:
    path = tmp_path / "cs.wal"
    end = wal_pb2.WalRecord(end_height=wal_pb2.WalEndHeight(height=7))
    write_records(path, [vote_record(7), end, vote_record(8)])
    wal, replay = WAL.open(path)
    assert (replay.records, replay.last_end_height) == ([vote_record(8)], 7)
    wal.close()


@pytest.mark.parametrize("cut", [1, 5, 8, 9, 20])
def test_torn_tail_is_truncated_reported_and_appends_continue(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cs.wal"
    offsets = write_records(path, RECORDS)
    whole = path.read_bytes()
    path.write_bytes(whole[:-cut])  # kill -9 in the middle of the last append
    wal, replay = WAL.open(path)
    dropped = len(whole) - cut - offsets[-1]
    assert replay.records == RECORDS[:-1]
    assert (replay.truncated_at, replay.truncated_bytes) == (offsets[-1], dropped)
    assert replay.repaired is not None
    assert f"torn tail of {dropped} bytes at offset {offsets[-1]}" in replay.repaired
    assert path.stat().st_size == offsets[-1]
    wal.append(timeout_record(2), sync=True)
    wal.close()
    wal, replay = WAL.open(path)
    assert replay.records == [*RECORDS[:-1], timeout_record(2)]
    assert replay.repaired is None
    wal.close()


def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "cs.wal"
    offsets = write_records(path, RECORDS[:2])
    end = path.stat().st_size
    with path.open("ab") as f:
        f.write(b"\x00" * 300)
    wal, replay = WAL.open(path)
    assert replay.records == RECORDS[:2]
    assert (replay.truncated_at, replay.truncated_bytes) == (end, 300)
    assert offsets[1] < end
    wal.close()


def test_last_frame_with_zeroed_payload_is_a_torn_tail(tmp_path: Path) -> None:
    """Power loss after the file grew but before the payload's data blocks were written."""
    path = tmp_path / "cs.wal"
    offsets = write_records(path, RECORDS)
    data = bytearray(path.read_bytes())
    data[offsets[-1] + HEADER.size :] = bytes(len(data) - offsets[-1] - HEADER.size)
    path.write_bytes(bytes(data))
    wal, replay = WAL.open(path)
    assert replay.records == RECORDS[:-1]
    assert replay.truncated_at == offsets[-1]
    wal.close()


def test_zeroed_payload_in_the_middle_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "cs.wal"
    offsets = write_records(path, RECORDS)
    data = bytearray(path.read_bytes())
    data[offsets[1] + HEADER.size : offsets[2]] = bytes(offsets[2] - offsets[1] - HEADER.size)
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorruptError, match="checksum mismatch") as exc:
        WAL.open(path)
    assert exc.value.offset == offsets[1]


def test_torn_file_header_is_repaired(tmp_path: Path) -> None:
    path = tmp_path / "cs.wal"
    path.write_bytes(MAGIC[:3])
    wal, replay = WAL.open(path)
    assert (
        replay.records == [] and replay.repaired is not None and "incomplete file header" in replay.repaired
    )
    assert path.read_bytes() == MAGIC
    wal.close()


def _flip(path: Path, offset: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))
    return bytes(data)


@pytest.mark.parametrize("which", [1, 3])  # a middle frame, and the last (complete) frame
def test_bad_checksum_is_corruption_with_offset_and_file_untouched(tmp_path: Path, which: int) -> None:
    path = tmp_path / "cs.wal"
    offsets = write_records(path, RECORDS)
    damaged = _flip(path, offsets[which] + HEADER.size + 3)
    with pytest.raises(WalCorruptError, match="checksum mismatch") as exc:
        WAL.open(path)
    assert exc.value.offset == offsets[which]
    assert exc.value.path == str(path)
    assert f"at offset {offsets[which]}" in str(exc.value)
    assert path.read_bytes() == damaged  # not "repaired" away


def _frame(payload: bytes, length: int | None = None, crc: int | None = None) -> bytes:
    length = len(payload) if length is None else length
    crc = zlib.crc32(payload) if crc is None else crc
    return HEADER.pack(length, crc) + payload


@pytest.mark.parametrize(
    ("tail", "match"),
    [
        (_frame(b"\xff\xff\xff\xff"), "record does not decode"),
        (_frame(b"\x28\x01"), "record has no content"),  # a valid protobuf with an unknown field only
        (_frame(b"", crc=5) + b"rest", "frame of length 0"),
        (_frame(b"x", length=MAX_RECORD_BYTES + 1), "exceeds"),
    ],
)
def test_damaged_frames_are_corruption(tmp_path: Path, tail: bytes, match: str) -> None:
    path = tmp_path / "cs.wal"
    offsets = write_records(path, RECORDS[:2])
    end = path.stat().st_size
    with path.open("ab") as f:
        f.write(tail)
    with pytest.raises(WalCorruptError, match=match) as exc:
        WAL.open(path)
    assert exc.value.offset == end
    assert offsets[1] < end
    assert path.stat().st_size == end + len(tail)


@pytest.mark.parametrize("content", [b"hello world, this is not a WAL", b"\x00" * 64, b"XY"])
def test_garbage_file_is_corruption(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cs.wal"
    path.write_bytes(content)
    with pytest.raises(WalCorruptError, match="not a Clearline WAL") as exc:
        WAL.open(path)
    assert exc.value.offset == 0
    assert path.read_bytes() == content


def test_second_open_is_refused_while_locked(tmp_path: Path) -> None:
    path = tmp_path / "cs.wal"
    wal, _ = WAL.open(path)
    with pytest.raises(StorageError, match="locked by another process"):
        WAL.open(path)
    wal.close()
    wal2, _ = WAL.open(path)
    wal2.close()


def test_closed_wal_refuses_appends(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path / "cs.wal")
    wal.close()
    wal.close()
    with pytest.raises(StorageError, match="the WAL is closed"):
        wal.append(vote_record(1))
    with pytest.raises(StorageError, match="the WAL is closed"):
        wal.end_height(1)


def test_empty_record_cannot_be_appended(tmp_path: Path) -> None:
    wal, _ = WAL.open(tmp_path / "cs.wal")
    with pytest.raises(ValueError, match="oneof"):
        wal.append(wal_pb2.WalRecord())
    assert wal.size == len(MAGIC)
    wal.close()


def test_frame_layout_is_length_crc_payload() -> None:
    record = vote_record(3)
    payload = record.SerializeToString(deterministic=True)
    frame = encode_frame(record)
    assert frame[:4] == struct.pack(">I", len(payload))
    assert frame[4:8] == struct.pack(">I", zlib.crc32(payload))
    assert frame[8:] == payload


def test_operator_check_and_truncate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cs.wal"
    offsets = write_records(path, RECORDS)
    assert wal_main([str(path)]) == 0
    assert "4 records, last end height None" in capsys.readouterr().out
    _flip(path, offsets[2] + HEADER.size)
    damaged = path.read_bytes()
    assert wal_main([str(path)]) == 1
    assert f"CORRUPT: {path} at offset {offsets[2]}: checksum mismatch" in capsys.readouterr().err
    assert path.read_bytes() == damaged
    assert wal_main([str(path), "--truncate-at", "3"]) == 2
    assert path.read_bytes() == damaged
    assert wal_main([str(path), "--truncate-at", str(offsets[2])]) == 0
    assert path.with_name(f"cs.wal.corrupt-{offsets[2]}").read_bytes() == damaged
    wal, replay = WAL.open(path)
    assert replay.records == RECORDS[:2] and replay.repaired is None
    wal.close()


def test_operator_check_of_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert wal_main([str(tmp_path / "none.wal")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert wal_main([str(tmp_path / "none.wal"), "--truncate-at", "8"]) == 2
    assert not (tmp_path / "none.wal").exists()
