"""Pruning ([storage] retain_blocks): the rule for the base, the settings it is refused with, the
evidence age that makes a pruned node judge blocks like an archive node, and a real one-validator
node (LevelDB in a temporary directory, logical time) that prunes as it commits: every read below
its base answers BELOW_BASE_HEIGHT naming the base, reads from the base on answer as before, the
oldest snapshot's block and the light-client headers stay, and it restarts where it left off."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from clearline.v1 import block_pb2, ledger_api_pb2, peer_pb2, tx_pb2
from cluster.client import builders
from cluster.netgen import init_network
from cluster.workload import funded
from node import blocks, crypto, evidence, wire
from node.auth import Identity
from node.blockserve import blocks_to_serve
from node.clock import ManualClock
from node.config import (
    MIN_RETAIN_BLOCKS,
    ConfigError,
    ConsensusConfig,
    SnapshotsConfig,
    StorageConfig,
    load_config,
    parse_config,
    render_config,
)
from node.consensus import DuplicateVoteEvidence, Vote, VoteType
from node.errors import ApiError, BelowBase
from node.pruning import light_client_heights, target_base
from node.runtime import Node
from node.storage import keys

# --- the rules -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latest", "retain", "floor", "base"),
    [
        (1000, 0, None, 1),  # archive: everything
        (99, 100, None, 1),  # fewer blocks than it keeps
        (100, 100, None, 1),
        (101, 100, None, 2),
        (1000, 100, None, 901),
        (1000, 100, keys.MAX_HEIGHT, 901),
        (1000, 100, 850, 850),  # the oldest snapshot served stays
        (1000, 100, 950, 901),
    ],
)
def test_the_base_keeps_the_last_retain_blocks_and_the_oldest_snapshot(
    latest: int, retain: int, floor: int | None, base: int
) -> None:
    assert target_base(latest, retain, floor) == base


def test_the_light_client_walks_the_header_before_each_set_change() -> None:
    assert light_client_heights([1]) == set()
    assert light_client_heights([1, 12, 400]) == {11, 399}


def _config(storage: str) -> str:
    return f'chain_id = "c"\n[storage]\n{storage}\n'


def test_retain_blocks_is_refused_below_the_evidence_age_and_archive_is_the_default(tmp_path: Path) -> None:
    assert MIN_RETAIN_BLOCKS >= evidence.MAX_AGE_HEIGHTS
    assert parse_config('chain_id = "c"\n', tmp_path).storage.retain_blocks == 0
    assert parse_config(_config("retain_blocks = 0"), tmp_path).storage.retain_blocks == 0
    ok = parse_config(_config(f"retain_blocks = {MIN_RETAIN_BLOCKS}"), tmp_path)
    assert ok.storage.retain_blocks == MIN_RETAIN_BLOCKS
    assert parse_config(render_config(ok), tmp_path) == ok
    for bad, words in (
        (f"retain_blocks = {MIN_RETAIN_BLOCKS - 1}", f"at least {MIN_RETAIN_BLOCKS}"),
        ("retain_blocks = 20", "evidence"),
        ("retain_blocks = -5", "must be >= 0"),
        ("prune_batch_keys = 0", "prune_batch_keys"),
    ):
        with pytest.raises(ConfigError, match="storage") as info:
            parse_config(_config(bad), tmp_path)
        assert words in str(info.value)


# --- evidence expires ----------------------------------------------------------------------------


def _evidence(key: crypto.SigningKey, chain_id: str, height: int) -> block_pb2.Evidence:
    votes = []
    for block_id in (b"\x01" * 32, b"\x02" * 32):
        msg = blocks.vote_sign_bytes(chain_id, int(VoteType.PREVOTE), height, 0, block_id)
        votes.append(Vote(VoteType.PREVOTE, height, 0, block_id, key.address, key.sign_raw(msg)))
    return wire.evidence_to_pb(DuplicateVoteEvidence(vote_a=votes[0], vote_b=votes[1]))


def test_evidence_older_than_the_max_age_is_not_valid_in_the_next_block_and_is_forgotten() -> None:
    key = crypto.SigningKey.generate()
    vs = block_pb2.ValidatorSet()
    vs.validators.add(address=key.address, public_key=key.public_key, power=1)
    chain = SimpleNamespace(
        height=500,
        chain_id="c",
        known_validator_set=lambda h: vs,
        validator_key=lambda h, a: key.public_key if a == key.address else None,
    )
    pool = evidence.EvidencePool(chain)  # type: ignore[arg-type]
    edge = 501 - evidence.MAX_AGE_HEIGHTS  # the oldest votes block 501 may prove
    assert pool.problem(_evidence(key, "c", edge)) is None
    assert pool.problem(_evidence(key, "c", edge - 1)) == "too old"
    assert not pool.add(wire.evidence_from_pb(_evidence(key, "c", edge - 1)))
    assert pool.add(wire.evidence_from_pb(_evidence(key, "c", edge)))
    assert len(pool.for_block(10)) == 1
    # One more block: that evidence expired uncarried; it is no longer proposed nor kept.
    chain.height = 501
    assert pool.for_block(10) == []
    pool.mark_committed(block_pb2.Block(header=block_pb2.Header(height=501)))
    assert len(pool) == 0
    # Committed evidence is remembered while a block could carry it again, then forgotten.
    fresh = _evidence(key, "c", 490)
    pool.mark_committed(
        block_pb2.Block(header=block_pb2.Header(height=502), body=block_pb2.BlockBody(evidence=[fresh]))
    )
    assert pool.is_known(fresh) and pool.problem(fresh) == "already committed"
    pool.mark_committed(block_pb2.Block(header=block_pb2.Header(height=490 + evidence.MAX_AGE_HEIGHTS)))
    assert not pool.is_known(fresh)


def test_a_restarted_pool_reads_only_the_evidence_of_the_last_max_age_blocks() -> None:
    asked: list[int] = []
    store = SimpleNamespace(
        latest_height=lambda: 5000, load_evidence=lambda since, limit: asked.append(since) or []
    )
    evidence.EvidencePool(SimpleNamespace()).load_committed(store)  # type: ignore[arg-type]
    assert asked == [5001 - evidence.MAX_AGE_HEIGHTS]


# --- a pruning node --------------------------------------------------------------------------------

RETAIN = MIN_RETAIN_BLOCKS
SNAPSHOT_INTERVAL = 40
QUICK = ConsensusConfig(timeout_commit_ms=10, create_empty_blocks_interval_ms=50)


def _home(tmp_path: Path) -> tuple[Path, Any]:
    net = init_network(
        tmp_path / "net", validators=1, tls=False, consensus=QUICK, funded=funded(("alice", "bob"))
    )
    home = Path(net.node(0).home)
    cfg = load_config(home)
    cfg = dataclasses.replace(
        cfg,
        storage=StorageConfig(retain_blocks=RETAIN, prune_batch_keys=40),
        snapshots=SnapshotsConfig(interval=SNAPSHOT_INTERVAL, keep=2),
    )
    (home / "config.toml").write_text(render_config(cfg))
    return home, net


class _NoPeers:
    def __init__(self) -> None:
        self.connected: list[str] = []

    def send(self, peer: str, msg: object) -> bool:
        return False

    def broadcast(self, msg: object) -> None:
        pass

    def ban(self, peer: str, seconds: float, reason: str) -> None:
        pass

    def fetch_blocks(self, peer: str, from_height: int, to_height: int, max_bytes: int) -> object:
        raise ConnectionError("no peers")


@contextlib.asynccontextmanager
async def _running(home: Path) -> AsyncIterator[Node]:
    node = Node(load_config(home), clock=ManualClock())
    node.open()
    assert node.driver is not None
    node.driver.outbox = node.router.transport = node.network = _NoPeers()  # type: ignore[assignment]
    node.service.started = True
    task = asyncio.create_task(node.driver.run())
    try:
        yield node
        assert not task.done(), task.exception()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.pruner.wait()
        node.io_pool.shutdown(wait=True)
        node.snapshot_pool.shutdown(wait=True)
        node.verify_pool.shutdown(wait=False)
        node.close()


async def _until(node: Node, done: Callable[[], bool], seconds: float = 120) -> None:
    assert isinstance(node.clock, ManualClock)
    for _ in range(int(seconds / 0.5)):
        if done():
            return
        await node.clock.advance(0.5, step=0.01)
        await asyncio.sleep(0.005)  # the io and snapshot threads report back through the loop
    raise AssertionError(f"not reached in {seconds} logical seconds (height {node.height})")


def _transfer(net: Any, node: Node, nonce: int, amount: int) -> bytes:
    alice = crypto.load_key_file(Path(net.accounts["alice"]))
    bob = crypto.load_key_file(Path(net.accounts["bob"]))
    usd = tx_pb2.InstrumentId(issuer=crypto.load_key_file(Path(net.accounts["bank-a"])).address, symbol="USD")
    body = builders.make_body(
        node.chain_id, alice.address, nonce, f"p-{nonce}", builders.transfer(usd, bob.address, amount)
    )
    return builders.sign(body, alice)


def _below_base(call: Callable[[], object]) -> BelowBase:
    with pytest.raises(BelowBase) as info:
        call()
    err = info.value
    assert (err.code, err.reason) == ("OUT_OF_RANGE", "BELOW_BASE_HEIGHT")
    assert f"this node keeps blocks from height {err.base}" in err.message
    return err


async def _first(stream: AsyncIterator[object]) -> object:
    return await anext(stream)


async def test_a_pruning_node_answers_below_its_base_and_serves_what_it_keeps(tmp_path: Path) -> None:
    home, net = _home(tmp_path)
    alice = crypto.load_key_file(Path(net.accounts["alice"]))
    async with _running(home) as node:
        service, store = node.service, node.store
        results = await service.submit([_transfer(net, node, 0, 7)], ledger_api_pb2.WAIT_FOR_NONE, None)
        old_tx = results[0].tx_hash
        await _until(node, lambda: store.tx_location(old_tx) is not None)
        old_height = store.tx_location(old_tx)[0]  # type: ignore[index]
        old_hash = store.load_block_hash(old_height)
        assert old_hash is not None
        await _until(node, lambda: node.height >= 3 * RETAIN)
        results = await service.submit([_transfer(net, node, 1, 11)], ledger_api_pb2.WAIT_FOR_NONE, None)
        new_tx = results[0].tx_hash
        await _until(node, lambda: store.tx_location(new_tx) is not None)
        targets: list[int] = []

        def caught_up() -> bool:
            target = node.pruner.target()
            targets.append(target or 0)
            return target is not None and store.base_height() >= target

        await _until(node, caught_up)
        base = store.base_height()
        snapshots = node.snapshots.heights()
        assert base == targets[-1] > old_height
        assert base == node.height - RETAIN + 1 and base <= snapshots[0], (base, snapshots)

        # Every block-keyed row below the base is gone (no light-client header to keep here: the
        # validator set never changed), and the rows from the base on are all there.
        heights = {
            table: {keys.decode_height(k[1:9]) for k, _ in store.iter_raw(table)}
            for table in (keys.P_BLOCK, keys.P_BLOCK_HASH, keys.P_COMMIT, keys.P_RECEIPT)
        }
        assert heights[keys.P_BLOCK] == heights[keys.P_COMMIT] == set(range(base, node.height + 1))
        assert heights[keys.P_BLOCK_HASH] == heights[keys.P_BLOCK]
        assert min(heights[keys.P_RECEIPT]) >= base

        everyone = Identity(node.key.address, node.key.public_key, frozenset(), node=True)
        holder = Identity(alice.address, alice.public_key, frozenset({tx_pb2.ROLE_PARTICIPANT}))
        # Each read that takes a height, a block hash or a transaction, below the base: one answer.
        reads: dict[str, Callable[[], object]] = {
            "GetBlock by height": lambda: service.get_block(everyone, ledger_api_pb2.GetBlockRequest(height=1)),
            "GetBlock just below": lambda: service.get_block(everyone, ledger_api_pb2.GetBlockRequest(height=base - 1)),
            "GetBlock by hash": lambda: service.get_block(everyone, ledger_api_pb2.GetBlockRequest(hash=old_hash)),
            "GetTx": lambda: service.get_tx(everyone, old_tx),
            "GetStatement": lambda: service.get_statement(
                holder, ledger_api_pb2.GetStatementRequest(account=alice.address, instrument=_usd(net), from_height=1)
            ),
            "GetBlocks (peer)": lambda: list(
                blocks_to_serve(
                    peer_pb2.GetBlocksRequest(from_height=base - 1), node.height, store.load_block,
                    store.load_commit, 10, base_height=store.base_height(),
                )
            ),
        }  # fmt: skip
        for what, read in reads.items():
            assert _below_base(read).base == base, what
        for stream in (
            service.stream_blocks(everyone, 1),
            service.subscribe_events(everyone, ledger_api_pb2.SubscribeEventsRequest(from_height=base - 1)),
        ):
            with pytest.raises(BelowBase, match=f"from height {base}"):
                await _first(stream)
        with pytest.raises(BelowBase):
            await _first(node.blocksync.serve(peer_pb2.GetBlocksRequest(from_height=1)))
        # An account sees the same answer for a transaction it may not read and for one the node no
        # longer has: it names the base, and says nothing of which it is.
        stranger = Identity(b"\x07" * 20, b"\x07" * 32, frozenset({tx_pb2.ROLE_PARTICIPANT}))
        answers = []
        for tx_hash in (old_tx, new_tx, b"\x09" * 32):
            with pytest.raises(ApiError) as info:
                service.get_tx(stranger, tx_hash)
            answers.append((info.value.code, info.value.reason, info.value.message))
        assert answers[0] == answers[1] == answers[2]
        assert answers[0][1] == "PERMISSION_DENIED" and f"below height {base}" in answers[0][2]

        # From the base on, reads answer as on an archive node.
        assert service.status().base_height == base == node.blocksync.sync_status().base_height
        assert (
            service.get_block(everyone, ledger_api_pb2.GetBlockRequest(height=base)).block.header.height
            == base
        )
        assert service.get_tx(everyone, new_tx).state == ledger_api_pb2.TX_STATE_COMMITTED
        first = await _first(service.stream_blocks(everyone, base))
        assert first.block.header.height == base  # type: ignore[attr-defined]
        served = [
            sb.block.header.height
            async for sb in node.blocksync.serve(
                peer_pb2.GetBlocksRequest(from_height=base, to_height=base + 2)
            )
        ]
        assert served == [base, base + 1, base + 2]
        # A statement from the base (the default on a pruned node) ties out: 10**12 - 7 - 11 now,
        # the first payment before the base, so it opens at 10**12 - 7.
        statement = service.get_statement(
            holder, ledger_api_pb2.GetStatementRequest(account=alice.address, instrument=_usd(net))
        )
        assert statement.from_height == base
        assert (statement.opening, statement.closing) == (10**12 - 7, 10**12 - 18)
        assert [e.amount for e in statement.entries] == [11]
        # Proofs of the current state verify against the latest certificate.
        account = service.get_account(everyone, alice.address, prove=True)
        assert account.header.height == node.height and account.proof
        # The oldest snapshot is served with its block: a joining node verifies and anchors on it.
        light = node.router.light_block(peer_pb2.LightBlockRequest(height=snapshots[0]))
        assert light is not None and light.header.height == snapshots[0]
        reached, base_before = node.height, base

    # Restarted on the same directory: it resumes at its height with its base, and prunes on.
    async with _running(home) as node:
        assert node.height >= reached and node.store.base_height() == base_before
        await _until(node, lambda: node.height >= reached + 2 * SNAPSHOT_INTERVAL + 5)
        await _until(node, lambda: node.store.base_height() > base_before)
        assert node.store.load_block(node.store.base_height() - 1) is None


def _usd(net: Any) -> tx_pb2.InstrumentId:
    return tx_pb2.InstrumentId(
        issuer=crypto.load_key_file(Path(net.accounts["bank-a"])).address, symbol="USD"
    )
