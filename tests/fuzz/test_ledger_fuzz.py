"""Fuzz every RPC of the client API (`Ledger`) of a real node; see harness.py for the node.

Every request goes as raw bytes over a real gRPC channel, so malformed protobuf reaches the server
as it is. Four fuzzers:

- generated requests: built from the request type's descriptor (strategies.messages), plus
  transactions with generated bodies and signatures that cannot verify in the tx fields;
- mutated request bytes: valid requests of each RPC, truncated, bit-flipped, spliced, extended;
- mutated signed transactions: valid transactions (cluster.client.builders) mutated the same way or
  re-encoded (same body and signatures in other bytes), sent to CheckTx, SubmitTx and SubmitTxs
  (a re-encoding of a never-submitted transaction to CheckTx only);
- signed generated bodies: transactions with generated bodies properly signed by genesis keys, to
  CheckTx only (a dry run: submitted, they could be valid and change the state).

Every answer must keep the contract (harness.client_answer_problem). An OK answer must parse as
the RPC's response type and accept nothing but the seed transaction that is already committed (or,
in CheckTx, a seed: its id is the hash of its signed body, so a re-encoding has the seed's id). After every test the node must be healthy and its state exactly
the baseline's (the `checked_after` fixture).

The tests named after a rule (unparseable requests, bounded details, a transaction's id under
re-encoding) are minimal reproductions of what the fuzzers found, one example per RPC or case.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import given
from hypothesis import strategies as st

from clearline.v1 import ledger_api_pb2, peer_pb2, tx_pb2
from clearline.v1 import receipt_pb2 as R
from node import txs
from tests.fuzz.conftest import HOLD_ID, Seeds
from tests.fuzz.harness import (
    MAX_DETAILS_BYTES,
    Answer,
    FuzzNode,
    Snapshot,
    call_server_stream,
    call_unary,
    client_answer_problem,
    fuzz_settings,
)
from tests.fuzz.strategies import (
    REENCODINGS,
    Blob,
    Known,
    messages,
    mutated,
    parses_as,
    reencoded,
    reencoding,
)

LEDGER = ledger_api_pb2.DESCRIPTOR.services_by_name["Ledger"]
METHODS = {m.name: m for m in LEDGER.methods}
STREAM_TIMEOUT_S = 0.15  # a stream with nothing (more) to send ends at this deadline
CALL_TIMEOUT_S = 5.0

L = ledger_api_pb2


@dataclass(frozen=True)
class Rpc:
    name: str

    @property
    def path(self) -> str:
        return f"/{LEDGER.full_name}/{self.name}"

    @property
    def request_type(self) -> type[Message]:
        return getattr(ledger_api_pb2, METHODS[self.name].input_type.name)

    @property
    def response_type(self) -> type[Message]:
        return getattr(ledger_api_pb2, METHODS[self.name].output_type.name)

    @property
    def streaming(self) -> bool:
        return bool(METHODS[self.name].server_streaming)


RPCS = [Rpc(name) for name in METHODS]


def send(node: FuzzNode, rpc: Rpc, payload: bytes) -> Answer:
    if rpc.streaming:
        return call_server_stream(node.channel, rpc.path, payload, timeout=STREAM_TIMEOUT_S)
    return call_unary(node.channel, rpc.path, payload, timeout=CALL_TIMEOUT_S)


def _waits(rpc: Rpc, payload: bytes) -> bool:
    """Whether the call may end at its deadline: streams, and submissions that wait for a commit."""
    if rpc.streaming:
        return True
    if rpc.name in ("SubmitTx", "SubmitTxs") and parses_as(payload, rpc.request_type):
        return bool(rpc.request_type.FromString(payload).wait == L.WAIT_FOR_COMMITTED)
    return False


def check(node: FuzzNode, seeds: Seeds, rpc: Rpc, payload: bytes, answer: Answer) -> None:
    """The answer keeps the contract, and nothing but a seed transaction is accepted."""
    node.assert_alive()
    malformed = not parses_as(payload, rpc.request_type)
    problem = client_answer_problem(answer, malformed=malformed, waits=_waits(rpc, payload))
    assert problem is None, f"{problem}\n  answer: {answer}\n  request: {Blob(payload)!r}"
    for raw in answer.responses:
        response = rpc.response_type.FromString(raw)
        if rpc.name == "SubmitTx":
            assert response.tx_hash == seeds.committed_hash, f"SubmitTx accepted {Blob(payload)!r}"
        elif rpc.name == "SubmitTxs":
            for result in response.results:
                if result.accepted:
                    assert result.tx_hash == seeds.committed_hash, f"SubmitTxs accepted {result}"
                size = len(result.message.encode())
                assert size <= MAX_DETAILS_BYTES, (
                    f"a rejection message of {size} bytes: {result.message[:200]!r}"
                )
        elif rpc.name == "CheckTx" and response.accepted:
            # A seed, or another encoding of one (same signed body, so the same id).
            assert response.tx_hash in seeds.fresh_ids, (
                f"CheckTx accepted a transaction that is not a seed: {Blob(payload)!r}"
            )


@pytest.fixture(autouse=True)
def checked_after(fuzz_node: FuzzNode, baseline: Snapshot) -> Iterator[None]:
    """After each test: the node is healthy, has committed since the test began, and its state is
    the baseline's."""
    start = fuzz_node.height()
    yield
    fuzz_node.assert_healthy(since_height=start)
    fuzz_node.assert_unchanged(baseline)


# --- inputs ---------------------------------------------------------------------------------------


def known(node: FuzzNode, seeds: Seeds, rpc: Rpc) -> Known:
    byte_values = [*seeds.addresses, seeds.committed_hash, seeds.block_hash, seeds.committed_tx]
    if rpc.name == "CheckTx":
        byte_values += seeds.fresh_txs  # a dry run: only here may they arrive intact
    return Known(
        byte_values=byte_values,
        string_values=[HOLD_ID, "USD", "BOND-2030", node.chain_id],
        int_values=[0, 1, 2, 3, 2**63, 2**64 - 1],
    )


@st.composite
def unsigned_txs(draw: st.DrawFn, node: FuzzNode, seeds: Seeds) -> bytes:
    """A SignedTx with a generated body and signatures that cannot verify."""
    know = Known(byte_values=seeds.addresses, string_values=[node.chain_id, HOLD_ID, "USD"])
    body = draw(messages(tx_pb2.TxBody.DESCRIPTOR, know, depth=1))
    if draw(st.booleans()):
        body.chain_id = node.chain_id
    envelope = tx_pb2.SignedTx(body=body.SerializeToString())
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(sorted(node.accounts)))
        envelope.signatures.add(
            public_key=draw(st.sampled_from([node.key(name).public_key, b"\x00" * 32, b""])),
            signature=draw(st.binary(min_size=64, max_size=64) | st.binary(max_size=70)),
        )
    return envelope.SerializeToString()


@st.composite
def generated_requests(draw: st.DrawFn, node: FuzzNode, seeds: Seeds, rpc: Rpc) -> bytes:
    request = draw(messages(rpc.request_type.DESCRIPTOR, known(node, seeds, rpc)))
    if rpc.name in ("SubmitTx", "CheckTx") and draw(st.booleans()):
        request.tx = draw(unsigned_txs(node, seeds))
    elif rpc.name == "SubmitTxs" and draw(st.booleans()):
        request.txs.extend(draw(st.lists(unsigned_txs(node, seeds), min_size=1, max_size=4)))
    return request.SerializeToString()


@st.composite
def signed_bodies(draw: st.DrawFn, node: FuzzNode, seeds: Seeds) -> bytes:
    """A generated TxBody for this chain, signed by its signer's genesis key (and co-signers')."""
    names = sorted(node.accounts)
    signer = draw(st.sampled_from(names), label="signer")
    know = Known(
        byte_values=[*seeds.addresses, *(node.key(n).public_key for n in names)],
        string_values=[HOLD_ID, "USD", "BOND-2030", "fuzz-dep"],
        int_values=[0, 1, 2, 10, 300, 2**63, 2**64 - 1],
    )
    body = draw(messages(tx_pb2.TxBody.DESCRIPTOR, know, depth=1), label="body")
    body.chain_id = node.chain_id
    body.signer = node.key(signer).address
    body.nonce = draw(st.sampled_from([0, 1, 2, 2**64 - 1]), label="nonce")
    co = draw(st.lists(st.sampled_from(names), max_size=2, unique=True), label="co-signers")
    return txs.sign_tx(body, [node.key(n) for n in dict.fromkeys([signer, *co])])


KYC_APPROVERS = ("bank-a", "bank-b", "compliance")  # an issuer's own approval, or the network's


@st.composite
def kyc_decisions(draw: st.DrawFn, node: FuzzNode, seeds: Seeds) -> tuple[str, bytes]:
    """A SetKyc by an approver (or by someone who is not one) at its current nonce: (signer, tx)."""
    names = sorted(node.accounts)
    signer = draw(st.sampled_from([*KYC_APPROVERS, *KYC_APPROVERS, *names]), label="signer")
    known_account = st.sampled_from(seeds.addresses)
    account = draw(
        st.one_of(known_account, known_account, st.binary(min_size=20, max_size=20)), label="account"
    )
    op = tx_pb2.SetKyc(
        account=account,
        status=draw(st.sampled_from([1, 2, 3, 4, 2, 3, 0, 5]), label="status"),  # type: ignore[arg-type]
        expires_at=draw(st.sampled_from([0, 1, 2**32, 2**64 - 1]), label="expires_at"),
    )
    if draw(st.integers(0, 3)) == 0:
        op.public_key = draw(
            st.sampled_from([node.key(n).public_key for n in names]) | st.binary(max_size=33)
        )
    nonce = node.ledger.GetAccount(
        L.GetAccountRequest(address=node.key(signer).address), timeout=CALL_TIMEOUT_S
    ).account.nonce
    body = tx_pb2.TxBody(chain_id=node.chain_id, signer=node.key(signer).address, nonce=nonce, set_kyc=op)
    return signer, txs.sign_tx(body, [node.key(signer)])


def valid_requests(node: FuzzNode, seeds: Seeds, rpc: Rpc) -> list[Message]:
    """Well-formed requests of rpc that the node answers OK: where the mutations start."""
    k = node.key
    waits = [L.WAIT_FOR_NONE, L.WAIT_FOR_CHECKED, L.WAIT_FOR_COMMITTED]
    by_name: dict[str, list[Message]] = {
        "SubmitTx": [L.SubmitTxRequest(tx=seeds.committed_tx, wait=w) for w in waits],
        "SubmitTxs": [L.SubmitTxsRequest(txs=[seeds.committed_tx, b"junk"], wait=w) for w in waits],
        "CheckTx": [L.SubmitTxRequest(tx=raw) for raw in seeds.fresh_txs],
        "GetTx": [L.GetTxRequest(tx_hash=seeds.committed_hash)],
        "GetAccount": [
            L.GetAccountRequest(address=k("alice").address, prove=True),
            L.GetAccountRequest(address=k("dave").address),
        ],
        "GetInstrument": [L.GetInstrumentRequest(instrument=seeds.usd)],
        "GetHold": [L.GetHoldRequest(hold_id=HOLD_ID)],
        "GetValidators": [L.GetValidatorsRequest(height=1), L.GetValidatorsRequest()],
        "GetBlock": [L.GetBlockRequest(height=1), L.GetBlockRequest(hash=seeds.block_hash)],
        "GetStatus": [L.GetStatusRequest()],
        "GetStatement": [
            L.GetStatementRequest(account=k("alice").address, instrument=seeds.usd),
            L.GetStatementRequest(account=k("alice").address, instrument=seeds.usd, from_height=1, limit=1),
        ],
        "ListInstruments": [L.ListInstrumentsRequest()],
        "ListPending": [L.ListPendingRequest(), L.ListPendingRequest(account=k("alice").address)],
        "CancelPending": [L.CancelPendingRequest()],
        "ListHolds": [
            L.ListHoldsRequest(account=k("alice").address),
            L.ListHoldsRequest(account=k("alice").address, include_closed=True, limit=1),
        ],
        "ListAccounts": [L.ListAccountsRequest(issuer=seeds.usd.issuer), L.ListAccountsRequest(limit=1)],
        "StreamBlocks": [L.StreamBlocksRequest(from_height=1)],
        "SubscribeEvents": [
            L.SubscribeEventsRequest(from_height=1),
            L.SubscribeEventsRequest(from_height=1, account=k("dave").address),
        ],
    }
    return by_name[rpc.name]


# --- coverage and seeds -----------------------------------------------------------------------------


def test_every_rpc_of_both_services_is_fuzzed() -> None:
    """A new RPC must be added to the fuzzers (and to valid_requests) before this passes."""
    from tests.fuzz.test_peer_fuzz import PEER_RPCS_FUZZED

    assert set(METHODS) == {rpc.name for rpc in RPCS}
    peer = peer_pb2.DESCRIPTOR.services_by_name["Peer"]
    assert {m.name for m in peer.methods} == PEER_RPCS_FUZZED


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
def test_valid_requests_are_answered(fuzz_node: FuzzNode, seeds: Seeds, rpc: Rpc) -> None:
    """The seeds of the mutation fuzzers are answered OK: mutations start from something real."""
    for request in valid_requests(fuzz_node, seeds, rpc):
        payload = request.SerializeToString()
        answer = send(fuzz_node, rpc, payload)
        if rpc.streaming:  # at least one response; a stream that waits for more ends at its deadline
            assert answer.responses, answer
        else:
            assert answer.code == grpc.StatusCode.OK, answer
        check(fuzz_node, seeds, rpc, payload, answer)


# --- minimal reproductions ------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
def test_an_unparseable_request_is_invalid_argument(fuzz_node: FuzzNode, seeds: Seeds, rpc: Rpc) -> None:
    """b"\\n" (field 1, length-delimited, length missing) is no protobuf of any request type. gRPC's
    own deserializer failure is UNKNOWN "Unexpected <class 'DecodeError'>: ..." with no reason; the
    contract wants INVALID_ARGUMENT with a reason, like any other malformed input."""
    payload = b"\n"
    assert not parses_as(payload, rpc.request_type)
    answer = send(fuzz_node, rpc, payload)
    assert answer.code == grpc.StatusCode.INVALID_ARGUMENT and answer.reason, answer


BIG = 64 * 1024


def _big_details_cases(node: FuzzNode, seeds: Seeds) -> dict[str, tuple[Rpc, Message]]:
    """Requests whose error message quotes an input of BIG bytes."""
    body = tx_pb2.TxBody(chain_id="c" * (BIG - 1000), signer=node.key("alice").address, nonce=1)
    body.transfer.amount = 1
    wrong_chain = txs.sign_tx(body, [node.key("alice")])
    return {
        "GetHold hold_id": (Rpc("GetHold"), L.GetHoldRequest(hold_id="h" * BIG)),
        "GetBlock hash": (Rpc("GetBlock"), L.GetBlockRequest(hash=b"\x01" * BIG)),
        "GetInstrument symbol": (
            Rpc("GetInstrument"),
            L.GetInstrumentRequest(
                instrument=tx_pb2.InstrumentId(issuer=seeds.addresses[0], symbol="s" * BIG)
            ),
        ),
        "CheckTx chain_id": (Rpc("CheckTx"), L.SubmitTxRequest(tx=wrong_chain)),
        "SubmitTx chain_id": (Rpc("SubmitTx"), L.SubmitTxRequest(tx=wrong_chain)),
        "SubmitTxs chain_id": (Rpc("SubmitTxs"), L.SubmitTxsRequest(txs=[wrong_chain])),
    }


@pytest.mark.parametrize(
    "case",
    ["GetHold hold_id", "GetBlock hash", "GetInstrument symbol", "CheckTx chain_id", "SubmitTx chain_id",
     "SubmitTxs chain_id"],
)  # fmt: skip
def test_error_details_are_bounded(fuzz_node: FuzzNode, seeds: Seeds, case: str) -> None:
    """An error message that quotes the client's input must not grow with it (at most 1 KiB): a
    64 KiB id quoted back would be 64 KiB (GetBlock's hex: 128 KiB) of trailing metadata, above
    gRPC's default 16 KiB limit, so a default client would see RESOURCE_EXHAUSTED and no reason."""
    rpc, request = _big_details_cases(fuzz_node, seeds)[case]
    payload = request.SerializeToString()
    answer = send(fuzz_node, rpc, payload)
    check(fuzz_node, seeds, rpc, payload, answer)
    assert answer.code != grpc.StatusCode.OK or rpc.name == "SubmitTxs", answer


ENCODINGS = list(REENCODINGS)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("seed_index", [0, 4], ids=["one signer", "two signers"])
def test_another_encoding_of_a_transaction_keeps_its_id(
    fuzz_node: FuzzNode, seeds: Seeds, seed_index: int, encoding: str
) -> None:
    """Another encoding of a valid SignedTx (an unknown field appended, fields reordered, the body
    repeated, a padded length) carries the same body and signatures, so it verifies. If the node
    accepts it, it must be as the same transaction: the id is the hash of the signed body, never of
    the bytes a third party can re-encode (else anyone relaying a pending transaction could commit
    it under an id its sender does not know, and the sender's own submission would fail with
    BAD_NONCE). Checked on CheckTx, which changes nothing."""
    seed = seeds.fresh_txs[seed_index]
    variant = reencoding(seed, encoding)
    assert (
        variant != seed and tx_pb2.SignedTx.FromString(variant).body == tx_pb2.SignedTx.FromString(seed).body
    )
    original = send(fuzz_node, Rpc("CheckTx"), L.SubmitTxRequest(tx=seed).SerializeToString())
    answer = send(fuzz_node, Rpc("CheckTx"), L.SubmitTxRequest(tx=variant).SerializeToString())
    check(fuzz_node, seeds, Rpc("CheckTx"), L.SubmitTxRequest(tx=variant).SerializeToString(), answer)
    if answer.code == grpc.StatusCode.OK:
        got = L.SubmitTxResponse.FromString(answer.responses[0])
        want = L.SubmitTxResponse.FromString(original.responses[0])
        assert got.tx_hash == want.tx_hash, f"{encoding}: the node gives the same transaction another id"


# --- the fuzzers ----------------------------------------------------------------------------------


def _generated(node: FuzzNode, seeds: Seeds, rpc: Rpc, data: st.DataObject) -> None:
    payload = data.draw(generated_requests(node, seeds, rpc).map(Blob), label="request")
    check(node, seeds, rpc, payload, send(node, rpc, payload))


def _mutated_request(node: FuzzNode, seeds: Seeds, rpc: Rpc, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(valid_requests(node, seeds, rpc)), label="seed").SerializeToString()
    payload = data.draw(mutated(seed).map(Blob), label="request")
    check(node, seeds, rpc, payload, send(node, rpc, payload))


def _is_reencoding(raw: bytes, seed: bytes) -> bool:
    """raw is another encoding of seed's envelope (same body, same signatures)."""
    if not parses_as(raw, tx_pb2.SignedTx):
        return False
    a, b = tx_pb2.SignedTx.FromString(raw), tx_pb2.SignedTx.FromString(seed)
    return a.body == b.body and list(a.signatures) == list(b.signatures)


def _mutated_tx(node: FuzzNode, seeds: Seeds, data: st.DataObject) -> None:
    seed = data.draw(
        st.sampled_from([Blob(seeds.committed_tx), *map(Blob, seeds.fresh_txs)]), label="seed tx"
    )
    raw = data.draw(st.one_of(mutated(seed), reencoded(seed)).map(Blob), label="tx")
    targets = ["CheckTx"]
    # Submitted and wrongly accepted, a re-encoding of a fresh transaction would change the state
    # and fail every later test; it goes to the dry run only (the rule is the same).
    if seed == seeds.committed_tx or not _is_reencoding(raw, seed):
        targets += ["SubmitTx", "SubmitTxs"]
    for name in targets:
        wait = data.draw(st.sampled_from([L.WAIT_FOR_NONE, L.WAIT_FOR_CHECKED, L.WAIT_FOR_COMMITTED]))
        request: Message
        if name == "SubmitTxs":
            request = L.SubmitTxsRequest(txs=[raw, raw], wait=wait)
        else:
            request = L.SubmitTxRequest(tx=raw, wait=wait)
        payload = request.SerializeToString()
        check(node, seeds, Rpc(name), payload, send(node, Rpc(name), payload))


def _signed_body(node: FuzzNode, seeds: Seeds, data: st.DataObject) -> None:
    raw = data.draw(signed_bodies(node, seeds).map(Blob), label="tx")
    payload = L.SubmitTxRequest(tx=raw).SerializeToString()
    answer = send(node, Rpc("CheckTx"), payload)
    node.assert_alive()
    problem = client_answer_problem(answer, malformed=False, waits=False)
    assert problem is None, f"{problem}\n  answer: {answer}\n  tx: {tx_pb2.SignedTx.FromString(raw)}"


def _kyc_decision(node: FuzzNode, seeds: Seeds, data: st.DataObject) -> None:
    signer, raw = data.draw(kyc_decisions(node, seeds).map(lambda d: (d[0], Blob(d[1]))), label="kyc")
    answer = send(node, Rpc("CheckTx"), L.SubmitTxRequest(tx=raw).SerializeToString())
    node.assert_alive()
    problem = client_answer_problem(answer, malformed=False, waits=False)
    assert problem is None, f"{problem}\n  answer: {answer}"
    if answer.code == grpc.StatusCode.OK:
        receipt = L.SubmitTxResponse.FromString(answer.responses[0]).receipt
        if receipt.status == R.TX_STATUS_OK:
            assert signer in KYC_APPROVERS, f"{signer} set a KYC approval"
            (event,) = receipt.events
            approver = {a.key: a.value for a in event.attributes}["approver"]
            assert approver == ("" if signer == "compliance" else node.key(signer).address.hex())
        elif signer not in KYC_APPROVERS:
            assert receipt.status == R.TX_STATUS_UNAUTHORIZED, R.TxStatus.Name(receipt.status)


CI_EXAMPLES = 20  # per RPC
CI_TX_EXAMPLES = 60


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
@fuzz_settings(CI_EXAMPLES)
@given(data=st.data())
def test_generated_requests(fuzz_node: FuzzNode, seeds: Seeds, rpc: Rpc, data: st.DataObject) -> None:
    _generated(fuzz_node, seeds, rpc, data)


@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
@fuzz_settings(CI_EXAMPLES)
@given(data=st.data())
def test_mutated_request_bytes(fuzz_node: FuzzNode, seeds: Seeds, rpc: Rpc, data: st.DataObject) -> None:
    _mutated_request(fuzz_node, seeds, rpc, data)


@fuzz_settings(CI_TX_EXAMPLES)
@given(data=st.data())
def test_mutated_signed_transactions(fuzz_node: FuzzNode, seeds: Seeds, data: st.DataObject) -> None:
    _mutated_tx(fuzz_node, seeds, data)


@fuzz_settings(CI_TX_EXAMPLES)
@given(data=st.data())
def test_signed_generated_bodies_are_dry_run(fuzz_node: FuzzNode, seeds: Seeds, data: st.DataObject) -> None:
    _signed_body(fuzz_node, seeds, data)


@fuzz_settings(CI_TX_EXAMPLES)
@given(data=st.data())
def test_kyc_decisions_of_every_approver_are_dry_run(
    fuzz_node: FuzzNode, seeds: Seeds, data: st.DataObject
) -> None:
    _kyc_decision(fuzz_node, seeds, data)


# --- the long campaign (FUZZ_EXAMPLES overrides these counts too) ---------------------------------

CAMPAIGN = 400


@pytest.mark.slow
@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
@fuzz_settings(CAMPAIGN)
@given(data=st.data())
def test_campaign_generated_requests(
    fuzz_node: FuzzNode, seeds: Seeds, rpc: Rpc, data: st.DataObject
) -> None:
    _generated(fuzz_node, seeds, rpc, data)


@pytest.mark.slow
@pytest.mark.parametrize("rpc", RPCS, ids=lambda r: r.name)
@fuzz_settings(CAMPAIGN)
@given(data=st.data())
def test_campaign_mutated_request_bytes(
    fuzz_node: FuzzNode, seeds: Seeds, rpc: Rpc, data: st.DataObject
) -> None:
    _mutated_request(fuzz_node, seeds, rpc, data)


@pytest.mark.slow
@fuzz_settings(4 * CAMPAIGN)
@given(data=st.data())
def test_campaign_mutated_signed_transactions(fuzz_node: FuzzNode, seeds: Seeds, data: st.DataObject) -> None:
    _mutated_tx(fuzz_node, seeds, data)


@pytest.mark.slow
@fuzz_settings(4 * CAMPAIGN)
@given(data=st.data())
def test_campaign_signed_generated_bodies(fuzz_node: FuzzNode, seeds: Seeds, data: st.DataObject) -> None:
    _signed_body(fuzz_node, seeds, data)
