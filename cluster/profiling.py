"""Where a node's CPU goes, by sampling: the budget `clearline bench --profile` prints.

py-spy attaches to every node process for the timed window and, a hundred times a second and
without pausing it, records the stack of the thread holding the GIL (`--gil`): what runs Python
code. Not a tracing profiler (cProfile): its cost per call distorts what it measures, most of all
on code that makes many small Python calls. Not every thread that is not idle either: a thread
waiting for the disk (fdatasync) would count as busy and inflate storage.

Each sample is charged to a category by its innermost frame that belongs to one, so a helper (a hash,
a dataclass constructor, a list comprehension in the standard library) is charged to the code that
called it. The samples then split the CPU each kind of thread really used over the window (read
from /proc by the bench; see budget()), so the budget adds up to the measured CPU per transaction.

Attaching needs permission to ptrace the nodes: root, or `kernel.yama.ptrace_scope = 0`.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

# (category, substrings of a py-spy frame "function (package/path.py:line)"), most specific first.
CATEGORIES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("verify", ("(nacl/", "verify_batch (node/crypto", "verify_raw (node/crypto")),
    ("merkle", ("(node/ledger/merkle",)),
    ("execute", ("(node/ledger/",)),
    ("storage", ("(node/storage/", "(plyvel")),
    ("decode", ("(node/txs", "(google/protobuf")),
    ("mempool", ("(node/mempool", "(node/verifier")),
    ("consensus", ("(node/consensus/", "(node/wire", "(node/blocks")),
    ("network", ("(node/network/", "(grpc/")),
    (
        "runtime",
        (
            "(node/runtime",
            "(node/driver",
            "(node/router",
            "(node/execution",
            "(node/validation",
            "(node/chain",
            "(node/evidence",
            "(node/service",
            "(node/blocksync",
            "(node/clock",
        ),
    ),
)
OTHER: Final = "asyncio/other"
# gRPC's completion-queue poller is a Python thread whose work is all in C (no frame of its own).
_GRPC_POLLER: Final = "_poll_wrapper"
# The kinds of node threads the bench measures CPU for (cpu_per_node_by_thread).
THREAD_KINDS: Final = ("main", "verify", "io", "other")
SAMPLE_RATE: Final = 100


class ProfileError(Exception):
    """py-spy is missing, cannot attach to the nodes, or failed."""


def classify(frames: Sequence[str]) -> str:
    """The category of one sample, given its frames from the outermost to the innermost."""
    for frame in reversed(frames):
        for name, patterns in CATEGORIES:
            if any(p in frame for p in patterns):
                return name
    return OTHER


def thread_kind(name: str) -> str:
    """The bench's kind of a node thread ("main", "verify", "io", "other") from its Python name."""
    if name == "MainThread":
        return "main"
    for kind in ("verify", "io"):
        if name == kind or name.startswith(kind + "_"):
            return kind
    return "other"


def parse_raw(text: str) -> dict[str, Counter[str]]:
    """Samples by thread kind and category from py-spy's raw output (`record --threads --format raw`:
    one line per distinct stack, "thread (TID): NAME;frame;...;frame COUNT")."""
    out: dict[str, Counter[str]] = {}
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        head, rest = frames[0], frames[1:]
        if not head.startswith("thread ("):
            head, rest = "thread (0): ?", frames
        name = head.partition(": ")[2]
        category = "network" if _GRPC_POLLER in name else classify(rest)
        out.setdefault(thread_kind(name), Counter())[category] += int(count)
    return out


# Where a thread kind's CPU goes when its samples do not cover it: the CPU it spent outside the GIL
# (libsodium for the verification pool, LevelDB's synced writes for the io thread, gRPC's C core for
# the "other" threads: gRPC's poller is nearly all of their CPU, LevelDB's compaction and the
# metrics server the rest).
_OUTSIDE_GIL: Final = {"main": OTHER, "verify": "verify", "io": "storage", "other": "network"}


def budget(
    samples: Iterable[Mapping[str, Counter[str]]],
    us_per_tx_by_thread: Mapping[str, float],
    us_per_sample: float,
) -> dict[str, float]:
    """Microseconds of CPU per committed transaction per node, by category, sorted by cost with the
    total last. It adds up to us_per_tx_by_thread (each thread kind's CPU from /proc).

    samples (one mapping per node) are GIL samples: each is us_per_sample of one node's time per
    transaction spent holding the GIL. The event loop ("main") is split in proportion to its
    samples. The other kinds do most of their work outside the GIL: their samples are charged at
    us_per_sample each (scaled down if they exceed the measured CPU, as when a thread holding the
    GIL waits for a core) and the rest of their CPU goes to _OUTSIDE_GIL[kind]."""
    merged: dict[str, Counter[str]] = {}
    for node in samples:
        for kind, counts in node.items():
            merged.setdefault(kind, Counter()).update(counts)
    totals: dict[str, float] = {}

    def add(category: str, us: float) -> None:
        totals[category] = totals.get(category, 0.0) + us

    for kind, cpu in us_per_tx_by_thread.items():
        counts = merged.get(kind, Counter())
        n = sum(counts.values())
        if kind == "main":
            if not n:
                add(OTHER, cpu)
            for category, c in counts.items():
                add(category, cpu * c / n)
            continue
        held = n * us_per_sample
        scale = min(1.0, cpu / held) if held else 0.0
        for category, c in counts.items():
            add(category, c * us_per_sample * scale)
        add(_OUTSIDE_GIL.get(kind, OTHER), max(0.0, cpu - held))
    out = {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if round(v, 1)}
    out["total"] = round(sum(totals.values()), 1)
    return out


def py_spy() -> str:
    """The py-spy executable: next to this Python (the project's virtual environment) or on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    found = shutil.which("py-spy")
    if found is None:
        raise ProfileError("py-spy is not installed (it comes with the project's test extras: make install)")
    return found


class Sampler:
    """py-spy recording every node for `seconds`, one process per node (started by start())."""

    def __init__(
        self, pids: Mapping[str, int], out_dir: Path, seconds: float, rate: int = SAMPLE_RATE
    ) -> None:
        self.pids = dict(pids)
        self.out_dir = out_dir
        self.seconds = max(1, math.ceil(seconds))
        self.rate = rate
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    def path(self, name: str) -> Path:
        return self.out_dir / f"{name}.raw"

    def check(self) -> None:
        """Fail early, with the reason, when py-spy cannot read a node (usually ptrace permission)."""
        exe = py_spy()
        for name, pid in self.pids.items():
            proc = subprocess.run(
                [exe, "dump", "--nonblocking", "--pid", str(pid)], capture_output=True, text=True, timeout=30
            )
            if proc.returncode != 0:
                raise ProfileError(
                    f"py-spy cannot read {name} (pid {pid}); it needs permission to ptrace the nodes "
                    f"(root, or kernel.yama.ptrace_scope=0): {proc.stderr.strip()[-300:]}"
                )

    def start(self) -> None:
        exe = py_spy()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            cmd = [exe, "record", "--pid", str(pid), "--threads", "--gil", "--nonblocking"]
            cmd += ["--rate", str(self.rate), "--duration", str(self.seconds)]
            cmd += ["--format", "raw", "--output", str(self.path(name))]
            self._procs[name] = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
            )

    def finish(self, timeout: float = 60) -> dict[str, dict[str, Counter[str]]]:
        """Wait for every recording; samples by node, then thread kind and category."""
        out: dict[str, dict[str, Counter[str]]] = {}
        errors: list[str] = []
        for name, proc in self._procs.items():
            try:
                _, err = proc.communicate(timeout=self.seconds + timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            path = self.path(name)
            if proc.returncode != 0 or not path.exists():
                errors.append(
                    f"{name}: py-spy exited {proc.returncode}: {err.decode(errors='replace')[-300:]}"
                )
                continue
            out[name] = parse_raw(path.read_text())
        self._procs.clear()
        if errors:
            raise ProfileError("; ".join(errors))
        return out

    def stop(self) -> None:
        """Kill recordings still running (the bench failed); only the processes started here."""
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self._procs.clear()
