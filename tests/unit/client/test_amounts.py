"""cluster.client.amounts: amounts in an instrument's units to and from minor units, exactly."""

from __future__ import annotations

import pytest

from cluster.client.amounts import UINT64_MAX, AmountError, format_units, split_units, to_minor

GOOD: list[tuple[str, int, int]] = [
    ("12.50", 2, 1250),
    ("12.5", 2, 1250),
    ("12", 2, 1200),
    (" 12.5 ", 2, 1250),  # whitespace around the number is ignored
    (".5", 2, 50),
    ("5.", 2, 500),
    ("0.01", 2, 1),
    ("12.500", 2, 1250),  # trailing zeros past the decimals are exact
    ("007", 0, 7),
    ("5", 0, 5),
    ("5.0", 0, 5),
    ("1", 18, 10**18),
    ("0.000000000000000001", 18, 1),
    ("18.446744073709551615", 18, UINT64_MAX),
    ("18446744073709551615", 0, UINT64_MAX),
    ("184467440737095516.15", 2, UINT64_MAX),
    ("0.1", 1, 1),  # 0.1 is no float here
    ("123456789012345.67", 2, 12345678901234567),
]


@pytest.mark.parametrize(("text", "decimals", "minor"), GOOD, ids=[g[0] + f"/{g[1]}" for g in GOOD])
def test_to_minor(text: str, decimals: int, minor: int) -> None:
    assert to_minor(text, decimals) == minor


BAD: list[tuple[str, int, str]] = [
    ("12.505", 2, "12.505 has 3 decimals, bank-a:USD has 2"),
    ("5.5", 0, "5.5 has 1 decimals, bank-a:USD has 0"),
    ("0.0000000000000000001", 18, "has 19 decimals"),
    ("1e3", 2, "is not an amount"),
    ("1E3", 2, "is not an amount"),
    ("-5", 2, "is not an amount"),
    ("+5", 2, "is not an amount"),
    ("1,000", 2, "is not an amount"),
    ("1_000", 2, "is not an amount"),
    ("1 000", 2, "is not an amount"),
    ("1.2.3", 2, "is not an amount"),
    ("", 2, "is not an amount"),
    (".", 2, "is not an amount"),
    ("  ", 2, "is not an amount"),
    ("ten", 2, "is not an amount"),
    ("nan", 2, "is not an amount"),
    ("inf", 2, "is not an amount"),
    ("١٢", 2, "is not an amount"),  # Arabic-Indic digits: only 0-9
    ("0", 2, "more than zero"),
    ("0.00", 2, "more than zero"),
    ("18446744073709551616", 0, "minor units"),
    ("184467440737095516.16", 2, "minor units"),
    ("18.446744073709551616", 18, "minor units"),
]


@pytest.mark.parametrize(("text", "decimals", "problem"), BAD, ids=[b[0] + f"/{b[1]}" for b in BAD])
def test_to_minor_refuses(text: str, decimals: int, problem: str) -> None:
    with pytest.raises(AmountError) as refused:
        to_minor(text, decimals, "bank-a:USD")
    assert problem in str(refused.value)
    assert refused.value.reason == "BAD_AMOUNT"
    assert refused.value.text == text


def test_zero_when_allowed() -> None:
    assert to_minor("0", 2, allow_zero=True) == 0
    assert to_minor("0.00", 2, allow_zero=True) == 0


def test_split_units_checks_the_text_alone() -> None:
    assert split_units("12.50") == ("12", "5")
    assert split_units(".500") == ("", "5")
    with pytest.raises(AmountError):
        split_units("1e3")


@pytest.mark.parametrize("decimals", [-1, 19, True, 2.0])
def test_decimals_outside_the_ledger_rule_are_a_programming_error(decimals: object) -> None:
    with pytest.raises(ValueError, match="decimals must be"):
        to_minor("1", decimals)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="decimals must be"):
        format_units(1, decimals)  # type: ignore[arg-type]


FORMAT: list[tuple[int, int, str | None, str]] = [
    (1250, 2, "USD", "12.50 USD"),
    (1, 2, "USD", "0.01 USD"),
    (0, 2, "USD", "0.00 USD"),
    (10000000, 2, None, "100000.00"),
    (5, 0, "BOND-2030", "5 BOND-2030"),
    (1, 18, "ETH", "0.000000000000000001 ETH"),
    (UINT64_MAX, 18, None, "18.446744073709551615"),
]


@pytest.mark.parametrize(("minor", "decimals", "symbol", "text"), FORMAT, ids=[f[3] for f in FORMAT])
def test_format_units(minor: int, decimals: int, symbol: str | None, text: str) -> None:
    assert format_units(minor, decimals, symbol) == text


@pytest.mark.parametrize("decimals", [0, 2, 6, 18])
@pytest.mark.parametrize("minor", [1, 7, 10, 1250, 10**18, UINT64_MAX])
def test_format_then_parse_is_the_same_amount(minor: int, decimals: int) -> None:
    assert to_minor(format_units(minor, decimals), decimals) == minor


def test_format_refuses_a_negative_amount() -> None:
    with pytest.raises(ValueError, match="never negative"):
        format_units(-1, 2)
