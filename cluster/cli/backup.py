"""`clearline node backup NODE --out FILE` and `clearline node restore NODE --from FILE`.

A running node makes its own backup (it holds its store's lock): the command calls its Admin API
with the node's own key (<node home>/keys/validator.json), the only identity it answers. A stopped
node's store is read directly. Either way the file is written to FILE.partial, read back whole and
checked, then renamed. Restore needs the node stopped. What is in the file, what is not (private
keys) and how restore keeps a validator from signing twice: node/backup.py and docs/operations.md.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path
from typing import Any

from cluster.cli.common import CliError, emit
from cluster.netgen import Network, NodeInfo

STEP_NAMES = {1: "propose", 2: "prevote", 3: "precommit"}


def _position(position: tuple[int, int, int] | None) -> str:
    if position is None:
        return "nothing signed"
    height, round_, step = position
    return f"height {height}, round {round_}, {STEP_NAMES.get(step, step)}"


def _utc(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def _reason_of(err: Any) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "clearline-reason":
            return str(value)
    return str(err.code().name)


def _backup_running(network: Network, node: NodeInfo, out: Path, timeout: float) -> Any:
    import grpc

    from clearline.v1 import admin_pb2, admin_pb2_grpc
    from node.backup import write_file
    from node.config import load_config
    from node.crypto import KeyFileError, load_key_file

    cfg = load_config(node.home)
    try:
        key = load_key_file(cfg.path(cfg.keys.validator_key))
    except KeyFileError as exc:
        raise CliError("NO_NODE_KEY", f"{exc} (a backup is asked for with the node's own key)") from None
    channel = network.channel(node.api_target, key, options=[("grpc.max_receive_message_length", 8 << 20)])
    with channel:
        stream = admin_pb2_grpc.AdminStub(channel).Backup(admin_pb2.BackupRequest(), timeout=timeout)
        try:
            return write_file((chunk.data for chunk in stream), out)
        except grpc.RpcError as err:
            raise CliError(_reason_of(err), f"{node.name}: {err.details()}") from None


def cmd_backup(args: argparse.Namespace, runner: Any, node: NodeInfo) -> int:
    from node.backup import backup_stopped
    from node.config import ConfigError
    from node.storage import StorageError

    if not args.out:
        raise CliError("BAD_ARGUMENT", "backup needs --out FILE", 2)
    out = Path(args.out)
    if out.exists() and not args.force:
        raise CliError("FILE_EXISTS", f"{out} exists (--force replaces it)", 2)
    proc = runner.status(node.name)
    if proc.paused:
        raise CliError("NODE_PAUSED", f"{node.name} is paused: `clearline node resume {node.name}` first")
    started = time.monotonic()
    try:
        if proc.alive:
            summary = _backup_running(runner.network, node, out, args.timeout)
        else:
            summary = backup_stopped(Path(node.home), out, created_ms=int(time.time() * 1000))
    except StorageError as exc:  # a damaged file read back (BackupCorruptError), a store in use, ...
        raise CliError("BACKUP_FAILED", str(exc)) from None
    except ConfigError as exc:
        raise CliError("BAD_CONFIG", str(exc)) from None
    header = summary.header
    signed = header.sign_state.last_signed if header.HasField("sign_state") else None
    position = None if signed is None else (signed.height, signed.round, int(signed.step))
    doc = {
        "node": node.name,
        "file": str(summary.path),
        "from": "running node" if proc.alive else "stopped node",
        "chain_id": header.chain_id,
        "height": summary.height,
        "block_hash": header.block_hash.hex(),
        "state_root": header.state_root.hex(),
        "records": summary.records,
        "bytes": summary.size,
        "sha256": summary.sha256,
        "created": _utc(header.created_ms),
        "sign_state": position,
        "files": [f.path for f in header.files],
        "seconds": round(time.monotonic() - started, 2),
    }
    text = (
        f"backup of {node.name} ({doc['from']}) at height {summary.height}: {summary.records} records, "
        f"{_size(summary.size)} -> {summary.path}\n"
        f"  sha256 {summary.sha256}\n"
        f"  sign state: {_position(position)}; files: {', '.join(doc['files']) or 'none'} (no private keys)"
    )
    emit(args, doc, text)
    return 0


def cmd_restore(args: argparse.Namespace, runner: Any, node: NodeInfo) -> int:
    from node.backup import DEFAULT_GUARD_MARGIN_MS, restore
    from node.config import ConfigError
    from node.errors import RestoreRefused
    from node.storage import StorageError
    from node.storage.errors import BackupCorruptError

    if not args.from_file:
        raise CliError("BAD_ARGUMENT", "restore needs --from FILE", 2)
    source = Path(args.from_file)
    if not source.is_file():
        raise CliError("NO_BACKUP", f"{source}: no such backup file", 2)
    if runner.status(node.name).alive:
        raise CliError("NODE_RUNNING", f"{node.name} is running: `clearline node stop {node.name}` first")
    try:
        report = restore(
            Path(node.home),
            source,
            now_ms=int(time.time() * 1000),
            guard_margin_ms=DEFAULT_GUARD_MARGIN_MS
            if args.guard_seconds is None
            else int(args.guard_seconds * 1000),
        )
    except RestoreRefused as exc:
        raise CliError(exc.reason, f"{exc.message}; nothing was changed") from None
    except BackupCorruptError as exc:
        raise CliError("BACKUP_CORRUPT", f"{exc}; nothing was changed") from None
    except ValueError as exc:
        raise CliError("BAD_ARGUMENT", str(exc), 2) from None
    except (StorageError, ConfigError) as exc:
        raise CliError("RESTORE_FAILED", str(exc)) from None
    summary, guard = report.summary, report.guard
    doc = {
        "node": node.name,
        "file": str(summary.path),
        "height": summary.height,
        "block_hash": summary.header.block_hash.hex(),
        "records": summary.records,
        "bytes": summary.size,
        "backup_created": _utc(summary.header.created_ms),
        "data_dir": str(report.data_dir),
        "moved_aside": str(report.moved_aside) if report.moved_aside else None,
        "sign_state": report.sign_state,
        "signed_at": report.signed_at,
        "guard": None
        if guard is None
        else {
            "restored_at": _utc(guard.restored_at_ms),
            "margin_s": guard.margin_ms / 1000,
            "signs_after_ms": guard.signs_after_ms,
        },
        "files_written": list(report.files_written),
        "files_differing": list(report.files_differing),
        "note": report.note,
    }
    lines = [
        f"restored {node.name} from {summary.path}: height {summary.height}, {summary.records} records, "
        f"{_size(summary.size)} (backup of {_utc(summary.header.created_ms)})",
        f"  data: {report.data_dir}"
        + (f" (the one it replaced is at {report.moved_aside})" if report.moved_aside else ""),
    ]
    if report.sign_state == "kept":
        lines.append(
            f"  sign state: the node's own kept ({_position(report.signed_at)}), newer than or as the "
            "backup's: it signs nothing below it"
        )
    else:
        taken = "the backup's" if report.sign_state == "backup" else "none (the backup had signed nothing)"
        lines.append(f"  sign state: {taken} ({_position(report.signed_at)}); the node's own was not there")
    if guard is not None:
        lines.append(
            f"  restore guard: it signs nothing at a height whose previous block is timed before "
            f"{_utc(guard.signs_after_ms)} (the restore + {guard.margin_ms / 1000:.0f} s): whatever it "
            "signed after the backup, it cannot sign again"
        )
    if report.note:
        lines.append(f"  note: {report.note}")
    if report.files_written:
        lines.append(f"  written from the backup (they were missing): {', '.join(report.files_written)}")
    if report.files_differing:
        lines.append(
            f"  kept the node's own, which differ from the backup's: {', '.join(report.files_differing)}"
        )
    lines.append(f"start it with `clearline node start {node.name}`: it catches up from its peers")
    emit(args, doc, "\n".join(lines))
    return 0
