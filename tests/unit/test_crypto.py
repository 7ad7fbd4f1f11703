"""node.crypto: signatures with domain separation, addresses, key files."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest

from node import crypto
from node.crypto import Domain, KeyFileError, SigningKey

CHAIN = "clearline-test"


def test_sign_and_verify_round_trip() -> None:
    key = SigningKey.generate()
    sig = key.sign(Domain.TX, CHAIN, b"payload")
    assert len(sig) == crypto.SIGNATURE_LEN
    assert crypto.verify(key.public_key, sig, Domain.TX, CHAIN, b"payload") is True


def test_tampered_payload_is_rejected() -> None:
    key = SigningKey.generate()
    sig = key.sign(Domain.TX, CHAIN, b"pay 10")
    assert crypto.verify(key.public_key, sig, Domain.TX, CHAIN, b"pay 11") is False


def test_wrong_key_is_rejected() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    sig = key.sign(Domain.TX, CHAIN, b"payload")
    assert crypto.verify(other.public_key, sig, Domain.TX, CHAIN, b"payload") is False


def test_wrong_chain_id_is_rejected() -> None:
    key = SigningKey.generate()
    sig = key.sign(Domain.TX, CHAIN, b"payload")
    assert crypto.verify(key.public_key, sig, Domain.TX, "another-chain", b"payload") is False


def test_wrong_domain_is_rejected() -> None:
    """A signed vote never passes as a transaction, nor a proposal as a vote."""
    key = SigningKey.generate()
    payload = crypto.vote_payload(1, 5, 0, b"\x11" * 32)
    vote_sig = key.sign(Domain.VOTE, CHAIN, payload)
    assert crypto.verify(key.public_key, vote_sig, Domain.VOTE, CHAIN, payload) is True
    assert crypto.verify(key.public_key, vote_sig, Domain.TX, CHAIN, payload) is False
    assert crypto.verify(key.public_key, vote_sig, Domain.PROPOSAL, CHAIN, payload) is False


def test_domain_and_chain_cannot_be_shifted_into_each_other() -> None:
    """Length prefixes keep (domain, chain, payload) unambiguous."""
    a = crypto.sign_bytes(Domain.TX, "ab", b"c")
    b = crypto.sign_bytes(Domain.TX, "a", b"bc")
    assert a != b


def test_malformed_key_or_signature_is_false_not_an_exception() -> None:
    key = SigningKey.generate()
    sig = key.sign(Domain.TX, CHAIN, b"x")
    assert crypto.verify(key.public_key[:31], sig, Domain.TX, CHAIN, b"x") is False
    assert crypto.verify(key.public_key, sig[:63], Domain.TX, CHAIN, b"x") is False
    assert crypto.verify(b"\x00" * 32, b"\x00" * 64, Domain.TX, CHAIN, b"x") is False


def test_vote_payload_is_fixed_width_and_distinguishes_fields() -> None:
    base = crypto.vote_payload(1, 7, 2, b"\xaa" * 32)
    assert len(base) == 1 + 8 + 4 + 2 + 32
    assert crypto.vote_payload(2, 7, 2, b"\xaa" * 32) != base
    assert crypto.vote_payload(1, 8, 2, b"\xaa" * 32) != base
    assert crypto.vote_payload(1, 7, 3, b"\xaa" * 32) != base
    assert crypto.vote_payload(1, 7, 2, b"") != base  # nil vote


def test_address_is_derived_from_public_key() -> None:
    key = SigningKey.from_seed(b"\x01" * 32)
    assert key.address == crypto.sha256(key.public_key)[:20]
    assert len(key.address) == crypto.ADDRESS_LEN
    assert SigningKey.from_seed(b"\x01" * 32).address == key.address
    with pytest.raises(crypto.CryptoError):
        crypto.address_of(b"short")


def test_the_address_memo_answers_as_the_hash_does_and_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "_ADDRESSES", {})
    monkeypatch.setattr(crypto, "_ADDRESSES_MAX", 8)
    keys = [bytes([i]) * 32 for i in range(20)]
    for _ in range(2):  # computed, then remembered (or recomputed after the memo was emptied)
        for pk in keys:
            assert crypto.address_of(pk) == crypto.sha256(pk)[:20]
            assert len(crypto._ADDRESSES) <= 8
    with pytest.raises(crypto.CryptoError, match="public key must be 32 bytes"):
        crypto.address_of(b"\x00" * 31)  # a wrong length is never remembered, so never answered
    assert all(len(k) == 32 for k in crypto._ADDRESSES)


def test_verify_batch_in_a_thread_pool_matches_serial() -> None:
    keys = [SigningKey.generate() for _ in range(4)]
    items = []
    for i in range(200):
        key = keys[i % 4]
        msg = crypto.sign_bytes(Domain.TX, CHAIN, i.to_bytes(4, "big"))
        sig = key.sign_raw(msg)
        if i % 17 == 0:
            sig = bytes([sig[0] ^ 1]) + sig[1:]
        items.append((key.public_key, sig, msg))
    with ThreadPoolExecutor(max_workers=2) as pool:
        parallel = crypto.verify_batch(items, pool)
    assert parallel == crypto.verify_batch(items)
    assert parallel == [i % 17 != 0 for i in range(200)]


def test_key_file_round_trip_with_mode_0600(tmp_path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "keys" / "validator.json"
    crypto.save_key_file(path, key)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = crypto.load_key_file(path)
    assert loaded == key
    assert key.seed.hex() not in repr(loaded)


def test_missing_key_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(KeyFileError, match=r"nope\.json: does not exist"):
        crypto.load_key_file(path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "is not valid JSON"),
        ("[]", "must hold a JSON object"),
        ('{"type": "rsa"}', "has key type 'rsa'"),
        ('{"type": "ed25519"}', "has no 'private_key'"),
        ('{"type": "ed25519", "private_key": "zz"}', "'private_key' is not hex"),
        ('{"type": "ed25519", "private_key": "abcd"}', "'private_key' must be 32 bytes"),
        (
            '{"type": "ed25519", "private_key": "' + "01" * 32 + '", "public_key": "' + "00" * 32 + '"}',
            "'public_key' does not match",
        ),
    ],
)
def test_malformed_key_file_is_a_clear_error(tmp_path, content: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(KeyFileError, match=problem):
        crypto.load_key_file(path)
