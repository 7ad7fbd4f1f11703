"""Errors the node reports to clients, independent of the transport.

`ApiError` carries a gRPC status code name (e.g. "INVALID_ARGUMENT"), a machine-readable reason
(e.g. "BAD_SIGNATURE", "UNKNOWN_ACCOUNT", "MEMPOOL_FULL") and a human message. node/network/api.py
maps it to a gRPC status whose trailing metadata carries `clearline-reason`.
"""

from __future__ import annotations

from clearline.v1 import receipt_pb2

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


class ApiError(Exception):
    def __init__(self, code: str, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message

    @classmethod
    def for_status(cls, status: int, message: str) -> ApiError:
        """The error for a transaction rejected with a TxStatus."""
        reason = receipt_pb2.TxStatus.Name(receipt_pb2.TxStatus.ValueType(status)).removeprefix("TX_STATUS_")
        if status == receipt_pb2.TX_STATUS_TOO_LARGE:
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
