"""Crash points: a subprocess dies (os._exit, like kill -9) at a named point inside a storage write;
the reopened store, WAL or sign-state file is exactly the state before or exactly the state after."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clearline.v1 import block_pb2, wal_pb2
from node.storage import WAL, BlockCommit, NodeStore, SignStateFile, crash
from node.storage.bench import BENCH_CHAIN_ID, init_store, make_validator_set, synthetic_commit

ROOT = Path(__file__).resolve().parents[3]
BASE_HEIGHT = 3

COMMIT_SCRIPT = """
import random, sys
from node.storage import NodeStore
from node.storage.bench import make_validator_set, synthetic_commit
store = NodeStore.open(sys.argv[1])
c = synthetic_commit(store, 4, 50, rng=random.Random(4), evidence=1,
                     next_validator_sets={6: make_validator_set(3, seed=6)},
                     extra_writes={b"genesis/param": None})
store.commit_block(c)
store.close()
print("committed")
"""

WAL_SCRIPT = """
import sys
from clearline.v1 import wal_pb2
from node.storage import WAL
wal, _ = WAL.open(sys.argv[1])
wal.append(wal_pb2.WalRecord(timeout=wal_pb2.WalTimeout(height=5, round=0)))
wal.append(wal_pb2.WalRecord(timeout=wal_pb2.WalTimeout(height=5, round=1)), sync=True)
wal.end_height(5)
wal.close()
print("done")
"""

SIGN_SCRIPT = """
import sys
from clearline.v1 import wal_pb2
from node.storage import SignStateFile
SignStateFile.open(sys.argv[1]).save(wal_pb2.LastSigned(height=2, round=0, step=1), locked_block=b"new")
print("saved")
"""


def run_script(script: str, arg: Path, point: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != crash.ENV_VAR}
    if point is not None:
        env[crash.ENV_VAR] = point
    return subprocess.run(
        [sys.executable, "-c", script, str(arg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def the_block(store: NodeStore) -> BlockCommit:
    return synthetic_commit(
        store, 4, 50, rng=random.Random(4), evidence=1,
        next_validator_sets={6: make_validator_set(3, seed=6)}, extra_writes={b"genesis/param": None},
    )  # fmt: skip


@pytest.fixture(scope="module")
def base_store(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[bytes, bytes], dict[bytes, bytes]]:
    """A store at height 3, its raw contents, and the raw contents after block 4 (committed by the
    script without a crash point: the reference for "after")."""
    root = tmp_path_factory.mktemp("crash")
    base = root / "base"
    with NodeStore.open(base) as s:
        init_store(s)
        for h in range(1, BASE_HEIGHT + 1):
            s.commit_block(synthetic_commit(s, h, 5))
        before = dict(s.iter_raw())
    reference = root / "reference"
    shutil.copytree(base, reference)
    result = run_script(COMMIT_SCRIPT, reference, None)
    assert (result.returncode, result.stdout.strip()) == (0, "committed"), result.stderr
    with NodeStore.open(reference) as s:
        after = dict(s.iter_raw())
    assert before != after
    return base, before, after


@pytest.mark.parametrize(
    ("point", "committed"), [("commit:before-batch", False), ("commit:after-batch", True)]
)
def test_commit_crash_leaves_height_h_or_h_plus_1_exactly(
    tmp_path: Path,
    base_store: tuple[Path, dict[bytes, bytes], dict[bytes, bytes]],
    point: str,
    committed: bool,
) -> None:
    base, before, after = base_store
    path = tmp_path / "db"
    shutil.copytree(base, path)
    result = run_script(COMMIT_SCRIPT, path, point)
    assert result.returncode == crash.EXIT_CODE, result.stderr
    assert result.stdout == ""  # died before printing
    with NodeStore.open(path, chain_id=BENCH_CHAIN_ID) as s:
        contents = dict(s.iter_raw())
        assert contents == (after if committed else before)  # every table at H or H+1, nothing between
        if committed:
            assert s.latest_height() == BASE_HEIGHT + 1
            block = s.load_block(4)
            assert block is not None
            for raw in block.body.txs:
                assert s.load_tx(hashlib.sha256(raw).digest()) == raw
            assert s.state.get(b"genesis/param") is None
            assert s.load_validator_set(6) == make_validator_set(3, seed=6)
            assert len(s.load_evidence(from_height=4)) == 1
        else:
            assert s.latest_height() == BASE_HEIGHT
            assert s.load_block(4) is None
            assert s.state.get(b"genesis/param") == b"1"
            s.commit_block(the_block(s))  # the node re-commits the block and goes on
            assert dict(s.iter_raw()) == after


def test_wal_crash_before_fsync_keeps_what_reached_the_os(tmp_path: Path) -> None:
    path = tmp_path / "cs.wal"
    result = run_script(WAL_SCRIPT, path, "wal:before-fsync")
    assert result.returncode == crash.EXIT_CODE, result.stderr
    wal, replay = WAL.open(path)
    assert [r.timeout.round for r in replay.records] == [0, 1]
    assert replay.repaired is None and replay.last_end_height is None
    wal.close()


def test_wal_crash_before_rotation_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "cs.wal"
    result = run_script(WAL_SCRIPT, path, "wal:before-rotate")
    assert result.returncode == crash.EXIT_CODE, result.stderr
    assert path.with_name("cs.wal.tmp").exists()
    wal, replay = WAL.open(path)
    assert [r.timeout.round for r in replay.records] == [0, 1]
    assert replay.last_end_height is None
    assert not path.with_name("cs.wal.tmp").exists()
    wal.end_height(5)  # the restarted node finishes the rotation
    wal.close()
    wal, replay = WAL.open(path)
    assert (replay.records, replay.last_end_height) == ([], 5)
    wal.close()


def test_wal_script_without_crash_point_completes(tmp_path: Path) -> None:
    path = tmp_path / "cs.wal"
    result = run_script(WAL_SCRIPT, path, None)
    assert (result.returncode, result.stdout.strip()) == (0, "done"), result.stderr
    wal, replay = WAL.open(path)
    assert (replay.records, replay.last_end_height) == ([], 5)
    wal.close()


def test_signstate_crash_before_write_keeps_the_old_state(tmp_path: Path) -> None:
    path = tmp_path / "sign_state"
    old = wal_pb2.LastSigned(height=1, round=3, step=block_pb2.STEP_PRECOMMIT, block_id=b"b" * 32)
    SignStateFile.open(path).save(old, locked_block=b"old")
    result = run_script(SIGN_SCRIPT, path, "signstate:before-write")
    assert result.returncode == crash.EXIT_CODE, result.stderr
    state = SignStateFile.open(path).load_state()
    assert state is not None and (state.last_signed, state.locked_block) == (old, b"old")
    result = run_script(SIGN_SCRIPT, path, None)
    assert (result.returncode, result.stdout.strip()) == (0, "saved"), result.stderr
    state = SignStateFile.open(path).load_state()
    assert state is not None and (state.last_signed.height, state.locked_block) == (2, b"new")


def test_crash_points_are_documented_and_used() -> None:
    assert crash.ARMED is None  # the test run itself is not armed
    assert crash.crash_point("commit:before-batch") is None
    sources = "".join(p.read_text() for p in (ROOT / "node" / "storage").glob("*.py"))
    used = set(re.findall(r'crash_point\("([^"]+)"\)', sources))
    assert used == set(crash.POINTS)
    assert crash.__doc__ is not None
    for name in crash.POINTS:
        assert name in crash.__doc__


# ---- real kill -9 at an arbitrary moment ----------------------------------------------------------

LOOP_SCRIPT = """
import random, sys
from node.storage import NodeStore
from node.storage.bench import synthetic_commit
store = NodeStore.open(sys.argv[1])
while True:
    h = store.latest_height() + 1
    store.commit_block(synthetic_commit(store, h, 20, rng=random.Random(h), evidence=h % 2,
                                        extra_writes={b"height": str(h).encode()}))
    print(h, flush=True)
"""


def assert_store_consistent(store: NodeStore) -> None:
    """Every table agrees with latest_height: all of 1..H is there, nothing of H+1 is."""
    latest = store.latest_height()
    assert store.state.get(b"height") == (str(latest).encode() if latest else None)
    for h in range(1, latest + 1):
        block = store.load_block(h)
        assert block is not None and store.load_commit(h) is not None
        assert store.height_of_hash(store.load_block_hash(h) or b"") == h
        assert len(store.load_block_receipts(h)) == len(block.body.txs) == 20
    assert store.load_block(latest + 1) is None and store.load_commit(latest + 1) is None
    assert store.load_block_receipts(latest + 1) == []
    assert all(h <= latest for h, _ in store.load_evidence())
    for key, value in store.iter_raw(b"t"):
        assert int.from_bytes(value[:8], "big") <= latest, key


def test_kill_9_during_commits_leaves_a_consistent_store(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with NodeStore.open(path) as s:
        init_store(s)
    env = {k: v for k, v in os.environ.items() if k != crash.ENV_VAR}
    rng = random.Random(5)
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", LOOP_SCRIPT, str(path)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            for _ in range(10):  # let it commit a few blocks, then kill it mid-stream
                assert proc.stdout.readline(), proc.stderr.read() if proc.stderr else ""
            time.sleep(rng.uniform(0, 0.02))
        finally:
            proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        with NodeStore.open(path, chain_id=BENCH_CHAIN_ID) as s:
            assert s.latest_height() >= 10
            assert_store_consistent(s)


WAL_LOOP_SCRIPT = """
import sys
from clearline.v1 import wal_pb2
from node.storage import WAL
wal, replay = WAL.open(sys.argv[1])
height = (replay.last_end_height or 0) + 1
while True:
    for r in range(20):
        wal.append(wal_pb2.WalRecord(timeout=wal_pb2.WalTimeout(height=height, round=r)), sync=r == 19)
    wal.end_height(height)
    print(height, flush=True)
    height += 1
"""


def test_kill_9_during_wal_writes_never_corrupts_it(tmp_path: Path) -> None:
    path = tmp_path / "cs.wal"
    env = {k: v for k, v in os.environ.items() if k != crash.ENV_VAR}
    last_end = 0
    for attempt in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WAL_LOOP_SCRIPT, str(path)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            for _ in range(5):
                assert proc.stdout.readline()
            time.sleep(0.003 * attempt)
        finally:
            proc.kill()
            proc.wait(timeout=10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        wal, replay = WAL.open(path)  # never WalCorruptError
        wal.close()
        assert replay.last_end_height is not None and replay.last_end_height >= last_end + 5
        last_end = replay.last_end_height
        rounds = [r.timeout.round for r in replay.records]
        assert rounds == list(range(len(rounds)))  # a prefix of the height in progress, in order
        assert all(r.timeout.height == last_end + 1 for r in replay.records)
