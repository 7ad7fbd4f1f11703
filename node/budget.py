"""The node's memory budget: what a stranger, a client or one validator can make a node hold.

Everything a node keeps because someone else sent it is bounded in count and in bytes, and the
bounds add up to one documented figure per node (docs/operations.md, "Memory budget"). The fault
checker compares each node's resident set size with `memory_budget_bytes(cfg)`; a node that grows
past it fails the run.

Held bytes are counted as a multiple of the raw bytes received: a transaction is kept as its raw
envelope plus its decoded body (protobuf objects copy their bytes fields), so a 60 KB memo is held
about twice. `HELD_FACTOR` is that multiple, measured for large-memo transactions (the worst case
per byte).
"""

from __future__ import annotations

from dataclasses import dataclass

from node.admission import MAX_OBSERVER_PEERS, OBSERVER_SEND_QUEUE_BYTES
from node.config import NodeConfig

MIB = 1 << 20
# A node process at rest: Python, grpc, protobuf, LevelDB caches, the ledger's state cache.
BASE_BYTES = 320 * MIB
# Raw bytes of a kept transaction -> bytes held in memory (raw envelope + decoded body + objects).
HELD_FACTOR = 2.5
# Fixed per-node bounds on things peers and clients can make the node hold (besides the mempool
# and the signature cache, which are configured).
LATER_EVENTS_BYTES = 32 * MIB  # peers' consensus messages held for the next height
GOSSIP_INFLIGHT_BYTES = 32 * MIB  # peers' transaction batches being verified
PROPOSALS_BYTES = 64 * MIB  # executed proposals of the current height (their blocks and results)
PEER_SEND_QUEUE_BYTES = 32 * MIB  # per connected peer: messages waiting to be written
SYNC_INFLIGHT_BYTES = 64 * MIB  # blocks fetched by block sync and not yet applied


@dataclass(frozen=True, slots=True)
class BudgetLine:
    what: str
    bytes: int


def budget_lines(cfg: NodeConfig) -> list[BudgetLine]:
    """The budget, item by item (what docs/operations.md tabulates)."""
    peers = len(cfg.p2p.peers)
    m = cfg.mempool
    return [
        BudgetLine("process at rest", BASE_BYTES),
        BudgetLine("mempool ([mempool] max_bytes, held)", int(m.max_bytes * HELD_FACTOR)),
        BudgetLine(
            "verified-signature cache ([mempool] cache_bytes, held)", int(m.cache_bytes * HELD_FACTOR)
        ),
        BudgetLine("peers' messages for the next height", LATER_EVENTS_BYTES),
        BudgetLine("peers' transaction batches in verification", int(GOSSIP_INFLIGHT_BYTES * HELD_FACTOR)),
        BudgetLine("executed proposals of the current height", PROPOSALS_BYTES),
        BudgetLine("block sync in flight", SYNC_INFLIGHT_BYTES),
        BudgetLine(f"send queues ({peers} peers)", PEER_SEND_QUEUE_BYTES * peers),
        BudgetLine(
            "peer streams (one maximum message each)",
            cfg.p2p.max_message_bytes * peers,
        ),
        BudgetLine(
            f"observers (at most {MAX_OBSERVER_PEERS}: a send queue and one maximum message each)",
            (OBSERVER_SEND_QUEUE_BYTES + cfg.p2p.max_message_bytes) * MAX_OBSERVER_PEERS,
        ),
        BudgetLine(
            "client calls in flight ([api] max_concurrent_rpcs requests, a few maximum responses)",
            cfg.api.max_request_bytes * cfg.api.max_concurrent_rpcs + cfg.api.max_message_bytes * 2,
        ),
    ]


def memory_budget_bytes(cfg: NodeConfig) -> int:
    """The most resident memory a node with this configuration may use, whatever it is sent."""
    return sum(line.bytes for line in budget_lines(cfg))
