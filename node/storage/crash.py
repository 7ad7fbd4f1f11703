"""Crash points: kill the process at a named place, for crash-recovery tests.

`crash_point(name)` calls os._exit(87) (no cleanup, no flush: like kill -9 at that instant) when the
environment variable CLEARLINE_CRASH_POINT equals `name`. The variable is read once at import; when it
is unset, `crash_point` is a function that returns immediately.

Names used by node/storage (other packages may add their own, prefixed with their role):

    commit:before-batch       NodeStore.commit_block, the batch is built but not written
    commit:after-batch        NodeStore.commit_block, the synced batch is written, nothing else done
    wal:before-fsync          WAL.append(sync=True) / WAL.sync(): frame written to the OS, not fsynced
    wal:before-rotate         WAL.end_height: the fresh file is synced but not yet renamed into place
    signstate:before-write    SignStateFile.save: the record is encoded, its slot not yet written
"""

from __future__ import annotations

import os

ENV_VAR = "CLEARLINE_CRASH_POINT"
EXIT_CODE = 87

POINTS = frozenset(
    {
        "commit:before-batch",
        "commit:after-batch",
        "wal:before-fsync",
        "wal:before-rotate",
        "signstate:before-write",
    }
)

ARMED: str | None = os.environ.get(ENV_VAR) or None


def _crash_if_armed(name: str) -> None:
    if name == ARMED:
        os._exit(EXIT_CODE)


def _noop(name: str) -> None:
    return None


crash_point = _crash_if_armed if ARMED is not None else _noop
"""Exit the process with EXIT_CODE if CLEARLINE_CRASH_POINT == name; otherwise do nothing."""
