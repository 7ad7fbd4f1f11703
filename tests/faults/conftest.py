"""Fixtures for fault-injection tests: real networks made for fault testing (a fault proxy on every
peer link), each with a Nemesis, plus chain checks shared by the scenarios.

    def test_x(fault_network):
        net = fault_network(4)              # started, at height >= 1, proxies on every link
        net.nemesis.partition(["node0", "node1"], ["node2", "node3"])
        ...
        net.agree()                         # same block hashes on every node up to the lowest height

Every node and proxy process started here is ended by its pid at teardown; the session guard below
fails the run if a fault proxy outlives the tests (tests/conftest.py does the same for nodes).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from clearline.v1 import ledger_api_pb2
from cluster.faults import Nemesis
from cluster.faults.process import PROXY_MODULE
from cluster.launcher import Launcher
from cluster.netgen import Network, init_network
from cluster.ports import free_base_port
from tests.cluster.conftest import FAST, RunningNetwork
from tests.cluster.helpers import block_hashes, get_block, key, register, stub, usd


class FaultNetwork(RunningNetwork):
    """A running network with its Nemesis and chain checks."""

    def __init__(self, network: Network, launcher: Launcher) -> None:
        super().__init__(network, launcher)
        self.nemesis = Nemesis(network, launcher, seed=1)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.network.nodes]

    def heights(self, names: list[str] | None = None) -> dict[str, int]:
        return {name: self.height(name) for name in (names or self.names)}

    def agree(self, names: list[str] | None = None) -> int:
        """Assert the named nodes (default all) hold the same block hash at every height up to the lowest
        of their heights; returns that height."""
        names = names or self.names
        top = min(self.height(n) for n in names)
        chains = {n: block_hashes(self.target(n), top) for n in names}
        first = chains[names[0]]
        for name, chain in chains.items():
            diverge = next((h + 1 for h, (a, b) in enumerate(zip(first, chain, strict=True)) if a != b), None)
            assert diverge is None, f"{names[0]} and {name} differ at height {diverge}"
        return top

    def account(self, node: str, holder: str) -> ledger_api_pb2.GetAccountResponse:
        channel, s = stub(self.target(node))
        with channel:
            return s.GetAccount(
                ledger_api_pb2.GetAccountRequest(address=key(self.network, holder).address), timeout=10
            )

    def balance(self, node: str, holder: str, bank: str = "bank-a") -> int:
        """holder's balance of bank's USD deposit token as node sees it."""
        inst = usd(self.network, bank)
        acct = self.account(node, holder).account
        return sum(b.amount for b in acct.balances if b.instrument == inst)

    def tx(self, node: str, tx_hash: bytes) -> ledger_api_pb2.GetTxResponse:
        """The node's view of a transaction (state UNKNOWN if it has never heard of it)."""
        channel, s = stub(self.target(node))
        with channel:
            try:
                return s.GetTx(ledger_api_pb2.GetTxRequest(tx_hash=tx_hash), timeout=10)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                return ledger_api_pb2.GetTxResponse(state=ledger_api_pb2.TX_STATE_UNKNOWN)

    def block_txs(self, node: str, upto: int) -> list[bytes]:
        """Every raw transaction in node's blocks 1..upto, in chain order."""
        return [raw for h in range(1, upto + 1) for raw in get_block(self.target(node), h).block.body.txs]

    def wait_all_at(self, height: int, names: list[str] | None = None, timeout: float = 60) -> float:
        """Wait until the named nodes reach height; returns the seconds it took."""
        started = time.monotonic()
        self.wait_height(height, names, timeout=timeout)
        return time.monotonic() - started


def _proxy_children() -> list[str]:
    me = os.getpid()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me and fields[0] != "Z" and PROXY_MODULE.encode() in cmdline:
            found.append(f"{proc.name}: {b' '.join(cmdline).decode(errors='replace')}")
    return found


@pytest.fixture(scope="session", autouse=True)
def no_fault_proxy_outlives_the_tests() -> Iterator[None]:
    yield
    left = _proxy_children()
    assert not left, f"fault proxy processes left running: {left}"


@pytest.fixture
def fault_network(tmp_path: Path) -> Iterator[Callable[..., FaultNetwork]]:
    """Make (and by default start) networks for one test: fault_network(validators=4, faults=True,
    start=True, **init_network kwargs). faults=False gives a plain network (no proxies) whose
    Nemesis still does process and disk faults. Everything is stopped by pid at teardown."""
    launchers: list[Launcher] = []

    def factory(
        validators: int = 4, *, start: bool = True, faults: bool = True, **kwargs: object
    ) -> FaultNetwork:
        # Node i uses base + 10*i + {0,1,2}; the proxy ports follow at base + 10*n + i*n + j.
        blocks = validators + math.ceil(validators * validators / 10)
        base = free_base_port(blocks, per_node=10)
        network = init_network(
            tmp_path / f"net{len(launchers)}",
            validators=validators,
            base_port=base,
            faults=faults,
            consensus=kwargs.pop("consensus", FAST),  # type: ignore[arg-type]
            **kwargs,  # type: ignore[arg-type]
        )
        register(network)
        launcher = Launcher(network)
        launchers.append(launcher)
        net = FaultNetwork(network, launcher)
        if start:
            launcher.start_all()
            net.wait_height(1, timeout=60)
        return net

    yield factory
    for launcher in launchers:
        launcher.stop_all(timeout=10)
