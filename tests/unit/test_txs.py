"""node.txs: transaction envelopes are signed over the body bytes and checked before the ledger."""

from __future__ import annotations

import pytest

from clearline.v1 import receipt_pb2, tx_pb2
from node import crypto, txs
from node.crypto import SigningKey
from node.txs import TxRejected

CHAIN = "clearline-test"


def transfer_body(key: SigningKey, chain: str = CHAIN, nonce: int = 0) -> tx_pb2.TxBody:
    body = tx_pb2.TxBody(chain_id=chain, signer=key.address, nonce=nonce, client_ref="ref-1")
    body.transfer.instrument.issuer = b"\x01" * 20
    body.transfer.instrument.symbol = "USD"
    body.transfer.to = b"\x02" * 20
    body.transfer.amount = 100
    return body


def test_signed_tx_verifies_and_names_its_signers() -> None:
    key = SigningKey.generate()
    raw = txs.sign_tx(transfer_body(key), [key])
    verified = txs.verify_tx(raw, CHAIN)
    assert verified.signers == frozenset({key.address})
    assert verified.body.transfer.amount == 100
    assert verified.tx_hash == txs.tx_hash(raw)


def test_multi_signer_settlement_lists_every_signer() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    body = tx_pb2.TxBody(chain_id=CHAIN, signer=a.address, nonce=0, client_ref="dvp")
    body.settle.settlement_ref = "dvp-1"
    raw = txs.sign_tx(body, [a, b])
    assert txs.verify_tx(raw, CHAIN).signers == frozenset({a.address, b.address})


def _reject(
    raw: bytes, status: int, chain: str = CHAIN, max_bytes: int = txs.DEFAULT_MAX_TX_BYTES
) -> TxRejected:
    with pytest.raises(TxRejected) as info:
        txs.verify_tx(raw, chain, max_bytes)
    assert info.value.status == status, info.value
    return info.value


def test_tampered_body_is_rejected() -> None:
    key = SigningKey.generate()
    envelope = tx_pb2.SignedTx.FromString(txs.sign_tx(transfer_body(key), [key]))
    body = tx_pb2.TxBody.FromString(envelope.body)
    body.transfer.amount = 1_000_000
    envelope.body = body.SerializeToString()
    _reject(envelope.SerializeToString(), receipt_pb2.TX_STATUS_BAD_SIGNATURE)


def test_signature_by_another_key_than_the_signer_is_rejected() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    raw = txs.sign_tx(transfer_body(key), [other])
    err = _reject(raw, receipt_pb2.TX_STATUS_MISSING_SIGNATURE)
    assert err.reason == "MISSING_SIGNATURE"


def test_wrong_key_in_envelope_is_rejected() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    envelope = tx_pb2.SignedTx.FromString(txs.sign_tx(transfer_body(key), [key]))
    envelope.signatures[0].public_key = other.public_key
    _reject(envelope.SerializeToString(), receipt_pb2.TX_STATUS_BAD_SIGNATURE)


def test_wrong_chain_id_is_rejected() -> None:
    key = SigningKey.generate()
    raw = txs.sign_tx(transfer_body(key, chain="other-chain"), [key])
    err = _reject(raw, receipt_pb2.TX_STATUS_WRONG_CHAIN)
    assert "other-chain" in err.message


def test_garbage_bytes_are_malformed() -> None:
    _reject(b"\xff\xfe\xfd garbage", receipt_pb2.TX_STATUS_MALFORMED)


def test_oversized_tx_is_rejected_before_decoding() -> None:
    key = SigningKey.generate()
    raw = txs.sign_tx(transfer_body(key), [key])
    _reject(raw, receipt_pb2.TX_STATUS_TOO_LARGE, max_bytes=len(raw) - 1)


def test_unsigned_and_empty_envelopes_are_rejected() -> None:
    key = SigningKey.generate()
    body = transfer_body(key).SerializeToString()
    _reject(tx_pb2.SignedTx(body=body).SerializeToString(), receipt_pb2.TX_STATUS_MISSING_SIGNATURE)
    _reject(tx_pb2.SignedTx().SerializeToString(), receipt_pb2.TX_STATUS_MALFORMED)


def test_body_without_operation_is_malformed() -> None:
    key = SigningKey.generate()
    body = tx_pb2.TxBody(chain_id=CHAIN, signer=key.address, nonce=0)
    _reject(txs.sign_tx(body, [key]), receipt_pb2.TX_STATUS_MALFORMED)


def test_decode_takes_a_hash_the_caller_computed_and_computes_it_otherwise() -> None:
    key = SigningKey.from_seed(b"\x05" * 32)
    raw = txs.sign_tx(transfer_body(key), [key])
    assert txs.decode_tx(raw, CHAIN).tx_hash == txs.tx_hash(raw)
    assert txs.decode_tx(raw, CHAIN).wire_hash == txs.wire_hash(raw)
    assert txs.decode_tx(raw, CHAIN, known_wire_hash=txs.wire_hash(raw)).wire_hash == txs.wire_hash(raw)
    decoded = txs.decode_tx(raw, CHAIN)
    assert decoded.signed_message.endswith(tx_pb2.SignedTx.FromString(raw).body)
    assert decoded.sign_items() == [
        (key.public_key, tx_pb2.SignedTx.FromString(raw).signatures[0].signature, decoded.signed_message)
    ]


def test_a_third_party_cannot_change_a_transactions_id() -> None:
    """The id is the hash of what was signed: adding a signature (its own, valid, or garbage) or an
    unknown field to someone else's envelope leaves the id as the signer computed it."""
    key, stranger = SigningKey.from_seed(b"\x07" * 32), SigningKey.from_seed(b"\x08" * 32)
    raw = txs.sign_tx(transfer_body(key), [key])
    original = txs.tx_hash(raw)
    envelope = tx_pb2.SignedTx.FromString(raw)
    decoded = txs.decode_tx(raw, CHAIN)
    envelope.signatures.add(
        public_key=stranger.public_key, signature=stranger.sign_raw(decoded.signed_message)
    )
    with_signature = envelope.SerializeToString()
    with_unknown_field = raw + b"\xf8\x3f\x01"  # field 1023, varint 1: unknown to SignedTx
    for variant in (with_signature, with_unknown_field):
        assert variant != raw
        assert txs.tx_hash(variant) == original
        assert txs.wire_hash(variant) != txs.wire_hash(raw)
        verified = txs.verify_tx(variant, CHAIN)
        assert verified.tx_hash == original
    # A garbage signature makes the envelope invalid, and still does not change the id it is refused under.
    envelope.signatures.add(public_key=b"\x01" * 32, signature=b"\x02" * 64)
    garbage = envelope.SerializeToString()
    assert txs.tx_hash(garbage) == original
    with pytest.raises(txs.TxRejected):
        txs.verify_tx(garbage, CHAIN)


def test_the_id_is_the_hash_of_the_signed_body() -> None:
    key = SigningKey.from_seed(b"\x09" * 32)
    raw = txs.sign_tx(transfer_body(key), [key])
    body = tx_pb2.SignedTx.FromString(raw).body
    assert txs.tx_hash(raw) == crypto.sha256(body)
    assert txs.tx_hash(b"not an envelope\xff") == crypto.sha256(b"not an envelope\xff")
