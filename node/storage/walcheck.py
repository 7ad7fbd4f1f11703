"""Operator tool for the consensus WAL: check a file, or cut it at a damaged frame.

    python -m node.storage.walcheck PATH                      # summary or the first damage; changes nothing
    python -m node.storage.walcheck PATH --truncate-at OFFSET # copy to PATH.corrupt-OFFSET, then truncate

Exit status: 0 sound (a torn tail is reported, not an error), 1 corrupt, 2 unusable arguments or file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from node.storage.errors import WalCorruptError
from node.storage.wal import MAGIC, decode_frames


def check_file(path: Path) -> str:
    """A one-line summary of the WAL at path, without modifying it; raises WalCorruptError."""
    data = path.read_bytes()
    records, good_end = decode_frames(data, os.fspath(path))
    ends = [r.end_height.height for r in records if r.WhichOneof("record") == "end_height"]
    tail = f", torn tail of {len(data) - good_end} bytes at offset {good_end}" if good_end < len(data) else ""
    return f"{path}: {len(records)} records, last end height {ends[-1] if ends else None}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check (or truncate) a Clearline consensus WAL file.")
    parser.add_argument("path", type=Path)
    parser.add_argument("--truncate-at", type=int, default=None, help="drop everything from this offset on")
    args = parser.parse_args(argv)
    path: Path = args.path
    if args.truncate_at is not None:
        try:
            size = path.stat().st_size
        except OSError as exc:
            print(f"cannot read {path}: {exc}", file=sys.stderr)
            return 2
        if not len(MAGIC) <= args.truncate_at <= size:
            print(f"offset must be within {len(MAGIC)}..{size}", file=sys.stderr)
            return 2
        backup = path.with_name(f"{path.name}.corrupt-{args.truncate_at}")
        shutil.copy2(path, backup)
        with path.open("r+b") as f:
            f.truncate(args.truncate_at)
            os.fsync(f.fileno())
        print(f"copied {path} to {backup}; truncated to {args.truncate_at} bytes")
    try:
        print(check_file(path))
    except OSError as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return 2
    except WalCorruptError as exc:
        print(f"CORRUPT: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
