"""`clearline-node --home DIR` (also `python -m node --home DIR`): run one validator.

A node that cannot start or has to stop says why in one line on stderr, prefixed `clearline-node:`,
and exits non-zero: 2 for a refusal of its configuration or arguments (bad config.toml, --byzantine
on a network not made for fault testing), 1 for anything else (missing genesis or key, a corrupt
store, an address in use, a broken invariant). `clearline node start` shows that line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback
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


def _refused(reason: str) -> None:
    print(f"clearline-node: {reason}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(Path(args.home))
    except ConfigError as exc:
        _refused(f"configuration error: {exc}")
        return 2
    from node.byzantine import ByzantineBehaviour, ByzantineRefused
    from node.crypto import KeyFileError
    from node.errors import CannotStart, InvariantBroken
    from node.gctune import tune_gc
    from node.network.api import ApiListenError
    from node.runtime import Node
    from node.storage import StorageError

    tune_gc()
    try:
        # Test-only misbehaviour is chosen here, once: the node is built with a Byzantine
        # behaviour's parts instead of the honest ones, and never asks which it has.
        mode = args.byzantine or cfg.byzantine
        behaviour = ByzantineBehaviour(mode) if mode else None
        asyncio.run(Node(cfg, behaviour=behaviour).run())
    except ByzantineRefused as exc:
        _refused(str(exc))
        return 2
    except (CannotStart, InvariantBroken, KeyFileError, StorageError, ApiListenError) as exc:
        _refused(str(exc))
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # the process's edge: an unexpected error still ends in one line
        traceback.print_exc()
        _refused(f"stopped by an unexpected error: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
