"""node.blocksync: peers' claims are hints that cost a liar; fetches are bounded; sync prefers the
peers that deliver. Driven through the reactor's interface with an in-memory host."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from clearline.v1 import block_pb2, peer_pb2
from node import blocksync
from node.blocksync import BlockSync, PeerFault, PeerPruned
from node.clock import SystemClock


def _block(height: int) -> peer_pb2.SyncBlock:
    return peer_pb2.SyncBlock(block=block_pb2.Block(header=block_pb2.Header(height=height)))


PRUNED_BASE = 50


class Host:
    """A node at `height` whose peers behave as scripted: 'good' serves what it is asked, 'silent'
    never sends a block, 'empty' ends the stream at once, 'tamper' serves blocks that fail
    verification, 'down' cannot be reached, 'pruned' keeps blocks from PRUNED_BASE on only."""

    def __init__(self, behaviour: dict[str, str]) -> None:
        self.height = 10
        self.behaviour = behaviour
        self.asked: list[str] = []

    async def fetch_blocks(
        self, peer: str, from_height: int, to_height: int, max_bytes: int
    ) -> AsyncIterator[peer_pb2.SyncBlock]:
        self.asked.append(peer)
        kind = self.behaviour[peer]
        if kind == "down":
            raise ConnectionError("UNAVAILABLE: connection refused")
        if kind == "silent":
            await asyncio.Event().wait()
        if kind == "empty":
            return
        if kind == "pruned" and from_height < PRUNED_BASE:
            raise PeerPruned(peer, PRUNED_BASE, f"blocks from height {from_height}")
        for h in range(from_height, to_height + 1):
            yield _block(h) if kind in ("good", "pruned") else peer_pb2.SyncBlock()

    async def apply_synced(self, peer: str, sb: peer_pb2.SyncBlock) -> bool:
        if not sb.HasField("block"):
            raise PeerFault("bad_block", "body does not match its header")
        if sb.block.header.height != self.height + 1:
            return False
        self.height += 1
        return True


@pytest.fixture(autouse=True)
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocksync, "FIRST_BLOCK_TIMEOUT_S", 0.05)
    monkeypatch.setattr(blocksync, "NEXT_BLOCK_TIMEOUT_S", 0.05)


class ListClock(SystemClock):
    """Real sleeps, but a monotonic time the test sets (now[0])."""

    def __init__(self, now: list[float]) -> None:
        self._now = now

    def monotonic(self) -> float:
        return self._now[0]


def _sync(host: Host, now: list[float]) -> BlockSync:
    faults: list[tuple[str, str]] = []
    sync = BlockSync(host, clock=ListClock(now), on_fault=lambda p, r: faults.append((p, r)))
    sync.faults_seen = faults  # type: ignore[attr-defined]
    return sync


async def test_a_liar_is_struck_and_backed_off_while_an_honest_peer_delivers() -> None:
    host, now = Host({"liar": "silent", "honest": "good"}), [0.0]
    sync = _sync(host, now)
    sync.on_status("liar", 2**64 - 1)
    sync.on_status("honest", 15)
    assert sync.wanted()
    # The liar claims most and is asked first, once: it stalls, is struck, and the honest peer delivers.
    assert sync.candidates() == ["liar", "honest"]
    assert not await sync._sync_from("liar")
    assert sync.peers["liar"].strikes == 1 and sync.faults == {"stalled": 1}
    assert sync.candidates() == ["honest"]  # the liar serves its back-off
    assert await sync._sync_from("honest")
    assert host.height == 15
    # Its back-off doubles with each strike, up to the cap.
    now[0] = 1.0
    assert sync.candidates() == ["liar"]
    await sync._sync_from("liar")
    assert sync.peers["liar"].not_before == pytest.approx(1.0 + 2 * blocksync.BACKOFF_BASE_S)
    sync.peers["liar"].strikes = 20
    sync.strike("liar", "stalled", "test")
    assert sync.peers["liar"].not_before == pytest.approx(1.0 + blocksync.BACKOFF_MAX_S)
    assert ("liar", "stalled") in sync.faults_seen  # type: ignore[attr-defined]


async def test_the_peer_that_delivered_is_asked_first_next_time() -> None:
    host, now = Host({"a": "good", "b": "good"}), [0.0]
    sync = _sync(host, now)
    sync.on_status("a", 20)
    sync.on_status("b", 30)
    assert sync.candidates()[0] == "b"  # highest claim first when nobody has delivered
    now[0] = 5.0
    await sync._sync_from("a")
    sync.on_status("b", 40)
    sync.on_status("a", 40)
    assert sync.candidates()[0] == "a"


@pytest.mark.parametrize(
    ("kind", "reason"), [("empty", "false_claim"), ("tamper", "bad_block"), ("down", "unavailable")]
)
async def test_each_kind_of_unserved_claim_is_a_strike_with_its_reason(kind: str, reason: str) -> None:
    host, now = Host({"p": kind}), [0.0]
    sync = _sync(host, now)
    sync.on_status("p", 50)
    assert not await sync._sync_from("p")
    assert host.height == 10, "nothing from a faulty peer is applied"
    assert sync.faults == {reason: 1}
    assert sync.best_claim() == 0, "a peer serving its back-off is not a reason to sync"


async def test_one_height_behind_waits_a_moment_two_do_not() -> None:
    host, now = Host({"p": "good"}), [0.0]
    sync = _sync(host, now)
    sync.on_status("p", 11)
    assert not sync.wanted()  # perhaps this node is finishing the height itself
    now[0] = blocksync.BEHIND_ONE_S + 0.01
    assert sync.wanted()
    sync.on_status("p", 12)
    assert sync.wanted()
    sync.on_disconnected("p")
    assert not sync.wanted()


async def test_the_reactor_catches_up_in_the_background_past_a_liar() -> None:
    host = Host({"liar": "silent", "honest": "good"})
    sync = BlockSync(host)
    sync.on_status("liar", 2**64 - 1)
    sync.on_status("honest", 25)
    task = asyncio.create_task(sync.run())
    try:
        for _ in range(200):
            if host.height == 25:
                break
            await asyncio.sleep(0.01)
        assert host.height == 25
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_pruned_peer_is_no_liar_and_is_not_asked_below_its_base_again() -> None:
    host, now = Host({"pruned": "pruned", "archive": "good"}), [0.0]
    sync = _sync(host, now)
    sync.on_status("pruned", 80)
    sync.on_status("archive", 30)
    assert sync.candidates() == ["pruned", "archive"]  # its base is not known yet
    assert not await sync._sync_from("pruned")
    assert sync.faults == {} and sync.faults_seen == [] and sync.pruned_refusals == 1  # type: ignore[attr-defined]
    assert sync.peers["pruned"].strikes == 0 and sync.peers["pruned"].base == PRUNED_BASE
    assert sync.candidates() == ["archive"]
    assert sync.stranded() == {}  # the archive peer may be asked
    assert await sync._sync_from("archive")
    assert host.height == 30
    # Once this node reaches the pruned peer's base, that peer serves it again.
    host.height = PRUNED_BASE - 1
    assert sync.candidates() == ["pruned"]
    assert await sync._sync_from("pruned")
    assert host.height == 80


async def test_when_every_peer_ahead_pruned_the_next_height_block_sync_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host, now = Host({"a": "pruned", "b": "pruned"}), [0.0]
    sync = _sync(host, now)
    for peer in ("a", "b"):
        sync.on_status(peer, 90)
        assert not await sync._sync_from(peer)
    assert sync.stranded() == {"a": PRUNED_BASE, "b": PRUNED_BASE}
    assert not sync.wanted() and sync.faults == {}
    with caplog.at_level("ERROR", logger="clearline.blocksync"):
        sync._log_if_stranded()
        sync._log_if_stranded()  # not again within STRANDED_LOG_S
    (record,) = caplog.records
    assert "every peer ahead has pruned height 11" in record.getMessage()
    assert "state sync" in record.getMessage() and f"a from {PRUNED_BASE}" in record.getMessage()
    # A peer that reconnects may come back with another store: it is asked again.
    sync.on_disconnected("a")
    sync.on_status("a", 90)
    assert sync.candidates() == ["a"] and sync.stranded() == {}
