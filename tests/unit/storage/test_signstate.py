"""SignStateFile: save/load with lock and valid blocks through two alternating slots (a torn save
leaves the previous state), corruption is an error (never "empty"), the single file of earlier
versions still loads, and the stored position never moves back or changes its block at the same
(height, round, step)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from clearline.v1 import block_pb2, wal_pb2
from node.storage import (
    SignState,
    SignStateCorruptError,
    SignStateFile,
    SignStateRegressionError,
    StorageError,
)
from node.storage.signstate import MAGIC, decode_slot, encode_sign_state, encode_slot, slot_path


def signed(height: int, round_: int, step: int, block_id: bytes = b"\xbb" * 32) -> wal_pb2.LastSigned:
    return wal_pb2.LastSigned(
        height=height, round=round_, step=step, block_id=block_id, signature=b"\x05" * 64,
        locked_round=round_, locked_block_id=block_id, valid_round=-1,
    )  # fmt: skip


PREVOTE, PRECOMMIT = block_pb2.STEP_PREVOTE, block_pb2.STEP_PRECOMMIT
PROPOSE = block_pb2.STEP_PROPOSE


def test_missing_file_loads_as_none(tmp_path: Path) -> None:
    f = SignStateFile.open(tmp_path / "priv" / "sign_state")
    assert f.load() is None
    assert f.load_state() is None


def test_save_and_load_with_blocks_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sign_state"
    f = SignStateFile.open(path)
    f.save(signed(5, 1, PRECOMMIT), locked_block=b"locked-block-bytes", valid_block=b"")
    again = SignStateFile.open(path)
    assert again.load() == signed(5, 1, PRECOMMIT)
    assert again.load_state() == SignState(signed(5, 1, PRECOMMIT), b"locked-block-bytes", b"")
    f.save(signed(6, 0, PREVOTE))
    assert SignStateFile.open(path).load_state() == SignState(signed(6, 0, PREVOTE), None, None)
    assert not path.with_name("sign_state.tmp").exists()


def test_load_returns_a_copy(tmp_path: Path) -> None:
    f = SignStateFile.open(tmp_path / "s")
    f.save(signed(1, 0, PREVOTE))
    got = f.load()
    assert got is not None
    got.height = 99
    assert f.load() == signed(1, 0, PREVOTE)


@pytest.mark.parametrize(
    ("first", "second", "match"),
    [
        (signed(5, 2, PREVOTE), signed(4, 9, PRECOMMIT), "move last-signed"),
        (signed(5, 2, PREVOTE), signed(5, 1, PRECOMMIT), "move last-signed"),
        (signed(5, 2, PRECOMMIT), signed(5, 2, PREVOTE), "move last-signed"),
        (signed(5, 2, PREVOTE), signed(5, 2, PREVOTE, block_id=b""), "second block id"),
        (signed(5, 2, PREVOTE, block_id=b""), signed(5, 2, PREVOTE), "double sign"),
    ],
)
def test_regressions_and_conflicts_are_refused_and_change_nothing(
    tmp_path: Path, first: wal_pb2.LastSigned, second: wal_pb2.LastSigned, match: str
) -> None:
    path = tmp_path / "s"
    f = SignStateFile.open(path)
    f.save(first, locked_block=b"L")
    before = _slots(path)
    with pytest.raises(SignStateRegressionError, match=match):
        f.save(second)
    assert _slots(path) == before
    assert SignStateFile.open(path).load_state() == SignState(first, b"L", None)


def test_same_position_same_block_may_be_saved_again(tmp_path: Path) -> None:
    f = SignStateFile.open(tmp_path / "s")
    unsigned = signed(3, 0, PREVOTE)
    unsigned.signature = b""
    f.save(unsigned)
    f.save(signed(3, 0, PREVOTE), valid_block=b"V")
    assert f.load_state() == SignState(signed(3, 0, PREVOTE), None, b"V")


def _valid_bytes() -> bytes:
    return encode_sign_state(SignState(signed(2, 0, PREVOTE), b"lock", None))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "not a Clearline sign-state file"),
        (b"garbage garbage garbage", "not a Clearline sign-state file"),
        (MAGIC + b"\x00", "truncated header"),
        (_valid_bytes()[:-2], "checksum mismatch"),
        (_valid_bytes()[:20] + bytes([_valid_bytes()[20] ^ 1]) + _valid_bytes()[21:], "checksum mismatch"),
    ],
)
def test_corrupt_file_is_an_error_not_empty(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "s"
    path.write_bytes(content)
    with pytest.raises(SignStateCorruptError, match=match) as exc:
        SignStateFile.open(path)
    assert exc.value.path == str(path)
    assert isinstance(exc.value, StorageError)
    assert path.read_bytes() == content


def test_corruption_after_open_is_seen_by_load(tmp_path: Path) -> None:
    path = tmp_path / "s"
    f = SignStateFile.open(path)
    f.save(signed(2, 0, PREVOTE))
    f.save(signed(2, 0, PRECOMMIT))
    for slot in (0, 1):
        slot_path(path, slot).write_bytes(b"\x07" * 10)
    with pytest.raises(SignStateCorruptError, match="not a Clearline sign-state slot"):
        f.load()


def test_leftover_temp_file_is_removed_and_ignored(tmp_path: Path) -> None:
    path = tmp_path / "s"
    SignStateFile.open(path).save(signed(1, 0, PREVOTE))
    path.with_name("s.tmp").write_bytes(b"half-written")
    f = SignStateFile.open(path)
    assert f.load() == signed(1, 0, PREVOTE)
    assert not path.with_name("s.tmp").exists()


def _with_body(body: bytes) -> bytes:
    return MAGIC + struct.pack(">I", zlib.crc32(body)) + body


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "field last_signed is missing"),
        (b"\x00\x00\x00\x00\x00" * 3, "no last-signed record"),
        (b"\x02\x00\x00\x00\x00" * 3, "field last_signed is malformed"),
        (b"\x01\x00\x00\x00\x09ab", "field last_signed is malformed"),
        (b"\x01\x00\x00\x00\x02\xff\xff" + b"\x00\x00\x00\x00\x00" * 2, "does not decode"),
        (b"\x01\x00\x00\x00\x00" + b"\x00\x00\x00\x00\x00" * 2 + b"x", "field proposal_block is missing"),
        (b"\x01\x00\x00\x00\x00" + b"\x00\x00\x00\x00\x00" * 3 + b"x", "field own_votes is missing"),
        (b"\x01\x00\x00\x00\x00" + b"\x00\x00\x00\x00\x00" * 4 + b"x", "1 trailing bytes"),
    ],
)
def test_malformed_body_with_good_checksum_is_corrupt(tmp_path: Path, body: bytes, match: str) -> None:
    path = tmp_path / "s"
    path.write_bytes(_with_body(body))
    with pytest.raises(SignStateCorruptError, match=match):
        SignStateFile.open(path)


def test_a_proposal_block_is_kept_and_files_without_one_still_load(tmp_path: Path) -> None:
    """The block of a signed proposal survives a reopen; a file written before proposal blocks were
    kept (three fields) loads with none, and a later save without one drops it."""
    path = tmp_path / "s"
    f = SignStateFile.open(path)
    f.save(signed(3, 1, PROPOSE), proposal_block=b"P")
    assert SignStateFile.open(path).load_state() == SignState(signed(3, 1, PROPOSE), None, None, b"P")
    f.save(signed(3, 1, PREVOTE), valid_block=b"V")
    assert SignStateFile.open(path).load_state() == SignState(signed(3, 1, PREVOTE), None, b"V", None)
    raw = signed(4, 0, PREVOTE).SerializeToString(deterministic=True)
    three_fields = b"\x01" + struct.pack(">I", len(raw)) + raw + b"\x01\x00\x00\x00\x01L" + b"\x00" * 5
    old = tmp_path / "old"
    old.write_bytes(_with_body(three_fields))
    assert SignStateFile.open(old).load_state() == SignState(signed(4, 0, PREVOTE), b"L", None, None)


def test_own_votes_are_kept_and_slots_without_them_still_load(tmp_path: Path) -> None:
    """The earlier own votes of the height survive a reopen (a restarted validator sends them
    again); a slot written before they were kept (four fields) loads with none."""
    path = tmp_path / "s"
    f = SignStateFile.open(path)
    prevote = block_pb2.Vote(type=block_pb2.VOTE_TYPE_PREVOTE, height=3, round=1, validator=b"v" * 20)
    kept = wal_pb2.OwnVotes(votes=[prevote]).SerializeToString()
    f.save(signed(3, 1, PRECOMMIT), own_votes=kept)
    loaded = SignStateFile.open(path).load_state()
    assert loaded is not None and loaded.own_votes == kept
    assert list(wal_pb2.OwnVotes.FromString(loaded.own_votes).votes) == [prevote]
    f.close()
    raw = signed(4, 0, PREVOTE).SerializeToString(deterministic=True)
    four_fields = b"\x01" + struct.pack(">I", len(raw)) + raw + b"\x01\x00\x00\x00\x01L" + b"\x00" * 10
    head = struct.pack(">QI", 1, len(four_fields))
    slot = slot_path(tmp_path / "old", 1)
    slot.write_bytes(
        b"CLSIGN\x00\x00\x02" + head + struct.pack(">I", zlib.crc32(head + four_fields)) + four_fields
    )
    assert SignStateFile.open(tmp_path / "old").load_state() == SignState(
        signed(4, 0, PREVOTE), b"L", None, None, None
    )


def _slots(path: Path) -> list[bytes | None]:
    return [p.read_bytes() if p.exists() else None for p in (slot_path(path, 0), slot_path(path, 1))]


def test_saves_alternate_between_two_slots_and_the_newest_loads(tmp_path: Path) -> None:
    path = tmp_path / "s"
    f = SignStateFile.open(path)
    states = [signed(1, 0, PREVOTE), signed(1, 0, PRECOMMIT), signed(2, 0, PROPOSE), signed(2, 0, PREVOTE)]
    for n, state in enumerate(states, start=1):
        f.save(state, locked_block=b"L" * n)
        slot = slot_path(path, n % 2)
        assert decode_slot(slot.read_bytes(), str(slot)) == (n, SignState(state, b"L" * n, None, None))
        assert SignStateFile.open(path).load_state() == SignState(state, b"L" * n, None, None)
    assert not path.exists()  # no single file is written any more
    # A shorter record over a longer one: the stale tail is ignored.
    f.save(signed(2, 0, PRECOMMIT))
    f.save(signed(3, 0, PREVOTE))
    assert len(slot_path(path, 0).read_bytes()) > len(encode_slot(SignState(signed(3, 0, PREVOTE)), 6))
    assert SignStateFile.open(path).load_state() == SignState(signed(3, 0, PREVOTE), None, None, None)
    f.close()


@pytest.mark.parametrize(
    "tear",
    [
        lambda data: data[: len(data) // 2],  # the power went mid-write: a cut record
        lambda data: data[:30] + bytes([data[30] ^ 0xFF]) + data[31:],  # a damaged byte
        lambda data: b"\x00" * 3 + data[3:],  # a damaged header
    ],
)
def test_a_torn_save_leaves_the_previous_state_and_the_next_save_repairs_it(
    tmp_path: Path, tear: Callable[[bytes], bytes]
) -> None:
    """The newest slot fails its checks (as after a power loss during its write, whose save never
    returned, so its signature never left): the other slot's state loads, and saving again goes
    to the damaged slot with the same number."""
    path = tmp_path / "s"
    f = SignStateFile.open(path)
    f.save(signed(4, 0, PREVOTE), valid_block=b"V")  # save 1: slot 1
    f.save(signed(4, 0, PRECOMMIT), locked_block=b"L")  # save 2: slot 0
    torn = slot_path(path, 0)
    torn.write_bytes(tear(torn.read_bytes()))
    g = SignStateFile.open(path)
    assert g.load_state() == SignState(signed(4, 0, PREVOTE), None, b"V", None)
    g.save(signed(4, 0, PRECOMMIT), locked_block=b"L2")
    assert decode_slot(torn.read_bytes(), str(torn))[0] == 2
    assert SignStateFile.open(path).load_state() == SignState(signed(4, 0, PRECOMMIT), b"L2", None, None)
    f.close()
    g.close()


def test_damaged_slots_with_no_good_one_or_a_misplaced_record_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "s"
    f = SignStateFile.open(path)
    f.save(signed(1, 0, PREVOTE))  # slot 1 only
    f.close()
    one = slot_path(path, 1)
    good = one.read_bytes()
    one.write_bytes(good[:-1])
    with pytest.raises(SignStateCorruptError, match="cut short") as exc:
        SignStateFile.open(path)  # the only slot is damaged: never "nothing signed"
    assert exc.value.path == str(one)
    one.unlink()
    slot_path(path, 0).write_bytes(good)  # save number 1 in slot 0
    with pytest.raises(SignStateCorruptError, match="does not belong in slot 0"):
        SignStateFile.open(path)
    slot_path(path, 0).write_bytes(b"")  # a slot created and never written counts as absent
    assert SignStateFile.open(path).load() is None


def test_the_single_file_of_earlier_versions_loads_and_the_first_save_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "sign_state.bin"
    path.write_bytes(encode_sign_state(SignState(signed(7, 1, PRECOMMIT), b"L", b"V")))
    f = SignStateFile.open(path)
    assert f.load_state() == SignState(signed(7, 1, PRECOMMIT), b"L", b"V", None)
    with pytest.raises(SignStateRegressionError):
        f.save(signed(7, 0, PREVOTE))  # the old file's position still guards
    assert path.exists() and _slots(path) == [None, None]
    f.save(signed(8, 0, PREVOTE))
    assert not path.exists()
    assert SignStateFile.open(path).load_state() == SignState(signed(8, 0, PREVOTE), None, None, None)
    f.close()
