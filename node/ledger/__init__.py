"""Pure deposit-token ledger: state transitions and the state commitment (no I/O, clock or randomness)."""
