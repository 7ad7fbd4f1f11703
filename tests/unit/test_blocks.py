"""node.blocks: hashes, Merkle roots, sign bytes, commit certificates and header links."""

from __future__ import annotations

import hashlib

import pytest

from clearline.v1 import block_pb2, receipt_pb2
from node import blocks, crypto
from node.blocks import CommitError, CommitFailure
from node.crypto import SigningKey

CHAIN = "clearline-test"


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def leaf(x: bytes) -> bytes:
    return h(b"\x00" + x)


def node(left: bytes, right: bytes) -> bytes:
    return h(b"\x01" + left + right)


def make_header(height: int = 5, time_ms: int = 1_000, chain: str = CHAIN) -> block_pb2.Header:
    return block_pb2.Header(
        chain_id=chain,
        height=height,
        time_ms=time_ms,
        prev_block_hash=b"\x11" * 32,
        tx_root=b"\x22" * 32,
        state_root=b"\x33" * 32,
        proposer=b"\x44" * 20,
    )


# --- hashes ------------------------------------------------------------------------------------


def test_block_hash_is_sha256_of_deterministic_header_bytes() -> None:
    header = make_header()
    assert blocks.block_hash(header) == h(header.SerializeToString(deterministic=True))
    assert blocks.block_hash(block_pb2.Header.FromString(header.SerializeToString())) == blocks.block_hash(
        header
    )


def test_block_hash_changes_with_any_field() -> None:
    base = blocks.block_hash(make_header())
    assert blocks.block_hash(make_header(height=6)) != base
    assert blocks.block_hash(make_header(time_ms=1_001)) != base
    assert blocks.block_hash(make_header(chain="other")) != base


TX = [bytes([i]) * 32 for i in range(5)]


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, h(b"")),
        (1, leaf(TX[0])),
        (2, node(leaf(TX[0]), leaf(TX[1]))),
        (3, node(node(leaf(TX[0]), leaf(TX[1])), leaf(TX[2]))),
        (
            5,
            node(
                node(node(leaf(TX[0]), leaf(TX[1])), node(leaf(TX[2]), leaf(TX[3]))),
                leaf(TX[4]),
            ),
        ),
    ],
)
def test_tx_root_known_vectors(count: int, expected: bytes) -> None:
    assert blocks.tx_root(TX[:count]) == expected


def test_tx_root_depends_on_order() -> None:
    assert blocks.tx_root(TX[:2]) != blocks.tx_root([TX[1], TX[0]])


def test_receipts_root_hashes_each_receipt_first() -> None:
    receipts = [
        receipt_pb2.Receipt(tx_hash=TX[0], status=receipt_pb2.TX_STATUS_OK, height=3, index=0),
        receipt_pb2.Receipt(
            tx_hash=TX[1], status=receipt_pb2.TX_STATUS_INSUFFICIENT_FUNDS, height=3, index=1
        ),
    ]
    digests = [h(r.SerializeToString(deterministic=True)) for r in receipts]
    assert blocks.receipts_root(receipts) == node(leaf(digests[0]), leaf(digests[1]))
    assert blocks.receipts_root([]) == h(b"")


def test_commit_hash_of_nothing_is_hash_of_empty() -> None:
    assert blocks.commit_hash(None) == h(b"")
    assert blocks.commit_hash(block_pb2.CommitCertificate()) == h(b"")
    cert = block_pb2.CommitCertificate(height=2, round=1, block_id=b"\x01" * 32)
    assert blocks.commit_hash(cert) == h(cert.SerializeToString(deterministic=True))


def test_validator_set_hash_ignores_order_and_names() -> None:
    keys = [SigningKey.from_seed(bytes([i]) * 32) for i in range(1, 4)]
    vals = [
        block_pb2.Validator(address=k.address, public_key=k.public_key, power=i + 1)
        for i, k in enumerate(keys)
    ]
    a = block_pb2.ValidatorSet(validators=vals)
    b = block_pb2.ValidatorSet(validators=list(reversed(vals)))
    named = block_pb2.ValidatorSet()
    named.CopyFrom(a)
    named.validators[0].name = "bank-a"
    assert blocks.validator_set_hash(a) == blocks.validator_set_hash(b) == blocks.validator_set_hash(named)
    repowered = block_pb2.ValidatorSet()
    repowered.CopyFrom(a)
    repowered.validators[0].power = 9
    assert blocks.validator_set_hash(repowered) != blocks.validator_set_hash(a)


def test_sign_bytes_use_their_domains_and_canonical_payloads() -> None:
    bid = b"\x07" * 32
    assert blocks.vote_sign_bytes(CHAIN, 2, 9, 1, bid) == crypto.sign_bytes(
        crypto.Domain.VOTE, CHAIN, crypto.vote_payload(2, 9, 1, bid)
    )
    assert blocks.proposal_sign_bytes(CHAIN, 9, 1, -1, bid) == crypto.sign_bytes(
        crypto.Domain.PROPOSAL, CHAIN, crypto.proposal_payload(9, 1, -1, bid)
    )
    assert blocks.vote_sign_bytes(CHAIN, 2, 9, 1, b"") != blocks.vote_sign_bytes(CHAIN, 2, 9, 1, bid)
    assert blocks.vote_sign_bytes(CHAIN, 1, 9, 1, bid) != blocks.vote_sign_bytes(CHAIN, 2, 9, 1, bid)


# --- commit certificates ------------------------------------------------------------------------

KEYS = [SigningKey.from_seed(bytes([0x50 + i]) * 32) for i in range(4)]
BLOCK_ID = b"\xab" * 32
HEIGHT, ROUND = 7, 1


def validator_set(powers: tuple[int, ...] = (1, 1, 1, 1)) -> block_pb2.ValidatorSet:
    return block_pb2.ValidatorSet(
        validators=[
            block_pb2.Validator(address=k.address, public_key=k.public_key, power=p, name=f"v{i}")
            for i, (k, p) in enumerate(zip(KEYS, powers, strict=True))
        ]
    )


def precommit(
    key: SigningKey,
    *,
    chain: str = CHAIN,
    vote_type: int = block_pb2.VOTE_TYPE_PRECOMMIT,
    height: int = HEIGHT,
    round_: int = ROUND,
    block_id: bytes = BLOCK_ID,
) -> block_pb2.CommitSig:
    sig = key.sign_raw(blocks.vote_sign_bytes(chain, vote_type, height, round_, block_id))
    return block_pb2.CommitSig(validator=key.address, signature=sig)


def certificate(sigs: list[block_pb2.CommitSig]) -> block_pb2.CommitCertificate:
    return block_pb2.CommitCertificate(height=HEIGHT, round=ROUND, block_id=BLOCK_ID, signatures=sigs)


def reject(
    cert: block_pb2.CommitCertificate,
    reason: CommitFailure,
    vs: block_pb2.ValidatorSet | None = None,
    **expect: object,
) -> CommitError:
    vs = vs or validator_set()
    before = (cert.SerializeToString(deterministic=True), vs.SerializeToString(deterministic=True))
    with pytest.raises(CommitError) as info:
        blocks.verify_commit(CHAIN, vs, cert, **expect)  # type: ignore[arg-type]
    assert info.value.reason is reason, info.value
    # Verification reads only: the certificate and the set are unchanged.
    assert before == (cert.SerializeToString(deterministic=True), vs.SerializeToString(deterministic=True))
    return info.value


def test_quorum_of_real_precommits_is_accepted() -> None:
    cert = certificate([precommit(k) for k in KEYS[:3]])
    blocks.verify_commit(CHAIN, validator_set(), cert, height=HEIGHT, block_hash=BLOCK_ID)
    blocks.verify_commit(CHAIN, validator_set(), certificate([precommit(k) for k in KEYS]))


def test_weighted_quorum_counts_power_not_heads() -> None:
    # Powers 10,1,1,1: the first validator alone holds 10/13 > 2/3.
    blocks.verify_commit(CHAIN, validator_set((10, 1, 1, 1)), certificate([precommit(KEYS[0])]))
    err = reject(
        certificate([precommit(k) for k in KEYS[1:]]),
        CommitFailure.INSUFFICIENT_POWER,
        validator_set((10, 1, 1, 1)),
    )
    assert (err.signed, err.total) == (3, 13)


def test_exactly_two_thirds_is_not_enough() -> None:
    # 2 of 3 power is not MORE than 2/3.
    vs = validator_set((1, 1, 1, 0))
    del vs.validators[3]
    err = reject(certificate([precommit(k) for k in KEYS[:2]]), CommitFailure.INSUFFICIENT_POWER, vs)
    assert (err.signed, err.total) == (2, 3)


def test_too_little_power_is_rejected() -> None:
    err = reject(certificate([precommit(k) for k in KEYS[:2]]), CommitFailure.INSUFFICIENT_POWER)
    assert (err.signed, err.total) == (2, 4)


def test_bad_signature_is_rejected() -> None:
    sigs = [precommit(k) for k in KEYS[:3]]
    sigs[1].signature = bytes([sigs[1].signature[0] ^ 1]) + sigs[1].signature[1:]
    err = reject(certificate(sigs), CommitFailure.BAD_SIGNATURE)
    assert err.validator == KEYS[1].address


def test_signature_by_another_key_is_rejected() -> None:
    sigs = [precommit(k) for k in KEYS[:3]]
    sigs[2] = block_pb2.CommitSig(validator=KEYS[2].address, signature=precommit(KEYS[3]).signature)
    assert reject(certificate(sigs), CommitFailure.BAD_SIGNATURE).validator == KEYS[2].address


def test_prevote_instead_of_precommit_is_rejected() -> None:
    sigs = [precommit(k) for k in KEYS[:3]] + [precommit(KEYS[3], vote_type=block_pb2.VOTE_TYPE_PREVOTE)]
    err = reject(certificate(sigs), CommitFailure.NOT_A_PRECOMMIT)
    assert err.validator == KEYS[3].address


@pytest.mark.parametrize(
    "signed_for",
    [{"height": HEIGHT + 1}, {"round_": ROUND + 1}, {"block_id": b"\xcd" * 32}, {"block_id": b""}],
    ids=["height", "round", "block", "nil"],
)
def test_signature_for_another_height_round_or_block_is_rejected(signed_for: dict[str, object]) -> None:
    sigs = [precommit(k) for k in KEYS[:2]] + [precommit(KEYS[2], **signed_for)]  # type: ignore[arg-type]
    assert reject(certificate(sigs), CommitFailure.BAD_SIGNATURE).validator == KEYS[2].address


def test_certificate_relabelled_to_another_round_is_rejected() -> None:
    cert = certificate([precommit(k) for k in KEYS[:3]])
    cert.round = ROUND + 1
    reject(cert, CommitFailure.BAD_SIGNATURE)


def test_wrong_expected_height_is_rejected() -> None:
    cert = certificate([precommit(k) for k in KEYS[:3]])
    reject(cert, CommitFailure.HEIGHT_MISMATCH, height=HEIGHT + 1)


def test_wrong_expected_block_hash_is_rejected() -> None:
    cert = certificate([precommit(k) for k in KEYS[:3]])
    reject(cert, CommitFailure.BLOCK_ID_MISMATCH, block_hash=b"\xcd" * 32)


def test_unknown_validator_is_rejected_not_skipped() -> None:
    outsider = SigningKey.from_seed(b"\x99" * 32)
    sigs = [precommit(k) for k in KEYS] + [precommit(outsider)]
    err = reject(certificate(sigs), CommitFailure.UNKNOWN_VALIDATOR)
    assert err.validator == outsider.address


def test_duplicate_signer_is_rejected() -> None:
    sigs = [precommit(k) for k in KEYS[:2]] + [precommit(KEYS[1])]
    err = reject(certificate(sigs), CommitFailure.DUPLICATE_SIGNER)
    assert err.validator == KEYS[1].address


def test_wrong_chain_id_is_rejected() -> None:
    sigs = [precommit(k, chain="other-chain") for k in KEYS]
    reject(certificate(sigs), CommitFailure.BAD_SIGNATURE)


def test_malformed_certificates_are_rejected() -> None:
    nil = certificate([precommit(k, block_id=b"") for k in KEYS])
    nil.block_id = b""
    reject(nil, CommitFailure.MALFORMED)
    zero = certificate([precommit(k) for k in KEYS])
    zero.height = 0
    reject(zero, CommitFailure.MALFORMED)
    reject(certificate([]), CommitFailure.MALFORMED)


def test_invalid_validator_sets_are_rejected() -> None:
    cert = certificate([precommit(k) for k in KEYS])
    reject(cert, CommitFailure.INVALID_VALIDATOR_SET, block_pb2.ValidatorSet())
    twice = validator_set()
    twice.validators.append(twice.validators[0])
    reject(cert, CommitFailure.INVALID_VALIDATOR_SET, twice)
    mislabelled = validator_set()
    mislabelled.validators[0].public_key = KEYS[1].public_key
    reject(cert, CommitFailure.INVALID_VALIDATOR_SET, mislabelled)
    powerless = validator_set((1, 1, 1, 0))
    reject(cert, CommitFailure.INVALID_VALIDATOR_SET, powerless)
