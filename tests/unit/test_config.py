"""node.config: the node refuses unknown or invalid settings with a message naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.netgen import init_network
from node.config import ConfigError, load_config, parse_config, render_config

BASE = 'chain_id = "c"\n'


def test_generated_config_round_trips(tmp_path: Path) -> None:
    net = init_network(tmp_path / "net", validators=2, base_port=31000)
    cfg = load_config(net.nodes[0].home)
    assert cfg.chain_id == net.chain_id
    assert [p.name for p in cfg.p2p.peers] == ["node1"]
    assert parse_config(render_config(cfg), cfg.home) == cfg


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BASE + "colour = 1\n", "colour: unknown setting"),
        (BASE + "[mempool]\nmax_txz = 3\n", r"\[mempool\] max_txz: unknown setting"),
        (BASE + "[mempool]\nmax_txs = 0\n", r"\[mempool\] max_txs: must be > 0"),
        (BASE + "[mempool]\nmax_txs = -5\n", r"\[mempool\] max_txs: must be >= 0"),
        (BASE + '[mempool]\nmax_txs = "many"\n', r"\[mempool\] max_txs: must be an integer"),
        (BASE + '[api]\nlisten = "nowhere"\n', r"\[api\] listen: 'nowhere' is not host:port"),
        (BASE + '[p2p]\npeers = ["127.0.0.1:5"]\n', r"\[p2p\] peers: '127.0.0.1:5' is not name@host:port"),
        (BASE + "[p2p]\nreconnect_min_ms = 0\n", r"\[p2p\] reconnect_min_ms: must be > 0"),
        (
            BASE + "[p2p]\nreconnect_min_ms = 500\nreconnect_max_ms = 100\n",
            r"\[p2p\] reconnect_max_ms: must be >= reconnect_min_ms",
        ),
        (BASE + "[tls]\nenabled = 1\n", r"\[tls\] enabled: must be true or false"),
        (BASE + '[log]\nlevel = "loud"\n', r"\[log\] level: 'loud' is not one of"),
        (BASE + 'byzantine = "evil"\n', "byzantine: 'evil' is not one of"),
        ("moniker = 'x'\n", "chain_id: must be set"),
        ("chain_id = \n", "not valid TOML"),
    ],
)
def test_invalid_settings_are_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, Path("/tmp/home"))


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.toml: does not exist"):
        load_config(tmp_path)


def test_paths_resolve_against_home() -> None:
    cfg = parse_config(BASE + '[storage]\ndata_dir = "d"\n', Path("/srv/node"))
    assert cfg.path(cfg.storage.data_dir) == Path("/srv/node/d")
    assert cfg.path(Path("/abs")) == Path("/abs")
