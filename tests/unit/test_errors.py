"""node.errors: client input is quoted only in part, and no ApiError message is large."""

from __future__ import annotations

import pytest

from clearline.v1 import receipt_pb2
from node.errors import MAX_MESSAGE_CHARS, QUOTE_CHARS, ApiError, bound_message, quote

MIB = 1 << 20


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("hold-1", "'hold-1'"),
        ("", "''"),
        (b"\x01\xff", "01ff"),
        (b"", ""),
        (bytes(32), "00" * 32),  # a hash is shown whole
    ],
)
def test_short_values_are_quoted_whole(value: str | bytes, expected: str) -> None:
    assert quote(value) == expected


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("h" * MIB, MIB),
        ("\x00" * MIB, MIB),  # repr makes 4 characters of each
        ("é" * MIB, 2 * MIB),  # the size is in UTF-8 bytes, as on the wire
        ("\x00" * 20, 20),  # short, but its repr is not
        (b"\xab" * MIB, MIB),
        (bytes(33), 33),
    ],
)
def test_long_values_are_cut_to_a_prefix_and_their_size(value: str | bytes, size: int) -> None:
    quoted = quote(value)
    assert quoted.endswith(f"...({size} bytes)")
    assert len(quoted) <= QUOTE_CHARS + len(f"...({size} bytes)")
    prefix = quoted.removesuffix(f"...({size} bytes)")
    expected = repr(value[:QUOTE_CHARS]) if isinstance(value, str) else value[: QUOTE_CHARS // 2].hex()
    assert expected.startswith(prefix)


def test_quote_limit_is_a_parameter() -> None:
    assert quote("abcdefghij", limit=4) == "'abc...(10 bytes)"


def test_bound_message_keeps_short_messages_and_cuts_long_ones() -> None:
    assert bound_message("no hold 'x'") == "no hold 'x'"
    cut = bound_message("x" * MIB)
    assert len(cut) == MAX_MESSAGE_CHARS
    assert cut.endswith(f"...({MIB} characters)")


def test_api_error_caps_its_message_as_a_backstop() -> None:
    err = ApiError("NOT_FOUND", "UNKNOWN_HOLD", f"no hold {'h' * MIB!r}")
    assert len(err.message) == MAX_MESSAGE_CHARS
    assert len(str(err)) < MAX_MESSAGE_CHARS + 64
    rejected = ApiError.for_status(receipt_pb2.TX_STATUS_WRONG_CHAIN, "c" * MIB)
    assert (rejected.code, rejected.reason) == ("INVALID_ARGUMENT", "WRONG_CHAIN")
    assert len(rejected.message) == MAX_MESSAGE_CHARS
