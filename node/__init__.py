"""Clearline validator node: consensus, ledger, storage, network and the runtime that wires them."""
