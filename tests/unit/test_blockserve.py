"""node.blockserve.blocks_to_serve: a peer's GetBlocks is answered with the heights it asked for,
at most a batch of them and at most max_bytes of them (always one), and never across a gap."""

from __future__ import annotations

from typing import Any

import pytest

from clearline.v1 import block_pb2, peer_pb2
from node.blockserve import blocks_to_serve

LATEST = 6
TX_BYTES = 1000


def block(height: int) -> block_pb2.Block:
    b = block_pb2.Block(header=block_pb2.Header(chain_id="c", height=height))
    b.body.txs.append(bytes(TX_BYTES * height))  # blocks of different sizes
    return b


def commit(height: int) -> block_pb2.CommitCertificate:
    return block_pb2.CommitCertificate(height=height, block_id=bytes(32))


BLOCKS = {h: block(h) for h in range(1, LATEST + 1)}
COMMITS = {h: commit(h) for h in range(1, LATEST + 1)}


def size(height: int) -> int:
    return peer_pb2.SyncBlock(block=BLOCKS[height], commit=COMMITS[height]).ByteSize()


def served(
    from_height: int,
    to_height: int = 0,
    max_bytes: int = 0,
    max_batch: int = 200,
    blocks: dict[int, block_pb2.Block] = BLOCKS,
    commits: dict[int, block_pb2.CommitCertificate] = COMMITS,
) -> list[int]:
    request = peer_pb2.GetBlocksRequest(from_height=from_height, to_height=to_height, max_bytes=max_bytes)
    out = list(blocks_to_serve(request, LATEST, blocks.get, commits.get, max_batch))
    for item in out:
        assert item.commit.height == item.block.header.height
    return [item.block.header.height for item in out]


@pytest.mark.parametrize(
    ("kwargs", "heights"),
    [
        ({"from_height": 1}, [1, 2, 3, 4, 5, 6]),
        ({"from_height": 0}, [1, 2, 3, 4, 5, 6]),  # height 0 is not a block
        ({"from_height": 3, "to_height": 4}, [3, 4]),
        ({"from_height": 5, "to_height": 99}, [5, 6]),  # never past the latest
        ({"from_height": 7}, []),
        ({"from_height": 4, "to_height": 3}, []),
        ({"from_height": 2, "max_batch": 3}, [2, 3, 4]),
        ({"from_height": 0, "max_batch": 2}, [1, 2]),
        ({"from_height": 1, "max_bytes": 1}, [1]),  # always one block, however large
        ({"from_height": 1, "max_bytes": size(1) + size(2)}, [1, 2]),  # up to max_bytes exactly
        ({"from_height": 1, "max_bytes": size(1) + size(2) - 1}, [1]),  # stops before exceeding it
        ({"from_height": 5, "max_bytes": size(5) + size(6) - 1}, [5]),
        ({"from_height": 1, "max_bytes": 10**12}, [1, 2, 3, 4, 5, 6]),
        ({"from_height": 2, "to_height": 3, "max_bytes": 10**12, "max_batch": 1}, [2]),
    ],
)
def test_requests_are_answered_within_heights_batch_and_bytes(
    kwargs: dict[str, Any], heights: list[int]
) -> None:
    assert served(**kwargs) == heights


def test_a_missing_block_or_certificate_ends_the_answer() -> None:
    assert served(1, blocks={h: b for h, b in BLOCKS.items() if h != 3}) == [1, 2]
    assert served(1, commits={h: c for h, c in COMMITS.items() if h != 4}) == [1, 2, 3]


def test_blocks_are_read_lazily_so_a_stopped_stream_reads_no_more() -> None:
    reads: list[int] = []

    def load_block(height: int) -> block_pb2.Block | None:
        reads.append(height)
        return BLOCKS.get(height)

    request = peer_pb2.GetBlocksRequest(from_height=1)
    stream = blocks_to_serve(request, LATEST, load_block, COMMITS.get, 200)
    next(stream)
    next(stream)
    assert reads == [1, 2]


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        list(blocks_to_serve(peer_pb2.GetBlocksRequest(from_height=1), LATEST, BLOCKS.get, COMMITS.get, 0))


def test_a_request_below_the_base_is_refused_naming_it() -> None:
    from node.errors import BelowBase

    request = peer_pb2.GetBlocksRequest(from_height=2, to_height=5)
    with pytest.raises(BelowBase) as info:
        list(blocks_to_serve(request, LATEST, BLOCKS.get, COMMITS.get, 200, base_height=3))
    assert (info.value.code, info.value.reason, info.value.base) == ("OUT_OF_RANGE", "BELOW_BASE_HEIGHT", 3)
    assert "keeps blocks from height 3" in info.value.message
    served = blocks_to_serve(
        peer_pb2.GetBlocksRequest(from_height=3), LATEST, BLOCKS.get, COMMITS.get, 200, base_height=3
    )
    assert [b.block.header.height for b in served] == [3, 4, 5, 6]
