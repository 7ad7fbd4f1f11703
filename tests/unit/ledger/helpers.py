"""A small ledger world for tests: named keys, a genesis, and helpers to build and run transactions.

Transactions are built as VerifiedTx directly (the ledger never sees signatures), so tests are
fast and can name any signer set (e.g. a settlement leg whose payer did not sign).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from clearline.v1 import receipt_pb2, state_pb2, tx_pb2
from node import crypto
from node.crypto import Address, Hash, PublicKey
from node.ledger import BlockResult, Ledger, MemoryKV
from node.ledger.state import account_key
from node.txs import VerifiedTx

CHAIN = "clearline-test"
T0 = 1_700_000_000  # genesis time, unix seconds
T0_MS = T0 * 1000
APPROVED = tx_pb2.KYC_STATUS_APPROVED


@dataclass(frozen=True, slots=True)
class Key:
    """A test identity: a public key and its address (no private key needed)."""

    name: str
    public_key: PublicKey
    address: Address


def key(name: str) -> Key:
    pk = PublicKey(hashlib.sha256(b"key:" + name.encode()).digest())
    return Key(name, pk, crypto.address_of(pk))


ADMIN = key("admin")
BANK = key("bank")  # issuer of USD
BANK2 = key("bank2")  # issuer of BOND
COMPLIANCE = key("compliance")
ALICE = key("alice")
BOB = key("bob")
CAROL = key("carol")
NOTARY = key("notary")
MALLORY = key("mallory")  # a participant without KYC
VAL1 = key("validator1")
VAL2 = key("validator2")

USD = tx_pb2.InstrumentId(issuer=BANK.address, symbol="USD")
BOND = tx_pb2.InstrumentId(issuer=BANK2.address, symbol="BOND-2030")
USD_CAP = 10_000_000


def genesis(
    *, alice_usd: int = 1_000, bob_usd: int = 500, carol_bond: int = 100, extra: Sequence[Key] = ()
) -> state_pb2.Genesis:
    g = state_pb2.Genesis(chain_id=CHAIN, genesis_time=T0)
    g.validators.add(public_key=VAL1.public_key, power=10, name="v1")
    g.validators.add(public_key=VAL2.public_key, power=10, name="v2")
    g.accounts.add(public_key=ADMIN.public_key, roles=[tx_pb2.ROLE_ADMIN])
    g.accounts.add(public_key=BANK.public_key, roles=[tx_pb2.ROLE_ISSUER])
    g.accounts.add(public_key=BANK2.public_key, roles=[tx_pb2.ROLE_ISSUER])
    g.accounts.add(public_key=COMPLIANCE.public_key, roles=[tx_pb2.ROLE_COMPLIANCE])
    g.accounts.add(public_key=NOTARY.public_key, roles=[tx_pb2.ROLE_PARTICIPANT], kyc_status=APPROVED)
    g.accounts.add(
        public_key=MALLORY.public_key, roles=[tx_pb2.ROLE_PARTICIPANT], kyc_status=tx_pb2.KYC_STATUS_PENDING
    )
    g.instruments.add(
        id=USD,
        name="Bank USD deposit",
        currency="USD",
        decimals=2,
        supply_cap=USD_CAP,
        kind=tx_pb2.INSTRUMENT_KIND_DEPOSIT_TOKEN,
    )
    g.instruments.add(
        id=BOND, name="Bond 2030", currency="USD", decimals=0, kind=tx_pb2.INSTRUMENT_KIND_ASSET
    )
    # Each client is KYC-approved by its home bank (the issuer of what it holds); the notary and
    # mallory by compliance (the network's approval, approver empty).
    for k, bank, bals in (
        (ALICE, BANK, [(USD, alice_usd)]),
        (BOB, BANK, [(USD, bob_usd)]),
        (CAROL, BANK2, [(BOND, carol_bond)]),
    ):
        acct = g.accounts.add(
            public_key=k.public_key,
            roles=[tx_pb2.ROLE_PARTICIPANT],
            kyc_status=APPROVED,
            kyc_approver=bank.address,
        )
        for inst, amount in bals:
            if amount:
                acct.balances.add(instrument=inst, amount=amount)
    for k in extra:
        g.accounts.add(
            public_key=k.public_key,
            roles=[tx_pb2.ROLE_PARTICIPANT],
            kyc_status=APPROVED,
            kyc_approver=BANK.address,
        )
    return g


@dataclass
class World:
    """A committed ledger over a MemoryKV, with per-signer nonces and block heights tracked."""

    kv: MemoryKV = field(default_factory=MemoryKV)
    ledger: Ledger = field(init=False)
    time_ms: int = T0_MS + 1000
    counter: int = 0

    @classmethod
    def create(cls, g: state_pb2.Genesis | None = None) -> World:
        w = cls()
        writes, _root = Ledger.genesis_writes(g if g is not None else genesis())
        w.kv.apply(writes)
        w.ledger = Ledger.open(w.kv)
        return w

    def nonce(self, who: Key) -> int:
        acct = self.ledger.get_account(who.address)
        return 0 if acct is None else acct.nonce

    def tx(
        self,
        signer: Key,
        op: str,
        msg: object,
        *,
        nonce: int | None = None,
        client_ref: str = "",
        cosigners: Sequence[Key] = (),
        signers: Sequence[Key] | None = None,
    ) -> VerifiedTx:
        """A VerifiedTx of signer with one operation (op = the TxBody oneof field name)."""
        body = tx_pb2.TxBody(
            chain_id=CHAIN,
            signer=signer.address,
            nonce=self.nonce(signer) if nonce is None else nonce,
            client_ref=client_ref,
        )
        getattr(body, op).CopyFrom(msg)
        self.counter += 1
        raw = body.SerializeToString(deterministic=True) + self.counter.to_bytes(8, "big")
        who = [signer, *cosigners] if signers is None else list(signers)
        return VerifiedTx(
            tx_hash=Hash(hashlib.sha256(raw).digest()),
            wire_hash=Hash(hashlib.sha256(raw).digest()),
            raw=raw,
            body=body,
            signers=frozenset(k.address for k in who),
            public_keys=tuple(k.public_key for k in who),
        )

    def execute(self, *txs: VerifiedTx, time_ms: int | None = None) -> BlockResult:
        return self.ledger.execute_block(
            list(txs), self.ledger.height + 1, self.time_ms if time_ms is None else time_ms
        )

    def commit(self, result: BlockResult) -> None:
        self.kv.apply(result.writes)
        self.ledger.commit(result)

    def run(self, *txs: VerifiedTx, time_ms: int | None = None) -> list[receipt_pb2.Receipt]:
        """Execute and commit one block; returns its receipts."""
        result = self.execute(*txs, time_ms=time_ms)
        self.commit(result)
        return list(result.receipts)

    def run1(self, tx: VerifiedTx, time_ms: int | None = None) -> receipt_pb2.Receipt:
        (receipt,) = self.run(tx, time_ms=time_ms)
        return receipt

    def account_bytes(self, who: Key) -> bytes | None:
        return self.kv.get(account_key(who.address))

    def balance(self, who: Key, inst: tx_pb2.InstrumentId = USD) -> tuple[int, int, int]:
        acct = self.ledger.get_account(who.address)
        if acct is None:
            return (0, 0, 0)
        for b in acct.balances:
            if b.instrument == inst:
                return (b.amount, b.frozen, b.held)
        return (0, 0, 0)

    def snapshot(self) -> dict[bytes, bytes]:
        """Every committed kv entry (state and Merkle nodes)."""
        return dict(self.kv.items())


def state_entries(w: World) -> dict[bytes, bytes]:
    """Committed state entries (the chunks of Merkle nodes excluded)."""
    from node.ledger.merkle import CHUNK_PREFIX, NODE_PREFIX

    return {k: v for k, v in w.kv.items() if not k.startswith((CHUNK_PREFIX, NODE_PREFIX))}


def assert_rejected(
    w: World, tx: VerifiedTx, status: int, *, time_ms: int | None = None, nonce_moves: bool = True
) -> receipt_pb2.Receipt:
    """Run tx alone in a block: it fails with status, and the only state change is the signer's nonce.

    (Plus the ledger metadata entry, which records every block's height and time.)
    """
    from node.ledger.state import META

    before = state_entries(w)
    receipt = w.run1(tx, time_ms=time_ms)
    assert receipt.status == status, (
        f"expected {receipt_pb2.TxStatus.Name(status)}, got "  # type: ignore[arg-type]
        f"{receipt_pb2.TxStatus.Name(receipt.status)}: {receipt.message}"
    )
    assert not receipt.events or status == receipt_pb2.TX_STATUS_DUPLICATE_CLIENT_REF
    after = state_entries(w)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    signer_key = account_key(tx.body.signer)
    assert changed <= {META, signer_key}, f"unexpected changes: {sorted(changed)}"
    if nonce_moves:
        old = state_pb2.Account.FromString(before[signer_key])
        new = state_pb2.Account.FromString(after[signer_key])
        assert new.nonce == old.nonce + 1
        new.nonce = old.nonce
        assert new == old
    else:
        assert signer_key not in changed
    return receipt
