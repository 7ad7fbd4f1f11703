"""Node storage: the LevelDB store (blocks, indexes, receipts, state, history), the consensus WAL and
the last-signed state file. The only package that imports plyvel.

    NodeStore / BlockCommit / StateView   node/storage/store.py   one synced batch per committed block;
    Pruned                                                        what one pruning batch deleted
    WAL / WalReplay                       node/storage/wal.py     checksummed append-only consensus log
    walcheck                              python -m node.storage.walcheck: operator check/truncate of a WAL
    bench                                 python -m node.storage.bench: storage throughput, fsync costs
    SignStateFile / SignState             node/storage/signstate.py   atomic last-signed state
    crash_point                           node/storage/crash.py   CLEARLINE_CRASH_POINT test hooks
    backupfile                            node/storage/backupfile.py  the backup file: streamed, sha256
    RestoreGuard                          node/storage/signstate.py   a restored validator's signing rule
    errors                                node/storage/errors.py  StorageError and its subclasses
"""

from node.storage.crash import crash_point
from node.storage.errors import (
    SignStateCorruptError,
    SignStateRegressionError,
    StorageError,
    StoreCorruptError,
    WalCorruptError,
)
from node.storage.signstate import SignState, SignStateFile
from node.storage.store import (
    BlockCommit,
    InvalidCommitError,
    NodeStore,
    Pruned,
    StateView,
    StateWrites,
    StoreSnapshot,
    account_touches_of,
    staggered_write_buffer,
)
from node.storage.wal import WAL, WalReplay

__all__ = [
    "WAL",
    "BlockCommit",
    "InvalidCommitError",
    "NodeStore",
    "Pruned",
    "SignState",
    "SignStateCorruptError",
    "SignStateFile",
    "SignStateRegressionError",
    "StateView",
    "StateWrites",
    "StorageError",
    "StoreCorruptError",
    "StoreSnapshot",
    "WalCorruptError",
    "WalReplay",
    "account_touches_of",
    "crash_point",
    "staggered_write_buffer",
]
