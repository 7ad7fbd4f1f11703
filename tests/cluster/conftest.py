"""Fixtures that run real Clearline networks: real processes, real gRPC on 127.0.0.1, real LevelDB in
a temporary directory. Every process started here is ended by its pid at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clearline.v1 import ledger_api_pb2
from cluster.launcher import Launcher
from cluster.netgen import Network, init_network
from cluster.ports import free_base_port
from node.config import ConsensusConfig
from tests.cluster import helpers

FAST = ConsensusConfig(
    timeout_propose_ms=1500,
    timeout_propose_delta_ms=500,
    timeout_prevote_ms=500,
    timeout_prevote_delta_ms=500,
    timeout_precommit_ms=500,
    timeout_precommit_delta_ms=500,
    timeout_commit_ms=100,
)


def status(target: str, timeout: float = 2.0) -> ledger_api_pb2.GetStatusResponse:
    """GetStatus of a node of a network the fixtures made (it needs no identity)."""
    channel, stub = helpers.stub(target, None)
    with channel:
        return stub.GetStatus(ledger_api_pb2.GetStatusRequest(), timeout=timeout)


class RunningNetwork:
    def __init__(self, network: Network, launcher: Launcher) -> None:
        self.network = network
        self.launcher = launcher

    def target(self, name: str | int) -> str:
        return self.network.node(name).api_target

    def height(self, name: str | int) -> int:
        return status(self.target(name)).height

    def wait_height(self, height: int, names: list[str] | None = None, timeout: float = 60) -> None:
        self.launcher.wait_until(
            lambda n: status(n.api_target).height >= height,
            names,
            timeout=timeout,
            what=f"at height {height}",
        )


def _factory(root: Path, launchers: list[Launcher]) -> Callable[..., RunningNetwork]:
    def factory(validators: int = 4, start: bool = True, **kwargs: object) -> RunningNetwork:
        # Observers take the slots above the validators' (one spare for an observer added later).
        observers = int(kwargs.get("observers", 0))  # type: ignore[call-overload]
        base = free_base_port(validators + (observers + 1 if observers else 0))
        network = init_network(
            root / f"net{len(launchers)}",
            validators=validators,
            base_port=base,
            consensus=kwargs.pop("consensus", FAST),  # type: ignore[arg-type]
            **kwargs,  # type: ignore[arg-type]
        )
        helpers.register(network)
        launcher = Launcher(network)
        launchers.append(launcher)
        running = RunningNetwork(network, launcher)
        if start:
            launcher.start_all()
            running.wait_height(1, timeout=60)
        return running

    return factory


@pytest.fixture
def make_network(tmp_path: Path) -> Iterator[Callable[..., RunningNetwork]]:
    """Start networks for one test; every node is stopped (by pid) at teardown."""
    launchers: list[Launcher] = []
    yield _factory(tmp_path, launchers)
    for launcher in launchers:
        launcher.stop_all(timeout=10)


@pytest.fixture(scope="module")
def shared_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNetwork]:
    """One 4-validator network shared by the tests of a module."""
    launchers: list[Launcher] = []
    yield _factory(tmp_path_factory.mktemp("shared"), launchers)()
    for launcher in launchers:
        launcher.stop_all(timeout=10)
