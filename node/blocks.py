"""Pure helpers on blocks and commit certificates, shared by the node, block sync and clients.

Hashes: a block hash is the SHA-256 of the deterministically serialized `Header`; `tx_root` and
`receipts_root` are binary Merkle roots in the style of RFC 6962 (leaf = sha256(0x00 || item),
inner node = sha256(0x01 || left || right), the left subtree holding the largest power of two
smaller than the number of leaves; the empty tree is sha256(b"")). Vote and proposal sign bytes are
the canonical encodings of node.crypto under their own signing domains.

`verify_commit` is the one check that makes a commit certificate stand for a block: it is used by
block sync (a verified certificate stands for the transaction signatures inside the block) and by
clients that verify account proofs without trusting the node that served them. It never ignores
anything silently: an unknown or repeated signer is an error, not a skipped entry.

No I/O, clock or randomness here, so node/consensus may import it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import NewType

from clearline.v1 import block_pb2, receipt_pb2
from node import crypto
from node.crypto import Domain, Hash

VotingPower = NewType("VotingPower", int)

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
EMPTY_HASH = crypto.sha256(b"")


def block_hash(header: block_pb2.Header) -> Hash:
    """The block hash: SHA-256 of the deterministically serialized header."""
    return crypto.sha256(header.SerializeToString(deterministic=True))


def merkle_root(items: Sequence[bytes]) -> Hash:
    """RFC 6962 Merkle tree hash of items (each item is one leaf); sha256(b"") when empty."""
    if not items:
        return EMPTY_HASH
    return _subtree_root(items, 0, len(items))


def _subtree_root(items: Sequence[bytes], start: int, end: int) -> Hash:
    count = end - start
    if count == 1:
        return crypto.sha256(_LEAF_PREFIX + items[start])
    split = 1 << ((count - 1).bit_length() - 1)  # largest power of two < count
    left = _subtree_root(items, start, start + split)
    right = _subtree_root(items, start + split, end)
    return crypto.sha256(_NODE_PREFIX + left + right)


def tx_root(tx_hashes: Sequence[bytes]) -> Hash:
    """Merkle root of a block's transaction hashes, in block order."""
    return merkle_root(tx_hashes)


def receipts_root(receipts: Sequence[receipt_pb2.Receipt]) -> Hash:
    """Merkle root over the SHA-256 of each receipt's deterministic bytes, in block order."""
    return merkle_root([crypto.sha256(r.SerializeToString(deterministic=True)) for r in receipts])


def commit_hash(cert: block_pb2.CommitCertificate | None) -> Hash:
    """Hash of a commit certificate (a header's last_commit_hash); None or empty -> sha256(b"")."""
    if cert is None:
        return EMPTY_HASH
    return crypto.sha256(cert.SerializeToString(deterministic=True))


def validator_set_hash(vs: block_pb2.ValidatorSet) -> Hash:
    """Hash of a validator set: (address, public_key, power) of each member, sorted by address.

    Names are labels for people and are not part of the hash; neither is the order of the input.
    """
    canonical = block_pb2.ValidatorSet()
    for v in sorted(vs.validators, key=lambda v: v.address):
        canonical.validators.add(address=v.address, public_key=v.public_key, power=v.power)
    return crypto.sha256(canonical.SerializeToString(deterministic=True))


def vote_sign_bytes(chain_id: str, vote_type: int, height: int, round: int, block_id: bytes) -> bytes:
    """The bytes a validator signs for a vote; block_id b"" is a vote for nil."""
    return crypto.sign_bytes(Domain.VOTE, chain_id, crypto.vote_payload(vote_type, height, round, block_id))


def proposal_sign_bytes(chain_id: str, height: int, round: int, pol_round: int, block_id: bytes) -> bytes:
    """The bytes a proposer signs for a proposal (pol_round -1 = none)."""
    return crypto.sign_bytes(
        Domain.PROPOSAL, chain_id, crypto.proposal_payload(height, round, pol_round, block_id)
    )


def total_power(vs: block_pb2.ValidatorSet) -> VotingPower:
    """Sum of the voting power of every member."""
    return VotingPower(sum(v.power for v in vs.validators))


def has_quorum(power: int, total: int) -> bool:
    """True if power is more than 2/3 of total (integer arithmetic, no rounding)."""
    return 3 * power > 2 * total


# --- commit certificates ----------------------------------------------------------------------


class CommitFailure(enum.StrEnum):
    """Why a commit certificate was rejected (the machine-readable reason of CommitError)."""

    MALFORMED = "MALFORMED"  # zero height, nil or wrongly sized block id, no signatures
    INVALID_VALIDATOR_SET = "INVALID_VALIDATOR_SET"  # empty, zero power, repeated or mismatched address
    HEIGHT_MISMATCH = "HEIGHT_MISMATCH"
    BLOCK_ID_MISMATCH = "BLOCK_ID_MISMATCH"
    UNKNOWN_VALIDATOR = "UNKNOWN_VALIDATOR"
    DUPLICATE_SIGNER = "DUPLICATE_SIGNER"
    NOT_A_PRECOMMIT = "NOT_A_PRECOMMIT"  # the signature is a valid prevote, not a precommit
    BAD_SIGNATURE = "BAD_SIGNATURE"  # wrong chain, height, round, block or key
    INSUFFICIENT_POWER = "INSUFFICIENT_POWER"


class CommitError(Exception):
    """A commit certificate does not prove its block. reason says why; validator names the signer
    at fault when there is one; signed and total give the voting power for INSUFFICIENT_POWER."""

    def __init__(
        self,
        reason: CommitFailure,
        detail: str,
        *,
        validator: bytes | None = None,
        signed: int | None = None,
        total: int | None = None,
    ) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.validator = validator
        self.signed = signed
        self.total = total


def verify_commit(
    chain_id: str,
    vs: block_pb2.ValidatorSet,
    cert: block_pb2.CommitCertificate,
    *,
    height: int | None = None,
    block_hash: bytes | None = None,
) -> None:
    """Check that cert proves a decision of vs on chain_id; raises CommitError with the reason.

    Holds when: the height and block id match (when given), every signature is a valid PRECOMMIT of
    cert.block_id at (cert.height, cert.round) by a distinct member of vs, and the signing power is
    more than 2/3 of vs's total power.
    """
    members = _index_validators(vs)
    if cert.height == 0:
        raise CommitError(CommitFailure.MALFORMED, "certificate height is 0")
    if len(cert.block_id) != crypto.HASH_LEN:
        what = "nil" if not cert.block_id else f"{len(cert.block_id)} bytes"
        raise CommitError(CommitFailure.MALFORMED, f"certificate block id is {what}, not a block hash")
    if height is not None and cert.height != height:
        raise CommitError(
            CommitFailure.HEIGHT_MISMATCH, f"certificate is for height {cert.height}, not {height}"
        )
    if block_hash is not None and cert.block_id != block_hash:
        raise CommitError(
            CommitFailure.BLOCK_ID_MISMATCH,
            f"certificate is for block {cert.block_id.hex()}, not {block_hash.hex()}",
        )
    if not cert.signatures:
        raise CommitError(CommitFailure.MALFORMED, "certificate carries no signatures")
    message = vote_sign_bytes(chain_id, block_pb2.VOTE_TYPE_PRECOMMIT, cert.height, cert.round, cert.block_id)
    seen: set[bytes] = set()
    signed = 0
    for sig in cert.signatures:
        member = members.get(sig.validator)
        if member is None:
            raise CommitError(
                CommitFailure.UNKNOWN_VALIDATOR,
                f"{sig.validator.hex() or '(empty)'} is not in the validator set",
                validator=sig.validator,
            )
        if sig.validator in seen:
            raise CommitError(
                CommitFailure.DUPLICATE_SIGNER, f"{sig.validator.hex()} signed twice", validator=sig.validator
            )
        seen.add(sig.validator)
        if not crypto.verify_raw(member.public_key, sig.signature, message):
            prevote = vote_sign_bytes(
                chain_id, block_pb2.VOTE_TYPE_PREVOTE, cert.height, cert.round, cert.block_id
            )
            if crypto.verify_raw(member.public_key, sig.signature, prevote):
                raise CommitError(
                    CommitFailure.NOT_A_PRECOMMIT,
                    f"{sig.validator.hex()} signed a prevote, not a precommit",
                    validator=sig.validator,
                )
            raise CommitError(
                CommitFailure.BAD_SIGNATURE,
                f"signature of {sig.validator.hex()} does not verify for chain {chain_id!r}, "
                f"height {cert.height}, round {cert.round}, block {cert.block_id.hex()}",
                validator=sig.validator,
            )
        signed += member.power
    total = total_power(vs)
    if not has_quorum(signed, total):
        raise CommitError(
            CommitFailure.INSUFFICIENT_POWER,
            f"signers hold {signed} of {total} voting power, more than 2/3 is needed",
            signed=signed,
            total=total,
        )


def _index_validators(vs: block_pb2.ValidatorSet) -> dict[bytes, block_pb2.Validator]:
    if not vs.validators:
        raise CommitError(CommitFailure.INVALID_VALIDATOR_SET, "the validator set is empty")
    members: dict[bytes, block_pb2.Validator] = {}
    for v in vs.validators:
        if v.address in members:
            raise CommitError(
                CommitFailure.INVALID_VALIDATOR_SET, f"{v.address.hex()} appears twice", validator=v.address
            )
        if v.power == 0:
            raise CommitError(
                CommitFailure.INVALID_VALIDATOR_SET,
                f"{v.address.hex()} has no voting power",
                validator=v.address,
            )
        try:
            derived = crypto.address_of(v.public_key)
        except crypto.CryptoError as exc:
            raise CommitError(CommitFailure.INVALID_VALIDATOR_SET, str(exc), validator=v.address) from None
        if derived != v.address:
            raise CommitError(
                CommitFailure.INVALID_VALIDATOR_SET,
                f"{v.address.hex()} is not the address of its public key",
                validator=v.address,
            )
        members[v.address] = v
    return members
