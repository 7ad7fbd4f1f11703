"""The client library's errors, in one place.

    ClientError            a node answered with a gRPC error, or could not be reached in time;
                           code is the grpc.StatusCode, reason the node's machine-readable reason
                           (trailing metadata "clearline-reason"), or the status code name if the
                           node gave none (e.g. DEADLINE_EXCEEDED raised by the client itself)
      BadResponseError     the node answered, but the answer contradicts the request
    ProofError             a proof or commit certificate served by a node does not verify against
                           what the caller trusts (reason: ProofFailure)
    TxFailedError          a transaction was processed but its receipt is not OK (raised only on
                           request, by SubmitResult.raise_for_status)

gRPC errors are mapped here, at the edge (`from_rpc_error`), so callers never see grpc internals.
"""

from __future__ import annotations

import enum

import grpc

from clearline.v1 import receipt_pb2
from node.blocks import CommitFailure

REASON_KEY = "clearline-reason"


class ClientError(Exception):
    """A call to a node failed. code: grpc.StatusCode; reason: machine-readable; message: detail."""

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, *, target: str | None = None
    ) -> None:
        where = f" from {target}" if target else ""
        super().__init__(f"{code.name}/{reason}{where}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.target = target


class BadResponseError(ClientError):
    """The node's answer is inconsistent with the request (wrong tx hash, wrong result count)."""

    def __init__(self, message: str, *, target: str | None = None) -> None:
        super().__init__(grpc.StatusCode.UNKNOWN, "BAD_RESPONSE", message, target=target)


def from_rpc_error(exc: grpc.RpcError, target: str | None = None) -> ClientError:
    """Map a grpc error (aio or sync) to ClientError, reading the reason from trailing metadata."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    return ClientError(code, reason_of(exc) or code.name, details or "", target=target)


def reason_of(exc: grpc.RpcError) -> str | None:
    """The "clearline-reason" trailing metadata value of a grpc error, if the node set one."""
    metadata = exc.trailing_metadata() if callable(getattr(exc, "trailing_metadata", None)) else None
    for key, value in metadata or ():
        if key == REASON_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


class ProofFailure(enum.StrEnum):
    """Why an account proof was not accepted."""

    MISSING_PROOF = "MISSING_PROOF"  # no proof, header or commit certificate in the answer
    ADDRESS_REQUIRED = "ADDRESS_REQUIRED"  # an absence proof needs the address that was asked for
    WRONG_ACCOUNT = "WRONG_ACCOUNT"  # the answer is about another address
    WRONG_CHAIN = "WRONG_CHAIN"
    HEIGHT_MISMATCH = "HEIGHT_MISMATCH"  # the answer's height is not its header's height
    COMMIT_INVALID = "COMMIT_INVALID"  # the certificate does not prove the header (see commit_reason)
    PROOF_INVALID = "PROOF_INVALID"  # the Merkle proof does not lead to header.state_root
    NODES_DISAGREE = "NODES_DISAGREE"  # two nodes proved different entries at one height


class ProofError(Exception):
    """A proof does not verify. commit_reason is set for COMMIT_INVALID; target names the node."""

    def __init__(
        self,
        reason: ProofFailure,
        detail: str,
        *,
        commit_reason: CommitFailure | None = None,
        target: str | None = None,
    ) -> None:
        where = f" from {target}" if target else ""
        super().__init__(f"{reason.value}{where}: {detail}")
        self.reason = reason
        self.detail = detail
        self.commit_reason = commit_reason
        self.target = target


class TxFailedError(Exception):
    """A transaction's receipt (dry-run or final) is not OK; status is a receipt_pb2.TxStatus."""

    def __init__(
        self, tx_hash: bytes, status: int, message: str, receipt: receipt_pb2.Receipt | None
    ) -> None:
        self.reason = receipt_pb2.TxStatus.Name(receipt_pb2.TxStatus.ValueType(status)).removeprefix(
            "TX_STATUS_"
        )
        super().__init__(f"tx {tx_hash.hex()} failed: {self.reason}: {message}")
        self.tx_hash = tx_hash
        self.status = status
        self.message = message
        self.receipt = receipt
