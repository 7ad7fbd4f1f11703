"""OS-level thread names, so `top -H`, /proc/PID/task/TID/comm and `clearline bench` can tell a node's
threads apart (Python before 3.14 names only its own Thread objects, not the OS threads)."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path
from typing import Final

_PR_SET_NAME: Final = 15
_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        _libc = None


def name_this_thread(name: str) -> None:
    """Name the calling OS thread (at most 15 bytes are kept); a no-op where unsupported."""
    if _libc is not None:
        _libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> name for a process (Linux /proc), empty if it cannot be read."""
    out: dict[int, str] = {}
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out[int(task.name)] = (task / "comm").read_text().strip()
            except (OSError, ValueError):
                continue
    except OSError:
        return {}
    return out
