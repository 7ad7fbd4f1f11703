"""Pruning on real nodes under load: three validators keep 100 blocks ([storage] retain_blocks), one
keeps every block. Their base advances with the chain; a read below it answers BELOW_BASE_HEIGHT
naming the base while the archive node answers; proofs of the current state verify; a pruned node
killed with -9 restarts and keeps pruning; a wiped node finds no pruned peer that can serve it from
height 1 and says so, joins by state sync from the pruned peers' snapshots, and a wiped node
block-syncs from genesis from the archive peer while the pruned peers refuse."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from clearline.v1 import ledger_api_pb2
from cluster.client import builders
from node.config import StateSyncConfig, StorageConfig, load_config, render_config
from tests.cluster.conftest import RunningNetwork, status
from tests.cluster.helpers import connect, key, reason_of, setup_funded, signed, stub, usd

RETAIN = 100
SNAPSHOT_INTERVAL = 50
ARCHIVE = "node3"


def _configure(net: RunningNetwork, name: str, **changes: object) -> None:
    home = Path(net.network.node(name).home)
    cfg = load_config(home)
    (home / "config.toml").write_text(render_config(dataclasses.replace(cfg, **changes)))  # type: ignore[arg-type]


def _log(net: RunningNetwork, name: str) -> list[str]:
    path = Path(net.network.node(name).home) / "node.log"
    if not path.exists():
        return []
    return [
        str(json.loads(line).get("msg", "")) for line in path.read_text().splitlines() if line.startswith("{")
    ]


def _wait_log(net: RunningNetwork, name: str, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        found = [m for m in _log(net, name) if text in m]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"{name} never logged {text!r}"
        time.sleep(0.2)


def _wait(what: str, done: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not done():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not {what} within {timeout:.0f}s"
        time.sleep(0.2)


@contextmanager
def _load(net: RunningNetwork, target: str) -> Iterator[None]:
    """alice pays bob 1 in batches of 20, the next batch once the last one committed: blocks keep
    coming at the commit pace instead of one empty block a second."""
    network = net.network
    alice, bob = key(network, "alice"), key(network, "bob")
    stop = threading.Event()

    def run() -> None:
        sent_upto = 0
        while not stop.is_set():
            try:
                channel, s = stub(target)
                with channel:
                    nonce = s.GetAccount(
                        ledger_api_pb2.GetAccountRequest(address=alice.address), timeout=5
                    ).account.nonce
                    if nonce >= sent_upto:
                        batch = [
                            signed(network, alice, n, builders.transfer(usd(network), bob.address, 1))
                            for n in range(nonce, nonce + 20)
                        ]
                        s.SubmitTxs(ledger_api_pb2.SubmitTxsRequest(txs=batch), timeout=5)
                        sent_upto = nonce + 20
            except grpc.RpcError:
                pass  # the node is busy or the chain stalls: try again
            stop.wait(0.05)

    thread = threading.Thread(target=run, name="load", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def _below_base(target: str, request: object, method: str = "GetBlock") -> int:
    channel, s = stub(target)
    with channel, pytest.raises(grpc.RpcError) as info:
        getattr(s, method)(request, timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.OUT_OF_RANGE and reason_of(err) == "BELOW_BASE_HEIGHT", err
    base = next(int(v) for k, v in err.trailing_metadata() or () if k == "clearline-base-height")
    assert f"this node keeps blocks from height {base}" in (err.details() or "")
    return base


def test_pruned_validators_under_load_serve_what_they_keep_and_refuse_the_rest(make_network) -> None:  # type: ignore[no-untyped-def]
    net = make_network(validators=4, start=False, retain_blocks=RETAIN, snapshot_interval=SNAPSHOT_INTERVAL)
    network = net.network
    _configure(net, ARCHIVE, storage=StorageConfig(retain_blocks=0))
    net.launcher.start_all()
    net.wait_height(1)
    pruned, target = ["node0", "node1", "node2"], net.target("node0")
    setup_funded(network, target, ["alice", "bob"])
    with connect(target, "alice") as client:
        first = client.send(
            key(network, "alice"), builders.transfer(usd(network), key(network, "bob").address, 3)
        )
    assert first.ok
    first_height = first.height

    with _load(net, target):
        # The base of every pruning node follows the chain: the last RETAIN blocks (the oldest
        # snapshot, SNAPSHOT_INTERVAL apart, never holds it back further).
        _wait("pruned", lambda: min(status(net.target(n)).base_height for n in pruned) > RETAIN // 2, 150)
        st = status(target)
        assert st.height - RETAIN + 1 - SNAPSHOT_INTERVAL <= st.base_height <= st.height - RETAIN + 1 + 5
        assert status(net.target(ARCHIVE)).base_height == 1
        base = _below_base(target, ledger_api_pb2.GetBlockRequest(height=first_height))
        assert base >= st.base_height
        assert _below_base(target, ledger_api_pb2.GetTxRequest(tx_hash=first.tx_hash), "GetTx") >= base
        # The archive node still has it all.
        channel, s = stub(net.target(ARCHIVE))
        with channel:
            assert (
                s.GetTx(ledger_api_pb2.GetTxRequest(tx_hash=first.tx_hash), timeout=10).height == first_height
            )
        # Proofs of the current state verify on a pruned node.
        with connect(target, "alice") as client:
            genesis_set = client.validators(1)
            proved = client.get_account_verified(key(network, "alice").address, genesis_set)
            assert proved.height >= st.height

        # A pruned node killed with -9 restarts at its height with its base, and prunes on.
        net.launcher.kill("node1")
        before = st.base_height
        net.launcher.start("node1")
        net.wait_height(status(target).height + 3, ["node1"], timeout=60)
        _wait("pruning again", lambda: status(net.target("node1")).base_height > before + 5)

        # node2 loses its disk while the archive node is down: the pruned peers cannot serve it from
        # height 1, and it says what it needs (the chain stalls meanwhile: two of four are up).
        for name in ("node2", ARCHIVE):
            net.launcher.stop(name)
        shutil.rmtree(Path(network.node("node2").home) / "data")
        net.launcher.start("node2")
        stranded = _wait_log(net, "node2", "every peer ahead has pruned height 1")
        assert "state sync" in stranded
        # Joining by state sync from the pruned peers' snapshots works: the oldest snapshot's block
        # and the light client's headers are kept.
        net.launcher.stop("node2")
        shutil.rmtree(Path(network.node("node2").home) / "data")
        _configure(net, "node2", statesync=StateSyncConfig(enable=True, discovery_s=10, chunk_timeout_s=2))
        net.launcher.start("node2")
        _wait_log(net, "node2", "state sync: joined at height", timeout=90)
        net.wait_height(status(target).height + 3, ["node0", "node2"], timeout=90)
        net.launcher.start(ARCHIVE)

        # A wiped node without state sync block-syncs from genesis from the archive peer; the
        # pruned peers refuse below their base, and that is no fault of theirs.
        net.launcher.stop("node2")
        shutil.rmtree(Path(network.node("node2").home) / "data")
        _configure(net, "node2", statesync=StateSyncConfig())
        net.launcher.start("node2")
        net.wait_height(status(target).height + 3, ["node2", ARCHIVE], timeout=120)
        assert any("keeps blocks from height" in m for m in _log(net, "node2"))
        assert not any("false_claim" in m or "served an invalid block" in m for m in _log(net, "node2"))
        _wait("node2 pruning its own", lambda: status(net.target("node2")).base_height > 1, 60)
