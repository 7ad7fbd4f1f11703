"""`clearline-node --home DIR` (also `python -m node --home DIR`): run one validator."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from node.config import ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clearline-node", description="Run one Clearline validator.")
    parser.add_argument("--home", required=True, help="the node's home directory (config.toml, keys, data)")
    parser.add_argument(
        "--byzantine",
        default="",
        help="test-only misbehaviour (refused unless the network was created with `clearline init --faults`)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(Path(args.home))
    except ConfigError as exc:
        print(f"clearline-node: configuration error: {exc}", file=sys.stderr)
        return 2
    from node.byzantine import ByzantineRefused
    from node.crypto import KeyFileError
    from node.gctune import tune_gc
    from node.runtime import FatalError, Node
    from node.storage import StorageError

    tune_gc()
    try:
        asyncio.run(Node(cfg, byzantine=args.byzantine).run())
    except ByzantineRefused as exc:
        print(f"clearline-node: {exc}", file=sys.stderr)
        return 2
    except (FatalError, KeyFileError, StorageError) as exc:
        print(f"clearline-node: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
