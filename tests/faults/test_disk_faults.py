"""Disk faults on a stopped validator's consensus WAL: a torn tail is repaired at start and the node
rejoins; a corrupt complete frame stops the node with a message naming the file and offset, and after
the operator moves the WAL aside (the documented remedy) it rejoins. Disk faults are refused on a
running node and leave the file untouched."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.faults import DiskFaultError, NodeRunningError
from cluster.faults.disk import frames
from node.storage.wal import MAGIC
from tests.faults.conftest import FaultNetwork

VICTIM = "node3"


def _crash_with_a_wal(net: FaultNetwork) -> Path:
    """SIGKILL the victim at a moment its WAL holds records of the height in progress (not just the
    end-height record a rotation leaves)."""
    wal = net.nemesis.wal_path(VICTIM)
    for _ in range(20):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(frames(wal.read_bytes())) < 2:
            time.sleep(0.01)
        net.nemesis.kill(VICTIM)
        if len(frames(wal.read_bytes())) >= 2:
            return wal
        net.nemesis.start(VICTIM)  # it rotated just before the kill: try again
        net.wait_height(net.height("node0") + 1, [VICTIM], timeout=30)
    pytest.fail("never caught the WAL with a record of the height in progress")


def _log_records(home: str) -> list[dict[str, object]]:
    lines = (Path(home) / "node.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def test_truncated_wal_tail_is_repaired_at_start_and_the_node_rejoins(fault_network) -> None:
    net = fault_network(4, faults=False)
    net.wait_all_at(3)
    wal = net.nemesis.wal_path(VICTIM)
    before = wal.read_bytes()
    with pytest.raises(NodeRunningError):
        net.nemesis.truncate_wal(VICTIM, 3)
    assert wal.read_bytes()[: len(before)] == before  # untouched (the live node may only have appended)

    wal = _crash_with_a_wal(net)
    image = wal.read_bytes()
    last = frames(image)[-1]
    with pytest.raises(DiskFaultError):
        net.nemesis.truncate_wal(VICTIM, 0)
    assert wal.read_bytes() == image
    assert net.nemesis.truncate_wal(VICTIM, 3) == 3
    assert wal.stat().st_size == len(image) - 3

    net.nemesis.start(VICTIM)
    top = net.height("node0")
    net.wait_all_at(top + 2, [VICTIM], timeout=60)
    repaired = [r for r in _log_records(net.network.node(VICTIM).home) if "WAL repaired" in str(r)]
    assert repaired, "the node did not report the WAL repair"
    message = str(repaired[-1])
    assert f"torn tail of {last.length + 8 - 3} bytes at offset {last.offset}" in message
    assert net.agree() >= top + 2


def test_corrupt_wal_frame_stops_the_node_until_the_operator_removes_the_wal(fault_network) -> None:
    net = fault_network(4, faults=False)
    net.wait_all_at(3)
    wal = _crash_with_a_wal(net)
    offset = net.nemesis.corrupt_wal(VICTIM, at_tail=False)
    assert offset in {f.offset for f in frames(wal.read_bytes())} and offset >= len(MAGIC)
    damaged = wal.read_bytes()

    node = net.network.node(VICTIM)
    log = Path(node.home) / "stdout.log"
    seen = log.stat().st_size
    net.nemesis.start(VICTIM)
    exited = net.launcher._children[VICTIM].wait(timeout=60)  # the Popen the launcher keeps
    assert exited != 0
    output = log.read_text()[seen:]
    assert f"{wal} at offset {offset}: checksum mismatch" in output, output
    assert wal.read_bytes() == damaged, "a node that refused to start changed its WAL"

    # The operator's tool reports the same damage without changing anything.
    check = subprocess.run(
        [sys.executable, "-m", "node.storage.walcheck", str(wal)], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 1 and f"offset {offset}" in check.stdout + check.stderr
    assert wal.read_bytes() == damaged

    # Remedy: move the WAL aside (its records are the height in progress; the sign state keeps the
    # node from signing anything conflicting), then start the node: it rejoins.
    moved = net.nemesis.remove_wal(VICTIM)
    assert moved.read_bytes() == damaged and not wal.exists()
    net.nemesis.start(VICTIM)
    top = net.height("node0")
    net.wait_all_at(top + 2, [VICTIM], timeout=60)
    assert net.agree() >= top + 2


def test_wal_damage_on_a_file_matches_what_the_node_reports(tmp_path: Path) -> None:
    from clearline.v1 import wal_pb2
    from node.storage import WAL
    from node.storage.errors import WalCorruptError

    path = tmp_path / "consensus.wal"
    wal, _ = WAL.open(path)
    wal.end_height(4)
    for h in (5, 6, 7):
        wal.append(wal_pb2.WalRecord(end_height=wal_pb2.WalEndHeight(height=h)))
    wal.close()
    pristine = path.read_bytes()
    found = frames(pristine)
    assert len(found) == 4 and found[-1].end == len(pristine)

    # Tail corruption: the last complete frame fails its checksum at its own offset.
    from cluster.faults.disk import corrupt_wal, truncate_wal

    assert corrupt_wal(path) == found[-1].offset
    with pytest.raises(WalCorruptError) as err:
        WAL.open(path)
    assert err.value.offset == found[-1].offset and "checksum mismatch" in str(err.value)
    # Middle corruption (on a fresh copy): the frame in the middle.
    path.write_bytes(pristine)
    assert corrupt_wal(path, at_tail=False) == found[1].offset
    with pytest.raises(WalCorruptError) as err:
        WAL.open(path)
    assert err.value.offset == found[1].offset
    # A torn tail is repaired: the partial frame goes, the complete ones stay.
    path.write_bytes(pristine)
    assert truncate_wal(path, 2) == 2
    wal, replay = WAL.open(path)
    wal.close()
    assert (replay.truncated_at, replay.truncated_bytes) == (found[-1].offset, found[-1].length + 8 - 2)
    assert replay.last_end_height == 6  # the three complete frames are kept
    # Refusals change nothing: a non-positive size, a file that is not a WAL, a missing file.
    path.write_bytes(pristine)
    for bad in (0, -1):
        with pytest.raises(DiskFaultError):
            truncate_wal(path, bad)
    assert path.read_bytes() == pristine
    other = tmp_path / "not-a-wal"
    other.write_bytes(b"hello world, not a wal")
    with pytest.raises(DiskFaultError, match="not a Clearline WAL"):
        corrupt_wal(other)
    assert other.read_bytes() == b"hello world, not a wal"
    with pytest.raises(DiskFaultError, match="no WAL here"):
        truncate_wal(tmp_path / "missing.wal", 3)
