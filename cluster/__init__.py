"""Clearline cluster tooling: init keys/CA/genesis, launch, status, faults, load and checks."""
