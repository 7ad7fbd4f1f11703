"""Transaction envelopes: build and sign, decode and verify.

A `SignedTx` carries the serialized `TxBody` exactly as it was signed plus (public key, signature)
pairs, so verification never depends on re-serializing anything.

Two hashes, for two jobs:
- the transaction's identity (`tx_hash`, in receipts, indexes, the client API) is the SHA-256 of the
  serialized body, which is what the signatures cover. A third party can add a signature or an
  unknown field to an envelope, but cannot change the id of a transaction it did not sign: the
  client that signed it always finds it under the id it computed (no malleability).
- the envelope hash (`wire_hash`, SHA-256 of the exact bytes) keys the cache of verified
  signatures and is what a block's tx_root commits to, so a certified header fixes every byte of
  its body, signatures included.

Decoding and verification are split so the mempool can verify many transactions in a thread pool
(`DecodedTx.sign_items`) and cache the result by tx hash. The ledger only ever sees a `VerifiedTx`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from clearline.v1 import receipt_pb2, tx_pb2
from node import crypto
from node.crypto import Address, Domain, Hash, PublicKey, SigningKey
from node.errors import BadInput, quote

DEFAULT_MAX_TX_BYTES = 64 * 1024
MAX_SIGNATURES = 16


class TxRejected(BadInput):
    """A transaction is rejected before execution; status is a receipt_pb2.TxStatus value."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{receipt_pb2.TxStatus.Name(receipt_pb2.TxStatus.ValueType(status))}: {message}")
        self.status = status
        self.message = message

    @property
    def reason(self) -> str:
        """Machine-readable reason code: the status name without its prefix."""
        return receipt_pb2.TxStatus.Name(receipt_pb2.TxStatus.ValueType(self.status)).removeprefix(
            "TX_STATUS_"
        )


@dataclass(frozen=True, slots=True)
class DecodedTx:
    """A well-formed envelope for this chain whose signatures are not yet verified."""

    tx_hash: Hash  # the id: sha256 of the signed body
    wire_hash: Hash  # sha256 of the envelope's bytes
    raw: bytes
    body: tx_pb2.TxBody
    signed_message: bytes
    public_keys: tuple[PublicKey, ...]
    signatures: tuple[bytes, ...]

    def sign_items(self) -> list[tuple[bytes, bytes, bytes]]:
        """(public key, signature, message) triples for crypto.verify_batch."""
        return [
            (pk, sig, self.signed_message) for pk, sig in zip(self.public_keys, self.signatures, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class VerifiedTx:
    """A transaction whose every signature verified. signers are the signing addresses."""

    tx_hash: Hash  # the id: sha256 of the signed body
    wire_hash: Hash  # sha256 of the envelope's bytes (what tx_root commits to)
    raw: bytes
    body: tx_pb2.TxBody
    signers: frozenset[Address]
    public_keys: tuple[PublicKey, ...]

    @property
    def size(self) -> int:
        return len(self.raw)


def tx_hash(raw: bytes) -> Hash:
    """The id of a transaction: SHA-256 of its serialized body (what its signatures cover). For bytes
    that are not an envelope (a client's mistake, a fuzzer), the SHA-256 of the bytes themselves,
    so every rejection can still name what it rejected."""
    envelope = tx_pb2.SignedTx()
    try:
        envelope.ParseFromString(raw)
    except DecodeError:
        return crypto.sha256(raw)
    body = envelope.body
    return crypto.sha256(body) if body else crypto.sha256(raw)


def wire_hash(raw: bytes) -> Hash:
    """The hash of an envelope's exact bytes (the verified-signature cache key; tx_root's leaves)."""
    return crypto.sha256(raw)


def sign_tx(body: tx_pb2.TxBody, keys: Sequence[SigningKey]) -> bytes:
    """Serialize body, sign it with every key, and return the serialized SignedTx."""
    if not keys:
        raise ValueError("a transaction needs at least one signing key")
    body_bytes = body.SerializeToString(deterministic=True)
    message = crypto.sign_bytes(Domain.TX, body.chain_id, body_bytes)
    envelope = tx_pb2.SignedTx(body=body_bytes)
    for key in keys:
        envelope.signatures.add(public_key=key.public_key, signature=key.sign_raw(message))
    return envelope.SerializeToString(deterministic=True)


def decode_tx(
    raw: bytes, chain_id: str, max_bytes: int = DEFAULT_MAX_TX_BYTES, known_wire_hash: Hash | None = None
) -> DecodedTx:
    """Parse and check the envelope (size, structure, chain id); raises TxRejected.
    known_wire_hash is wire_hash(raw) when the caller has it already (it is not checked)."""
    if len(raw) > max_bytes:
        raise TxRejected(
            receipt_pb2.TX_STATUS_TOO_LARGE, f"transaction is {len(raw)} bytes, limit {max_bytes}"
        )
    envelope = tx_pb2.SignedTx()
    body = tx_pb2.TxBody()
    # Each field is read once: a bytes field read from a protobuf message is a new copy every time.
    try:
        envelope.ParseFromString(raw)
        body_bytes = envelope.body
        body.ParseFromString(body_bytes)
    except DecodeError as exc:
        raise TxRejected(receipt_pb2.TX_STATUS_MALFORMED, f"cannot decode transaction: {exc}") from None
    if not body_bytes:
        raise TxRejected(receipt_pb2.TX_STATUS_MALFORMED, "empty transaction body")
    if body.chain_id != chain_id:
        raise TxRejected(
            receipt_pb2.TX_STATUS_WRONG_CHAIN,
            f"transaction is for chain {quote(body.chain_id)}, this is {chain_id!r}",
        )
    if body.WhichOneof("op") is None:
        raise TxRejected(receipt_pb2.TX_STATUS_MALFORMED, "transaction has no operation")
    if len(body.signer) != crypto.ADDRESS_LEN:
        raise TxRejected(
            receipt_pb2.TX_STATUS_MALFORMED, f"signer must be a {crypto.ADDRESS_LEN}-byte address"
        )
    sigs = envelope.signatures
    if not sigs:
        raise TxRejected(receipt_pb2.TX_STATUS_MISSING_SIGNATURE, "transaction carries no signature")
    if len(sigs) > MAX_SIGNATURES:
        raise TxRejected(receipt_pb2.TX_STATUS_MALFORMED, f"more than {MAX_SIGNATURES} signatures")
    public_keys: list[PublicKey] = []
    signatures: list[bytes] = []
    for sig in sigs:
        public_key, signature = sig.public_key, sig.signature
        if len(public_key) != crypto.PUBLIC_KEY_LEN or len(signature) != crypto.SIGNATURE_LEN:
            raise TxRejected(receipt_pb2.TX_STATUS_BAD_SIGNATURE, "malformed public key or signature")
        public_keys.append(PublicKey(public_key))
        signatures.append(signature)
    if len(public_keys) > 1 and len(set(public_keys)) != len(public_keys):
        raise TxRejected(receipt_pb2.TX_STATUS_MALFORMED, "the same key signed twice")
    return DecodedTx(
        tx_hash=crypto.sha256(body_bytes),
        wire_hash=crypto.sha256(raw) if known_wire_hash is None else known_wire_hash,
        raw=raw,
        body=body,
        signed_message=crypto.sign_bytes(Domain.TX, chain_id, body_bytes),
        public_keys=tuple(public_keys),
        signatures=tuple(signatures),
    )


def accept_verified(decoded: DecodedTx, results: Sequence[bool]) -> VerifiedTx:
    """Turn a DecodedTx into a VerifiedTx given its signature results; raises TxRejected."""
    if not all(results) or len(results) != len(decoded.public_keys):
        raise TxRejected(receipt_pb2.TX_STATUS_BAD_SIGNATURE, "a signature does not verify")
    signers = frozenset(crypto.address_of(pk) for pk in decoded.public_keys)
    if decoded.body.signer not in signers:
        raise TxRejected(receipt_pb2.TX_STATUS_MISSING_SIGNATURE, "the signer account did not sign")
    return VerifiedTx(
        tx_hash=decoded.tx_hash,
        wire_hash=decoded.wire_hash,
        raw=decoded.raw,
        body=decoded.body,
        signers=signers,
        public_keys=decoded.public_keys,
    )


def verify_tx(raw: bytes, chain_id: str, max_bytes: int = DEFAULT_MAX_TX_BYTES) -> VerifiedTx:
    """Decode and verify one transaction in the calling thread; raises TxRejected."""
    decoded = decode_tx(raw, chain_id, max_bytes)
    return accept_verified(decoded, [crypto.verify_raw(*item) for item in decoded.sign_items()])
