"""Unit tests of node.ledger."""
