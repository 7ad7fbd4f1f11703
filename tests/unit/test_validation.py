"""node.validation: the one block-validation path, on a real chain (a node's state opened on LevelDB
in a temporary directory). One table of invalid blocks, each rejected with its reason and leaving
the chain and the ledger as they were; the live clock bound applies to proposals only; a synced
block's certificate is checked against the validator set of its height."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clearline.v1 import block_pb2
from cluster.netgen import init_network
from node import blocks, crypto, validation
from node.clock import ManualClock, now_ms
from node.config import load_config
from node.errors import BadInput, BlockFromTheFuture, InvalidBlock
from node.runtime import Node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    net = init_network(tmp_path / "net", validators=4, tls=False)
    n = Node(load_config(net.node(0).home), clock=ManualClock())
    n.open()
    n.validator_keys = [  # type: ignore[attr-defined]
        crypto.load_key_file(
            load_config(net.node(i).home).path(load_config(net.node(i).home).keys.validator_key)
        )
        for i in range(4)
    ]
    yield n
    n.wal.close()
    n.sign_state.close()
    n.store.close()
    n.verify_pool.shutdown(wait=False)
    n.io_pool.shutdown(wait=False)


def proposed(node: Node) -> block_pb2.Block:
    _id, block = node.executor.propose_block(1, 0)
    assert isinstance(block, block_pb2.Block)
    copy = block_pb2.Block()
    copy.CopyFrom(block)
    return copy


def check(node: Node, block: block_pb2.Block, *, live: bool = True) -> None:
    assert node.chain is not None
    validation.check_block(
        node.chain,
        block,
        limits=node.cfg.consensus,
        evidence=node.evidence,
        now_ms=now_ms(node.clock) if live else None,
    )


def rehash(block: block_pb2.Block) -> None:
    block.header.tx_root = blocks.tx_root([crypto.sha256(raw) for raw in block.body.txs])


def _set(field: str, value: object) -> Callable[[block_pb2.Block], None]:
    return lambda b: setattr(b.header, field, value)


def _extra_tx(b: block_pb2.Block) -> None:
    b.body.txs.append(b"junk")


def _last_commit_on_first(b: block_pb2.Block) -> None:
    b.last_commit.height = 1


def _evidence(b: block_pb2.Block) -> None:
    b.body.evidence.add()
    b.header.evidence_root = blocks.merkle_root(
        [e.SerializeToString(deterministic=True) for e in b.body.evidence]
    )


def _too_many_txs(b: block_pb2.Block) -> None:
    b.body.txs.extend([b"x"] * 10_001)
    rehash(b)


INVALID = [
    ("wrong chain", _set("chain_id", "other-chain"), "wrong chain id"),
    ("skipped height", _set("height", 2), "not the next height"),
    ("wrong parent", _set("prev_block_hash", b"\x01" * 32), "previous block hash does not match"),
    ("time not after the parent", _set("time_ms", 1), "time does not increase"),
    ("wrong validator set", _set("validator_set_hash", b"\x02" * 32), "validator set hash does not match"),
    ("wrong next validator set", _set("next_validator_set_hash", b"\x03" * 32), "next validator set hash"),
    ("proposer not a member", _set("proposer", b"\x04" * 20), "proposer is not a validator"),
    ("body differs from header", _extra_tx, "tx root does not match the body"),
    ("first block with a last commit", _last_commit_on_first, "the first block carries a last commit"),
    ("bad evidence", _evidence, "invalid evidence"),
    ("evidence root differs", _set("evidence_root", b"\x05" * 32), "evidence root does not match"),
    ("too many transactions", _too_many_txs, "block too large"),
]


@pytest.mark.parametrize(("case", "mutate", "reason"), INVALID, ids=[c[0] for c in INVALID])
def test_each_broken_rule_is_rejected_with_its_reason_and_changes_nothing(
    node: Node, case: str, mutate: Callable[[block_pb2.Block], None], reason: str
) -> None:
    assert node.chain is not None
    good = proposed(node)
    check(node, good)  # the untouched block passes: the failure below is the mutation's
    root, height = node.ledger.state_root, node.chain.height
    bad = proposed(node)
    mutate(bad)
    with pytest.raises(InvalidBlock) as info:
        check(node, bad)
    assert reason in info.value.reason, (case, info.value.reason)
    assert isinstance(info.value, BadInput) and info.value.height == bad.header.height
    assert (node.ledger.state_root, node.chain.height) == (root, height)


def test_only_a_live_proposal_is_held_to_this_nodes_clock(node: Node) -> None:
    future = proposed(node)
    future.header.time_ms = now_ms(node.clock) + validation.MAX_CLOCK_DRIFT_MS + 1_000
    with pytest.raises(InvalidBlock, match="too far in the future"):
        check(node, future)
    check(node, future, live=False)  # a certified block was accepted by the network: no clock rule


def test_a_block_from_this_nodes_future_is_refused_for_now_and_neither_remembered_nor_blamed(
    node: Node,
) -> None:
    """Whose clock is wrong is not known: a proposal timed past this node's clock plus the drift is
    refused (the core prevotes nil) but the verdict is not cached, so once the clock is right the same
    block validates. Cached, it wedged a node whose clock stepped back for a second (node simulation)."""
    clock = node.clock
    assert isinstance(clock, ManualClock)
    clock.step_wall(20)  # the proposer's clock, 20 s ahead of this node's
    block_id, block = node.executor.propose_block(1, 0)
    assert isinstance(block, block_pb2.Block)
    clock.step_wall(-20)
    node.executor.new_height(2)  # forget the proposer's own verdict: this node judges it afresh
    with pytest.raises(BlockFromTheFuture, match="too far in the future"):
        node.executor.check_proposed(block_id, block, [])
    assert not node.executor.is_executed(block_id)
    assert node.executor.validate_block(1, block_id, block) is False
    assert not node.executor.is_executed(block_id)
    clock.step_wall(20)  # 20 s later, or this node's clock corrected
    assert node.executor.validate_block(1, block_id, block) is True


def test_asking_again_about_a_block_from_the_future_is_a_lookup_until_the_clock_nears_it(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core asks again about a block it was refused (its "no" may change): until this node's
    clock nears the block's time, the answer comes without the block's checks run again."""
    clock = node.clock
    assert isinstance(clock, ManualClock)
    clock.step_wall(20)
    block_id, block = node.executor.propose_block(1, 0)
    assert isinstance(block, block_pb2.Block)
    clock.step_wall(-20)
    node.executor.new_height(2)
    with pytest.raises(BlockFromTheFuture):
        node.executor.check_proposed(block_id, block, [])
    checked: list[int] = []
    real = validation.check_block

    def counting(*args: object, **kwargs: object) -> None:
        checked.append(1)
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(validation, "check_block", counting)
    assert [node.executor.validate_block(1, block_id, block) for _ in range(5)] == [False] * 5
    assert checked == []
    clock.step_wall(20)
    assert node.executor.validate_block(1, block_id, block) is True and checked == [1]


def _certificate(node: Node, block: block_pb2.Block, signers: int) -> block_pb2.CommitCertificate:
    block_id = blocks.block_hash(block.header)
    cert = block_pb2.CommitCertificate(height=block.header.height, round=0, block_id=block_id)
    for key in node.validator_keys[:signers]:  # type: ignore[attr-defined]
        msg = blocks.vote_sign_bytes(node.chain_id, int(block_pb2.VOTE_TYPE_PRECOMMIT), 1, 0, block_id)
        cert.signatures.add(validator=key.address, signature=key.sign_raw(msg))
    return cert


def test_a_synced_blocks_certificate_needs_a_quorum_of_its_heights_set(node: Node) -> None:
    assert node.chain is not None
    block = proposed(node)
    block_id = blocks.block_hash(block.header)
    validation.check_certificate(node.chain, block_id, 1, _certificate(node, block, 3))
    with pytest.raises(InvalidBlock, match="certificate invalid"):
        validation.check_certificate(node.chain, block_id, 1, _certificate(node, block, 2))
    with pytest.raises(InvalidBlock, match="certificate invalid"):
        validation.check_certificate(node.chain, b"\x09" * 32, 1, _certificate(node, block, 4))


def test_a_certified_block_is_executed_and_a_tampered_body_is_the_peers_fault(node: Node) -> None:
    """BlockExecutor.check_certified: the same rules, then execution; a body changed under a
    certified header is InvalidBlock (the serving peer's fault), never an invariant of this node."""
    block = proposed(node)
    block_id = blocks.block_hash(block.header)
    cert = _certificate(node, block, 3)
    node.executor.new_height(1)
    node.executor.check_certified(block_id, block, cert)
    assert node.executor.result_of(block_id) is not None
    tampered = proposed(node)
    tampered.body.txs.append(b"junk")
    with pytest.raises(InvalidBlock, match="tx root"):
        node.executor.check_certified(block_id, tampered, cert)


def test_a_proposal_from_the_wrong_proposer_fails_the_cheap_checks(node: Node) -> None:
    from node.consensus import Proposal

    assert node.chain is not None
    block = proposed(node)
    block_id = blocks.block_hash(block.header)
    vs = node.chain.core_set(1)
    right = vs.proposer(1, 0).address
    wrong = next(v.address for v in vs.validators if v.address != right)
    validation.check_proposal(
        node.chain, Proposal(1, 0, -1, block_id, block, right), block, node.cfg.consensus
    )
    with pytest.raises(InvalidBlock, match="not the proposer of round 0"):
        validation.check_proposal(
            node.chain, Proposal(1, 0, -1, block_id, block, wrong), block, node.cfg.consensus
        )
    with pytest.raises(InvalidBlock, match="does not hash"):
        validation.check_proposal(
            node.chain, Proposal(1, 0, -1, b"\x00" * 32, block, right), block, node.cfg.consensus
        )
