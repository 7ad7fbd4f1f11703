"""What a committed transaction did to one account's balance in one instrument, read from its
receipt's events: the entries of an account statement (GetStatement, node/service.py).

A balance's total (held and frozen parts included) changes only by these events:

    mint                          + for accounts[0]
    redeem                        - for accounts[0]
    transfer, hold_executed,      - for accounts[0] (the payer), + for accounts[1] (the payee)
    settlement_leg, forced_transfer,
    balance_recovered

Everything else (a hold created, released or expired, a freeze, KYC, limits) moves money between
the parts of one balance, or none, so it is no entry. The ledger emits an event with the instrument
and amount for every change of a total (tests/unit/test_statement.py checks that statements tie out
against the balances, operation by operation).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from clearline.v1 import receipt_pb2, tx_pb2

CREDITS: Final = frozenset({"mint"})
DEBITS: Final = frozenset({"redeem"})
MOVES: Final = frozenset(
    {"transfer", "hold_executed", "settlement_leg", "forced_transfer", "balance_recovered"}
)


@dataclass(frozen=True, slots=True)
class Movement:
    kind: str
    counterparty: bytes
    amount: int
    debit: bool

    @property
    def signed(self) -> int:
        return -self.amount if self.debit else self.amount


def movements(
    receipt: receipt_pb2.Receipt, account: bytes, instrument: tx_pb2.InstrumentId
) -> Iterator[Movement]:
    """The changes the receipt's events made to account's balance in instrument, in event order."""
    for event in receipt.events:
        if not event.amount or event.instrument != instrument:
            continue
        parties = event.accounts
        if event.kind in MOVES and len(parties) >= 2:
            payer, payee = parties[0], parties[1]
            if payer == account and payee != account:
                yield Movement(event.kind, payee, event.amount, True)
            elif payee == account and payer != account:
                yield Movement(event.kind, payer, event.amount, False)
        elif event.kind in CREDITS and parties and parties[0] == account:
            yield Movement(event.kind, b"", event.amount, False)
        elif event.kind in DEBITS and parties and parties[0] == account:
            yield Movement(event.kind, b"", event.amount, True)
