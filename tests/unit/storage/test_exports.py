"""node.storage exports exactly its documented surface, and every export exists."""

from __future__ import annotations

import node.storage


def test_public_surface() -> None:
    expected = {
        "WAL", "WalReplay", "NodeStore", "BlockCommit", "Pruned", "StateView", "StateWrites", "StoreSnapshot", "SignStateFile",
        "SignState", "StorageError", "StoreCorruptError", "WalCorruptError", "SignStateCorruptError",
        "SignStateRegressionError", "InvalidCommitError", "account_touches_of", "crash_point", "staggered_write_buffer",
    }  # fmt: skip
    assert set(node.storage.__all__) == expected
    for name in expected:
        assert getattr(node.storage, name) is not None


def test_error_tree() -> None:
    from node.storage import errors

    for cls in (
        errors.StoreCorruptError,
        errors.WalCorruptError,
        errors.SignStateCorruptError,
        errors.SignStateRegressionError,
        node.storage.InvalidCommitError,
    ):
        assert issubclass(cls, errors.StorageError)
    err = errors.WalCorruptError("/x/wal", "checksum mismatch", 42)
    assert (err.path, err.offset, err.detail) == ("/x/wal", 42, "checksum mismatch")
    assert str(err) == "/x/wal at offset 42: checksum mismatch"
