"""Amounts as people write them and as the ledger keeps them: an instrument with d decimals counts in
minor units, 10**d of them to one unit, so "12.50" of a 2-decimal USD token is 1250 on the ledger.

    to_minor("12.50", 2)              -> 1250
    format_units(1250, 2, "USD")      -> "12.50 USD"

Exact: the text is read digit by digit into integers, never through float. What is accepted, so that
a typo cannot move a different amount than the one meant:

    ASCII digits with at most one decimal point, either side of it may be empty ("5.", ".5");
    whitespace around the number is ignored;
    trailing zeros past the instrument's decimals are accepted ("12.500" of USD is 1250: exact);
    refused (AmountError, reason BAD_AMOUNT): a sign ("-5", "+5"), exponents ("1e3"), thousands
    separators ("1,000", "1_000", "1 000"), other digits than 0-9, more significant decimals than the
    instrument has ("12.505" of USD), zero (unless allow_zero), more than UINT64_MAX minor units.
"""

from __future__ import annotations

import re

UINT64_MAX = (1 << 64) - 1
MAX_DECIMALS = 18  # the most an instrument may have (the ledger's rule)

_NUMBER = re.compile(r"([0-9]*)(?:\.([0-9]*))?")


class AmountError(ValueError):
    """An amount's text is not an amount of the instrument; problem says why (reason BAD_AMOUNT)."""

    reason = "BAD_AMOUNT"

    def __init__(self, text: str, problem: str) -> None:
        super().__init__(problem)
        self.text = text
        self.problem = problem


def split_units(text: str) -> tuple[str, str]:
    """The whole and fraction digits of a number written in units ("12.50" -> ("12", "50")), fraction
    without trailing zeros; refuses what is not a plain non-negative decimal number."""
    number = text.strip()
    match = _NUMBER.fullmatch(number)
    if match is None or not any(ch.isdigit() for ch in number):
        raise AmountError(
            text, f"{text!r} is not an amount: digits with an optional decimal point, e.g. 12.50"
        )
    whole, fraction = match.group(1), (match.group(2) or "").rstrip("0")
    return whole, fraction


def to_minor(
    text: str, decimals: int, instrument: str = "the instrument", *, allow_zero: bool = False
) -> int:
    """The minor units of text, an amount in units of an instrument with `decimals` decimals
    (instrument names it in messages)."""
    _check_decimals(decimals)
    whole, fraction = split_units(text)
    if len(fraction) > decimals:
        raise AmountError(text, f"{text.strip()} has {len(fraction)} decimals, {instrument} has {decimals}")
    minor = int(whole or "0") * _scale(decimals) + int(fraction.ljust(decimals, "0") or "0")
    if minor == 0 and not allow_zero:
        raise AmountError(text, f"{text.strip()}: the amount must be more than zero")
    if minor > UINT64_MAX:
        raise AmountError(text, f"{text.strip()} of {instrument} is more than {UINT64_MAX} minor units")
    return minor


def format_units(minor: int, decimals: int, symbol: str | None = None) -> str:
    """minor units as units with all the instrument's decimals, then the symbol if given:
    format_units(1250, 2, "USD") == "12.50 USD", format_units(5, 0) == "5"."""
    _check_decimals(decimals)
    if minor < 0:
        raise ValueError(f"{minor} minor units: amounts are never negative")
    whole, fraction = divmod(minor, _scale(decimals))
    number = f"{whole}.{fraction:0{decimals}d}" if decimals else str(whole)
    return f"{number} {symbol}" if symbol else number


def _check_decimals(decimals: int) -> None:
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= MAX_DECIMALS:
        raise ValueError(f"decimals must be 0..{MAX_DECIMALS}, got {decimals!r}")


def _scale(decimals: int) -> int:
    """Minor units per unit."""
    return int(10**decimals)
