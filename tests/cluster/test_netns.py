"""Several machines on one: one validator per Linux network namespace, each with its own address,
joined by veth links on a bridge. The network commits blocks across them; cutting one namespace's
link leaves the other three committing. Needs root and iproute2 (CI runs as root)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cluster.launcher import Launcher
from cluster.netgen import Network, init_network
from tests.cluster.conftest import FAST, status
from tests.cluster.helpers import block_hashes, register

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="network namespaces need root and iproute2"
)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


class Hosts:
    """N namespaces with addresses 10.<x>.<y>.1..N on a private bridge (the host side is .254)."""

    def __init__(self, n: int) -> None:
        tag = secrets.token_hex(2)
        self.bridge = f"clbr{tag}"
        self.ns = [f"cl{tag}n{i}" for i in range(n)]
        self.host_veth = [f"cl{tag}h{i}" for i in range(n)]
        x, y = 100 + secrets.randbelow(100), secrets.randbelow(250)
        self.addresses = [f"10.{x}.{y}.{i + 1}" for i in range(n)]
        self.gateway = f"10.{x}.{y}.254"

    def up(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for ns, veth, addr in zip(self.ns, self.host_veth, self.addresses, strict=True):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "link", "set", veth, "master", self.bridge)
            sh("ip", "link", "set", veth, "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def cut(self, i: int) -> None:
        sh("ip", "link", "set", self.host_veth[i], "down")

    def down(self) -> None:
        for ns in self.ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=20)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    h = Hosts(4)
    try:
        h.up()
    except subprocess.CalledProcessError as exc:
        h.down()
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode(errors='replace').strip()}")
    yield h
    h.down()


def test_validators_in_separate_namespaces_commit_and_survive_a_cut_link(
    hosts: Hosts, tmp_path: Path
) -> None:
    network: Network = init_network(
        tmp_path / "net", validators=4, hosts=hosts.addresses, base_port=26700, consensus=FAST
    )
    assert [n.host for n in network.nodes] == hosts.addresses
    register(network)
    wrappers = {n.name: ["ip", "netns", "exec", hosts.ns[n.index]] for n in network.nodes}
    launcher = Launcher(network, wrappers=wrappers)
    try:
        launcher.start_all()

        def height_at_least(h: int):
            def check(node) -> bool:
                return status(node.api_target).height >= h

            return check

        launcher.wait_until(height_at_least(3), timeout=90, what="at height 3")
        st = status(network.nodes[0].api_target)
        assert st.peers == 3
        hosts.cut(3)
        cut_at = max(status(n.api_target).height for n in network.nodes[:3])
        launcher.wait_until(height_at_least(cut_at + 5), ["node0", "node1", "node2"], timeout=90,
                            what=f"at height {cut_at + 5} after the cut")  # fmt: skip
        with pytest.raises(grpc.RpcError):
            status(network.nodes[3].api_target, timeout=2)
        h = min(status(n.api_target).height for n in network.nodes[:3])
        assert h >= cut_at + 5
        chains = [block_hashes(n.api_target, h) for n in network.nodes[:3]]
        assert chains[0] == chains[1] == chains[2]
    finally:
        launcher.stop_all()
