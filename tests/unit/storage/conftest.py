"""Fixtures for the storage tests: a store in pytest's tmp_path, initialized with a small genesis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.storage import NodeStore
from node.storage.bench import BENCH_CHAIN_ID, init_store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "db"


@pytest.fixture
def store(db_path: Path) -> Iterator[NodeStore]:
    s = NodeStore.open(db_path, chain_id=BENCH_CHAIN_ID)
    init_store(s)
    yield s
    s.close()
