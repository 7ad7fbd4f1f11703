"""The error tree of node/storage. Every error names the file or database it concerns.

    StorageError                  a storage operation failed or was refused (base class)
    ├── StoreCorruptError         the LevelDB store is not a valid Clearline store for this node
    ├── WalCorruptError           a complete WAL frame is damaged (bad checksum, undecodable, bad header)
    ├── SignStateCorruptError     the last-signed state file is damaged
    ├── SignStateRegressionError  a save would move the last-signed (height, round, step) backwards
    └── BackupCorruptError        a backup file is truncated, damaged or not a backup file

Corruption errors mean the node must stop: it may not vote or sign from a state it cannot trust.
A torn WAL tail (an incomplete last frame after a crash) is not an error: it is truncated and reported.
"""

from __future__ import annotations

import os


class StorageError(Exception):
    """A storage operation failed or was refused. path is the file or directory concerned, offset a
    byte offset in it (or None), detail what is wrong."""

    def __init__(self, path: str | os.PathLike[str], detail: str, offset: int | None = None) -> None:
        self.path = os.fspath(path)
        self.detail = detail
        self.offset = offset
        where = self.path if offset is None else f"{self.path} at offset {offset}"
        super().__init__(f"{where}: {detail}")


class StoreCorruptError(StorageError):
    """The LevelDB store is damaged, of another schema version, or belongs to another chain."""


class WalCorruptError(StorageError):
    """A complete WAL frame is damaged; offset is where the frame starts."""


class SignStateCorruptError(StorageError):
    """The last-signed state file exists but cannot be trusted. Never treated as empty."""


class SignStateRegressionError(StorageError):
    """save() was asked to store a last-signed position lower than the one already stored."""


class BackupCorruptError(StorageError):
    """A backup file cannot be trusted (node/storage/backupfile.py); offset is where it goes wrong."""
