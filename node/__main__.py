"""`clearline-node --home DIR` (also `python -m node --home DIR`): run one validator."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clearline-node", description="Run one Clearline validator.")
    parser.add_argument("--home", required=True, help="the node's home directory (config.toml, keys, data)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    print("clearline-node: the validator runtime is not built yet (see the node issue).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
