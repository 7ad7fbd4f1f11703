"""Backup and restore of one node: its LevelDB store, its sign state and the files it runs with.

A backup is one file (node/storage/backupfile.py has the layout): a header (chain id, node name and
address, height, block hash and state root, creation time, the sign state, config.toml, genesis.json
and the TLS certificates) and every record of a LevelDB snapshot, with a sha256 over all of it.

- A running node holds its store's lock, so it makes its own backup: `BackupService` answers the
  Admin RPC (`AdminService` in node/network/api.py, only for the node's own key). It takes a
  LevelDB snapshot and reads the sign state on the event loop, at one moment between two commits,
  so the store is at a committed height; it then encodes the records in a thread of its own, one
  chunk at a time, as the caller takes them (memory: one chunk, whatever the state's size).
- A stopped node is backed up by opening its store directly (`backup_stopped`).
- `write_file` writes the chunks to `<out>.partial`, reads the file back through the checker and only
  then renames it: a backup file that exists is whole.

Private keys are never in a backup (the node key keys/validator.json, the TLS key): a bank keeps
them in its key custody, apart from data backups. Restore runs with the keys already in the node's
home, and refuses a backup made by another key.

`restore` (the node stopped) checks the file's identity first (chain id, node name, node key) and
writes the records into a staging directory beside the data directory; only once the digest at the
end checks and the staged store opens at the header's height and block does it move the old data
directory aside (`data.replaced-<UTC time>`, never deleted) and the staging one into place, so a
corrupt or truncated file leaves the node's data as it was. The consensus WAL is not restored (it
only serves the height in progress) and snapshots are cut again.

The sign state is never moved backwards. If the data directory holds a sign state at least as far
on as the backup's (the store was lost but not the sign state, or an old backup is restored over a
healthy node), that one is kept, with its restore guard if any: the node then sits out the heights
below it (node/driver.py). Otherwise (the disk is gone, or holds an older state) the backup's sign
state is installed, and with it a restore guard (node/storage/signstate.py): what the validator
signed after the backup is unknown, so it signs nothing at a height whose previous block is timed
before the restore plus a margin; it follows the chain meanwhile and votes from the first height
after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import shutil
from collections.abc import AsyncGenerator, Generator, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from clearline.v1 import admin_pb2
from node import blocks, crypto
from node.clock import Clock, now_ms
from node.config import ConfigError, NodeConfig, load_config, parse_config
from node.errors import ApiError, RestoreRefused
from node.storage import NodeStore, SignState, SignStateCorruptError, SignStateFile, StoreSnapshot
from node.storage.backupfile import (
    FORMAT_VERSION,
    BackupReader,
    check_not_in_use,
    encode,
    write_store,
)
from node.storage.errors import BackupCorruptError, StorageError
from node.storage.signstate import RestoreGuard, files_of, position_of, read_state, save_guard
from node.storage.wal import fsync_dir
from node.threadname import name_this_thread
from node.validation import MAX_CLOCK_DRIFT_MS

# Under the data directory, as node/runtime.py opens them.
STORE_DIR: Final = "blockstore"
SIGN_STATE_FILE: Final = "sign_state.bin"
# The restore guard's margin: the proposal clock bound (10 s) plus what the clocks of the validators
# and of the host that restores may disagree by. The smallest allowed leaves a second for that.
DEFAULT_GUARD_MARGIN_MS: Final = 30_000
MIN_GUARD_MARGIN_MS: Final = MAX_CLOCK_DRIFT_MS + 1_000


@dataclass(frozen=True, slots=True)
class BackupSummary:
    """What a backup file holds, once checked end to end."""

    path: Path
    header: admin_pb2.BackupHeader
    records: int
    size: int
    sha256: str

    @property
    def height(self) -> int:
        return int(self.header.height)


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What a restore did."""

    summary: BackupSummary
    data_dir: Path
    moved_aside: Path | None  # where the data directory that was there went (None: there was none)
    sign_state: str  # "kept" (the node's own, at least as far on), "backup", or "none"
    signed_at: tuple[int, int, int] | None  # the (height, round, step) of the sign state in place
    guard: RestoreGuard | None  # written when the node's own sign state was not kept
    files_written: tuple[str, ...]  # home files that were missing, taken from the backup
    files_differing: tuple[str, ...]  # home files kept that differ from the backup's
    note: str = ""


# --- backup -------------------------------------------------------------------------------------------


def _home_files(cfg: NodeConfig) -> list[admin_pb2.BackupFile]:
    """config.toml, the genesis and the TLS certificates, as paths relative to the home; never a
    private key (keys.validator_key, tls.key), and nothing outside the home."""
    home = cfg.home.resolve()
    secret = {cfg.path(cfg.keys.validator_key).resolve(), cfg.path(cfg.tls.key).resolve()}
    out: list[admin_pb2.BackupFile] = []
    for path in (
        home / "config.toml",
        cfg.path(cfg.genesis),
        cfg.path(cfg.tls.cert),
        cfg.path(cfg.tls.ca_cert),
    ):
        resolved = path.resolve()
        if resolved in secret or not resolved.is_relative_to(home) or not resolved.is_file():
            continue
        relative = resolved.relative_to(home).as_posix()
        if any(f.path == relative for f in out):
            continue
        out.append(admin_pb2.BackupFile(path=relative, data=resolved.read_bytes()))
    return out


def _sign_state_pb(state: SignState | None) -> admin_pb2.BackupSignState | None:
    if state is None:
        return None
    pb = admin_pb2.BackupSignState(last_signed=state.last_signed)
    for name in ("locked_block", "valid_block", "proposal_block", "own_votes"):
        value = getattr(state, name)
        if value is not None:
            setattr(pb, name, value)
    return pb


def _sign_state_of(pb: admin_pb2.BackupSignState) -> SignState:
    return SignState(
        pb.last_signed,
        pb.locked_block if pb.HasField("locked_block") else None,
        pb.valid_block if pb.HasField("valid_block") else None,
        pb.proposal_block if pb.HasField("proposal_block") else None,
        pb.own_votes if pb.HasField("own_votes") else None,
    )


def make_header(
    cfg: NodeConfig, address: bytes, view: StoreSnapshot, sign: SignState | None, created_ms: int
) -> admin_pb2.BackupHeader:
    """The header of a backup of `view` (a snapshot of this node's store) with sign state `sign`."""
    height = view.latest_height
    header = admin_pb2.BackupHeader(
        format_version=FORMAT_VERSION,
        chain_id=cfg.chain_id,
        node_name=cfg.moniker,
        node_address=address,
        height=height,
        created_ms=created_ms,
        files=_home_files(cfg),
    )
    if height > 0:
        block = view.load_block(height)
        if block is None:
            raise StorageError(cfg.path(cfg.storage.data_dir), f"the store lacks its latest block {height}")
        header.block_hash = blocks.block_hash(block.header)
        header.state_root = block.header.state_root
    sign_pb = _sign_state_pb(sign)
    if sign_pb is not None:
        header.sign_state.CopyFrom(sign_pb)
    return header


def chunks_of(header: admin_pb2.BackupHeader, view: StoreSnapshot) -> Generator[bytes, None, None]:
    """The backup file's bytes: header and every record of view. Closing the generator closes the
    snapshot's iterator (close the snapshot after it)."""
    records = view.items()
    try:
        yield from encode(header, records)
    finally:
        if isinstance(records, Generator):
            records.close()


def write_file(chunks: Iterable[bytes], out: Path) -> BackupSummary:
    """Write chunks to `<out>.partial` (synced), check the whole file, then rename it to out. A file
    that does not check is removed and BackupCorruptError raised; out is never a partial backup."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    try:
        with open(partial, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        summary = verify(partial)
        os.replace(partial, out)
        fsync_dir(out.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise
    return BackupSummary(out, summary.header, summary.records, summary.size, summary.sha256)


def verify(path: Path) -> BackupSummary:
    """Read the whole backup file and check it (BackupCorruptError if it does not check)."""
    with open(path, "rb") as f:
        reader = BackupReader(f, os.fspath(path))
        for _record in reader.records():
            pass
    return BackupSummary(Path(path), reader.header, reader.count, reader.size, reader.sha256)


def backup_stopped(home: Path, out: Path, *, created_ms: int) -> BackupSummary:
    """Back up the stopped node at home by opening its store (StorageError if it is in use)."""
    cfg = load_config(home)
    address = crypto.load_key_file(cfg.path(cfg.keys.validator_key)).address
    data_dir = cfg.path(cfg.storage.data_dir)
    store_path = data_dir / STORE_DIR
    if not (store_path / "CURRENT").exists():
        raise StorageError(store_path, "no store here: the node has never run, or its data is gone")
    check_not_in_use(store_path)
    with NodeStore.open(store_path, chain_id=cfg.chain_id) as store:
        if not store.is_initialized():
            raise StorageError(store_path, "the store holds no chain yet")
        view = store.snapshot()
        try:
            header = make_header(cfg, address, view, read_state(data_dir / SIGN_STATE_FILE), created_ms)
            records = chunks_of(header, view)
            try:
                return write_file(records, out)
            finally:
                records.close()
        finally:
            view.close()


class BackupService:
    """The Admin API of a running node: a backup of its own store, streamed (`AdminService` in
    node/network/api.py lets only the node's own key call it). One at a time."""

    def __init__(
        self,
        cfg: NodeConfig,
        address: bytes,
        store: NodeStore,
        sign_state: SignStateFile,
        clock: Clock,
    ) -> None:
        self.address = address
        self._cfg = cfg
        self._store = store
        self._sign_state = sign_state
        self._clock = clock
        self._running = False
        self._pool: ThreadPoolExecutor | None = None

    async def backup(self) -> AsyncGenerator[bytes, None]:
        """The backup file's bytes, chunk by chunk. ApiError RESOURCE_EXHAUSTED BACKUP_RUNNING while
        another backup streams."""
        if self._running:
            raise ApiError("RESOURCE_EXHAUSTED", "BACKUP_RUNNING", "a backup of this node is running already")
        self._running = True
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="backup", initializer=name_this_thread, initargs=("backup",)
            )
        pool = self._pool
        # One moment on the event loop: the store between two commits, the sign state as saved.
        view = self._store.snapshot()
        sign = read_state(self._sign_state.path)
        created = now_ms(self._clock)
        loop = asyncio.get_running_loop()
        gen: Generator[bytes, None, None] | None = None
        try:
            header = await loop.run_in_executor(
                pool, make_header, self._cfg, self.address, view, sign, created
            )
            gen = chunks_of(header, view)
            while True:
                chunk = await loop.run_in_executor(pool, next, gen, None)
                if chunk is None:
                    break
                yield chunk
        finally:
            # In the backup thread, after any read still running there (a caller that went away).
            def close(gen: Generator[bytes, None, None] | None = gen) -> None:
                if gen is not None:
                    gen.close()
                view.close()

            pool.submit(close)
            self._running = False

    def close(self) -> None:
        """Wait for the backup thread's last work (before the store closes)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


# --- restore ------------------------------------------------------------------------------------------


def _aside_name(data_dir: Path, at_ms: int) -> Path:
    stamp = datetime.datetime.fromtimestamp(at_ms / 1000, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = data_dir.with_name(f"{data_dir.name}.replaced-{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = data_dir.with_name(f"{data_dir.name}.replaced-{stamp}-{n}")
    return candidate


def _copy_durably(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def _check_identity(header: admin_pb2.BackupHeader, cfg: NodeConfig, address: bytes) -> None:
    if header.chain_id != cfg.chain_id:
        raise RestoreRefused(
            "WRONG_CHAIN",
            f"the backup is of chain {header.chain_id!r}; this node belongs to {cfg.chain_id!r}",
        )
    if bytes(header.node_address) != address:
        raise RestoreRefused(
            "WRONG_NODE",
            f"the backup was made by the node key {header.node_address.hex()[:16]}... ({header.node_name}); "
            f"this node's key is {address.hex()[:16]}...",
        )
    if header.node_name != cfg.moniker:
        raise RestoreRefused(
            "WRONG_NODE", f"the backup is of node {header.node_name!r}; this node is {cfg.moniker!r}"
        )


def _config_of(home: Path, source: Path) -> NodeConfig:
    """The node's config: its config.toml, or the backup's if the home has none (a home rebuilt
    with only its keys); the backup is checked whole before its config is trusted."""
    try:
        return load_config(home)
    except ConfigError:
        if (home / "config.toml").exists():
            raise
    summary = verify(source)
    text = next((f.data for f in summary.header.files if f.path == "config.toml"), None)
    if text is None:
        raise RestoreRefused("NO_CONFIG", f"{home} has no config.toml and the backup carries none")
    return parse_config(text.decode(), home, source=f"{source} (config.toml)")


def _place_sign_state(
    data_dir: Path, staging: Path, backup: SignState | None, guard: RestoreGuard
) -> tuple[str, tuple[int, int, int] | None, RestoreGuard | None, str]:
    """Put the sign state into staging: the node's own if it is at least as far on as the backup's,
    else the backup's with a restore guard. (decision, position, guard written, note)."""
    own_path, new_path = data_dir / SIGN_STATE_FILE, staging / SIGN_STATE_FILE
    note = ""
    try:
        own = read_state(own_path) if data_dir.is_dir() else None
    except SignStateCorruptError as exc:
        own, note = None, f"the node's sign state is damaged and was not kept ({exc.detail})"
    backup_at = position_of(backup.last_signed) if backup is not None else None
    if own is not None and (backup_at is None or position_of(own.last_signed) >= backup_at):
        for src in files_of(own_path):
            _copy_durably(src, staging / src.name)
        fsync_dir(staging)
        return "kept", position_of(own.last_signed), None, note
    if own is not None:
        note = (
            f"the node's sign state {position_of(own.last_signed)} is older than the backup's {backup_at}: "
            "it is not the state the validator last signed with, so it was not kept"
        )
    decision = "none"
    if backup is not None:
        state = SignStateFile.open(new_path)
        try:
            state.save(backup.last_signed, backup.locked_block, backup.valid_block, backup.proposal_block,
                       backup.own_votes)  # fmt: skip
        finally:
            state.close()
        decision = "backup"
    save_guard(new_path, guard)
    return decision, backup_at, guard, note


def _restore_files(home: Path, header: admin_pb2.BackupHeader) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Write the backup's home files that are missing; never overwrite one. (written, differing)."""
    written: list[str] = []
    differing: list[str] = []
    root = home.resolve()
    for f in header.files:
        target = (root / f.path).resolve()
        if not target.is_relative_to(root) or target == root:
            continue
        if target.exists():
            if target.read_bytes() != f.data:
                differing.append(f.path)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.data)
        written.append(f.path)
    return tuple(written), tuple(differing)


def restore(
    home: Path, source: Path, *, now_ms: int, guard_margin_ms: int = DEFAULT_GUARD_MARGIN_MS
) -> RestoreReport:
    """Restore the stopped node at home from the backup file source (the module docstring says how).
    Raises RestoreRefused (the node runs, the backup is another chain's or node's, no node key),
    BackupCorruptError (truncated or damaged: nothing changed) or StorageError."""
    if guard_margin_ms < MIN_GUARD_MARGIN_MS:
        raise ValueError(f"the guard margin must be at least {MIN_GUARD_MARGIN_MS} ms")
    home = Path(home)
    cfg = _config_of(home, source)
    try:
        address = crypto.load_key_file(cfg.path(cfg.keys.validator_key)).address
    except crypto.KeyFileError as exc:
        raise RestoreRefused(
            "NO_NODE_KEY", f"{exc} (restore runs with the node's own key in its home: put it back first)"
        ) from None
    data_dir = cfg.path(cfg.storage.data_dir)
    try:
        check_not_in_use(data_dir / STORE_DIR)
    except StorageError as exc:
        raise RestoreRefused("NODE_RUNNING", f"{cfg.moniker}: {exc.detail}") from None
    staging = data_dir.with_name(data_dir.name + ".restoring")
    with open(source, "rb") as f:
        reader = BackupReader(f, os.fspath(source))
        header = reader.header
        _check_identity(header, cfg, address)
        if staging.exists():
            shutil.rmtree(staging)  # an interrupted restore's
        staging.mkdir(parents=True)
        try:
            write_store(reader.records(), staging / STORE_DIR)
            _check_store(staging / STORE_DIR, cfg.chain_id, header, os.fspath(source))
            guard = RestoreGuard(now_ms, guard_margin_ms, int(header.height))
            backup_sign = _sign_state_of(header.sign_state) if header.HasField("sign_state") else None
            decision, signed_at, written_guard, note = _place_sign_state(
                data_dir, staging, backup_sign, guard
            )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    summary = BackupSummary(Path(source), header, reader.count, reader.size, reader.sha256)
    files_written, files_differing = _restore_files(home, header)
    moved_aside: Path | None = None
    if data_dir.exists():
        if data_dir.is_dir() and not any(data_dir.iterdir()):
            data_dir.rmdir()
        else:
            moved_aside = _aside_name(data_dir, now_ms)
            os.rename(data_dir, moved_aside)
    os.rename(staging, data_dir)
    fsync_dir(data_dir.parent)
    return RestoreReport(
        summary=summary,
        data_dir=data_dir,
        moved_aside=moved_aside,
        sign_state=decision,
        signed_at=signed_at,
        guard=written_guard,
        files_written=files_written,
        files_differing=files_differing,
        note=note,
    )


def _check_store(path: Path, chain_id: str, header: admin_pb2.BackupHeader, name: str) -> None:
    """The restored store opens as a store of chain_id at the header's height and block."""
    try:
        with NodeStore.open(path, chain_id=chain_id) as store:
            latest = store.latest_height()
            block = store.load_block(latest) if latest else None
    except StorageError as exc:
        raise BackupCorruptError(name, f"the restored store does not open: {exc.detail}") from None
    block_hash = blocks.block_hash(block.header) if block is not None else b""
    if latest != header.height or block_hash != header.block_hash:
        raise BackupCorruptError(
            name,
            f"the header says height {header.height} block {header.block_hash.hex()[:16]}, the records "
            f"hold height {latest} block {block_hash.hex()[:16]}",
        )
