"""Verifying what a node says without trusting it: account proofs and cross-checks.

An answer to GetAccount(prove=True) carries the account entry, a Merkle proof of it against a
header's state_root, that header, and the commit certificate of the header's block. The caller
trusts only a validator set (from genesis, or followed through validator changes). Then:

1. verify_commit(certificate, trusted set, height = header.height, block = block_hash(header))
   shows that more than 2/3 of the trusted power committed exactly this header, so its state_root
   is the chain's state after that height (immediate execution);
2. the Merkle proof shows that the account entry (or its absence) is in that state.

The Merkle check is node.ledger's `verify_proof` over `account_key(address)`, imported lazily so
the client does not load the ledger until it verifies a proof. `latest_agreeing` cross-checks the
verified answers of several nodes: they must agree at equal heights, and the newest one wins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from clearline.v1 import block_pb2, ledger_api_pb2
from cluster.client.errors import ProofError, ProofFailure
from cluster.client.values import VerifiedAccount
from node import blocks, crypto
from node.crypto import Address

ProofVerifier = Callable[[bytes, bytes, bytes | None, ledger_api_pb2.MerkleProof], bool]


def _ledger_functions() -> tuple[ProofVerifier, Callable[[bytes], bytes]]:
    """node.ledger's (verify_proof, account_key), imported on first use."""
    from node.ledger import account_key, verify_proof  # type: ignore[attr-defined,unused-ignore]

    return verify_proof, account_key


def verify_account_proof(
    resp: ledger_api_pb2.GetAccountResponse,
    *,
    chain_id: str,
    trusted_validators: block_pb2.ValidatorSet,
    address: bytes | None = None,
    target: str | None = None,
) -> VerifiedAccount:
    """Check resp against the trusted validator set; raises ProofError with the reason.

    address: the address that was asked for; needed to check an absence proof, and checked
    against the account in the answer when given. target names the node in errors.
    """
    if not (resp.HasField("proof") and resp.HasField("header") and resp.HasField("commit")):
        raise ProofError(ProofFailure.MISSING_PROOF, "answer has no proof, header or commit", target=target)
    if address is None:
        if not resp.exists:
            raise ProofError(
                ProofFailure.ADDRESS_REQUIRED, "an absence proof needs the address asked for", target=target
            )
        address = resp.account.address
    if len(address) != crypto.ADDRESS_LEN:
        raise ProofError(ProofFailure.WRONG_ACCOUNT, f"{address.hex()} is not an address", target=target)
    if resp.exists and resp.account.address != address:
        raise ProofError(
            ProofFailure.WRONG_ACCOUNT,
            f"answer is about {resp.account.address.hex()}, not {address.hex()}",
            target=target,
        )
    header = resp.header
    if header.chain_id != chain_id:
        raise ProofError(
            ProofFailure.WRONG_CHAIN,
            f"header is on chain {header.chain_id!r}, not {chain_id!r}",
            target=target,
        )
    if resp.height != header.height:
        raise ProofError(
            ProofFailure.HEIGHT_MISMATCH,
            f"answer claims height {resp.height}, its header is at {header.height}",
            target=target,
        )
    hash_ = blocks.block_hash(header)
    try:
        blocks.verify_commit(
            chain_id, trusted_validators, resp.commit, height=header.height, block_hash=hash_
        )
    except blocks.CommitError as exc:
        raise ProofError(
            ProofFailure.COMMIT_INVALID, str(exc), commit_reason=exc.reason, target=target
        ) from exc
    if resp.proof.present != resp.exists:
        raise ProofError(
            ProofFailure.PROOF_INVALID,
            f"answer says exists={resp.exists} but the proof says present={resp.proof.present}",
            target=target,
        )
    verify_proof, account_key = _ledger_functions()
    value = resp.account.SerializeToString(deterministic=True) if resp.exists else None
    if not verify_proof(header.state_root, account_key(address), value, resp.proof):
        raise ProofError(
            ProofFailure.PROOF_INVALID,
            f"proof of {address.hex()} does not lead to state root {header.state_root.hex()}",
            target=target,
        )
    account = None
    if resp.exists:
        account = type(resp.account)()
        account.CopyFrom(resp.account)
    return VerifiedAccount(
        address=Address(address),
        exists=resp.exists,
        account=account,
        height=header.height,
        block_hash=hash_,
        state_root=header.state_root,
    )


def latest_agreeing(results: Sequence[tuple[str, VerifiedAccount]]) -> VerifiedAccount:
    """The newest of several verified answers (target, answer); they must agree at equal heights.

    Each answer is already proved against the trusted set, so a disagreement at one height means
    more than 1/3 of that set signed two states: raised as NODES_DISAGREE, never papered over.
    """
    if not results:
        raise ValueError("no answers to cross-check")
    by_height: dict[int, tuple[str, VerifiedAccount]] = {}
    for target, answer in results:
        seen = by_height.get(answer.height)
        if seen is None:
            by_height[answer.height] = (target, answer)
        elif _entry(seen[1]) != _entry(answer):
            raise ProofError(
                ProofFailure.NODES_DISAGREE,
                f"{seen[0]} and {target} proved different entries for {answer.address.hex()} "
                f"at height {answer.height}",
                target=target,
            )
    return by_height[max(by_height)][1]


def _entry(answer: VerifiedAccount) -> tuple[bytes, bool, bytes | None, bytes]:
    body = answer.account.SerializeToString(deterministic=True) if answer.account is not None else None
    return (answer.block_hash, answer.exists, body, answer.state_root)
