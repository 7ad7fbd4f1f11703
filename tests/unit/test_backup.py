"""Backup and restore of a node (node/backup.py) on a real store: a one-validator node run in logical
time, stopped, backed up from its store; restored, the same records, its sign state and a restore
guard. A table of refused restores, each leaving the node's data exactly as it was; and a table of
the sign states restore may find, showing that it never replaces a newer one with an older."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from clearline.v1 import admin_pb2, wal_pb2
from cluster.netgen import init_network
from node.backup import (
    DEFAULT_GUARD_MARGIN_MS,
    MIN_GUARD_MARGIN_MS,
    SIGN_STATE_FILE,
    STORE_DIR,
    backup_stopped,
    restore,
    verify,
)
from node.clock import ManualClock
from node.config import load_config
from node.errors import RestoreRefused
from node.runtime import Node
from node.storage import NodeStore, SignStateFile
from node.storage.backupfile import BackupReader, encode
from node.storage.errors import BackupCorruptError
from node.storage.signstate import files_of, read_state, slot_path
from tests.unit.test_driver import run_driver

NOW_MS = 1_900_000_000_000


async def _run(home: Path, seconds: float) -> int:
    """Run the node for seconds of logical time, then stop it; the height it reached."""
    height = 0
    async for node, _outbox, _committed in run_driver(home, seconds):
        assert node.chain is not None
        height = node.chain.height
    return height


@pytest.fixture
async def home(tmp_path: Path) -> Path:
    """node0 of a one-validator network that committed a few heights, stopped."""
    net = init_network(tmp_path / "net", validators=1, tls=False)
    home = Path(net.node(0).home)
    assert await _run(home, 3.0) >= 3
    return home


def data_of(home: Path) -> Path:
    return home / "data"


def fingerprint(directory: Path) -> dict[str, str]:
    """Every file under directory (and its siblings' names) with a hash of its content."""
    out = {p.name: "" for p in directory.parent.iterdir()}
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(directory))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def records_of(store_path: Path) -> list[tuple[bytes, bytes]]:
    with NodeStore.open(store_path) as store:
        return list(store.iter_raw())


def rewrite(source: Path, out: Path, change: Callable[[admin_pb2.BackupHeader], None]) -> Path:
    """A copy of the backup at source whose header `change` edits, with a digest that checks."""
    with open(source, "rb") as f:
        reader = BackupReader(f, str(source))
        header = reader.header
        change(header)
        out.write_bytes(b"".join(encode(header, list(reader.records()))))
    return out


def test_a_backup_of_a_stopped_node_restores_its_store_and_sign_state_with_a_guard(home: Path) -> None:
    backup = home.parent / "node0.backup"
    summary = backup_stopped(home, backup, created_ms=NOW_MS)
    original = records_of(data_of(home) / STORE_DIR)
    signed = read_state(data_of(home) / SIGN_STATE_FILE)
    assert signed is not None and summary.records == len(original) and summary.height >= 3
    assert verify(backup).sha256 == summary.sha256
    names = {f.path for f in summary.header.files}
    assert names == {"config.toml", "genesis.json", "tls/node.pem", "tls/ca.pem"}  # never a private key
    assert (home / "keys" / "validator.json").exists() and (home / "tls" / "node.key").exists()
    shutil.rmtree(data_of(home))  # the disk is gone: store and sign state

    report = restore(home, backup, now_ms=NOW_MS)
    assert records_of(data_of(home) / STORE_DIR) == original
    assert report.sign_state == "backup" and report.moved_aside is None
    restored = read_state(data_of(home) / SIGN_STATE_FILE)
    assert restored is not None and restored.last_signed == signed.last_signed
    assert restored.own_votes == signed.own_votes and restored.locked_block == signed.locked_block
    assert report.guard is not None and report.guard.signs_after_ms == NOW_MS + DEFAULT_GUARD_MARGIN_MS
    assert SignStateFile.open(data_of(home) / SIGN_STATE_FILE).guard == report.guard
    assert not (home / "data.restoring").exists()
    node = Node(load_config(home), clock=ManualClock())
    node.open()  # the restored data is a node's data
    try:
        assert node.chain is not None and node.chain.height == summary.height
    finally:
        node.close()
        node.verify_pool.shutdown(wait=False)
        node.io_pool.shutdown(wait=True)


def _cut(backup: Path, out: Path) -> Path:
    data = backup.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def _flip(backup: Path, out: Path) -> Path:
    data = bytearray(backup.read_bytes())
    data[len(data) - 100] ^= 0x40  # inside the records
    out.write_bytes(bytes(data))
    return out


def _not_a_backup(backup: Path, out: Path) -> Path:
    out.write_bytes(b"PK\x03\x04" + bytes(200))
    return out


def _other_node(backup: Path, out: Path) -> Path:
    return rewrite(backup, out, lambda h: setattr(h, "node_address", b"\x07" * 20))


def _other_name(backup: Path, out: Path) -> Path:
    return rewrite(backup, out, lambda h: setattr(h, "node_name", "node9"))


def _header_lies(backup: Path, out: Path) -> Path:
    return rewrite(backup, out, lambda h: setattr(h, "height", h.height + 1))


REFUSALS = [
    ("truncated", _cut, BackupCorruptError, "truncated"),
    ("flipped byte", _flip, BackupCorruptError, "checksum mismatch"),
    ("not a backup", _not_a_backup, BackupCorruptError, "not a Clearline backup"),
    ("another node's key", _other_node, RestoreRefused, "WRONG_NODE"),
    ("another node's name", _other_name, RestoreRefused, "WRONG_NODE"),
    ("header unlike the records", _header_lies, BackupCorruptError, "the header says height"),
]


@pytest.mark.parametrize(
    ("make", "error", "expected"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_a_refused_restore_leaves_the_node_data_as_it_was(
    home: Path, make: Callable[[Path, Path], Path], error: type[Exception], expected: str
) -> None:
    backup = backup_stopped(home, home.parent / "good.backup", created_ms=NOW_MS).path
    bad = make(backup, home.parent / "bad.backup")
    before = fingerprint(data_of(home))
    with pytest.raises(error) as info:
        restore(home, bad, now_ms=NOW_MS)
    assert expected in (getattr(info.value, "reason", "") + str(info.value))
    assert fingerprint(data_of(home)) == before  # and no staging or moved-aside directory


async def test_a_backup_of_another_network_is_refused(home: Path, tmp_path: Path) -> None:
    other = init_network(tmp_path / "other", validators=1, tls=False)
    other_home = Path(other.node(0).home)
    await _run(other_home, 2.0)
    backup = backup_stopped(other_home, tmp_path / "other.backup", created_ms=NOW_MS).path
    before = fingerprint(data_of(home))
    with pytest.raises(RestoreRefused) as info:
        restore(home, backup, now_ms=NOW_MS)
    assert info.value.reason == "WRONG_CHAIN"
    assert fingerprint(data_of(home)) == before


def test_a_running_node_or_a_missing_key_is_refused(home: Path) -> None:
    backup = backup_stopped(home, home.parent / "good.backup", created_ms=NOW_MS).path
    holder = subprocess.Popen(
        [sys.executable, "-c", "import plyvel, sys; db = plyvel.DB(sys.argv[1]); print('open', flush=True); "
         "sys.stdin.read()", str(data_of(home) / STORE_DIR)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"open"
        before = fingerprint(data_of(home))
        with pytest.raises(RestoreRefused) as info:
            restore(home, backup, now_ms=NOW_MS)
        assert info.value.reason == "NODE_RUNNING"
        assert fingerprint(data_of(home)) == before
    finally:
        holder.communicate(b"", timeout=10)
    before = fingerprint(data_of(home))
    key = home / "keys" / "validator.json"
    key.rename(home.parent / "elsewhere.json")  # kept apart from the node, in key custody
    with pytest.raises(RestoreRefused) as info:
        restore(home, backup, now_ms=NOW_MS)
    assert info.value.reason == "NO_NODE_KEY"
    with pytest.raises(ValueError, match="guard margin"):
        restore(home, backup, now_ms=NOW_MS, guard_margin_ms=MIN_GUARD_MARGIN_MS - 1)
    assert fingerprint(data_of(home)) == before


def _signed(height: int) -> wal_pb2.LastSigned:
    return wal_pb2.LastSigned(height=height, round=0, step=3, signature=b"\x05" * 64, valid_round=-1)


def _own_newer(data: Path) -> None:
    state = SignStateFile.open(data / SIGN_STATE_FILE)
    current = state.load()
    assert current is not None
    state.save(_signed(current.height + 50))
    state.close()


def _own_gone(data: Path) -> None:
    for p in files_of(data / SIGN_STATE_FILE):
        p.unlink()


def _own_older(data: Path) -> None:
    _own_gone(data)
    state = SignStateFile.open(data / SIGN_STATE_FILE)
    state.save(_signed(1))
    state.close()


def _own_damaged(data: Path) -> None:
    _own_gone(data)
    for slot in (0, 1):
        slot_path(data / SIGN_STATE_FILE, slot).write_bytes(b"CLSIGN\x00\x00\x02" + bytes(40))


SIGN_STATES = [
    # (what the node's data holds, decision, guard written, note says)
    ("own newer", _own_newer, "kept", False, ""),
    ("own gone", _own_gone, "backup", True, ""),
    ("own older", _own_older, "backup", True, "older than the backup's"),
    ("own damaged", _own_damaged, "backup", True, "damaged"),
]


@pytest.mark.parametrize(
    ("prepare", "decision", "guarded", "note"), [s[1:] for s in SIGN_STATES], ids=[s[0] for s in SIGN_STATES]
)
def test_restore_never_replaces_a_newer_sign_state_and_guards_when_it_cannot_keep_the_own(
    home: Path, prepare: Callable[[Path], None], decision: str, guarded: bool, note: str
) -> None:
    backup = backup_stopped(home, home.parent / "node0.backup", created_ms=NOW_MS)
    in_backup = backup.header.sign_state.last_signed
    prepare(data_of(home))
    own = {p.name: p.read_bytes() for p in files_of(data_of(home) / SIGN_STATE_FILE)}
    report = restore(home, backup.path, now_ms=NOW_MS)
    assert report.sign_state == decision and (report.guard is not None) is guarded
    assert note in report.note
    placed = read_state(data_of(home) / SIGN_STATE_FILE)
    assert placed is not None
    if decision == "kept":  # byte for byte the node's own files
        assert {p.name: p.read_bytes() for p in files_of(data_of(home) / SIGN_STATE_FILE)} == own
        assert placed.last_signed.height == in_backup.height + 50
    else:
        assert placed.last_signed == in_backup
    assert report.moved_aside is not None and report.moved_aside.name.startswith("data.replaced-")
    assert {
        p.name: p.read_bytes() for p in files_of(report.moved_aside / SIGN_STATE_FILE)
    } == own  # aside, whole


def test_missing_home_files_are_written_from_the_backup_and_present_ones_kept(home: Path) -> None:
    backup = backup_stopped(home, home.parent / "node0.backup", created_ms=NOW_MS).path
    config = (home / "config.toml").read_text()
    (home / "config.toml").unlink()
    (home / "genesis.json").write_text((home / "genesis.json").read_text() + "\n")
    report = restore(home, backup, now_ms=NOW_MS)
    assert report.files_written == ("config.toml",) and (home / "config.toml").read_text() == config
    assert report.files_differing == ("genesis.json",)


def test_a_backup_of_a_node_that_never_ran_is_refused(tmp_path: Path) -> None:
    net = init_network(tmp_path / "net", validators=1, tls=False)
    from node.storage import StorageError

    with pytest.raises(StorageError, match="no store here"):
        backup_stopped(Path(net.node(0).home), tmp_path / "x.backup", created_ms=NOW_MS)
    assert not (tmp_path / "x.backup").exists() and not (tmp_path / "x.backup.partial").exists()


def test_write_file_keeps_no_partial_backup_when_the_stream_breaks(tmp_path: Path) -> None:
    from node.backup import write_file

    def broken() -> object:
        yield b"CLBACKUP"
        raise ConnectionError("the node went away")

    with pytest.raises(ConnectionError):
        write_file(broken(), tmp_path / "x.backup")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BackupCorruptError):
        write_file(iter([io.BytesIO(b"CLBACKUP").read()]), tmp_path / "x.backup")
    assert list(tmp_path.iterdir()) == []


async def test_a_running_node_streams_one_backup_at_a_time_and_frees_it_when_the_caller_goes(
    home: Path, tmp_path: Path
) -> None:
    """BackupService (what Admin.Backup serves): the stream is the same file a stopped node's
    backup is; a second backup while one streams is refused; a caller that goes away mid-stream
    frees the node for the next one."""
    from node.backup import BackupService
    from node.errors import ApiError

    node = Node(load_config(home), clock=ManualClock())
    node.open()
    service = BackupService(node.cfg, node.key.address, node.store, node.sign_state, node.clock)
    try:
        first = service.backup()
        chunk = await first.__anext__()
        assert chunk.startswith(b"CLBACKUP")
        with pytest.raises(ApiError) as info:
            await service.backup().__anext__()
        assert info.value.reason == "BACKUP_RUNNING"
        await first.aclose()  # the caller went away
        streamed = b"".join([c async for c in service.backup()])
    finally:
        service.close()
        node.close()
        node.verify_pool.shutdown(wait=False)
        node.io_pool.shutdown(wait=True)
    path = tmp_path / "streamed.backup"
    path.write_bytes(streamed)
    summary = verify(path)
    assert summary.height >= 3 and summary.header.node_address == node.key.address
    assert summary.records == len(records_of(data_of(home) / STORE_DIR))
