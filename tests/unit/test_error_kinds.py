"""The node's error kinds (node/errors.py) at its edges: a peer's or client's bad input is rejected,
logged and counted and the node goes on; anything else is this node's own failure and stops it,
after an orderly shutdown, with the reason. No edge catches both."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from clearline.v1 import peer_pb2
from cluster.netgen import init_network
from node.admission import PeerNames
from node.config import load_config
from node.errors import ApiError, BadInput, CannotStart, InvalidBlock, InvariantBroken, NodeError, PeerFault
from node.mempool import MempoolFull
from node.network.peers import PeerNetwork
from node.runtime import Honest, Node
from node.storage import NodeStore
from node.txs import TxRejected


def test_the_tree_separates_bad_input_from_broken_invariants() -> None:
    for bad in (
        PeerFault("x", "y"),
        InvalidBlock("y"),
        ApiError("INVALID_ARGUMENT", "X", "y"),
        TxRejected(1, "y"),
        MempoolFull("MEMPOOL_FULL", "y"),
    ):
        assert isinstance(bad, BadInput) and isinstance(bad, NodeError), bad
    for own in (InvariantBroken("y", 3), CannotStart("y")):
        assert isinstance(own, NodeError) and not isinstance(own, BadInput), own
    assert str(InvariantBroken("state root mismatch", 7)) == "at height 7: state root mismatch"


class ScriptedHandler:
    """A peer handler whose answer to each message is scripted: ok, a peer's fault, or a bug."""

    def __init__(self, script: list[BaseException | None]) -> None:
        self.script = script
        self.seen = 0

    def on_peer_connected(self, peer: str) -> None:
        pass

    def on_peer_disconnected(self, peer: str) -> None:
        pass

    async def on_peer_message(self, peer: str, msg: peer_pb2.PeerMessage) -> None:
        outcome = self.script[self.seen]
        self.seen += 1
        if outcome is not None:
            raise outcome


async def _messages(n: int) -> AsyncIterator[peer_pb2.PeerMessage]:
    for i in range(n):
        yield peer_pb2.PeerMessage(status=peer_pb2.PeerStatus(height=i + 1))


async def _stream(
    tmp_path: Path, script: list[BaseException | None]
) -> tuple[ScriptedHandler, list[BaseException], BaseException | None]:
    net_dir = init_network(tmp_path / "net", validators=4, tls=False)
    handler = ScriptedHandler(script)
    network = PeerNetwork(load_config(Path(net_dir.node(0).home)), handler, PeerNames({}))  # type: ignore[arg-type]
    fatal: list[BaseException] = []
    network.on_fatal = fatal.append

    async def write(_msg: peer_pb2.PeerMessage) -> None:
        pass

    raised: BaseException | None = None
    try:
        await asyncio.wait_for(network.run_stream("node1", _messages(len(script)), write), timeout=5)
    except Exception as exc:
        raised = exc
    return handler, fatal, raised


async def test_a_peers_bad_input_is_logged_and_the_stream_goes_on(tmp_path: Path) -> None:
    handler, fatal, raised = await _stream(
        tmp_path, [PeerFault("malformed_vote", "junk"), None, InvalidBlock("bad")]
    )
    assert handler.seen == 3 and fatal == [] and raised is None


async def test_this_nodes_own_failure_on_a_peers_message_stops_the_node(tmp_path: Path) -> None:
    bug = KeyError("a corrupt index")
    handler, fatal, raised = await _stream(tmp_path, [None, bug, None])
    assert handler.seen == 2, "nothing more is read after the failure"
    assert fatal == [bug] and raised is bug


class FailingBehaviour(Honest):
    """An honest node with one extra task that finds a broken invariant once the node runs."""

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        async def fail() -> None:
            await asyncio.sleep(0.2)
            raise InvariantBroken("the ledger and the store disagree", 42)

        return [fail()]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Node.run points the "clearline" logger at the node's log file; give it back afterwards."""
    logger = logging.getLogger("clearline")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    for handler in logger.handlers:
        handler.close()
    logger.handlers, logger.propagate, logger.level = saved[0], saved[1], saved[2]


@pytest.mark.usefixtures("restore_logging")
async def test_a_failing_task_stops_the_node_in_order_and_run_raises_its_reason(tmp_path: Path) -> None:
    net = init_network(tmp_path / "net", validators=4, tls=False)
    cfg = load_config(Path(net.node(0).home))
    node = Node(cfg, behaviour=FailingBehaviour())
    with pytest.raises(InvariantBroken, match="at height 42: the ledger and the store disagree"):
        await asyncio.wait_for(node.run(), timeout=30)
    # Orderly shutdown: the store was closed (its LevelDB lock released), so it opens again.
    store = NodeStore.open(cfg.path(cfg.storage.data_dir) / "blockstore", chain_id=cfg.chain_id)
    store.close()
