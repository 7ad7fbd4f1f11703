"""The node's one error tree, and the errors it reports to clients independent of the transport.

    NodeError
    ├── BadInput            something from outside (a peer, a client) is invalid: it is rejected,
    │   │                   logged and counted, and the node goes on with its state unchanged
    │   ├── PeerFault       a peer's message or served block; `kind` names the metric label
    │   ├── InvalidBlock    a block that does not follow the chain (the caller decides whose fault:
    │   │                   a proposal's or a synced block's peer, or, for a certified block this
    │   │                   node decided itself, a broken invariant)
    │   └── ApiError        a client's request; carries the gRPC code and reason the API answers with
    │       └── BelowBase   a read of a height this node has pruned (OUT_OF_RANGE, BELOW_BASE_HEIGHT),
    │                       naming the lowest height it keeps; a peer's GetBlocks gets it too
    ├── CannotStart         the node cannot start as configured (no genesis, a genesis of another
    │                       chain, a store that lacks its own latest block)
    ├── RestoreRefused      a restore that is not for this node or not safe now (another chain's or
    │                       node's backup, the node running, its key missing): nothing was changed
    └── InvariantBroken     this node's own state contradicts itself (a store behind the ledger, a
                            decided block whose execution differs): the node stops, naming the
                            reason and the height, rather than go on from a wrong state

Every handler at an edge catches `BadInput` (or one of its kinds) and never `InvariantBroken`: an
unexpected exception anywhere in a task ends the node (runtime.py), it is not logged and skipped.

`ApiError` carries a gRPC status code name (e.g. "INVALID_ARGUMENT"), a machine-readable reason
(e.g. "BAD_SIGNATURE", "UNKNOWN_ACCOUNT", "MEMPOOL_FULL") and a human message. node/network/api.py
maps it to a gRPC status whose trailing metadata carries `clearline-reason`.

A peer that refuses a block-sync request below its base is not a fault: the fetch raises
`PeerPruned` (a ConnectionError, outside the tree: a transport outcome) with the peer's base.

Client input is never echoed whole: a message quotes it with `quote` (a bounded prefix and its size),
and `ApiError` cuts any message to `MAX_MESSAGE_CHARS` as a backstop, so no request, however large,
makes a large error.
"""

from __future__ import annotations

from clearline.v1 import receipt_pb2

# What `quote` shows of a value: about this many characters of its repr (or hex).
QUOTE_CHARS = 64
# The longest message an ApiError (and so a gRPC status detail) carries.
MAX_MESSAGE_CHARS = 512


def quote(value: str | bytes, limit: int = QUOTE_CHARS) -> str:
    """value for an error message: repr(value) for text, hex for bytes. A longer one is cut to limit
    characters and followed by its size, as in "'hold-aaaa...(1048576 bytes)". Reads only a prefix
    of value (and, for a long text, its UTF-8 length)."""
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value[: limit // 2]).hex()
        if len(value) <= limit // 2:
            return text
        size = len(value)
    else:
        # A character's repr is at most 10 characters: a prefix of limit characters suffices.
        text = repr(value[:limit])
        if len(value) <= limit and len(text) <= limit:
            return text
        size = len(value.encode("utf-8", "surrogatepass"))
    return f"{text[:limit]}...({size} bytes)"


def bound_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """message cut to at most limit characters (the cut marked with its full length)."""
    if len(message) <= limit:
        return message
    suffix = f"...({len(message)} characters)"
    return message[: limit - len(suffix)] + suffix


# Which gRPC code a rejected transaction's status maps to.
_INVALID = {
    receipt_pb2.TX_STATUS_MALFORMED,
    receipt_pb2.TX_STATUS_WRONG_CHAIN,
    receipt_pb2.TX_STATUS_BAD_SIGNATURE,
    receipt_pb2.TX_STATUS_MISSING_SIGNATURE,
    receipt_pb2.TX_STATUS_INVALID_ARGUMENT,
    receipt_pb2.TX_STATUS_INVALID_AMOUNT,
}
_NOT_FOUND = {
    receipt_pb2.TX_STATUS_UNKNOWN_ACCOUNT,
    receipt_pb2.TX_STATUS_UNKNOWN_INSTRUMENT,
    receipt_pb2.TX_STATUS_UNKNOWN_HOLD,
}
_ALREADY = {receipt_pb2.TX_STATUS_DUPLICATE_CLIENT_REF}


class NodeError(Exception):
    """The root of the node's errors."""


class BadInput(NodeError):
    """Input from outside the node is invalid: reject it, count it, go on."""


class PeerFault(BadInput):
    """A peer sent something invalid; kind is a short machine-readable code (a metric label)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message

    @property
    def reason(self) -> str:
        return self.kind


class InvalidBlock(BadInput):
    """A block that may not follow the last committed one; reason says which rule it breaks."""

    def __init__(self, reason: str, height: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.height = height


class BlockFromTheFuture(InvalidBlock):
    """A block timed past this node's clock plus the allowed drift. Whose clock is wrong is not
    known here, so the verdict is neither cached nor held against the peer: asked again once this
    node's clock is right (or with a certificate, in block sync), the same block may be valid."""


class CannotStart(NodeError):
    """The node refuses to start; the message says what to fix."""


class RestoreRefused(NodeError):
    """A restore was refused before it changed anything (node/backup.py); reason is a code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class InvariantBroken(NodeError):
    """This node's own state is wrong: it stops with the reason and the height."""

    def __init__(self, reason: str, height: int | None = None) -> None:
        super().__init__(reason if height is None else f"at height {height}: {reason}")
        self.reason = reason
        self.height = height


class ApiError(BadInput):
    def __init__(self, code: str, reason: str, message: str) -> None:
        message = bound_message(message)
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message

    @classmethod
    def for_status(cls, status: int, message: str) -> ApiError:
        """The error for a transaction rejected with a TxStatus."""
        reason = receipt_pb2.TxStatus.Name(receipt_pb2.TxStatus.ValueType(status)).removeprefix("TX_STATUS_")
        if status in (
            receipt_pb2.TX_STATUS_TOO_LARGE,
            receipt_pb2.TX_STATUS_MEMPOOL_FULL,
            receipt_pb2.TX_STATUS_NONCE_GAP_LIMIT,
        ):
            code = "RESOURCE_EXHAUSTED"
        elif status in _INVALID:
            code = "INVALID_ARGUMENT"
        elif status in _NOT_FOUND:
            code = "NOT_FOUND"
        elif status in _ALREADY:
            code = "ALREADY_EXISTS"
        else:
            code = "FAILED_PRECONDITION"
        return cls(code, reason, message)


BELOW_BASE_REASON = "BELOW_BASE_HEIGHT"
# Trailing metadata of a BELOW_BASE_HEIGHT answer (client API and peer GetBlocks): the base, in decimal.
BASE_HEIGHT_KEY = "clearline-base-height"


class BelowBase(ApiError):
    """A read of a height below this node's base: it has pruned that block with its receipts and
    indexes (or joined by state sync above it). `what` names what was asked for."""

    def __init__(self, base: int, what: str) -> None:
        super().__init__(
            "OUT_OF_RANGE",
            BELOW_BASE_REASON,
            f"{what}: this node keeps blocks from height {base}; an archive node keeps older ones",
        )
        self.base = base


class PeerPruned(ConnectionError):
    """A peer refused a block-sync request below its base (it has pruned those heights)."""

    def __init__(self, peer: str, base: int, detail: str) -> None:
        super().__init__(f"{peer} keeps blocks from height {base} only: {detail}")
        self.peer = peer
        self.base = base
