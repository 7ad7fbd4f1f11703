"""Pure Tendermint consensus core: events in, actions out (no I/O, clock or randomness)."""
