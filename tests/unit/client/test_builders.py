"""cluster.client.builders: every ledger operation builds into a body node.txs accepts; bad
arguments are refused with the field named."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clearline.v1 import tx_pb2
from cluster.client import builders as b
from cluster.client.builders import BuildError
from node import txs
from node.crypto import SigningKey

CHAIN = "clearline-test"
ME = SigningKey.from_seed(b"\x01" * 32)
OTHER = SigningKey.from_seed(b"\x02" * 32)
THIRD = SigningKey.from_seed(b"\x03" * 32)
USD = b.instrument(ME.address, "USD")
NOW = 1_780_000_000  # unix seconds (2026)
BOND = b.instrument(OTHER.address, "BOND-2030")

# One example per operation of the TxBody oneof, keyed by the oneof field name.
EXAMPLES: dict[str, Callable[[], b.Op]] = {
    "create_instrument": lambda: b.create_instrument(
        USD, name="Bank A USD", currency="USD", supply_cap=10**12
    ),
    "set_kyc": lambda: b.set_kyc(OTHER.address, tx_pb2.KYC_STATUS_APPROVED, public_key=OTHER.public_key),
    "mint": lambda: b.mint(USD, OTHER.address, 1_000, "dep-1"),
    "redeem": lambda: b.redeem(USD, 10, "red-1"),
    "transfer": lambda: b.transfer(USD, OTHER.address, 100),
    "freeze_account": lambda: b.freeze_account(OTHER.address, "court order 7"),
    "unfreeze_account": lambda: b.unfreeze_account(OTHER.address, "order lifted"),
    "freeze_amount": lambda: b.freeze_amount(OTHER.address, USD, 50, "garnishment"),
    "unfreeze_amount": lambda: b.unfreeze_amount(OTHER.address, USD, 50, "garnishment lifted"),
    "pause_instrument": lambda: b.pause_instrument(USD, "incident"),
    "unpause_instrument": lambda: b.unpause_instrument(USD, "resolved"),
    "create_hold": lambda: b.create_hold(
        "hold-1", USD, payee=OTHER.address, notary=THIRD.address, amount=70, expires_at_height=100
    ),
    "execute_hold": lambda: b.execute_hold("hold-1", 20),
    "release_hold": lambda: b.release_hold("hold-1"),
    "settle": lambda: b.settle(
        "dvp-1", [b.leg(USD, ME.address, OTHER.address, 100), b.leg(BOND, OTHER.address, ME.address, 1)]
    ),
    "forced_transfer": lambda: b.forced_transfer(USD, OTHER.address, THIRD.address, 5, "court order 8"),
    "recover_account": lambda: b.recover_account(OTHER.address, THIRD.public_key, "lost device"),
    "set_limits": lambda: b.set_limits(OTHER.address, USD, max_per_tx=100, max_per_day=1_000),
    "grant_role": lambda: b.grant_role(OTHER.address, tx_pb2.ROLE_ISSUER, public_key=OTHER.public_key),
    "revoke_role": lambda: b.revoke_role(OTHER.address, tx_pb2.ROLE_ISSUER),
    "change_validator": lambda: b.change_validator(THIRD.public_key, 10),
}


def test_every_operation_of_the_wire_contract_has_a_builder() -> None:
    oneof = [f.name for f in tx_pb2.TxBody.DESCRIPTOR.oneofs_by_name["op"].fields]
    assert len(oneof) == 21
    assert sorted(EXAMPLES) == sorted(oneof) == sorted(b.operations())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_built_and_signed_body_verifies(name: str) -> None:
    op = EXAMPLES[name]()
    body = b.make_body(CHAIN, ME.address, 7, f"ref-{name}", op, memo="test")
    assert body.WhichOneof("op") == name
    keys = [ME] + ([OTHER] if name == "settle" else [])
    verified = txs.verify_tx(b.sign(body, *keys), CHAIN)
    assert verified.body == body
    assert getattr(verified.body, name) == op
    assert verified.signers == frozenset(k.address for k in keys)
    assert b.signers_needed(body) == [k.address for k in keys]


def test_settlement_needs_every_payer() -> None:
    op = EXAMPLES["settle"]()
    assert isinstance(op, tx_pb2.Settle)
    assert b.payers(op) == [ME.address, OTHER.address]
    assert getattr(op.legs[0], "from") == ME.address


def test_recovery_derives_the_new_account_from_its_key() -> None:
    op = b.recover_account(OTHER.address, THIRD.public_key, "lost")
    assert op.new_account == THIRD.address


def test_addresses_and_instruments_round_trip_through_text() -> None:
    text = b.format_address(ME.address)
    assert len(text) == 40
    assert b.parse_address(text) == b.parse_address("0x" + text.upper()) == ME.address
    assert b.parse_instrument(b.format_instrument(USD)) == USD
    assert b.instrument(text, "USD") == USD


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: b.parse_address("zz" * 20), "address"),
        (lambda: b.parse_address("ab" * 19), "address"),
        (lambda: b.parse_instrument("USD"), "instrument"),
        (lambda: b.instrument(ME.address, ""), "symbol"),
        (lambda: b.instrument(ME.address, " USD"), "symbol"),
        (lambda: b.transfer(USD, OTHER.address, 0), "amount"),
        (lambda: b.transfer(USD, OTHER.address, -5), "amount"),
        (lambda: b.transfer(USD, OTHER.address, 2**64), "amount"),
        (lambda: b.transfer(USD, OTHER.address, True), "amount"),
        (lambda: b.transfer(USD, b"\x01" * 19, 1), "to"),
        (lambda: b.transfer(tx_pb2.InstrumentId(issuer=b"\x01" * 20), OTHER.address, 1), "instrument.symbol"),
        (lambda: b.transfer(tx_pb2.InstrumentId(symbol="USD"), OTHER.address, 1), "instrument.issuer"),
        (lambda: b.mint(USD, OTHER.address, 5, ""), "deposit_ref"),
        (lambda: b.set_kyc(OTHER.address, 0), "status"),  # type: ignore[arg-type]
        (lambda: b.set_kyc(OTHER.address, 42), "status"),  # type: ignore[arg-type]
        (lambda: b.set_kyc(OTHER.address, tx_pb2.KYC_STATUS_APPROVED, public_key=b"\x01" * 31), "public_key"),
        (lambda: b.grant_role(OTHER.address, 99), "role"),  # type: ignore[arg-type]
        (
            lambda: b.set_kyc(OTHER.address, tx_pb2.KYC_STATUS_APPROVED, expires_at=NOW - 1, now_s=NOW),
            "expires_at",
        ),
        (
            lambda: b.set_kyc(OTHER.address, tx_pb2.KYC_STATUS_APPROVED, expires_at=NOW, now_s=NOW),
            "expires_at",
        ),
        (
            lambda: b.set_kyc(
                OTHER.address, tx_pb2.KYC_STATUS_APPROVED, expires_at=NOW * 1000, allow_past_expiry=True
            ),
            "expires_at",
        ),
        (
            lambda: b.create_hold(
                "h", USD, payee=OTHER.address, notary=THIRD.address, amount=1, expires_at_time=NOW * 1000
            ),
            "expires_at_time",
        ),
        (
            lambda: b.create_hold(
                "h", USD, payee=OTHER.address, notary=THIRD.address, amount=1, expires_at_time=NOW, now_s=NOW
            ),
            "expires_at_time",
        ),
        (lambda: b.create_instrument(USD, name="x", currency="USD", decimals=19), "decimals"),
        (lambda: b.create_instrument(USD, name="", currency="USD"), "name"),
        (lambda: b.create_hold("", USD, payee=OTHER.address, notary=THIRD.address, amount=1), "hold_id"),
        (lambda: b.create_hold("h", USD, payee=OTHER.address, notary=b"", amount=1), "notary"),
        (
            lambda: b.create_hold(
                "h", USD, payee=OTHER.address, notary=THIRD.address, amount=1, payer=b"\x01"
            ),
            "payer",
        ),
        (lambda: b.execute_hold("h", -1), "amount"),
        (lambda: b.settle("dvp", []), "legs"),
        (lambda: b.leg(USD, b"", OTHER.address, 1), "from"),
        (lambda: b.forced_transfer(USD, OTHER.address, THIRD.address, 5, ""), "reason"),
        (lambda: b.recover_account(OTHER.address, b"", "lost"), "new_public_key"),
        (lambda: b.change_validator(b"\x00" * 33, 1), "public_key"),
        (lambda: b.set_limits(OTHER.address, USD, max_per_day=-1), "max_per_day"),
        (lambda: b.make_body("", ME.address, 0, "r", b.release_hold("h")), "chain_id"),
        (lambda: b.make_body(CHAIN, ME.address, -1, "r", b.release_hold("h")), "nonce"),
        (lambda: b.make_body(CHAIN, ME.address, 0, "", b.release_hold("h")), "client_ref"),
        (lambda: b.make_body(CHAIN, b"", 0, "r", b.release_hold("h")), "signer"),
        (lambda: b.make_body(CHAIN, ME.address, 0, "r", tx_pb2.Leg()), "op"),  # type: ignore[arg-type]
        (lambda: b.sign(tx_pb2.TxBody()), "keys"),
    ],
)
def test_invalid_arguments_are_refused_naming_the_field(build: Callable[[], object], field: str) -> None:
    with pytest.raises(BuildError) as info:
        build()
    assert info.value.field == field, info.value
    assert isinstance(info.value, ValueError)


def test_a_refused_body_leaves_the_operation_unchanged() -> None:
    op = b.transfer(USD, OTHER.address, 100)
    before = op.SerializeToString(deterministic=True)
    with pytest.raises(BuildError):
        b.make_body(CHAIN, ME.address, 0, "", op)
    assert op.SerializeToString(deterministic=True) == before


def test_expiry_times_are_unix_seconds_and_a_past_kyc_expiry_needs_the_flag() -> None:
    ok = b.set_kyc(OTHER.address, tx_pb2.KYC_STATUS_APPROVED, expires_at=NOW + 1, now_s=NOW)
    assert ok.expires_at == NOW + 1
    lapsed = b.set_kyc(
        OTHER.address, tx_pb2.KYC_STATUS_APPROVED, expires_at=NOW - 1, allow_past_expiry=True, now_s=NOW
    )
    assert lapsed.expires_at == NOW - 1
    with pytest.raises(BuildError, match="not after now"):
        b.set_kyc(OTHER.address, tx_pb2.KYC_STATUS_APPROVED, expires_at=NOW - 1, now_s=NOW)
    with pytest.raises(BuildError, match="SECONDS, not milliseconds"):
        b.set_kyc(OTHER.address, tx_pb2.KYC_STATUS_APPROVED, expires_at=(NOW + 60) * 1000, now_s=NOW)
    hold = b.create_hold(
        "h", USD, payee=OTHER.address, notary=THIRD.address, amount=1, expires_at_time=NOW + 60, now_s=NOW
    )
    assert hold.expires_at_time == NOW + 60
    with pytest.raises(BuildError, match="SECONDS, not milliseconds"):
        b.create_hold(
            "h", USD, payee=OTHER.address, notary=THIRD.address, amount=1, expires_at_time=(NOW + 60) * 1000
        )
