"""The CPU budget of `clearline bench --profile`: py-spy samples charged to categories, then the
measured per-thread CPU split by them (cluster/profiling.py). The real run is in
tests/cluster/test_bench.py."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from cluster.profiling import OTHER, ProfileError, Sampler, budget, classify, parse_raw, thread_kind

LOOP = [
    "<module> (node/__main__.py:70)",
    "run_forever (asyncio/base_events.py:607)",
    "Handle._run (asyncio/events.py:80)",
]


@pytest.mark.parametrize(
    ("innermost", "category"),
    [
        (["crypto_sign_open (nacl/bindings/crypto_sign.py:103)"], "verify"),
        # A hash is charged to the code that asked for it, not to "verify" because it lives in node/crypto.
        (["merkle_root (node/blocks.py:40)", "sha256 (node/crypto.py:67)"], "consensus"),
        (["tx_hash (node/txs.py:77)", "sha256 (node/crypto.py:67)"], "decode"),
        (
            ["verify_batch (node/crypto.py:150)", "verify_batch.<locals>.<listcomp> (node/crypto.py:151)"],
            "verify",
        ),
        # Merkle is part of node/ledger but has its own line in the budget.
        (
            [
                "execute_block (node/ledger/ledger.py:200)",
                "MerkleTree._update_node (node/ledger/merkle.py:250)",
            ],
            "merkle",
        ),
        (["apply_tx (node/ledger/ops.py:919)", "__init__ (<string>:8)"], "execute"),
        (["commit_block (node/storage/store.py:388)"], "storage"),
        (
            ["Mempool._admit_one (node/mempool.py:250)", "create_future (asyncio/base_events.py:427)"],
            "mempool",
        ),
        (["writer (node/network/peers.py:269)", "_write (grpc/aio/_call.py:461)"], "network"),
        (["Tendermint.step (node/consensus/tendermint.py:100)"], "consensus"),
        (["Node._commit (node/runtime.py:800)"], "runtime"),
        ([], OTHER),  # the event loop itself
    ],
)
def test_a_sample_is_charged_to_its_innermost_frame_that_has_a_category(
    innermost: list[str], category: str
) -> None:
    assert classify([*LOOP, *innermost]) == category


def test_thread_kinds_follow_the_node_thread_names() -> None:
    assert thread_kind("MainThread") == "main"
    assert thread_kind("verify_0") == thread_kind("verify_1") == "verify"
    assert thread_kind("io_0") == "io"
    assert thread_kind("Thread-2 (_poll_wrapper)") == "other"
    assert thread_kind("ioctl-helper") == "other"


def test_raw_output_is_counted_by_thread_kind_and_category() -> None:
    raw = "\n".join(
        [
            "thread (101): MainThread;<module> (node/__main__.py:70);Node._commit (node/runtime.py:800) 7",
            "thread (101): MainThread;<module> (node/__main__.py:70);Handle._run (asyncio/events.py:80) 3",
            "thread (102): verify_0;_worker (concurrent/futures/thread.py:81);crypto_sign_open (nacl/x.py:1) 5",
            "thread (103): verify_1;_worker (concurrent/futures/thread.py:81);crypto_sign_open (nacl/x.py:1) 2",
            "thread (104): Thread-2 (_poll_wrapper);Thread.run (threading.py:982) 4",
            "",
            "a line without a count",
        ]
    )
    got = parse_raw(raw)
    assert got == {
        "main": Counter({"runtime": 7, OTHER: 3}),
        "verify": Counter({"verify": 7}),
        "other": Counter({"network": 4}),  # gRPC's poller: all C, no frame of its own
    }


def test_the_budget_splits_the_measured_cpu_and_adds_up_to_it() -> None:
    node = {
        "main": Counter({"execute": 30, "network": 10}),
        "verify": Counter({"storage": 2}),  # read-ahead, holding the GIL
        "io": Counter({"storage": 1}),
    }
    cpu = {"main": 200.0, "verify": 100.0, "io": 10.0, "other": 5.0}
    got = budget([node, node], cpu, us_per_sample=2.0)
    # The event loop in proportion to its samples (3:1).
    assert got["execute"] == 150.0 and got["network"] == 50.0 + 5.0  # + "other" outside the GIL
    # The pool: its GIL samples at 2 us each, the rest of its CPU is libsodium.
    assert got["verify"] == 100.0 - 4 * 2.0
    assert got["storage"] == 4 * 2.0 + 10.0  # read-ahead, then the io thread's CPU (2 samples, rest outside)
    assert got["total"] == sum(cpu.values())
    assert list(got)[-1] == "total" and next(iter(got)) == "execute"


def test_samples_beyond_a_threads_cpu_are_scaled_down_to_it() -> None:
    # A thread holding the GIL while it waits for a core is sampled more than it ran.
    got = budget([{"verify": Counter({"verify": 10, "storage": 10})}], {"verify": 10.0}, us_per_sample=1.0)
    assert got == {"verify": 5.0, "storage": 5.0, "total": 10.0}


def test_cpu_without_samples_is_charged_where_it_runs_outside_the_gil() -> None:
    cpu = {"main": 40.0, "verify": 30.0, "io": 20.0, "other": 10.0}
    got = budget([], cpu, us_per_sample=1.0)
    assert got == {OTHER: 40.0, "verify": 30.0, "storage": 20.0, "network": 10.0, "total": 100.0}


def test_a_node_py_spy_cannot_read_fails_early_with_the_reason(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer exists
    with pytest.raises(ProfileError, match=rf"py-spy cannot read node0 \(pid {gone.pid}\)"):
        Sampler({"node0": gone.pid}, tmp_path, 1).check()
    assert not (tmp_path / "node0.raw").exists()
