"""Observers on a real network (4 validators and an observer as processes, gRPC over 127.0.0.1 with
mutual TLS, LevelDB): the observer follows the validators' height with the same state roots, is
listed by `clearline status`, never signs (no commit certificate carries its key, it proposed no
block), catches up by block sync after its data is wiped, and an observer added to the running
network with `clearline observer add` is admitted and follows; once its role is revoked, the
validators refuse it at its next connection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cluster.netgen import Network
from tests.cluster.conftest import RunningNetwork, status
from tests.cluster.helpers import connect

ROOT = Path(__file__).resolve().parents[2]


def cli(home: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args, "--home", home],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"clearline {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def follows(net: RunningNetwork, observer: str, timeout: float = 60) -> int:
    """Wait until the observer reaches the validators' current height (and then some); returns it."""
    head = max(net.height(n.name) for n in net.network.nodes) + 2
    net.wait_height(head, [observer], timeout=timeout)
    return head


def same_state(net: RunningNetwork, observer: str, height: int) -> None:

    with connect(net.target(0)) as v, connect(net.target(observer)) as o:
        mine, theirs = o.get_block(height), v.get_block(height)
    assert mine.block_hash == theirs.block_hash
    assert mine.block.header.state_root == theirs.block.header.state_root


def log_has(path: Path, text: str, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return True
        time.sleep(0.2)
    return False


def test_observers_follow_never_sign_and_are_admitted_by_the_ledger(make_network) -> None:  # type: ignore[no-untyped-def]
    net: RunningNetwork = make_network(4, observers=1)
    network, home = net.network, net.network.home
    obs = network.observers[0]

    # It follows, with the validators' state.
    height = follows(net, "obs0")
    same_state(net, "obs0", height)
    rows = {r["node"]: r for r in json.loads(cli(home, "status", "--json").stdout)["nodes"]}
    assert rows["obs0"]["role"] == "observer" and rows["obs0"]["alive"]
    assert rows["obs0"]["height"] >= height - 1
    assert all(rows[n.name]["role"] == "validator" for n in network.nodes)

    # Wiped, it catches up by block sync.
    net.launcher.stop("obs0")
    shutil.rmtree(Path(obs.home) / "data")
    (Path(obs.home) / "data").mkdir()
    net.launcher.start("obs0")
    net.launcher.wait_serving("obs0")
    height = follows(net, "obs0")
    same_state(net, "obs0", height)

    # One added to the running network is admitted once its role is granted, and follows.
    added = json.loads(cli(home, "observer", "add", "regulator", "--json").stdout)
    assert added["grant_status"] == "OK"
    net.network = net.launcher.network = Network.load(home)
    net.launcher.start("regulator")
    net.launcher.wait_serving("regulator")
    height = follows(net, "regulator")
    same_state(net, "regulator", height)

    # Neither observer ever signed: no certificate carries their keys, no block was theirs.

    observer_addresses = {bytes.fromhex(obs.address), bytes.fromhex(added["address"])}
    with connect(net.target(0)) as v:
        head = v.status().height
        for h in range(1, head + 1):
            got = v.get_block(h)
            signers = {s.validator for s in got.block.last_commit.signatures} | {
                s.validator for s in got.commit.signatures
            }
            assert not signers & observer_addresses, f"block {h}"
            assert got.block.header.proposer not in observer_addresses, f"block {h}"
        assert len(got.commit.signatures) >= 3

    # Revoked, it is refused by the validators (PERMISSION_DENIED) at its next connection, and the
    # validators go on without it.
    cli(home, "tx", "revoke-role", "--as", "admin", "--account", added["address"], "--role", "observer")
    net.launcher.restart("regulator")
    net.launcher.wait_serving("regulator")
    stuck = status(net.target("regulator")).height
    refusal = "refused peer connection: peer is neither a validator of this network nor an admitted observer"
    for validator in network.nodes:
        assert log_has(Path(validator.home) / "node.log", refusal), validator.name
    net.wait_height(stuck + 3, [n.name for n in network.nodes])
    after = status(net.target("regulator"))
    assert after.peers == 0 and after.height == stuck
