"""Per-client abuse limits on real nodes: a client over its request rate or its streams gets
RESOURCE_EXHAUSTED with a reason while other clients are served, and opening and abandoning many
streams does not grow the node's memory (RSS measured before and after)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc
from tests.cluster.conftest import RunningNetwork
from tests.cluster.helpers import network_of, setup_funded

LIMITED = {"client_requests_per_s": "10.0", "client_burst": "10", "client_max_streams": "3"}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.cluster.conftest import _factory

    launchers: list[Any] = []
    running: RunningNetwork = _factory(tmp_path_factory.mktemp("limits"), launchers)(start=False)
    config = Path(running.network.nodes[0].home) / "config.toml"
    text = config.read_text()
    for name, value in LIMITED.items():
        text = re.sub(rf"^{name} = .*$", f"{name} = {value}", text, flags=re.M)
    config.write_text(text)
    running.launcher.start_all()
    running.wait_height(1)
    setup_funded(running.network, running.target(1), ["alice"])
    yield running
    for launcher in launchers:
        launcher.stop_all(timeout=10)


def _reason(err: grpc.RpcError) -> str:
    return dict(err.trailing_metadata() or ()).get("clearline-reason", "")  # type: ignore[attr-defined]


def test_a_client_over_its_rate_is_refused_and_others_are_served(net: RunningNetwork) -> None:
    target = net.target(0)
    refused = []
    with network_of(target).channel(target, "alice") as channel:
        stub = ledger_api_pb2_grpc.LedgerStub(channel)
        for _ in range(30):
            try:
                stub.GetValidators(ledger_api_pb2.GetValidatorsRequest(), timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
                refused.append(_reason(exc))
    assert refused and set(refused) == {"RATE_LIMITED"}
    with network_of(target).channel(target, "bob") as channel:
        ledger_api_pb2_grpc.LedgerStub(channel).GetValidators(
            ledger_api_pb2.GetValidatorsRequest(), timeout=5
        )


def test_a_client_opens_at_most_its_streams(net: RunningNetwork) -> None:
    target = net.target(0)
    with network_of(target).channel(target, "auditor") as channel:
        stub = ledger_api_pb2_grpc.LedgerStub(channel)
        streams = [
            stub.SubscribeEvents(ledger_api_pb2.SubscribeEventsRequest(from_height=1), timeout=30)
            for _ in range(3)
        ]
        for s in streams:
            next(s)  # open and answering
        extra = stub.SubscribeEvents(ledger_api_pb2.SubscribeEventsRequest(from_height=1), timeout=30)
        with pytest.raises(grpc.RpcError) as info:
            next(extra)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert _reason(info.value) == "TOO_MANY_STREAMS"
        streams[0].cancel()
        # The slot is freed once the node sees the cancellation.
        for _attempt in range(50):
            again = stub.SubscribeEvents(ledger_api_pb2.SubscribeEventsRequest(from_height=1), timeout=30)
            try:
                next(again)
                break
            except grpc.RpcError as exc:
                assert _reason(exc) == "TOO_MANY_STREAMS"
        else:
            pytest.fail("a cancelled stream's slot was never freed")
        for s in [*streams[1:], again]:
            s.cancel()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _open_and_abandon(target: str, rounds: int) -> None:
    network = network_of(target)
    for _ in range(rounds):
        channel = network.channel(target, "auditor")
        stub = ledger_api_pb2_grpc.LedgerStub(channel)
        for _ in range(8):
            _open_one(stub)
        channel.close()  # abandoned: the client goes away without ending its streams


def _open_one(stub: ledger_api_pb2_grpc.LedgerStub) -> None:
    """Open a stream and read its first event; while the node has not yet seen the previous
    channel's streams go (it learns it asynchronously), the slot is still taken: try again."""
    deadline = time.monotonic() + 10
    while True:
        stream = stub.SubscribeEvents(ledger_api_pb2.SubscribeEventsRequest(from_height=1), timeout=30)
        try:
            next(stream)
            return
        except grpc.RpcError as exc:
            if _reason(exc) != "TOO_MANY_STREAMS" or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_opening_and_abandoning_many_streams_does_not_grow_memory(net: RunningNetwork) -> None:
    target = net.target(1)  # default limits: 8 streams per client
    pid = net.launcher.pid(net.network.nodes[1].name)
    assert pid is not None
    _open_and_abandon(target, 20)  # warm up: gRPC's and Python's own pools
    before = _rss_kib(pid)
    _open_and_abandon(target, 150)  # 1,200 streams
    after = _rss_kib(pid)
    print(f"RSS before {before} KiB, after 1,200 abandoned streams {after} KiB")
    assert after - before < 16 * 1024, (before, after)
    # Every slot came back: the same client opens its 8 streams again.
    _open_and_abandon(target, 1)
