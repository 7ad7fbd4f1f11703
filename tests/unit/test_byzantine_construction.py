"""Test-only Byzantine behaviour is chosen when the node is built, not asked about on the honest path:
the honest node never imports node/byzantine.py and its code names no mode; each mode is a wrapper
around one part (the executor the core uses, the transport, the peer handler, the client API)."""

from __future__ import annotations

import subprocess
import sys
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

from clearline.v1 import block_pb2, peer_pb2
from cluster.netgen import init_network
from node import blocks, wire
from node.byzantine import LIE_HEIGHT, ByzantineBehaviour, ByzantineRefused
from node.clock import ManualClock
from node.config import load_config
from node.consensus import Vote, VoteType
from node.runtime import Honest, Node

ROOT = Path(__file__).resolve().parents[2]


def test_the_honest_node_does_not_import_the_byzantine_code() -> None:
    code = "import sys, node.runtime, node.driver, node.router; print('node.byzantine' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _names(path: Path) -> Iterator[tuple[int, str]]:
    """Every identifier in the code of `path` (not its strings or comments)."""
    with path.open("rb") as f:
        for tok in tokenize.tokenize(f.readline):
            if tok.type == tokenize.NAME:
                yield tok.start[0], tok.string


def test_no_production_module_asks_whether_it_is_byzantine() -> None:
    allowed = {"byzantine.py", "__main__.py", "config.py"}  # the wrappers, the choice, the setting
    offenders = [
        f"{path.relative_to(ROOT)}:{line} {name}"
        for path in sorted((ROOT / "node").rglob("*.py"))
        if path.name not in allowed
        for line, name in _names(path)
        if "byz" in name.lower()
    ]
    assert offenders == []


class RecordingNetwork:
    def __init__(self) -> None:
        self.sent: list[peer_pb2.PeerMessage] = []
        self.connected: list[str] = []

    def broadcast(self, msg: peer_pb2.PeerMessage) -> None:
        self.sent.append(msg)

    def send(self, peer: str, msg: peer_pb2.PeerMessage) -> bool:
        self.sent.append(msg)
        return True


def _open(tmp_path: Path, behaviour: object, faults: bool = True) -> Node:
    net = init_network(tmp_path / "net", validators=4, tls=False, faults=faults)
    node = Node(load_config(Path(net.node(0).home)), behaviour=behaviour, clock=ManualClock())  # type: ignore[arg-type]
    node.open()
    return node


@pytest.fixture
def opened() -> Iterator[list[Node]]:
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        node.wal.close()
        node.sign_state.close()
        node.store.close()
        node.verify_pool.shutdown(wait=False)
        node.io_pool.shutdown(wait=False)


def test_a_network_not_made_for_fault_testing_refuses_every_mode(tmp_path: Path, opened: list[Node]) -> None:
    with pytest.raises(ByzantineRefused, match="not created for fault testing"):
        opened.append(_open(tmp_path, ByzantineBehaviour("silent"), faults=False))
    with pytest.raises(ByzantineRefused, match="unknown Byzantine mode"):
        ByzantineBehaviour("lie-about-everything")


def test_honest_parts_are_the_parts_themselves(tmp_path: Path, opened: list[Node]) -> None:
    node = _open(tmp_path, None)
    opened.append(node)
    honest = Honest()
    net = RecordingNetwork()
    assert honest.app(node.executor) is node.executor
    assert honest.transport(net) is net  # type: ignore[arg-type]
    assert honest.peer_handler(node.router) is node.router
    assert honest.client_api(node.service) is node.service
    assert honest.tasks() == []


def test_bad_state_root_is_a_tampering_executor_the_honest_rules_reject(
    tmp_path: Path, opened: list[Node]
) -> None:
    node = _open(tmp_path, ByzantineBehaviour("bad-state-root"))
    opened.append(node)
    app = node.behaviour.app(node.executor)
    assert app is not node.executor
    block_id, block = app.propose_block(1, 0)
    assert isinstance(block, block_pb2.Block) and blocks.block_hash(block.header) == block_id
    # The liar takes its own block as valid; an honest executor on the same state does not.
    assert app.validate_block(1, block_id, block)
    honest = _open(tmp_path / "honest", None)
    opened.append(honest)
    assert not honest.executor.validate_block(1, block_id, block)


@pytest.mark.parametrize(
    ("mode", "expected_claim"), [("lying-status", LIE_HEIGHT), ("stall-sync", 3), ("silent", 0)]
)
def test_lying_and_silent_modes_are_a_transport(
    tmp_path: Path, opened: list[Node], mode: str, expected_claim: int
) -> None:
    node = _open(tmp_path, ByzantineBehaviour(mode))
    opened.append(node)
    net = RecordingNetwork()
    transport = node.behaviour.transport(net)  # type: ignore[arg-type]
    node.router.transport = transport
    node.router.broadcast_status()
    transport.broadcast(peer_pb2.PeerMessage(vote=block_pb2.Vote(height=1, validator=node.key.address)))
    statuses = [m.status.last_committed for m in net.sent if m.WhichOneof("msg") == "status"]
    assert statuses == [expected_claim]
    votes = [m for m in net.sent if m.WhichOneof("msg") == "vote"]
    assert len(votes) == (0 if mode == "silent" else 1)


def test_fake_ack_is_a_client_api_and_tampering_sync_a_peer_handler(
    tmp_path: Path, opened: list[Node]
) -> None:
    node = _open(tmp_path, ByzantineBehaviour("fake-ack"))
    opened.append(node)
    assert node.behaviour.client_api(node.service) is not node.service
    assert node.behaviour.peer_handler(node.router) is not node.router


@pytest.mark.parametrize("block_id", [b"\x11" * 32, None], ids=["block", "nil"])
def test_a_colluder_answers_an_honest_vote_with_its_own_to_that_validator_only(
    tmp_path: Path, opened: list[Node], block_id: bytes | None
) -> None:
    """Colluders never vote in the open; each honest vote, for a block or nil, is answered with a prevote
    and a precommit for the same thing sent to that validator alone, once. Were nil left unanswered,
    an honest validator that timed out on a proposal would never see a prevote quorum again and the
    network would stall instead of forking (the fork test's flake)."""
    node = _open(tmp_path, ByzantineBehaviour("collude"))
    opened.append(node)
    net = RecordingNetwork()
    transport = node.behaviour.transport(net)  # type: ignore[arg-type]
    behaviour = node.behaviour
    assert isinstance(behaviour, ByzantineBehaviour)
    other = next(a for a in node.names_by_address if a != node.key.address)
    own = Vote(VoteType.PREVOTE, 2, 1, block_id, node.key.address)
    transport.broadcast(peer_pb2.PeerMessage(vote=wire.vote_to_pb(own)))
    assert net.sent == []  # its own votes are withheld
    honest_vote = Vote(VoteType.PREVOTE, 2, 1, block_id, other)
    behaviour.on_vote(honest_vote)
    behaviour.on_vote(honest_vote)  # answered once
    answers = [wire.vote_from_pb(m.vote) for m in net.sent]
    assert [(v.type, v.height, v.round, v.block_id, v.validator) for v in answers] == [
        (VoteType.PREVOTE, 2, 1, block_id, node.key.address),
        (VoteType.PRECOMMIT, 2, 1, block_id, node.key.address),
    ]
