"""State sync on real nodes: a wiped validator joins from its peers' snapshots while one peer serves
tampered chunks and manifests and another never answers, ends with the same state root as the
others, and a node killed in the middle of state sync starts over cleanly."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from clearline.v1 import ledger_api_pb2
from cluster.client import builders
from node.config import StateSyncConfig, load_config, render_config
from node.storage import NodeStore
from tests.cluster.conftest import RunningNetwork, status
from tests.cluster.helpers import connect, key, setup_funded, stub, usd


def _configure(net: RunningNetwork, name: str, **changes: object) -> None:
    home = Path(net.network.node(name).home)
    cfg = load_config(home)
    (home / "config.toml").write_text(render_config(dataclasses.replace(cfg, **changes)))  # type: ignore[arg-type]


def _log_events(net: RunningNetwork, name: str) -> list[dict[str, object]]:
    path = Path(net.network.node(name).home) / "node.log"
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _wait_log(net: RunningNetwork, name: str, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in str(e.get("msg", "")) for e in _log_events(net, name)):
        assert time.monotonic() < deadline, f"{name} never logged {text!r}"
        time.sleep(0.1)


def _state_root(target: str, height: int) -> bytes:
    channel, ledger = stub(target)
    with channel:
        resp = ledger.GetBlock(ledger_api_pb2.GetBlockRequest(height=height), timeout=5)
    return bytes(resp.block.header.state_root)


def test_a_wiped_validator_joins_by_state_sync_despite_lying_peers(make_network) -> None:  # type: ignore[no-untyped-def]
    net = make_network(validators=4, faults=True, snapshot_interval=5)
    network, target = net.network, net.target(0)
    # Peers that serve sync data badly: node1 tampers (chunks and manifests), node2 never answers.
    for name, mode in (("node1", "tamper-sync"), ("node2", "stall-sync")):
        net.launcher.stop(name)
        _configure(net, name, byzantine=mode)
        net.launcher.start(name)
    setup_funded(network, target, ["alice", "bob"])
    with connect(target, "alice") as client:
        for i in range(10):
            assert client.send(
                key(network, "alice"), builders.transfer(usd(network), key(network, "bob").address, 1 + i)
            ).ok
    net.wait_height(status(target).height + 6)
    # node3 loses its disk and comes back with state sync on.
    net.launcher.stop("node3")
    shutil.rmtree(Path(network.node("node3").home) / "data")
    sync = StateSyncConfig(enable=True, discovery_s=10, chunk_timeout_s=2, fetchers=3)
    _configure(net, "node3", statesync=sync)
    net.launcher.start("node3")
    # Killed in the middle (the stalling peer holds a chunk for chunk_timeout_s), it starts over.
    _wait_log(net, "node3", "state sync: snapshots offered")
    net.launcher.kill("node3")
    with NodeStore.open(Path(network.node("node3").home) / "data" / "blockstore") as store:
        assert not store.is_initialized()  # nothing half-written: state sync writes in one batch at the end
    net.launcher.start("node3")
    _wait_log(net, "node3", "state sync: joined at height", timeout=90)
    joined = next(e for e in _log_events(net, "node3") if e.get("event") == "state_synced")
    synced_height = int(joined["synced_height"])  # type: ignore[call-overload]
    assert synced_height >= 5 and synced_height % 5 == 0
    # It catches up by block sync and then follows: same blocks, same state roots as the others.
    tip = status(target).height + 2
    net.wait_height(tip, ["node3"], timeout=60)
    for height in (synced_height + 1, tip):
        assert _state_root(net.target("node3"), height) == _state_root(target, height)
    # The lying peers were caught and counted, and never trusted.
    faults = [
        str(e.get("msg", "")) for e in _log_events(net, "node3") if "state sync:" in str(e.get("msg", ""))
    ]
    assert any(("bad_chunk from node1" in m or "bad_manifest from node1" in m) for m in faults), faults
    # It keeps committing with the others (it votes: a validator again).
    net.wait_height(status(target).height + 3, ["node3"], timeout=60)
