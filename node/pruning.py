"""Pruning: a node that keeps the last `[storage] retain_blocks` blocks with their receipts and
indexes, and deletes older ones, a bounded batch at a time, off the commit's critical path.

After each commit the pruner asks where the base should be (`target_base`) and, unless a batch is
still running, hands ONE batch of `NodeStore.prune` (at most `[storage] prune_batch_keys` keys, one
height at least) to the io thread. One batch per commit keeps up with the chain (each removes a
height at least while each commit adds one), and a node that starts pruning a long chain catches up
a batch per block without ever deleting millions of keys at once.

What stays (node/storage/store.py `prune` deletes the rest below the base):

- the blocks from `latest - retain_blocks + 1` on, and from the oldest snapshot the node serves on
  (a joining node fetches that snapshot's block to continue from, node/statesync.py); while a
  snapshot is being cut, nothing is pruned;
- the header and certificate of each height whose block scheduled a validator-set change (a joining
  node's light client walks them from genesis: `keep_headers`);
- validator sets and the state, always.

`retain_blocks` is at least node.config.MIN_RETAIN_BLOCKS, the evidence age (node/evidence.py):
whether evidence was committed already is read from the blocks of that many heights.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future

from node.execution import Committed
from node.storage import NodeStore, Pruned

log = logging.getLogger("clearline.pruning")


def target_base(latest: int, retain_blocks: int, floor: int | None) -> int:
    """The base a node that keeps `retain_blocks` blocks wants at `latest`, never above `floor`
    (the oldest height it must still serve); 1 (everything) when retain_blocks is 0."""
    if retain_blocks <= 0 or latest < retain_blocks:
        return 1
    base = latest - retain_blocks + 1
    return base if floor is None else max(1, min(base, floor))


def light_client_heights(validator_set_changes: list[int]) -> set[int]:
    """The heights whose headers a light client walks: for each set that signs from height h > 1,
    the header of h - 1 names it (node/statesync.py `_verify_header`)."""
    return {h - 1 for h in validator_set_changes if h >= 2}


class Pruner:
    """Deletes old blocks after commits, one bounded batch at a time, in the io thread."""

    def __init__(
        self,
        store: NodeStore,
        *,
        retain_blocks: int,
        batch_keys: int,
        io: Executor,
        floor: Callable[[], int | None],
    ) -> None:
        """floor: the lowest height that must stay served (the oldest snapshot's; keys.MAX_HEIGHT if
        none), or None while nothing may be pruned (a snapshot is being cut)."""
        self._store = store
        self.retain_blocks = retain_blocks
        self._batch_keys = batch_keys
        self._io = io
        self._floor = floor
        self._running: Future[Pruned | None] | None = None
        self.batches = 0
        self.heights_pruned = 0
        self.last_batch_s = 0.0
        self.on_batch: Callable[[Pruned, float], None] | None = None  # metrics (called in the io thread)
        self.on_fatal: Callable[[BaseException], None] | None = None  # the node stops

    @property
    def enabled(self) -> bool:
        return self.retain_blocks > 0

    def target(self) -> int | None:
        """Where the base should be now; None while pruning must wait."""
        floor_height = self._floor()
        if floor_height is None:
            return None
        return target_base(self._store.latest_height(), self.retain_blocks, floor_height)

    def step(self) -> Pruned | None:
        """One batch, in the calling thread (the io thread, or a test); None if there is nothing to do."""
        target = self.target()
        if target is None or target <= self._store.base_height():
            return None
        keep = light_client_heights(self._store.validator_set_changes())
        started = time.perf_counter()
        pruned = self._store.prune(target, max_keys=self._batch_keys, keep_headers=keep)
        took = time.perf_counter() - started
        self.batches += 1
        self.heights_pruned += pruned.heights
        self.last_batch_s = took
        if self.batches == 1:
            log.info(
                "pruning: keeping blocks from height %d on (retain_blocks %d)",
                pruned.base,
                self.retain_blocks,
            )
        if self.on_batch is not None:
            self.on_batch(pruned, took)
        return pruned

    def on_commit(self, committed: Committed) -> None:
        """A commit listener: start a batch in the io thread unless one is running."""
        if not self.enabled or (self._running is not None and not self._running.done()):
            return
        target = self.target()
        if target is None or target <= self._store.base_height():
            return
        future = self._io.submit(self.step)
        self._running = future
        if future.done():  # an inline pool (the node simulation)
            self._done(future)
        else:
            loop = asyncio.get_running_loop()
            future.add_done_callback(lambda fut: loop.call_soon_threadsafe(self._done, fut))

    def wait(self) -> None:
        """Let a running batch finish (before the store closes)."""
        running = self._running
        if running is not None:
            with contextlib.suppress(Exception):
                running.result()

    def _done(self, future: Future[Pruned | None]) -> None:
        exc = future.exception()
        if exc is None:
            return
        # The store failed a read or a write (a corrupt receipt, a full disk): the node stops, as
        # for a failed commit, rather than go on with a store it cannot trust.
        log.error("pruning failed: %s", exc, exc_info=exc)
        if self.on_fatal is None:
            raise exc
        self.on_fatal(exc)
