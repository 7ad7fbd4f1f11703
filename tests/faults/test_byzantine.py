"""Byzantine validators (test-only --byzantine modes) against three honest ones: the honest nodes keep
committing and agree; equivocation ends as evidence on chain; invalid proposals never commit; and
the modes are refused on networks not created for fault testing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import RunningNetwork, make_network, status  # noqa: F401 - fixture
from tests.cluster.helpers import block_hashes, get_block, key, setup_funded, signed, submit, usd

HONEST = ["node0", "node1", "node2"]


def _start_byzantine(net: RunningNetwork, mode: str) -> bytes:
    net.launcher.stop("node3")
    net.launcher.start("node3", args=["--byzantine", mode])
    return bytes.fromhex(net.network.node(3).address)


def _transfers(net: RunningNetwork, count: int) -> list[bytes]:
    from cluster.client import builders

    network = net.network
    alice, bob = key(network, "alice"), key(network, "bob")
    from clearline.v1 import ledger_api_pb2
    from tests.cluster.helpers import stub

    channel, s = stub(net.target(0))
    with channel:
        nonce = s.GetAccount(
            ledger_api_pb2.GetAccountRequest(address=alice.address), timeout=10
        ).account.nonce
    hashes = []
    for i in range(count):
        resp = submit(
            net.target(i % 3),
            signed(network, alice, nonce + i, builders.transfer(usd(network), bob.address, 1)),
        )
        hashes.append(resp.tx_hash)
    return hashes


def _agree(net: RunningNetwork) -> int:
    h = min(status(net.target(i)).height for i in range(3))
    chains = [block_hashes(net.target(i), h) for i in range(3)]
    assert chains[0] == chains[1] == chains[2]
    return h


def _evidence_against(net: RunningNetwork, validator: bytes, upto: int) -> int:
    found = 0
    for h in range(1, upto + 1):
        for ev in get_block(net.target(0), h).block.body.evidence:
            if ev.duplicate_vote.vote_a.validator == validator:
                found += 1
    return found


def _proposed_by(net: RunningNetwork, validator: bytes, upto: int) -> int:
    return sum(
        1 for h in range(1, upto + 1) if get_block(net.target(0), h).block.header.proposer == validator
    )


@pytest.mark.parametrize("mode", ["double-vote", "equivocate"])
def test_equivocation_ends_as_evidence_on_chain(make_network, mode: str) -> None:  # noqa: F811
    net = make_network(4, faults=True)
    setup_funded(net.network, net.target(0), ["alice", "bob"])
    byz = _start_byzantine(net, mode)
    start = status(net.target(0)).height
    net.wait_height(start + 12, HONEST, timeout=90)
    _transfers(net, 3)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        h = _agree(net)
        if _evidence_against(net, byz, h) > 0:
            break
        time.sleep(1)
    h = _agree(net)
    assert _evidence_against(net, byz, h) > 0, f"no evidence against the {mode} validator up to height {h}"


@pytest.mark.parametrize("mode", ["bad-state-root", "forged-tx"])
def test_invalid_proposals_never_commit(make_network, mode: str) -> None:  # noqa: F811
    net = make_network(4, faults=True)
    setup_funded(net.network, net.target(0), ["alice", "bob"])
    byz = _start_byzantine(net, mode)
    start = status(net.target(0)).height
    _transfers(net, 4)
    net.wait_height(start + 12, HONEST, timeout=120)
    h = _agree(net)
    assert _proposed_by(net, byz, h) <= _proposed_by(net, byz, start), (
        "a block of the Byzantine proposer committed"
    )
    log = (Path(net.network.node(0).home) / "node.log").read_text()
    assert "is invalid" in log or "invalid transaction" in log


@pytest.mark.parametrize("mode", ["garbage", "silent"])
def test_honest_nodes_go_on_despite_garbage_or_silence(make_network, mode: str) -> None:  # noqa: F811
    net = make_network(4, faults=True)
    setup_funded(net.network, net.target(0), ["alice", "bob"])
    _start_byzantine(net, mode)
    start = status(net.target(0)).height
    hashes = _transfers(net, 4)
    net.wait_height(start + 8, HONEST, timeout=120)
    assert len(hashes) == 4
    _agree(net)


def test_byzantine_modes_are_refused_without_fault_testing(tmp_path: Path) -> None:
    from cluster.netgen import init_network
    from cluster.ports import free_base_port

    net = init_network(tmp_path / "net", validators=1, base_port=free_base_port(1))
    proc = subprocess.run(
        [sys.executable, "-m", "node", "--home", net.nodes[0].home, "--byzantine", "silent"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "not created for fault testing" in proc.stderr
