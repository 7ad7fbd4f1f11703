"""Which blocks answer a peer's `GetBlocks` (block sync): the heights asked for, at most a batch of
them, and at most `max_bytes` of them.

Pure: the caller passes the store's readers, so the rule is tested without a node or a socket.
`BlockSync.serve` (a peer's `GetBlocks`, through `PeerRouter.serve_blocks`) streams what
`blocks_to_serve` yields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from clearline.v1 import block_pb2, peer_pb2
from node.errors import BelowBase


def blocks_to_serve(
    request: peer_pb2.GetBlocksRequest,
    latest_height: int,
    load_block: Callable[[int], block_pb2.Block | None],
    load_commit: Callable[[int], block_pb2.CommitCertificate | None],
    max_batch: int,
    base_height: int = 1,
) -> Iterator[peer_pb2.SyncBlock]:
    """The blocks of request.from_height .. request.to_height (0 = up to latest_height), with their
    commit certificates, in order:

    - a request from below base_height (the node pruned those blocks, or joined by state sync
      above them) raises BelowBase, naming the base, before anything is sent;

    - never past latest_height, and at most max_batch of them;
    - request.max_bytes > 0 bounds their total size (SyncBlock.ByteSize()): the first block is always
      sent, so a block larger than max_bytes can still be synced, and the stream stops before the
      block that would take the total past max_bytes;
    - it stops at the first height whose block or certificate the store lacks (a gap is never skipped).
    """
    if max_batch <= 0:
        raise ValueError(f"max_batch must be positive, got {max_batch}")
    first = max(1, request.from_height)
    if first < base_height:
        raise BelowBase(base_height, f"blocks from height {first}")
    last = latest_height if request.to_height == 0 else min(request.to_height, latest_height)
    last = min(last, first + max_batch - 1)
    sent_bytes = 0
    for height in range(first, last + 1):
        block = load_block(height)
        commit = load_commit(height)
        if block is None or commit is None:
            return
        item = peer_pb2.SyncBlock(block=block, commit=commit)
        size = item.ByteSize()
        if request.max_bytes and height > first and sent_bytes + size > request.max_bytes:
            return
        sent_bytes += size
        yield item
