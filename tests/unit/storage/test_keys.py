"""Key encodings: fixed width, big-endian (byte order = numeric order), strict decoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.storage import keys

heights = st.integers(min_value=0, max_value=keys.MAX_HEIGHT)
indexes = st.integers(min_value=0, max_value=keys.MAX_INDEX)


@given(heights, heights)
def test_height_encoding_round_trips_and_orders(a: int, b: int) -> None:
    assert keys.decode_height(keys.encode_height(a)) == a
    assert (keys.block_key(a) < keys.block_key(b)) == (a < b)


@given(heights, indexes, heights, indexes)
def test_location_encoding_orders_by_height_then_index(h1: int, i1: int, h2: int, i2: int) -> None:
    assert keys.decode_location(keys.encode_location(h1, i1)) == (h1, i1)
    assert (keys.receipt_key(h1, i1) < keys.receipt_key(h2, i2)) == ((h1, i1) < (h2, i2))


@pytest.mark.parametrize("bad", [-1, keys.MAX_HEIGHT + 1])
def test_out_of_range_height_is_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        keys.encode_height(bad)


@pytest.mark.parametrize("data", [b"", b"\x00" * 7, b"\x00" * 9])
def test_decoders_reject_wrong_lengths(data: bytes) -> None:
    with pytest.raises(ValueError, match="8 bytes"):
        keys.decode_height(data)
    with pytest.raises(ValueError, match="12 bytes"):
        keys.decode_location(data)


def test_account_prefixes_of_different_lengths_never_nest() -> None:
    short, long_ = b"\x01" * 20, b"\x01" * 21
    assert not keys.account_key(long_, 0, 0).startswith(keys.account_prefix(short))
    with pytest.raises(ValueError, match="address length"):
        keys.account_prefix(b"")
    with pytest.raises(ValueError, match="address length"):
        keys.account_prefix(b"\x00" * 256)


def test_tables_have_distinct_prefixes() -> None:
    prefixes = [getattr(keys, n) for n in dir(keys) if n.startswith("P_")]
    assert len(prefixes) == len(set(prefixes)) == 12
    assert all(len(p) == 1 for p in prefixes)
