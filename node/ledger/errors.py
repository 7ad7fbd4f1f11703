"""The ledger's error tree.

    LedgerError                    base of everything raised by node.ledger
    ├── TxInvalid                  a transaction fails a check; carries its receipt status and message
    ├── GenesisError               a genesis file is malformed; names the field and the problem
    ├── StaleBlockResult           commit() of a BlockResult not executed on the committed root
    └── StateCorrupted             committed state breaks an invariant (a bug or a damaged store)

A `TxInvalid` never escapes `Ledger.execute_block` or `Ledger.check_tx`: it becomes the receipt's
status. The other errors are raised to the caller, who must stop rather than guess.
"""

from __future__ import annotations

from clearline.v1 import receipt_pb2


class LedgerError(Exception):
    """Base of the errors of node.ledger."""


class TxInvalid(LedgerError):
    """A transaction is rejected by a ledger rule; status is a receipt_pb2.TxStatus value."""

    def __init__(self, status: receipt_pb2.TxStatus.ValueType, message: str) -> None:
        super().__init__(f"{receipt_pb2.TxStatus.Name(status)}: {message}")
        self.status = status
        self.message = message

    @property
    def reason(self) -> str:
        """The status name without its prefix, e.g. "INSUFFICIENT_FUNDS"."""
        return receipt_pb2.TxStatus.Name(self.status).removeprefix("TX_STATUS_")


class GenesisError(LedgerError):
    """A genesis file is malformed: field is a dotted path such as "accounts[2].public_key"."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"genesis {field}: {problem}" if field else f"genesis: {problem}")
        self.field = field
        self.problem = problem


class StaleBlockResult(LedgerError):
    """commit() was given a result executed on another root than the committed one."""

    def __init__(self, expected_root: bytes, got_root: bytes) -> None:
        super().__init__(
            f"block result was executed on root {got_root.hex()}, committed root is {expected_root.hex()}"
        )
        self.expected_root = expected_root
        self.got_root = got_root


class StateCorrupted(LedgerError):
    """Committed state breaks an invariant (e.g. a missing Merkle node or an undecodable entry)."""
