"""cluster.client.proofs: an account answer is believed only if a trusted quorum committed its
header and its Merkle proof leads to that header's state root."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from clearline.v1 import ledger_api_pb2
from cluster.client import proofs
from cluster.client.errors import ProofError, ProofFailure
from cluster.client.values import VerifiedAccount
from node import blocks
from node.blocks import CommitFailure

from .chain import CHAIN, OUTSIDERS, VALIDATOR_KEYS, commit_for, header, proved_account, validator_set

ALICE = b"\xa1" * 20
TRUSTED = validator_set()


@dataclass
class StubMerkle:
    """Stands in for node.ledger's verify_proof/account_key (the pure Merkle check is the ledger's)."""

    answer: bool = True
    calls: list[tuple[bytes, bytes, bytes | None, bytes]] = field(default_factory=list)

    def verify_proof(
        self, root: bytes, key: bytes, value: bytes | None, proof: ledger_api_pb2.MerkleProof
    ) -> bool:
        self.calls.append((root, key, value, proof.SerializeToString(deterministic=True)))
        return self.answer

    @staticmethod
    def account_key(address: bytes) -> bytes:
        return b"acct/" + address


@pytest.fixture
def merkle(monkeypatch: pytest.MonkeyPatch) -> StubMerkle:
    stub = StubMerkle()
    monkeypatch.setattr(proofs, "_ledger_functions", lambda: (stub.verify_proof, stub.account_key))
    return stub


def verify(resp: ledger_api_pb2.GetAccountResponse, **kw: object) -> VerifiedAccount:
    return proofs.verify_account_proof(resp, chain_id=CHAIN, trusted_validators=TRUSTED, **kw)  # type: ignore[arg-type]


def reject(resp: ledger_api_pb2.GetAccountResponse, reason: ProofFailure, **kw: object) -> ProofError:
    before = resp.SerializeToString(deterministic=True)
    with pytest.raises(ProofError) as info:
        verify(resp, **kw)
    assert info.value.reason is reason, info.value
    assert resp.SerializeToString(deterministic=True) == before  # verification reads only
    return info.value


def test_committed_account_with_valid_proof_is_accepted(merkle: StubMerkle) -> None:
    resp = proved_account(ALICE, height=9, nonce=4)
    got = verify(resp, address=ALICE)
    assert got.exists and got.account is not None and got.account.nonce == 4
    assert (got.address, got.height) == (ALICE, 9)
    assert got.block_hash == blocks.block_hash(resp.header)
    assert got.state_root == resp.header.state_root
    # The Merkle check ran on exactly the header's root, the account key and the entry bytes.
    assert merkle.calls == [
        (
            resp.header.state_root,
            b"acct/" + ALICE,
            resp.account.SerializeToString(deterministic=True),
            resp.proof.SerializeToString(deterministic=True),
        )
    ]


def test_absence_is_proved_with_value_none(merkle: StubMerkle) -> None:
    resp = proved_account(ALICE, exists=False)
    got = verify(resp, address=ALICE)
    assert not got.exists and got.account is None
    assert merkle.calls[0][1:3] == (b"acct/" + ALICE, None)


def test_absence_without_the_address_is_refused(merkle: StubMerkle) -> None:
    reject(proved_account(ALICE, exists=False), ProofFailure.ADDRESS_REQUIRED)
    assert merkle.calls == []


def test_proof_that_does_not_reach_the_root_is_rejected(merkle: StubMerkle) -> None:
    merkle.answer = False
    reject(proved_account(ALICE), ProofFailure.PROOF_INVALID, address=ALICE)


def test_presence_flag_contradicting_the_answer_is_rejected(merkle: StubMerkle) -> None:
    resp = proved_account(ALICE)
    resp.proof.present = False
    reject(resp, ProofFailure.PROOF_INVALID, address=ALICE)
    assert merkle.calls == []


def test_answer_without_proof_header_or_commit_is_rejected(merkle: StubMerkle) -> None:
    for part in ("proof", "header", "commit"):
        resp = proved_account(ALICE)
        resp.ClearField(part)  # type: ignore[arg-type]
        reject(resp, ProofFailure.MISSING_PROOF, address=ALICE)
    assert merkle.calls == []


def test_answer_about_another_account_is_rejected(merkle: StubMerkle) -> None:
    reject(proved_account(b"\xb2" * 20), ProofFailure.WRONG_ACCOUNT, address=ALICE)


def test_header_of_another_chain_is_rejected(merkle: StubMerkle) -> None:
    resp = proved_account(ALICE)
    resp.header.chain_id = "other-chain"
    resp.commit.CopyFrom(commit_for(resp.header, chain="other-chain"))
    reject(resp, ProofFailure.WRONG_CHAIN, address=ALICE)


def test_height_claim_differing_from_header_is_rejected(merkle: StubMerkle) -> None:
    resp = proved_account(ALICE, height=9)
    resp.height = 10
    reject(resp, ProofFailure.HEIGHT_MISMATCH, address=ALICE)


def test_state_root_swapped_after_signing_is_rejected(merkle: StubMerkle) -> None:
    resp = proved_account(ALICE)
    resp.header.state_root = b"\xee" * 32  # the certificate signed the original header
    err = reject(resp, ProofFailure.COMMIT_INVALID, address=ALICE)
    assert err.commit_reason is CommitFailure.BLOCK_ID_MISMATCH
    assert merkle.calls == []


def test_certificate_of_another_height_is_rejected(merkle: StubMerkle) -> None:
    resp = proved_account(ALICE, height=9)
    resp.commit.CopyFrom(commit_for(header(8)))
    assert (
        reject(resp, ProofFailure.COMMIT_INVALID, address=ALICE).commit_reason
        is CommitFailure.HEIGHT_MISMATCH
    )


def test_minority_of_trusted_validators_is_not_enough(merkle: StubMerkle) -> None:
    resp = proved_account(ALICE, signers=VALIDATOR_KEYS[:2])
    err = reject(resp, ProofFailure.COMMIT_INVALID, address=ALICE)
    assert err.commit_reason is CommitFailure.INSUFFICIENT_POWER


def test_set_served_by_the_node_is_not_trusted(merkle: StubMerkle) -> None:
    # A lying node signs with its own keys and serves its own validator set: the client checks
    # against the set it trusts, so the signers are unknown.
    resp = proved_account(ALICE, signers=OUTSIDERS[:3])
    resp.validators.CopyFrom(validator_set(OUTSIDERS))
    err = reject(resp, ProofFailure.COMMIT_INVALID, address=ALICE)
    assert err.commit_reason is CommitFailure.UNKNOWN_VALIDATOR


def test_latest_agreeing_prefers_the_newest_and_catches_disagreement(merkle: StubMerkle) -> None:
    old = verify(proved_account(ALICE, height=9, nonce=4), address=ALICE)
    new = verify(proved_account(ALICE, height=10, nonce=5), address=ALICE)
    assert proofs.latest_agreeing([("a", old), ("b", new), ("c", old)]) is new
    fork = verify(proved_account(ALICE, height=10, nonce=6), address=ALICE)
    with pytest.raises(ProofError) as info:
        proofs.latest_agreeing([("a", new), ("b", fork)])
    assert info.value.reason is ProofFailure.NODES_DISAGREE and info.value.target == "b"
    with pytest.raises(ValueError):
        proofs.latest_agreeing([])


def _real_ledger_proofs() -> tuple[object, object]:
    ledger = pytest.importorskip("node.ledger")
    verify_proof = getattr(ledger, "verify_proof", None)
    account_key = getattr(ledger, "account_key", None)
    if verify_proof is None or account_key is None:
        pytest.skip("node.ledger does not export verify_proof/account_key yet (un-skips when it does)")
    return verify_proof, account_key


def test_real_ledger_merkle_check_rejects_a_proof_against_another_root() -> None:
    """Uses the real node.ledger.verify_proof (skipped until node.ledger provides it)."""
    _real_ledger_proofs()
    resp = proved_account(ALICE)  # its proof has no steps: it cannot lead to the header's root
    reject(resp, ProofFailure.PROOF_INVALID, address=ALICE)


def _real_ledger_state() -> tuple[object, bytes, object]:
    """A genesis state built by the real node.ledger (skipped until node.ledger provides it)."""
    _real_ledger_proofs()
    import node.ledger as ledger

    if not all(hasattr(ledger, n) for n in ("Ledger", "MemoryKV")) or not hasattr(
        ledger.Ledger, "prove_account"
    ):
        pytest.skip("node.ledger has no Ledger.prove_account yet (un-skips when it does)")
    from clearline.v1 import state_pb2

    genesis = state_pb2.Genesis(chain_id=CHAIN)
    genesis.validators.add(public_key=VALIDATOR_KEYS[0].public_key, power=1)
    genesis.accounts.add(public_key=OUTSIDERS[0].public_key, kyc_status=2)
    writes, root = ledger.Ledger.genesis_writes(genesis)
    kv = ledger.MemoryKV()
    kv.apply(writes)
    return ledger.Ledger.open(kv), root, OUTSIDERS[0].address


def _answer_from(state: object, root: bytes, address: bytes) -> ledger_api_pb2.GetAccountResponse:
    account = state.get_account(address)  # type: ignore[attr-defined]
    hdr = header(12, state_root=root)
    resp = ledger_api_pb2.GetAccountResponse(
        exists=account is not None,
        height=12,
        header=hdr,
        commit=commit_for(hdr),
        proof=state.prove_account(address),  # type: ignore[attr-defined]
    )
    if account is not None:
        resp.account.CopyFrom(account)
    return resp


def test_real_ledger_proofs_of_presence_and_absence_verify_end_to_end() -> None:
    """node.ledger's real Merkle proofs, under a real commit certificate (skips until available)."""
    state, root, holder = _real_ledger_state()
    got = verify(_answer_from(state, root, holder), address=holder)
    assert got.exists and got.account is not None and got.account.address == holder
    assert got.state_root == root
    nobody = b"\x0e" * 20
    absent = verify(_answer_from(state, root, nobody), address=nobody)
    assert not absent.exists and absent.account is None


def test_real_ledger_proof_rejects_a_doctored_account() -> None:
    state, root, holder = _real_ledger_state()
    resp = _answer_from(state, root, holder)
    resp.account.nonce += 1  # the node lies about the entry; the proof still commits the truth
    reject(resp, ProofFailure.PROOF_INVALID, address=holder)
    absent = _answer_from(state, root, b"\x0e" * 20)
    absent.exists = True  # claims an account the proof shows absent
    absent.account.address = b"\x0e" * 20
    absent.proof.present = True  # and doctors the flag, so the real Merkle check must catch it
    reject(absent, ProofFailure.PROOF_INVALID, address=b"\x0e" * 20)
