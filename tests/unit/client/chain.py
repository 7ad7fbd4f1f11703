"""Test helpers: real validator keys, headers and commit certificates signed with them."""

from __future__ import annotations

from clearline.v1 import block_pb2, ledger_api_pb2, state_pb2
from node import blocks
from node.crypto import SigningKey

CHAIN = "clearline-test"
VALIDATOR_KEYS = [SigningKey.from_seed(bytes([0x70 + i]) * 32) for i in range(4)]
OUTSIDERS = [SigningKey.from_seed(bytes([0x90 + i]) * 32) for i in range(4)]


def validator_set(keys: list[SigningKey] = VALIDATOR_KEYS) -> block_pb2.ValidatorSet:
    return block_pb2.ValidatorSet(
        validators=[block_pb2.Validator(address=k.address, public_key=k.public_key, power=1) for k in keys]
    )


def header(height: int, state_root: bytes = b"\x33" * 32, chain: str = CHAIN) -> block_pb2.Header:
    return block_pb2.Header(
        chain_id=chain, height=height, time_ms=1_700_000_000_000 + height, state_root=state_root
    )


def commit_for(
    hdr: block_pb2.Header, signers: list[SigningKey] = VALIDATOR_KEYS[:3], chain: str = CHAIN, round_: int = 0
) -> block_pb2.CommitCertificate:
    block_id = blocks.block_hash(hdr)
    message = blocks.vote_sign_bytes(chain, block_pb2.VOTE_TYPE_PRECOMMIT, hdr.height, round_, block_id)
    return block_pb2.CommitCertificate(
        height=hdr.height,
        round=round_,
        block_id=block_id,
        signatures=[block_pb2.CommitSig(validator=k.address, signature=k.sign_raw(message)) for k in signers],
    )


def proved_account(
    address: bytes,
    *,
    height: int = 9,
    nonce: int = 4,
    exists: bool = True,
    signers: list[SigningKey] = VALIDATOR_KEYS[:3],
) -> ledger_api_pb2.GetAccountResponse:
    """A GetAccount(prove=True) answer whose header is committed by signers (proof contents are
    opaque here: the tests that use it substitute the Merkle verifier)."""
    hdr = header(height, state_root=bytes([height]) * 32)
    resp = ledger_api_pb2.GetAccountResponse(
        exists=exists, height=height, header=hdr, commit=commit_for(hdr, signers)
    )
    if exists:
        resp.account.CopyFrom(state_pb2.Account(address=address, nonce=nonce))
    resp.proof.key = b"acct/" + address
    resp.proof.present = exists
    if exists:
        resp.proof.value = resp.account.SerializeToString(deterministic=True)
    resp.validators.CopyFrom(validator_set())
    return resp
