"""Value types of the client library: what to wait for, submit results, verified accounts."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from clearline.v1 import ledger_api_pb2, receipt_pb2, state_pb2
from cluster.client.errors import TxFailedError
from node.crypto import Address, Hash


class WaitFor(enum.IntEnum):
    """How long SubmitTx waits (values of ledger_api_pb2.WaitFor)."""

    NONE = ledger_api_pb2.WAIT_FOR_NONE  # accepted into the mempool
    CHECKED = ledger_api_pb2.WAIT_FOR_CHECKED  # passed the ledger's dry run against current state
    COMMITTED = ledger_api_pb2.WAIT_FOR_COMMITTED  # committed in a block: the receipt is final


def status_reason(status: int) -> str:
    """The reason code of a TxStatus value: its name without the TX_STATUS_ prefix."""
    try:
        return receipt_pb2.TxStatus.Name(receipt_pb2.TxStatus.ValueType(status)).removeprefix("TX_STATUS_")
    except ValueError:
        return f"STATUS_{status}"


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What a node said about one submitted transaction.

    accepted: taken into the mempool (False only in batch results: a single rejected submit raises
    ClientError). receipt: the dry-run receipt for CHECKED, the final one for COMMITTED, else None.
    status: the receipt's status, or the rejection status of a batch entry; OK when accepted with no
    receipt. height and state_root: of the committing block (COMMITTED only). replaced: the signer's
    waiting transaction with the same nonce that this one replaced. A batch entry dropped after it
    was accepted (replaced or cancelled while the batch waited) has status DROPPED and says why.
    """

    tx_hash: Hash
    accepted: bool
    status: int
    message: str
    receipt: receipt_pb2.Receipt | None
    height: int
    state_root: bytes
    replaced: bytes = b""

    @property
    def reason(self) -> str:
        return status_reason(self.status)

    @property
    def ok(self) -> bool:
        """Accepted, and the receipt (if any) is OK."""
        return self.accepted and self.status == receipt_pb2.TX_STATUS_OK

    @property
    def committed(self) -> bool:
        return self.receipt is not None and self.height > 0

    def raise_for_status(self) -> SubmitResult:
        """Return self if ok, else raise TxFailedError with the status and receipt."""
        if not self.ok:
            raise TxFailedError(self.tx_hash, self.status, self.message, self.receipt)
        return self


@dataclass(frozen=True, slots=True)
class VerifiedAccount:
    """An account entry proved against a header committed by a trusted validator set.

    account is None when the proof shows the address has no account. Holds are separate state
    entries and are not covered by this proof.
    """

    address: Address
    exists: bool
    account: state_pb2.Account | None
    height: int
    block_hash: Hash
    state_root: bytes
