"""Ledger life cycle: candidates, commit, reopen, dry runs, proofs, genesis and its errors."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from clearline.v1 import receipt_pb2 as R
from clearline.v1 import state_pb2
from clearline.v1 import tx_pb2 as T
from node.ledger import (
    BlockRejected,
    GenesisError,
    Ledger,
    MemoryKV,
    StaleBlockResult,
    StateCorrupted,
    account_key,
    merkle,
    parse_genesis,
    verify_proof,
)
from node.ledger import ledger as ledger_mod
from node.ledger import state as state_keys
from node.ledger.state import encode_account_pb, encode_transfer_event
from tests.unit.ledger.helpers import (
    ALICE,
    BANK,
    BOB,
    CAROL,
    COMPLIANCE,
    MALLORY,
    T0,
    USD,
    VAL1,
    VAL2,
    World,
    genesis,
    key,
)
from tests.unit.ledger.test_rejections import dvp, hold, limits, mint, transfer


def test_genesis_state() -> None:
    w = World.create()
    assert w.ledger.height == 0 and w.ledger.chain_id == "clearline-test"
    assert w.balance(ALICE) == (1000, 0, 0)
    inst = w.ledger.get_instrument(USD)
    assert inst is not None and inst.supply == inst.minted == 1500
    assert sorted(w.ledger.validators()) == sorted([(VAL1.public_key, 10), (VAL2.public_key, 10)])
    writes, root = Ledger.genesis_writes(genesis())
    assert root == w.ledger.state_root and writes == Ledger.genesis_writes(genesis())[0]


def test_execute_block_leaves_committed_state_alone_and_commit_checks_base() -> None:
    w = World.create()
    root0 = w.ledger.state_root
    before = dict(w.kv.items())
    cand_a = w.execute(transfer(w, 10))
    cand_b = w.execute(transfer(w, 20))  # another round's candidate of the same height
    assert dict(w.kv.items()) == before and w.ledger.state_root == root0 and w.ledger.height == 0
    assert w.balance(ALICE) == (1000, 0, 0)
    assert cand_a.base_root == cand_b.base_root == root0 and cand_a.state_root != cand_b.state_root
    w.commit(cand_b)
    assert w.ledger.state_root == cand_b.state_root and w.ledger.height == 1
    assert w.balance(ALICE) == (980, 0, 0)
    with pytest.raises(StaleBlockResult):
        w.ledger.commit(cand_a)
    with pytest.raises(BlockRejected):
        w.ledger.execute_block([], 5, w.time_ms)


def test_same_blocks_same_roots_and_writes() -> None:
    results = []
    for _ in range(2):
        w = World.create()
        r1 = w.execute(transfer(w, 10), mint(w, 5), hold(w, "h", 7, nonce=1))
        w.commit(r1)
        r2 = w.execute(dvp(w, 3, 1))
        w.commit(r2)
        results.append(
            (r1.state_root, r1.writes, r2.state_root, r2.writes, [r.SerializeToString() for r in r1.receipts])
        )
    assert results[0] == results[1]


def test_reopen_from_kv_gives_same_root_and_answers() -> None:
    w = World.create()
    w.run(transfer(w, 10), mint(w, 5), hold(w, "h", 7, nonce=1))
    w.run(dvp(w, 3, 1))
    reopened = Ledger.open(w.kv)
    assert reopened.state_root == w.ledger.state_root and reopened.height == w.ledger.height == 2
    for who in (ALICE, BOB, CAROL):
        assert reopened.get_account(who.address) == w.ledger.get_account(who.address)
    assert reopened.get_hold("h") == w.ledger.get_hold("h")
    assert reopened.list_holds(ALICE.address) == w.ledger.list_holds(ALICE.address)
    assert reopened.validators() == w.ledger.validators()
    assert reopened.get_instrument(USD) == w.ledger.get_instrument(USD)
    # And it keeps going identically.
    tx = transfer(w, 1)
    assert (
        reopened.execute_block([tx], 3, w.time_ms).state_root
        == w.ledger.execute_block([tx], 3, w.time_ms).state_root
    )


def test_open_empty_store_fails() -> None:
    with pytest.raises(StateCorrupted):
        Ledger.open(MemoryKV())


def test_account_entry_is_deterministic_protobuf_and_provable() -> None:
    w = World.create()
    w.run(transfer(w, 10))
    raw = w.kv.get(account_key(ALICE.address))
    assert raw is not None
    acct = w.ledger.get_account(ALICE.address)
    assert acct is not None and acct.SerializeToString(deterministic=True) == raw
    rec = w.ledger.get_account_record(ALICE.address)
    assert rec is not None and encode_account_pb(rec) == raw
    proof = w.ledger.prove_account(ALICE.address)
    assert proof.present and proof.value == raw
    assert verify_proof(w.ledger.state_root, account_key(ALICE.address), raw, proof)
    absent = key("ghost")
    proof = w.ledger.prove_account(absent.address)
    assert not proof.present and verify_proof(w.ledger.state_root, account_key(absent.address), None, proof)
    assert not verify_proof(w.ledger.state_root, account_key(absent.address), raw, proof)


def test_check_tx_is_a_dry_run() -> None:
    w = World.create()
    root = w.ledger.state_root
    r = w.ledger.check_tx(transfer(w, 10))
    assert r.status == R.TX_STATUS_OK and r.height == 0
    assert w.ledger.state_root == root and w.balance(ALICE) == (1000, 0, 0)
    assert w.ledger.check_tx(transfer(w, 10, nonce=1)).status == R.TX_STATUS_BAD_NONCE
    assert w.ledger.check_tx(transfer(w, 10, nonce=1), expected_nonce=1).status == R.TX_STATUS_OK
    assert w.ledger.check_tx(transfer(w, 5000)).status == R.TX_STATUS_INSUFFICIENT_FUNDS
    w.run(
        w.tx(
            BANK,
            "set_kyc",
            T.SetKyc(account=ALICE.address, status=T.KYC_STATUS_APPROVED, expires_at=T0 + 100),
        )
    )
    assert w.ledger.check_tx(transfer(w, 1), time_ms=(T0 + 50) * 1000).status == R.TX_STATUS_OK
    assert w.ledger.check_tx(transfer(w, 1), time_ms=(T0 + 100) * 1000).status == R.TX_STATUS_KYC_EXPIRED


def test_receipt_fields() -> None:
    w = World.create()
    tx = transfer(w, 1, client_ref="c-1")
    result = w.execute(transfer(w, 5000), tx)
    bad, good = result.receipts
    assert (bad.status, bad.index, bad.height) == (R.TX_STATUS_INSUFFICIENT_FUNDS, 0, 1)
    assert good.status == R.TX_STATUS_BAD_NONCE  # both used nonce 0; the first consumed it
    assert good.tx_hash == tx.tx_hash and good.client_ref == "c-1" and good.signer == ALICE.address


# --- genesis file ----------------------------------------------------------------------------------


def genesis_json(g: state_pb2.Genesis) -> str:
    return json_format.MessageToJson(g)


def test_parse_genesis_round_trip() -> None:
    g = genesis()
    assert parse_genesis(genesis_json(g)) == g


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda g: g.ClearField("chain_id"), "chain_id"),
        (lambda g: g.ClearField("validators"), "validators"),
        (
            lambda g: setattr(g.validators[1], "public_key", g.validators[0].public_key),
            "validators[1].public_key",
        ),
        (lambda g: setattr(g.validators[0], "power", 0), "validators[0].power"),
        (lambda g: setattr(g.accounts[2], "public_key", b"short"), "accounts[2].public_key"),
        (lambda g: g.accounts.add(public_key=g.accounts[0].public_key), "accounts[9].public_key"),
        (lambda g: setattr(g.instruments[0].id, "issuer", MALLORY.address), "instruments[0].id.issuer"),
        (lambda g: setattr(g.instruments[0], "supply_cap", 10), "instruments[0].supply_cap"),
        (lambda g: setattr(g.instruments[1], "supply", 5), "instruments[1].supply"),
        (lambda g: setattr(g.instruments[1].id, "symbol", ""), "instruments[1].id.symbol"),
        (
            lambda g: setattr(g.accounts[6].balances[0].instrument, "symbol", "EUR"),
            "accounts[6].balances[0].instrument",
        ),
        (lambda g: setattr(g.accounts[6].balances[0], "held", 1), "accounts[6].balances[0]"),
        # kyc_approver: empty (compliance) or an issuer of this genesis, and only with a kyc_status.
        (lambda g: setattr(g.accounts[6], "kyc_approver", COMPLIANCE.address), "accounts[6].kyc_approver"),
        (lambda g: setattr(g.accounts[7], "kyc_approver", MALLORY.address), "accounts[7].kyc_approver"),
        (lambda g: setattr(g.accounts[6], "kyc_approver", key("nobody").address), "accounts[6].kyc_approver"),
        (lambda g: setattr(g.accounts[6], "kyc_approver", b"\x01"), "accounts[6].kyc_approver"),
        (lambda g: setattr(g.accounts[0], "kyc_approver", BANK.address), "accounts[0].kyc_approver"),
        (lambda g: setattr(g.accounts[0], "kyc_expires_at", T0), "accounts[0].kyc_expires_at"),
    ],
)
def test_genesis_errors_name_the_field(mutate: object, field: str) -> None:
    g = genesis()
    mutate(g)  # type: ignore[operator]
    with pytest.raises(GenesisError) as err:
        parse_genesis(genesis_json(g))
    assert err.value.field == field
    with pytest.raises(GenesisError):
        Ledger.genesis_writes(g)


def test_genesis_not_json() -> None:
    with pytest.raises(GenesisError, match="not a valid genesis"):
        parse_genesis("{ nope")
    with pytest.raises(GenesisError, match="not a valid genesis"):
        parse_genesis('{"chainId": "x", "bogus": 1}')


def test_transfer_event_bytes_match_the_protobuf_encoding() -> None:
    for amount in (1, 127, 128, 10**12, 2**64 - 1):
        by_hand = R.Receipt()
        by_hand.MergeFromString(
            encode_transfer_event(ALICE.address, BOB.address, (USD.issuer, USD.symbol), amount)
        )
        reference = R.Receipt()
        reference.events.add(
            kind="transfer", accounts=[ALICE.address, BOB.address], instrument=USD, amount=amount
        )
        assert by_hand == reference
        assert by_hand.SerializeToString(deterministic=True) == reference.SerializeToString(
            deterministic=True
        )


def test_transfer_fast_path_and_checked_path_agree() -> None:
    """A payer without limits takes the transfer's one-pass path; with (generous) limits, the path of
    the individual checks. Receipts and balances must be the same, including a transfer that empties
    the payer's balance (the balance entry is removed) and one that the payee receives first."""
    fast, checked = World.create(), World.create()
    checked.run1(limits(checked, ALICE.address, per_tx=10**9, per_day=10**9))
    assert checked.ledger.get_account_record(ALICE.address).limits  # type: ignore[union-attr]
    for amount in (1, 299, 700):  # 1000 in all: Alice ends with nothing
        receipts = [
            w.run1(transfer(w, amount, to=CAROL.address if amount == 299 else BOB.address))
            for w in (fast, checked)
        ]
        for r in receipts:
            assert r.status == R.TX_STATUS_OK, r.message
        assert list(receipts[0].events) == list(receipts[1].events)
    for w in (fast, checked):
        assert w.balance(ALICE) == (0, 0, 0)
        assert w.ledger.get_account_record(ALICE.address).balances == {}  # type: ignore[union-attr]
        assert w.ledger.get_account(ALICE.address).nonce == w.nonce(ALICE)  # type: ignore[union-attr]
    assert fast.balance(BOB) == checked.balance(BOB) and fast.balance(CAROL) == checked.balance(CAROL)
    # The one-pass path falls back to the checks on failure, with the same reason.
    for w in (fast, checked):
        r = w.run1(transfer(w, 1))
        assert r.status == R.TX_STATUS_INSUFFICIENT_FUNDS and not r.events


def test_merkle_node_cache_follows_the_committed_tree() -> None:
    """The ledger keeps committed Merkle nodes in memory. Whatever the cache holds (a big one that
    keeps everything, or one emptied at every read), roots equal those of a fresh ledger opened on
    the same kv, candidates that are not committed leave it unchanged, and every cached node equals
    the stored one."""
    big, tiny = World.create(), World.create()
    tiny.ledger._nodes.max_nodes = 1  # emptied at every read and commit
    candidate = big.execute(transfer(big, 500))  # executed, never committed
    assert candidate.node_writes and all(k.startswith(merkle.NODE_PREFIX) for k in candidate.node_writes)
    for amount in (1, 2, 3, 4):
        for w in (big, tiny):
            w.run(transfer(w, amount), transfer(w, amount, to=CAROL.address))
        assert big.ledger.state_root == tiny.ledger.state_root == Ledger.open(big.kv).state_root
    cached = big.ledger._nodes.nodes
    stored = merkle.ChunkedNodes(big.kv)
    assert cached and all(stored.get(k) == v for k, v in cached.items())
    proof = big.ledger.prove_account(ALICE.address)
    assert verify_proof(big.ledger.state_root, account_key(ALICE.address), big.account_bytes(ALICE), proof)


class CountingKV:
    """A kv that records the state keys read from it (Merkle nodes aside)."""

    def __init__(self, kv: MemoryKV) -> None:
        self.kv = kv
        self.reads: list[bytes] = []

    def get(self, key: bytes) -> bytes | None:
        if not key.startswith((merkle.NODE_PREFIX, merkle.CHUNK_PREFIX)):
            self.reads.append(key)
        return self.kv.get(key)

    def items(self, prefix: bytes = b""):  # type: ignore[no-untyped-def]
        return self.kv.items(prefix)


def test_state_read_ahead_spares_execution_the_kv_and_never_hides_a_commit() -> None:
    """read_ahead() + absorb() put the signer, payee and (new) client reference in the cache, so
    executing the tx reads nothing from the kv. A read-ahead that a commit overtook is dropped: the
    reference the commit used is still found, and a later tx reusing it is rejected."""
    w = World.create()
    bob_before = w.balance(BOB)[0]
    first = transfer(w, 5, client_ref="pay-1")
    counting = CountingKV(w.kv)
    w.ledger = Ledger.open(counting)  # type: ignore[arg-type]  # an empty cache
    ahead = w.ledger.read_ahead([first.body])
    per_tx = {
        account_key(ALICE.address),
        account_key(BOB.address),
        state_keys.client_ref_key(ALICE.address, "pay-1"),
    }
    assert {k for k, _ in ahead.entries} == per_tx
    assert w.ledger.absorb(ahead) == 3
    counting.reads.clear()
    assert w.run1(first).status == R.TX_STATUS_OK
    assert counting.reads and not per_tx & set(counting.reads)  # only per-block entries (meta...) read

    # Read ahead of a tx with reference "pay-2", then a block commits another tx using "pay-2".
    later = transfer(w, 1, client_ref="pay-2", nonce=w.nonce(ALICE) + 2)  # after the next two
    stale = w.ledger.read_ahead([later.body])
    assert (state_keys.client_ref_key(ALICE.address, "pay-2"), None) in stale.entries
    assert w.run1(transfer(w, 2, client_ref="pay-2")).status == R.TX_STATUS_OK
    # absorb never replaces what the cache holds (the commit cached the reference it wrote).
    assert w.ledger.absorb(ledger_mod.ReadAhead(w.ledger.height, list(stale.entries))) == 0
    # The next commit empties the cache (it is full), so only the height tells the read is stale.
    w.ledger._max_cache = len(w.ledger._cache)
    assert w.run1(transfer(w, 0)).status == R.TX_STATUS_INVALID_AMOUNT
    assert state_keys.client_ref_key(ALICE.address, "pay-2") not in w.ledger._cache
    w.ledger._max_cache = 10_000
    assert w.ledger.absorb(stale) == 0  # overtaken by the commits: dropped
    r = w.run1(later)
    assert r.status == R.TX_STATUS_DUPLICATE_CLIENT_REF, r.message
    assert w.balance(BOB)[0] == bob_before + 5 + 2  # the rejected tx moved nothing
    assert w.ledger.state_root == Ledger.open(w.kv).state_root
