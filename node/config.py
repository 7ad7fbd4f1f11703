"""The node's configuration: `config.toml` in the node's home directory.

Every setting is declared once below with its type and a check; an unknown or invalid setting stops
the node at start with a `ConfigError` that names the setting (`[mempool] max_txs: must be > 0`).
Relative paths are resolved against the home directory. An observer's config (`clearline init
--observers N`, `clearline observer add`) has the top-level line `observer = true`.

Example (what `clearline init` writes):

    chain_id = "clearline-3f9a61c2"
    moniker = "node0"
    genesis = "genesis.json"

    [keys]
    validator_key = "keys/validator.json"

    [tls]
    enabled = true
    ca_cert = "tls/ca.pem"
    cert = "tls/node.pem"
    key = "tls/node.key"

    [p2p]
    listen = "127.0.0.1:26600"
    peers = ["node1@127.0.0.1:26610"]

    [api]
    listen = "127.0.0.1:26601"
    plaintext = false
    max_message_bytes = 30433280
    max_request_bytes = 4194304

    [metrics]
    listen = "127.0.0.1:26602"

    [consensus]
    timeout_propose_ms = 1000
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the setting."""


# --- the client API's message limits ----------------------------------------------------------------
# A response may carry the largest block a validator accepts, with its receipts and certificate, so
# its limit follows from [consensus] max_block_bytes and max_block_txs; a request is bounded on its own.

DEFAULT_MAX_BLOCK_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BLOCK_TXS = 5000
# A block may exceed max_block_bytes (its transactions) by this much: header, evidence and the
# previous height's commit certificate. Validators refuse a larger proposal.
BLOCK_OVERHEAD_BYTES = 64 * 1024
# A commit certificate: about 90 bytes per signature, at most 150 validators
# (node.ledger.ops.MAX_VALIDATORS); tests/unit/test_api_limits.py measures it.
MAX_COMMIT_BYTES = 16 * 1024
# A receipt is at most RECEIPT_BASE_BYTES (its fixed fields) plus RECEIPT_BYTES_PER_TX_BYTE per byte
# of its transaction: events copy the transaction's accounts, instruments and references (a
# settlement's leg events are under twice its legs), and a failure's message may repr a client
# string whole (up to 4 characters per byte) besides the receipt's own copy of client_ref.
# tests/unit/test_api_limits.py checks it on the largest receipts the ledger makes.
RECEIPT_BASE_BYTES = 1024
RECEIPT_BYTES_PER_TX_BYTE = 5
# Field tags and lengths of the response, the block hash.
RESPONSE_MARGIN_BYTES = 64 * 1024
# A request: a SubmitTxs batch of about a block's worth of transactions at most.
DEFAULT_API_MAX_REQUEST_BYTES = 4 * 1024 * 1024
# One transaction of [mempool] max_tx_bytes in a SubmitTx request: the tx field's tag and length, wait.
SUBMIT_OVERHEAD_BYTES = 64


def max_block_response_bytes(max_block_bytes: int, max_block_txs: int) -> int:
    """The largest GetBlock response (one StreamBlocks message) a node may have to send: a block of
    max_block_bytes of transactions, with the receipts of max_block_txs and its commit certificate."""
    receipts = max_block_txs * RECEIPT_BASE_BYTES + max_block_bytes * RECEIPT_BYTES_PER_TX_BYTE
    return max_block_bytes + BLOCK_OVERHEAD_BYTES + MAX_COMMIT_BYTES + receipts + RESPONSE_MARGIN_BYTES


DEFAULT_API_MAX_MESSAGE_BYTES = max_block_response_bytes(DEFAULT_MAX_BLOCK_BYTES, DEFAULT_MAX_BLOCK_TXS)


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    host: str
    port: int

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class KeysConfig:
    validator_key: Path = Path("keys/validator.json")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    enabled: bool = True
    ca_cert: Path = Path("tls/ca.pem")
    cert: Path = Path("tls/node.pem")
    key: Path = Path("tls/node.key")


@dataclass(frozen=True, slots=True)
class P2PConfig:
    listen: str = "127.0.0.1:26600"
    peers: tuple[Peer, ...] = ()
    max_message_bytes: int = 16 * 1024 * 1024
    # Redialing a peer that went away: back-off from min, doubling to max (also the gRPC channel's
    # own reconnect back-off, whose defaults grow to 120 s). A restarted peer is reached again
    # within about max: it can take part in consensus only once its peers redial it.
    reconnect_min_ms: int = 100
    reconnect_max_ms: int = 1000
    # Validators other than this one whose messages outside the height window are dropped.
    height_window: int = 2
    tx_gossip_batch: int = 500
    tx_gossip_interval_ms: int = 5


@dataclass(frozen=True, slots=True)
class ApiConfig:
    listen: str = "127.0.0.1:26601"
    # The largest response; at least max_block_response_bytes of the [consensus] limits, so that a
    # full block is readable by GetBlock and StreamBlocks.
    max_message_bytes: int = DEFAULT_API_MAX_MESSAGE_BYTES
    # The largest request (a SubmitTxs batch): what anyone who reaches the port can make the node read.
    max_request_bytes: int = DEFAULT_API_MAX_REQUEST_BYTES
    max_batch_txs: int = 5000
    default_commit_timeout_s: float = 30.0
    # Calls served at once (beyond, gRPC answers RESOURCE_EXHAUSTED): each may hold a request of up
    # to max_request_bytes, so this bounds what clients can make the node hold. Block and event
    # streams count too, and are capped at max_streams of them.
    max_concurrent_rpcs: int = 256
    max_streams: int = 64
    # Development only: serve the client API without TLS (a warning is logged at start). Otherwise
    # the port speaks TLS with this node's certificate ([tls] cert and key, from the network CA).
    plaintext: bool = False
    # Per-identity limits (node/network/limits.py): requests a second with a burst, streams open at
    # once; and failed authentications a second per host, each of which costs a signature check.
    client_requests_per_s: float = 500.0
    client_burst: int = 1000
    client_max_streams: int = 8
    auth_failures_per_s: float = 20.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = ""  # empty = no metrics endpoint


@dataclass(frozen=True, slots=True)
class ConsensusConfig:
    timeout_propose_ms: int = 1000
    timeout_propose_delta_ms: int = 500
    timeout_prevote_ms: int = 500
    timeout_prevote_delta_ms: int = 500
    timeout_precommit_ms: int = 500
    timeout_precommit_delta_ms: int = 500
    # Pause after a commit before the next height starts, so blocks collect transactions.
    timeout_commit_ms: int = 50
    # Empty blocks are produced at most this often when there is nothing to do.
    create_empty_blocks_interval_ms: int = 1000
    max_block_txs: int = DEFAULT_MAX_BLOCK_TXS
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES


@dataclass(frozen=True, slots=True)
class MempoolConfig:
    max_txs: int = 100_000
    max_bytes: int = 256 * 1024 * 1024
    max_per_sender: int = 10_000
    max_tx_bytes: int = 64 * 1024
    verify_threads: int = 2
    # The cache of transactions whose signatures verified (so a proposal does not verify them
    # again): bounded in count and in raw bytes.
    cache_size: int = 200_000
    cache_bytes: int = 64 * 1024 * 1024
    # A transaction whose nonce is ahead of its sender's next one (a gap) waits at most this long
    # for the missing nonces, and a sender may park at most this many such transactions.
    gap_max_age_s: float = 30.0
    max_gap_per_sender: int = 16


# [storage] retain_blocks: the fewest a pruning node may keep. Evidence may be carried by blocks up
# to node.evidence.MAX_AGE_HEIGHTS heights after the votes it proves, and whether it was carried
# already is read from those blocks (tests/unit/test_pruning.py checks the two agree).
MIN_RETAIN_BLOCKS = 100


@dataclass(frozen=True, slots=True)
class StorageConfig:
    data_dir: Path = Path("data")
    # Keep the last `retain_blocks` blocks with their receipts and indexes and delete older ones
    # (node/pruning.py); 0 keeps every block (an archive node). At least MIN_RETAIN_BLOCKS. Blocks
    # from the oldest snapshot served ([snapshots]) on are kept too.
    retain_blocks: int = 0
    # Keys one pruning batch deletes at most (one height at least): one batch runs after a commit,
    # in the io thread, so a node that starts pruning a long chain catches up a batch per block.
    prune_batch_keys: int = 20_000


@dataclass(frozen=True, slots=True)
class SnapshotsConfig:
    # Take a snapshot of the ledger state every `interval` heights (0: none) and keep the newest
    # `keep` of them under <data>/snapshots, for peers that join by state sync (node/snapshot.py).
    interval: int = 500
    keep: int = 2


@dataclass(frozen=True, slots=True)
class StateSyncConfig:
    # A node whose store is empty (new, or wiped) joins from a peer's snapshot instead of replaying
    # every block from genesis (node/statesync.py). Trust starts at the genesis validator set, or
    # at the header of trust_height whose hash is trust_hash (hex), as an operator reads it from a
    # node it trusts (`clearline query block H`).
    enable: bool = False
    trust_height: int = 0
    trust_hash: str = ""
    discovery_s: float = 10.0
    chunk_timeout_s: float = 10.0
    fetchers: int = 4


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"
    file: Path = Path("node.log")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    home: Path
    chain_id: str
    moniker: str = "node"
    genesis: Path = Path("genesis.json")
    keys: KeysConfig = field(default_factory=KeysConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    p2p: P2PConfig = field(default_factory=P2PConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    consensus: ConsensusConfig = field(default_factory=ConsensusConfig)
    mempool: MempoolConfig = field(default_factory=MempoolConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    snapshots: SnapshotsConfig = field(default_factory=SnapshotsConfig)
    statesync: StateSyncConfig = field(default_factory=StateSyncConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # Test-only behaviour (fault injection); refused unless the genesis allows fault testing.
    byzantine: str = ""
    # A non-voting full node (a regulator's, an auditor's, a back office's): it dials every
    # configured peer, follows the chain and serves reads, and never signs a proposal or a vote,
    # even if its key is (or later becomes) a validator's. Validators admit it while its key's
    # account has ROLE_OBSERVER.
    observer: bool = False

    def path(self, relative: Path) -> Path:
        """A configured path resolved against the home directory."""
        return relative if relative.is_absolute() else self.home / relative


_SECTIONS: dict[str, type[Any]] = {
    "keys": KeysConfig,
    "tls": TlsConfig,
    "p2p": P2PConfig,
    "api": ApiConfig,
    "metrics": MetricsConfig,
    "consensus": ConsensusConfig,
    "mempool": MempoolConfig,
    "storage": StorageConfig,
    "snapshots": SnapshotsConfig,
    "statesync": StateSyncConfig,
    "log": LogConfig,
}
_TOP_LEVEL = {"chain_id": str, "moniker": str, "genesis": Path, "byzantine": str, "observer": bool}
_LOG_LEVELS = {"debug", "info", "warning", "error"}
# The test-only misbehaviours a node may be configured with (node/byzantine.py); chaos draws from
# these, in this order.
BYZANTINE_MODES = (
    "equivocate",
    "double-vote",
    "bad-state-root",
    "forged-tx",
    "garbage",
    "silent",
    "lying-status",
    "stall-sync",
    "tamper-sync",
    "out-of-turn",
    "replay",
)


def _parse_address(name: str, value: str) -> None:
    if not value:
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name}: {value!r} is not host:port")


def _parse_peer(name: str, value: Any) -> Peer:
    if not isinstance(value, str) or "@" not in value:
        raise ConfigError(f"{name}: {value!r} is not name@host:port")
    peer_name, _, target = value.partition("@")
    _parse_address(name, target)
    host, _, port = target.rpartition(":")
    return Peer(name=peer_name, host=host, port=int(port))


def _coerce(name: str, expected: Any, value: Any) -> Any:
    if expected is Path or expected == "Path":
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name}: must be a non-empty path string")
        return Path(value)
    if expected is bool or expected == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: must be true or false")
        return value
    if expected is int or expected == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: must be an integer")
        if value < 0:
            raise ConfigError(f"{name}: must be >= 0")
        return value
    if expected is float or expected == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: must be a number")
        if value <= 0:
            raise ConfigError(f"{name}: must be > 0")
        return float(value)
    if expected is str or expected == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{name}: must be a string")
        return value
    if name.endswith(".peers") or name.endswith("] peers"):
        if not isinstance(value, list):
            raise ConfigError(f"{name}: must be a list of name@host:port")
        return tuple(_parse_peer(name, item) for item in value)
    raise ConfigError(f"{name}: unsupported setting type")


def _section(section: str, cls: type[Any], table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}]: must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"[{section}] {key}: unknown setting (known: {', '.join(sorted(fields))})")
        values[key] = _coerce(f"[{section}] {key}", fields[key].type, value)
    return cls(**values)


def _check(cfg: NodeConfig) -> None:
    if not cfg.chain_id:
        raise ConfigError("chain_id: must be set")
    for name, value in (("[p2p] listen", cfg.p2p.listen), ("[api] listen", cfg.api.listen)):
        if not value:
            raise ConfigError(f"{name}: must be set")
        _parse_address(name, value)
    _parse_address("[metrics] listen", cfg.metrics.listen)
    positive = {
        "[mempool] max_txs": cfg.mempool.max_txs,
        "[mempool] max_bytes": cfg.mempool.max_bytes,
        "[mempool] max_per_sender": cfg.mempool.max_per_sender,
        "[mempool] max_tx_bytes": cfg.mempool.max_tx_bytes,
        "[mempool] cache_bytes": cfg.mempool.cache_bytes,
        "[mempool] verify_threads": cfg.mempool.verify_threads,
        "[consensus] timeout_propose_ms": cfg.consensus.timeout_propose_ms,
        "[consensus] timeout_prevote_ms": cfg.consensus.timeout_prevote_ms,
        "[consensus] timeout_precommit_ms": cfg.consensus.timeout_precommit_ms,
        "[consensus] max_block_txs": cfg.consensus.max_block_txs,
        "[consensus] max_block_bytes": cfg.consensus.max_block_bytes,
        "[p2p] max_message_bytes": cfg.p2p.max_message_bytes,
        "[p2p] reconnect_min_ms": cfg.p2p.reconnect_min_ms,
        "[api] max_message_bytes": cfg.api.max_message_bytes,
        "[api] max_request_bytes": cfg.api.max_request_bytes,
        "[api] max_batch_txs": cfg.api.max_batch_txs,
        "[api] max_concurrent_rpcs": cfg.api.max_concurrent_rpcs,
        "[api] max_streams": cfg.api.max_streams,
        "[api] client_burst": cfg.api.client_burst,
        "[api] client_max_streams": cfg.api.client_max_streams,
    }
    for setting, number in positive.items():
        if number <= 0:
            raise ConfigError(f"{setting}: must be > 0")
    _check_api_limits(cfg)
    if cfg.p2p.reconnect_max_ms < cfg.p2p.reconnect_min_ms:
        raise ConfigError("[p2p] reconnect_max_ms: must be >= reconnect_min_ms")
    if cfg.log.level not in _LOG_LEVELS:
        raise ConfigError(f"[log] level: {cfg.log.level!r} is not one of {sorted(_LOG_LEVELS)}")
    if cfg.byzantine and cfg.byzantine not in BYZANTINE_MODES:
        raise ConfigError(f"byzantine: {cfg.byzantine!r} is not one of {sorted(BYZANTINE_MODES)}")
    if cfg.observer and cfg.byzantine:
        raise ConfigError("byzantine: an observer signs nothing, so it has no misbehaviour to inject")
    _check_storage(cfg.storage)
    if cfg.snapshots.interval < 0 or cfg.snapshots.keep < 1:
        raise ConfigError("[snapshots] interval: must be >= 0 (0: none), and keep >= 1")
    ss = cfg.statesync
    if ss.fetchers < 1 or ss.discovery_s < 0 or ss.chunk_timeout_s <= 0:
        raise ConfigError("[statesync] fetchers must be >= 1, discovery_s >= 0 and chunk_timeout_s > 0")
    if (ss.trust_height > 0) != bool(ss.trust_hash):
        raise ConfigError("[statesync] trust_height and trust_hash: set both, or neither (trust genesis)")
    if ss.trust_hash:
        try:
            if len(bytes.fromhex(ss.trust_hash)) != 32:
                raise ValueError
        except ValueError:
            raise ConfigError(f"[statesync] trust_hash: {ss.trust_hash!r} is not 64 hex digits") from None
    if cfg.observer and not cfg.p2p.peers:
        raise ConfigError("[p2p] peers: an observer only dials, so it needs at least one validator to dial")


def _check_storage(storage: StorageConfig) -> None:
    if 0 < storage.retain_blocks < MIN_RETAIN_BLOCKS:
        raise ConfigError(
            f"[storage] retain_blocks: {storage.retain_blocks} is too few: a pruning node keeps at least "
            f"{MIN_RETAIN_BLOCKS} blocks (the evidence a block may carry is up to {MIN_RETAIN_BLOCKS} "
            "heights old, and the blocks of those heights say whether it was carried already); "
            "0 keeps every block"
        )
    if storage.prune_batch_keys < 1:
        raise ConfigError("[storage] prune_batch_keys: must be > 0")


def _check_api_limits(cfg: NodeConfig) -> None:
    """A full block must fit in a response; a request must fit one transaction."""
    c = cfg.consensus
    need = max_block_response_bytes(c.max_block_bytes, c.max_block_txs)
    if cfg.api.max_message_bytes < need:
        raise ConfigError(
            f"[api] max_message_bytes: {cfg.api.max_message_bytes} is too small for the largest block "
            f"response ([consensus] max_block_bytes {c.max_block_bytes}, max_block_txs {c.max_block_txs}, "
            f"with receipts and certificate): set it to at least {need}"
        )
    need = cfg.mempool.max_tx_bytes + SUBMIT_OVERHEAD_BYTES
    if cfg.api.max_request_bytes < need:
        raise ConfigError(
            f"[api] max_request_bytes: {cfg.api.max_request_bytes} cannot carry one transaction of "
            f"[mempool] max_tx_bytes {cfg.mempool.max_tx_bytes}: set it to at least {need}"
        )


def parse_config(text: str, home: Path, source: str = "config.toml") -> NodeConfig:
    """Parse config text; raises ConfigError naming the setting at fault."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    values: dict[str, Any] = {"home": home}
    for key, value in doc.items():
        if key in _SECTIONS:
            values[key] = _section(key, _SECTIONS[key], value)
        elif key in _TOP_LEVEL:
            values[key] = _coerce(key, _TOP_LEVEL[key], value)
        else:
            known = sorted([*_TOP_LEVEL, *(f"[{s}]" for s in _SECTIONS)])
            raise ConfigError(f"{key}: unknown setting (known: {', '.join(known)})")
    if "chain_id" not in values:
        raise ConfigError("chain_id: must be set")
    cfg = NodeConfig(**values)
    _check(cfg)
    return cfg


def load_config(home: str | Path) -> NodeConfig:
    """Read <home>/config.toml; raises ConfigError with a clear message."""
    home_path = Path(home).resolve()
    path = home_path / "config.toml"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: does not exist (is --home a node directory made by `clearline init`?)"
        ) from None
    try:
        return parse_config(text, home_path, str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def render_config(cfg: NodeConfig) -> str:
    """TOML text for cfg (what `clearline init` writes); parse_config(render_config(c)) == c."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, Path):
            return _quote(str(v))
        if isinstance(v, tuple):
            return "[" + ", ".join(_quote(f"{p.name}@{p.host}:{p.port}") for p in v) + "]"
        return _quote(str(v))

    lines = [f"chain_id = {_quote(cfg.chain_id)}", f"moniker = {_quote(cfg.moniker)}"]
    lines.append(f"genesis = {_quote(str(cfg.genesis))}")
    if cfg.byzantine:
        lines.append(f"byzantine = {_quote(cfg.byzantine)}")
    if cfg.observer:
        lines.append("observer = true")
    for section in _SECTIONS:
        lines.append("")
        lines.append(f"[{section}]")
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            lines.append(f"{f.name} = {value(getattr(obj, f.name))}")
    return "\n".join(lines) + "\n"


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
