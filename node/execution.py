"""Block execution: propose, validate and apply blocks, and the cache of executed proposals.

The consensus core asks `propose_block` and `validate_block` (it is the core's Application); a peer's
proposal is validated and executed here before the core sees it (`check_proposed`), so that for the
core `validate_block` is a cache lookup. `apply` commits a decided block durably, in one order that
survives kill -9: block, certificate, receipts, indexes, state entries and Merkle nodes go to
LevelDB in one synced write batch; then the ledger makes the result its committed state, and the
chain, the evidence pool and the mempool move on. The caller (the consensus driver) ends the
height in its WAL afterwards.

A certified block's transactions are decoded, not verified again (`certified_txs`): the quorum that
signed the certificate verified them, and the header's transaction root fixes every byte.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from clearline.v1 import block_pb2, receipt_pb2
from node import blocks, txs, validation
from node.chain import Chain
from node.clock import Clock, now_ms
from node.config import ConsensusConfig
from node.errors import BlockFromTheFuture, InvalidBlock, InvariantBroken
from node.evidence import EvidencePool
from node.ledger import BlockResult, Ledger
from node.mempool import Mempool
from node.storage import BlockCommit, NodeStore, account_touches_of
from node.storage.crash import crash_point
from node.txs import TxRejected, VerifiedTx

log = logging.getLogger("clearline.execution")

# Proposals executed per height at most (each costs an execution and holds a block and its result).
MAX_EXECUTED_PER_HEIGHT = 16
# A decided block of at most this many transactions is written on the event loop: the hand-off to
# the io thread and back costs more than the write when the loop is busy (the io thread waits for
# the GIL). A bigger block is written in the io thread while the loop goes on admitting transactions.
INLINE_COMMIT_MAX_TXS = 256

# Proposals of one height remembered as from this node's future (each round has one proposer, and an
# equivocating one is cut off by the core's MAX_PROPOSALS_PER_ROUND; past this, they are checked in full).
MAX_NOT_YET = 64


@dataclass(frozen=True, slots=True)
class Committed:
    """A block is durably committed: what the rest of the node hears of it."""

    height: int
    block: block_pb2.Block
    block_id: bytes
    certificate: block_pb2.CommitCertificate
    receipts: tuple[receipt_pb2.Receipt, ...]
    persist_s: float


class BlockExecutor:
    """Proposes, validates and applies blocks on the committed ledger state."""

    def __init__(
        self,
        *,
        limits: ConsensusConfig,
        max_tx_bytes: int,
        chain: Chain,
        ledger: Ledger,
        store: NodeStore,
        mempool: Mempool,
        evidence: EvidencePool,
        proposer: bytes,
        io: Executor,
        clock: Clock,
    ) -> None:
        self._limits = limits
        self._max_tx_bytes = max_tx_bytes
        self._chain = chain
        self._ledger = ledger
        self._store = store
        self.mempool = mempool
        self._evidence = evidence
        self._proposer = proposer
        self._io = io
        self._clock = clock
        self._executed: dict[bytes, BlockResult | None] = {}  # block id -> result (None = invalid)
        self._blocks: dict[bytes, block_pb2.Block] = {}  # block id -> block of the current height
        # (round, block id, block) of a proposal signed before a restart: proposed again as it was.
        self._restored: tuple[int, bytes, block_pb2.Block] | None = None
        # Proposals refused as from this node's future: block id -> header time. The core asks
        # again (its "no" may change), and until the clock nears that time the answer is this
        # lookup, not the signature and header checks again.
        self._not_yet: dict[bytes, int] = {}
        self.pinned: Callable[[bytes], bool] = lambda _block_id: False  # the core's locked/valid block

    # --- the cache --------------------------------------------------------------------------------

    def block(self, block_id: bytes) -> block_pb2.Block | None:
        return self._blocks.get(block_id)

    def keep_block(self, block: block_pb2.Block, block_id: bytes | None = None) -> bytes:
        block_id = block_id or blocks.block_hash(block.header)
        self._blocks[block_id] = block
        return block_id

    def result_of(self, block_id: bytes) -> BlockResult | None:
        return self._executed.get(block_id)

    @property
    def executed_count(self) -> int:
        """Verdicts cached for the current height (bounded by MAX_EXECUTED_PER_HEIGHT)."""
        return len(self._executed)

    def is_executed(self, block_id: bytes) -> bool:
        return block_id in self._executed

    def remember(self, block_id: bytes, result: BlockResult | None, block: block_pb2.Block | None) -> None:
        """Cache a verdict (None: invalid), bounded: an invalid verdict goes first (it is recomputed
        if asked again), else the oldest."""
        if block_id not in self._executed and len(self._executed) >= MAX_EXECUTED_PER_HEIGHT:
            victim = next((k for k, r in self._executed.items() if r is None), next(iter(self._executed)))
            self._executed.pop(victim, None)
            if victim in self._blocks and not self.pinned(victim):
                self._blocks.pop(victim, None)
        self._executed[block_id] = result
        if block is not None:
            self._blocks[block_id] = block

    def new_height(self, height: int, restored: tuple[int, bytes, block_pb2.Block] | None = None) -> None:
        """Forget what is not for `height`. A proposal for it that arrived (and was executed) between
        the commit and now is kept: the core gets it next and must not execute it twice."""
        self._executed = {k: r for k, r in self._executed.items() if r is not None and r.height == height}
        self._blocks = {k: b for k, b in self._blocks.items() if b.header.height == height}
        self._restored = restored
        self._not_yet.clear()

    # --- the core's Application -------------------------------------------------------------------

    def propose_block(self, height: int, round: int) -> tuple[bytes, object]:
        restored, self._restored = self._restored, None
        if restored is not None and restored[0] == round and restored[2].header.height == height:
            # Signed before a crash, perhaps never sent: the same block gets the same signature back
            # from the core (a different one would be refused as a double sign, losing the round).
            _round, block_id, block = restored
            if self.validate_block(height, block_id, block):
                log.info(
                    "proposing again the block signed before the restart (height %d, round %d)", height, round
                )
                return block_id, block
        chain = self._chain
        vtxs = self.mempool.reap(self._limits.max_block_bytes, self._limits.max_block_txs)
        time_ms = max(now_ms(self._clock), chain.last_time_ms + 1)
        result = self._ledger.execute_block(vtxs, height, time_ms)
        evidence = self._evidence.for_block(validation.MAX_EVIDENCE_PER_BLOCK)
        header = block_pb2.Header(
            chain_id=chain.chain_id,
            height=height,
            time_ms=time_ms,
            prev_block_hash=chain.last_block_hash,
            tx_root=blocks.tx_root([t.wire_hash for t in vtxs]),
            state_root=result.state_root,
            validator_set_hash=blocks.validator_set_hash(chain.validator_set(height)),
            next_validator_set_hash=blocks.validator_set_hash(chain.validator_set(height + 1)),
            proposer=self._proposer,
            last_commit_hash=blocks.commit_hash(chain.last_commit if height > 1 else None),
            receipts_root=blocks.receipts_root(result.receipts),
            evidence_root=blocks.merkle_root([e.SerializeToString(deterministic=True) for e in evidence]),
        )
        block = block_pb2.Block(
            header=header, body=block_pb2.BlockBody(txs=[t.raw for t in vtxs], evidence=evidence)
        )
        if height > 1:
            block.last_commit.CopyFrom(chain.last_commit)
        block_id = blocks.block_hash(block.header)
        self.remember(block_id, result, block)
        log.debug("proposing block %d with %d txs", height, len(vtxs))
        return block_id, block

    def validate_block(self, height: int, block_id: bytes, block: object) -> bool:
        """Normally a cache lookup: peers' proposals are checked before the core sees them."""
        if block_id in self._executed:
            return self._executed[block_id] is not None
        not_before = self._not_yet.get(block_id)
        if not_before is not None:
            if not_before > now_ms(self._clock) + validation.MAX_CLOCK_DRIFT_MS:
                return False
            del self._not_yet[block_id]
        if not isinstance(block, block_pb2.Block):
            return False
        vtxs: list[VerifiedTx] = []
        for raw in block.body.txs:
            vtx = self.mempool.verified(txs.wire_hash(raw))
            if vtx is None:
                try:
                    vtx = txs.verify_tx(raw, self._chain.chain_id, self._max_tx_bytes)
                except TxRejected as exc:
                    log.warning("block %d: invalid transaction: %s", height, exc)
                    self.remember(block_id, None, None)
                    return False
            vtxs.append(vtx)
        try:
            self.check_proposed(block_id, block, vtxs)
        except InvalidBlock:
            return False
        return True

    # --- validation -------------------------------------------------------------------------------

    def check_proposed(self, block_id: bytes, block: block_pb2.Block, vtxs: list[VerifiedTx]) -> None:
        """Validate a proposed block (signatures of `vtxs` verified) and execute it; the verdict is
        cached by block id. Raises InvalidBlock."""
        try:
            validation.check_block(
                self._chain, block, limits=self._limits, evidence=self._evidence, now_ms=now_ms(self._clock)
            )
            validation.check_no_duplicates(vtxs, block.header.height)
            self._execute_and_compare(block_id, block, vtxs)
        except BlockFromTheFuture as exc:
            log.warning(
                "block %d (%s) is not valid yet: %s", block.header.height, block_id.hex()[:16], exc.reason
            )
            if len(self._not_yet) < MAX_NOT_YET:
                self._not_yet[block_id] = block.header.time_ms
            raise  # not a final verdict: it depends on this node's clock
        except InvalidBlock as exc:
            log.warning("block %d (%s) is invalid: %s", block.header.height, block_id.hex()[:16], exc.reason)
            self.remember(block_id, None, None)
            raise

    def check_certified(
        self, block_id: bytes, block: block_pb2.Block, cert: block_pb2.CommitCertificate
    ) -> None:
        """Validate a block fetched with its certificate (block sync) and execute it. Raises
        InvalidBlock: the serving peer's fault, never this node's."""
        height = block.header.height
        validation.check_certificate(self._chain, block_id, height, cert)
        validation.check_block(self._chain, block, limits=self._limits, evidence=self._evidence, now_ms=None)
        if block_id in self._executed and self._executed[block_id] is not None:
            return
        self._execute_and_compare(block_id, block, self.certified_txs(block))

    def _execute_and_compare(self, block_id: bytes, block: block_pb2.Block, vtxs: list[VerifiedTx]) -> None:
        h = block.header
        result = self._ledger.execute_block(vtxs, h.height, h.time_ms)
        if result.state_root != h.state_root:
            raise InvalidBlock("state root differs from re-execution", h.height)
        if blocks.receipts_root(result.receipts) != h.receipts_root:
            raise InvalidBlock("receipts root differs from re-execution", h.height)
        self.remember(block_id, result, block)

    def certified_txs(self, block: block_pb2.Block) -> list[VerifiedTx]:
        """The transactions of a block whose body matches a certified header, decoded without
        verifying signatures again. One this node cannot decode is not a peer's fault (the body
        matches the header): more than a third of the validators signed garbage, or this node's code
        differs from theirs."""
        height = block.header.height
        vtxs: list[VerifiedTx] = []
        for raw in block.body.txs:
            vtx = self.mempool.verified(txs.wire_hash(raw))
            if vtx is None:
                try:
                    decoded = txs.decode_tx(raw, self._chain.chain_id, max_bytes=len(raw) + 1)
                    vtx = txs.accept_verified(decoded, [True] * len(decoded.public_keys))
                except TxRejected as exc:
                    raise InvariantBroken(
                        f"a certified block carries a transaction this node rejects: {exc}", height
                    ) from None
            vtxs.append(vtx)
        try:
            validation.check_no_duplicates(vtxs, height)
        except InvalidBlock:
            raise InvariantBroken("a certified block carries one transaction twice", height) from None
        return vtxs

    # --- applying ---------------------------------------------------------------------------------

    async def apply(
        self, block_id: bytes, block: block_pb2.Block, cert: block_pb2.CommitCertificate
    ) -> Committed:
        """Commit a decided (or verified synced) block durably and move the node's state on."""
        chain = self._chain
        height = block.header.height
        if height != chain.height + 1:
            raise InvariantBroken(f"asked to commit height {height}", chain.height)
        result = self._executed.get(block_id)
        if result is None or result.base_root != self._ledger.state_root or result.height != height:
            result = self._ledger.execute_block(self.certified_txs(block), height, block.header.time_ms)
        if result.state_root != block.header.state_root:
            raise InvariantBroken(
                f"state root mismatch: block says {block.header.state_root.hex()}, execution gives "
                f"{result.state_root.hex()} (non-determinism or a corrupt state)",
                height,
            )
        next_sets = chain.next_sets(height, result.validator_updates)
        commit = BlockCommit(
            height=height,
            block=block,
            block_hash=block_id,
            commit=cert,
            receipts=result.receipts,
            state_writes=result.writes,
            account_touches=account_touches_of(result.receipts),
            next_validator_sets=next_sets,
            evidence=list(block.body.evidence),
            block_events=result.events,
        )
        crash_point("runtime:before-commit")
        started = time.perf_counter()
        if len(block.body.txs) <= INLINE_COMMIT_MAX_TXS:
            self._store.commit_block(commit)
        else:
            await asyncio.get_running_loop().run_in_executor(self._io, self._store.commit_block, commit)
        persist_s = time.perf_counter() - started
        crash_point("runtime:after-commit")
        self._ledger.commit(result)
        chain.advance(block, block_id, cert)
        chain.record_sets(height, next_sets)
        self._evidence.mark_committed(block)
        self.mempool.update([r.tx_hash for r in result.receipts], {r.signer for r in result.receipts})
        return Committed(height, block, block_id, cert, result.receipts, persist_s)
