"""Pure deposit-token ledger: state transitions and the state commitment (no I/O, clock or randomness).

Public surface (everything else is internal):

    Ledger, BlockResult, BlockRejected      node.ledger.ledger
    verify_proof, parse_genesis, validate_genesis, account_key
    LedgerError, TxInvalid, GenesisError, StaleBlockResult, StateCorrupted
    KVReader, Writes, MemoryKV              node.ledger.kv
"""

from node.ledger.errors import GenesisError, LedgerError, StaleBlockResult, StateCorrupted, TxInvalid
from node.ledger.kv import KVReader, MemoryKV, Writes
from node.ledger.ledger import (
    BlockRejected,
    BlockResult,
    Ledger,
    parse_genesis,
    validate_genesis,
    verify_proof,
)
from node.ledger.state import Amount, Height, InstrumentKey, TimeMs, account_key

__all__ = [
    "Amount",
    "BlockRejected",
    "BlockResult",
    "GenesisError",
    "Height",
    "InstrumentKey",
    "KVReader",
    "Ledger",
    "LedgerError",
    "MemoryKV",
    "StaleBlockResult",
    "StateCorrupted",
    "TimeMs",
    "TxInvalid",
    "Writes",
    "account_key",
    "parse_genesis",
    "validate_genesis",
    "verify_proof",
]
