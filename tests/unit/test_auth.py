"""node/auth.py, node/access.py and node/network/limits.py as pure code: every way a token can be
wrong is refused with its reason, the nonce memory is bounded and forgets only what can no longer
pass, and the read rules by role."""

from __future__ import annotations

import pytest

from clearline.v1 import receipt_pb2, state_pb2, tx_pb2
from node import access, auth
from node.access import AccountView
from node.auth import Authenticator, Identity
from node.crypto import SigningKey
from node.errors import ApiError
from node.network.limits import ClientLimits, TokenBuckets

CHAIN = "clearline-test"
METHOD = "/clearline.v1.Ledger/GetAccount"
NOW = 1_800_000_000_000
ALICE = SigningKey.generate()
STRANGER = SigningKey.generate()


def lookup(public_key: bytes) -> Identity | None:
    return Identity(ALICE.address, ALICE.public_key, frozenset()) if public_key == ALICE.public_key else None


def refused(authn: Authenticator, token: str | None, method: str = METHOD, now: int = NOW) -> str:
    with pytest.raises(ApiError) as info:
        authn.authenticate(token, method, now)
    assert info.value.code in ("UNAUTHENTICATED", "RESOURCE_EXHAUSTED")
    return info.value.reason


def test_a_fresh_token_proves_the_account_once() -> None:
    authn = Authenticator(CHAIN, lookup)
    token = auth.make_token(ALICE, CHAIN, METHOD, NOW)
    assert authn.authenticate(token, METHOD, NOW + 1000).address == ALICE.address
    assert refused(authn, token, now=NOW + 2000) == "AUTH_REPLAYED"
    assert len(authn) == 1


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: None, "AUTH_REQUIRED"),
        (lambda: "", "AUTH_REQUIRED"),
        (lambda: "v1.abc", "AUTH_MALFORMED"),
        (lambda: "x" * 5000, "AUTH_MALFORMED"),
        (lambda: auth.make_token(ALICE, CHAIN, METHOD, NOW).replace("v1.", "v2.", 1), "AUTH_MALFORMED"),
        (lambda: "v1." + "zz" * 32 + f".{NOW}." + "00" * 16 + "." + "00" * 64, "AUTH_MALFORMED"),
        (lambda: "v1." + "00" * 32 + ".-5." + "00" * 16 + "." + "00" * 64, "AUTH_MALFORMED"),
        # Made for another chain, another method, or signed by another key for ALICE's public key.
        (lambda: auth.make_token(ALICE, "other-chain", METHOD, NOW), "AUTH_BAD_SIGNATURE"),
        (lambda: auth.make_token(ALICE, CHAIN, "/clearline.v1.Ledger/GetBlock", NOW), "AUTH_BAD_SIGNATURE"),
        (
            lambda: auth.make_token(STRANGER, CHAIN, METHOD, NOW).replace(
                STRANGER.public_key.hex(), ALICE.public_key.hex()
            ),
            "AUTH_BAD_SIGNATURE",
        ),
        # Too old, too far ahead: outside the node's clock's window.
        (lambda: auth.make_token(ALICE, CHAIN, METHOD, NOW - auth.MAX_SKEW_MS - 1), "AUTH_EXPIRED"),
        (lambda: auth.make_token(ALICE, CHAIN, METHOD, NOW + auth.MAX_SKEW_MS + 1), "AUTH_EXPIRED"),
        # Properly signed by a key that is no account's (or a closed account's: lookup says None).
        (lambda: auth.make_token(STRANGER, CHAIN, METHOD, NOW), "AUTH_UNKNOWN_IDENTITY"),
    ],
)
def test_every_bad_token_is_refused_with_its_reason_and_remembered_by_none(make, reason: str) -> None:  # type: ignore[no-untyped-def]
    authn = Authenticator(CHAIN, lookup)
    assert refused(authn, make()) == reason
    assert len(authn) == 0


def test_nonces_are_forgotten_only_once_their_tokens_can_no_longer_pass() -> None:
    authn = Authenticator(CHAIN, lookup)
    token = auth.make_token(ALICE, CHAIN, METHOD, NOW)
    authn.authenticate(token, METHOD, NOW)
    late = NOW + auth.MAX_SKEW_MS  # the last moment the token's time passes: still remembered
    authn.authenticate(auth.make_token(ALICE, CHAIN, METHOD, late), METHOD, late)
    assert refused(authn, token, now=late) == "AUTH_REPLAYED"
    assert len(authn) == 2
    after = NOW + auth.MAX_SKEW_MS + 1
    assert refused(authn, token, now=after) == "AUTH_EXPIRED"  # the time check refuses it now
    assert len(authn) == 1  # and its nonce is gone


def test_a_full_nonce_memory_refuses_rather_than_forgets() -> None:
    authn = Authenticator(CHAIN, lookup, max_remembered=3)
    for i in range(3):
        authn.authenticate(auth.make_token(ALICE, CHAIN, METHOD, NOW + i), METHOD, NOW + i)
    assert refused(authn, auth.make_token(ALICE, CHAIN, METHOD, NOW + 3), now=NOW + 3) == "AUTH_BUSY"
    assert len(authn) == 3


# --- read rules -----------------------------------------------------------------------------------

BANK_A, BANK_B, BOB = (SigningKey.generate().address for _ in range(3))
USD_A = tx_pb2.InstrumentId(issuer=BANK_A, symbol="USD")
USD_B = tx_pb2.InstrumentId(issuer=BANK_B, symbol="USD")


def who(address: bytes, *roles: int, node: bool = False) -> Identity:
    return Identity(address, bytes(32), frozenset(roles), node=node)


def account(address: bytes, balances: list[tx_pb2.InstrumentId], approvers: list[bytes]) -> state_pb2.Account:
    acct = state_pb2.Account(address=address, nonce=7)
    for inst in balances:
        acct.balances.add(instrument=inst, amount=100)
    for approver in approvers:
        acct.kyc_approvals.add(approver=approver, status=tx_pb2.KYC_STATUS_APPROVED)
    return acct


@pytest.mark.parametrize(
    ("viewer", "view"),
    [
        (who(ALICE.address), AccountView.WHOLE),  # itself
        (who(BOB), AccountView.NONE),  # another client
        (who(BANK_A, tx_pb2.ROLE_ISSUER), AccountView.WHOLE),  # the bank that approved it
        (who(BANK_B, tx_pb2.ROLE_ISSUER), AccountView.ISSUER_PART),  # holds bank-b's token only
        (who(SigningKey.generate().address, tx_pb2.ROLE_ISSUER), AccountView.NONE),  # unrelated bank
        (who(BOB, tx_pb2.ROLE_AUDITOR), AccountView.WHOLE),
        (who(BOB, tx_pb2.ROLE_COMPLIANCE), AccountView.WHOLE),
        (who(BOB, tx_pb2.ROLE_ADMIN), AccountView.WHOLE),
        (who(BOB, node=True), AccountView.WHOLE),
        (who(BOB, tx_pb2.ROLE_PARTICIPANT), AccountView.NONE),
    ],
)
def test_account_views_by_role(viewer: Identity, view: AccountView) -> None:
    acct = account(ALICE.address, [USD_A, USD_B], [BANK_A])
    assert access.account_view(viewer, acct) is view


def test_a_missing_account_is_as_invisible_as_a_forbidden_one() -> None:
    assert access.account_view(who(BOB), None) is AccountView.NONE
    assert access.account_view(who(BANK_A, tx_pb2.ROLE_ISSUER), None) is AccountView.NONE
    assert access.account_view(who(BOB, tx_pb2.ROLE_AUDITOR), None) is AccountView.WHOLE


def test_an_issuer_sees_only_its_own_instruments_of_a_holder_it_did_not_approve() -> None:
    acct = account(ALICE.address, [USD_A, USD_B], [BANK_A])
    acct.limits.add(instrument=USD_A, max_per_tx=5)
    part = access.issuer_part(acct, BANK_B)
    assert [b.instrument for b in part.balances] == [USD_B]
    assert not part.limits and not part.kyc_approvals and part.nonce == 0


def test_holds_events_and_transactions_by_party() -> None:
    hold = state_pb2.Hold(hold_id="h", instrument=USD_A, payer=ALICE.address, payee=BOB, notary=BANK_B)
    assert access.hold_visible(who(ALICE.address), hold)
    assert access.hold_visible(who(BOB), hold)
    assert access.hold_visible(who(BANK_B), hold)  # the notary
    assert access.hold_visible(who(BANK_A, tx_pb2.ROLE_ISSUER), hold)  # the instrument's issuer
    assert not access.hold_visible(who(SigningKey.generate().address), hold)
    event = receipt_pb2.Event(kind="transfer", accounts=[ALICE.address, BOB], instrument=USD_A)
    receipt = receipt_pb2.Receipt(events=[event])
    assert access.event_visible(who(BOB), event)
    assert not access.event_visible(who(BANK_B, tx_pb2.ROLE_ISSUER), event)
    assert access.tx_visible(who(BOB), [ALICE.address], receipt)  # moved bob's money
    assert access.tx_visible(who(BANK_A, tx_pb2.ROLE_ISSUER), [ALICE.address], receipt)
    assert not access.tx_visible(who(BANK_B), [ALICE.address], receipt)
    assert access.tx_visible(who(BANK_B), [BANK_B], None)  # its own pending transaction
    assert not access.blocks_visible(who(BANK_A, tx_pb2.ROLE_ISSUER))
    assert access.blocks_visible(who(BOB, tx_pb2.ROLE_AUDITOR)) and access.blocks_visible(who(BOB, node=True))


def test_tx_signers_are_read_from_the_envelope_and_garbage_has_none() -> None:
    from node import txs

    body = tx_pb2.TxBody(chain_id=CHAIN, signer=ALICE.address, nonce=0, client_ref="r")
    raw = txs.sign_tx(body, [ALICE])
    assert access.tx_signers(raw) == {ALICE.address}
    assert access.tx_signers(b"\xff\x00garbage") == frozenset()


# --- limits ---------------------------------------------------------------------------------------


def test_a_client_over_its_rate_is_refused_then_let_through_as_tokens_refill() -> None:
    limits = ClientLimits(requests_per_s=10, burst=5, max_streams=2, auth_failures_per_s=1)
    for _ in range(5):
        limits.request(b"a", 0.0)
    with pytest.raises(ApiError) as info:
        limits.request(b"a", 0.0)
    assert (info.value.code, info.value.reason) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
    limits.request(b"b", 0.0)  # another client is not affected
    limits.request(b"a", 0.1)  # one token back after 0.1 s at 10/s


def test_streams_per_client_are_capped_and_released() -> None:
    limits = ClientLimits(requests_per_s=10, burst=5, max_streams=2, auth_failures_per_s=1)
    limits.open_stream(b"a")
    limits.open_stream(b"a")
    with pytest.raises(ApiError) as info:
        limits.open_stream(b"a")
    assert info.value.reason == "TOO_MANY_STREAMS"
    limits.close_stream(b"a")
    limits.open_stream(b"a")
    limits.close_stream(b"a")
    limits.close_stream(b"a")
    assert limits.tracked() == 0 + 0 + 0


def test_failed_authentications_cut_a_host_off() -> None:
    limits = ClientLimits(requests_per_s=10, burst=5, max_streams=2, auth_failures_per_s=1)
    limits.check_host("h", 0.0)
    limits.auth_failed("h", 0.0)
    limits.auth_failed("h", 0.0)  # burst 2
    with pytest.raises(ApiError) as info:
        limits.check_host("h", 0.0)
    assert info.value.reason == "AUTH_FAILURES"
    limits.check_host("other", 0.0)
    limits.check_host("h", 1.0)  # refilled


def test_bucket_tables_stay_bounded_under_many_identities() -> None:
    buckets = TokenBuckets(rate=1, burst=2, max_tracked=100)
    for i in range(10_000):
        buckets.take(i, float(i) / 1000)
    assert len(buckets) <= 100
