"""The `clearline` command: launch and drive Clearline networks.

    clearline init --validators 4 --home ./net       keys, CA, genesis, one config per node
    clearline up | down | status | logs               run the network as real processes
    clearline node kill|stop|start|restart|pause|resume NODE
    clearline keys new --out alice.json               a new Ed25519 key
    clearline tx transfer --as alice --instrument bank-a:USD --to bob --amount 100
    clearline query account bob --prove               verified against the commit certificate

Accounts and instruments may be named by the key names in <home>/accounts (alice, bank-a, ...) or by
hex address; an instrument is ISSUER:SYMBOL. Output is readable by default and one JSON document with
--json. A failed command prints the reason code and exits non-zero.

One module per command group: network (init, up, down, status, logs, node), faults (fault), keys,
tx (one table of every ledger operation) and query; common holds what they share.
"""

from __future__ import annotations

import argparse
import json
import sys

from cluster.cli import faults, keys, network, query, tx
from cluster.cli.common import DEFAULT_HOME, CliError, humanize

__all__ = ["DEFAULT_HOME", "CliError", "build_parser", "main"]

# Commands whose own parser takes the rest of the command line (`clearline bench --help`).
PASSTHROUGH = {"chaos": "cluster.chaos", "bench": "cluster.bench"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clearline", description="Launch and drive Clearline networks.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    network.add_parsers(sub)
    faults.add_parsers(sub)
    keys.add_parsers(sub)
    tx.add_parsers(sub)
    query.add_parsers(sub)
    for name, module in PASSTHROUGH.items():
        sp = sub.add_parser(name, help=f"see `clearline {name} --help`", add_help=False)
        sp.set_defaults(func=None, module=module)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        try:
            module = importlib.import_module(PASSTHROUGH[argv[0]])
        except ModuleNotFoundError:
            print(f"clearline {argv[0]}: not available yet", file=sys.stderr)
            return 2
        return int(module.main(argv[1:]))
    args = parser.parse_args(argv)
    if args.command is None or getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except CliError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.reason, "message": exc.message}))
        else:
            print(f"error {exc.reason}: {humanize(args, exc.message)}", file=sys.stderr)
        return exc.code
