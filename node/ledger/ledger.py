"""The Ledger: committed state in a kv store, block execution into BlockResults, queries and proofs.

Life cycle of a block (the node drives it):

    result = ledger.execute_block(txs, height, time_ms)   # pure: committed state is unchanged
    store.write_batch(result.writes + block + receipts)     # the caller's one atomic batch
    ledger.commit(result)                                   # result becomes the committed state

`execute_block` may run several times for one height (candidate blocks of different rounds); each
works on its own layered StateView over the committed state. Executing a block: expire due holds,
apply each transaction (ops.apply_tx), record the height, then serialize every touched entry once
and update the Merkle tree (only the paths of touched keys). `BlockResult.writes` holds both the
state entries and the Merkle nodes, so `Ledger.open(kv)` after a restart reads only the root node
and the metadata entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from google.protobuf import json_format

from clearline.v1 import ledger_api_pb2, receipt_pb2, state_pb2, tx_pb2
from node import crypto
from node.ledger import merkle
from node.ledger.errors import GenesisError, LedgerError, StaleBlockResult, StateCorrupted
from node.ledger.kv import KVReader, MemoryKV, Writes
from node.ledger.ops import (
    MAX_DECIMALS,
    MAX_SYMBOL_LEN,
    VALID_KYC,
    VALID_ROLES,
    apply_tx,
    process_hold_expiry,
    set_kyc_approval,
)
from node.ledger.state import (
    ACCOUNT,
    META,
    U64_MAX,
    VALIDATORS,
    AccountRec,
    Record,
    StateView,
    account_key,
    account_message,
    client_ref_key,
    decode_record,
    encode_account,
    encode_record,
    ik_of,
    instrument_key,
    new_account,
    payer_holds_key,
)
from node.txs import VerifiedTx

DEFAULT_CACHE_ENTRIES: Final = 200_000
DEFAULT_NODE_CACHE: Final = 20_000  # Merkle nodes (each at most 256 x 66 bytes; most far smaller)


class BlockRejected(LedgerError):
    """execute_block was asked for a height that does not follow the committed one."""

    def __init__(self, height: int, committed: int) -> None:
        super().__init__(f"cannot execute height {height} on committed height {committed}")
        self.height = height
        self.committed = committed


@dataclass(frozen=True, slots=True)
class BlockResult:
    """The outcome of executing one candidate block on the committed state."""

    height: int
    """Height of the executed block."""
    base_root: bytes
    """Committed state root the block was executed on."""
    state_root: bytes
    """State root after the block: goes in the block header."""
    receipts: tuple[receipt_pb2.Receipt, ...]
    """One receipt per transaction, in order, with height and index set."""
    writes: Writes
    """Every state entry and Merkle node to put (bytes) or delete (None), for one atomic batch."""
    validator_updates: tuple[tuple[bytes, int], ...]
    """(public key, power; 0 = remove) from successful ChangeValidator transactions, in order."""
    events: tuple[receipt_pb2.Event, ...] = ()
    """Block-level events not tied to a transaction (holds expired at the start of the block)."""
    records: Mapping[bytes, Record | None] = field(default_factory=dict, repr=False, compare=False)
    """Decoded records of the changed entries, for the committed-state cache (do not mutate)."""
    node_writes: Mapping[bytes, bytes | None] = field(default_factory=dict, repr=False, compare=False)
    """The changed Merkle nodes as whole encodings (writes holds their changed chunks), for the
    committed node cache (do not mutate)."""


@dataclass(frozen=True, slots=True)
class ReadAhead:
    """Committed entries read ahead of execution (Ledger.read_ahead), as of one height."""

    height: int
    entries: list[tuple[bytes, bytes | None]]


class NodeCache:
    """A KVReader for the Merkle tree: committed nodes from memory, else from the kv (then kept).

    Every block reads the nodes on the paths of its changed keys: the root and the upper levels
    each time, which a store read per node per block would pay again and again. Ledger.commit puts
    each committed block's node writes here, so the cache always equals the committed tree.
    Bounded: emptied when it reaches max_nodes (it refills from the kv as blocks need nodes).
    """

    __slots__ = ("_kv", "max_nodes", "nodes")

    def __init__(self, kv: KVReader, max_nodes: int) -> None:
        self._kv = merkle.ChunkedNodes(kv)
        self.nodes: dict[bytes, bytes | None] = {}
        self.max_nodes = max_nodes

    def get(self, key: bytes) -> bytes | None:
        nodes = self.nodes
        if key in nodes:
            return nodes[key]
        value = self._kv.get(key)
        if len(nodes) >= self.max_nodes:
            nodes.clear()
        nodes[key] = value
        return value

    def update(self, node_writes: Mapping[bytes, bytes | None]) -> None:
        if len(self.nodes) + len(node_writes) > self.max_nodes:
            self.nodes.clear()
        self.nodes.update(node_writes)


@dataclass(frozen=True, slots=True)
class RootUpdate:
    """Serialized changes of a StateView's block layer and the Merkle root after them."""

    state_root: bytes
    writes: Writes
    """The serialized entries and the changed Merkle node chunks (what the store writes)."""
    entries: int
    node_writes: Writes
    """The changed Merkle nodes as whole encodings (for the node cache)."""


def serialize_changes(block: Mapping[bytes, Record | None]) -> Writes:
    """Each changed state entry serialized once: key -> bytes, or None where deleted."""
    out: Writes = {}
    for key, rec in block.items():  # insertion order: deterministic
        if rec is None:
            out[key] = None
        else:
            out[key] = encode_account(rec) if type(rec) is AccountRec else encode_record(rec)
    return out


_KEY_HASHES: dict[bytes, bytes] = {}
_KEY_HASHES_MAX: Final = 100_000


def _key_hash(key: bytes) -> bytes:
    """sha256(key), memoized (bounded): the same accounts change block after block."""
    kh = _KEY_HASHES.get(key)
    if kh is None:
        if len(_KEY_HASHES) >= _KEY_HASHES_MAX:
            _KEY_HASHES.clear()
        kh = _KEY_HASHES[key] = hashlib.sha256(key).digest()
    return kh


def compute_state_root(
    kv: KVReader, entries: Mapping[bytes, bytes | None], tree: merkle.MerkleTree | None = None
) -> tuple[bytes, Writes]:
    """The state root after changing entries (key -> bytes or None) on the committed tree in kv,
    and the Merkle node writes. Cost: the changed keys times the tree depth. `tree` (over kv) is
    the tree to update, for a caller that wants its `touched` afterwards."""
    sha = hashlib.sha256
    kh = _key_hash
    items = [(kh(k), None if v is None else sha(v).digest()) for k, v in entries.items()]
    items.sort()
    return (tree or merkle.MerkleTree(kv)).update_sorted(items)


def compute_root_update(kv: KVReader, block: Mapping[bytes, Record | None]) -> RootUpdate:
    """Serialize each changed entry once and update the Merkle tree along their paths. kv reads
    whole committed node encodings (a NodeCache or merkle.ChunkedNodes). The writes are the
    entries and the changed node chunks, ready for the store."""
    writes = serialize_changes(block)
    tree = merkle.MerkleTree(kv)
    root, node_writes = compute_state_root(kv, writes, tree)
    writes.update(merkle.stored_node_writes(node_writes, kv, tree.touched, tree.built))
    return RootUpdate(root, writes, len(block), node_writes)


class Ledger:
    """The committed ledger state over a KVReader, and everything computed from it."""

    __slots__ = ("_cache", "_kv", "_max_cache", "_meta", "_nodes", "_root")

    def __init__(self, kv: KVReader, root: bytes, meta: state_pb2.LedgerMeta, max_cache: int) -> None:
        self._kv = kv
        self._root = root
        self._meta = meta
        self._cache: dict[bytes, Record | None] = {}
        self._max_cache = max_cache
        self._nodes = NodeCache(kv, DEFAULT_NODE_CACHE)

    @classmethod
    def open(cls, kv: KVReader, *, max_cache: int = DEFAULT_CACHE_ENTRIES) -> Ledger:
        """The committed ledger in kv (written from genesis_writes and BlockResult.writes). O(1)."""
        raw = kv.get(META)
        if raw is None:
            raise StateCorrupted("the store holds no ledger state (write genesis_writes first)")
        meta = state_pb2.LedgerMeta()
        meta.ParseFromString(raw)
        try:
            root = merkle.MerkleTree(merkle.ChunkedNodes(kv)).root_hash()
        except merkle.MerkleError as exc:
            raise StateCorrupted(str(exc)) from exc
        return cls(kv, root, meta, max_cache)

    @staticmethod
    def genesis_writes(genesis: state_pb2.Genesis) -> tuple[Writes, bytes]:
        """(writes that create the genesis state in an empty kv, its state root)."""
        validate_genesis(genesis)
        empty = MemoryKV()
        st = StateView(empty, {})
        build_genesis_state(st, genesis)
        st.commit_tx()
        update = compute_root_update(merkle.ChunkedNodes(empty), st.block)
        return update.writes, update.state_root

    @property
    def state_root(self) -> bytes:
        """Root of the committed state."""
        return self._root

    @property
    def height(self) -> int:
        """Last committed height (0 after genesis)."""
        return self._meta.height

    @property
    def chain_id(self) -> str:
        return self._meta.chain_id

    @property
    def time_ms(self) -> int:
        """Block time of the last committed block (genesis time before the first)."""
        return self._meta.time_ms

    def _view(self) -> StateView:
        return StateView(self._kv, self._cache)

    def execute_block(self, txs: Sequence[VerifiedTx], height: int, time_ms: int) -> BlockResult:
        """Execute a candidate block on the committed state without changing it. Deterministic."""
        if height != self._meta.height + 1:
            raise BlockRejected(height, self._meta.height)
        st = self._view()
        sink = receipt_pb2.Receipt()
        process_hold_expiry(st, height, time_ms, sink.events)
        receipts: list[receipt_pb2.Receipt] = []
        updates: list[tuple[bytes, int]] = []
        ok = receipt_pb2.TX_STATUS_OK
        for index, tx in enumerate(txs):
            receipts.append(apply_tx(st, tx, height, time_ms, None, index))
        if VALIDATORS in st.block:  # only a ChangeValidator writes the set: find them
            for tx, receipt in zip(txs, receipts, strict=True):
                if receipt.status == ok and tx.body.WhichOneof("op") == "change_validator":
                    op = tx.body.change_validator
                    updates.append((op.public_key, op.power))
        meta = state_pb2.LedgerMeta()
        meta.CopyFrom(st.meta())
        meta.height = height
        meta.time_ms = time_ms
        st.put(META, meta)
        st.commit_tx()
        try:
            update = compute_root_update(self._nodes, st.block)
        except merkle.MerkleError as exc:
            raise StateCorrupted(str(exc)) from exc
        return BlockResult(
            height=height,
            base_root=self._root,
            state_root=update.state_root,
            receipts=tuple(receipts),
            writes=update.writes,
            validator_updates=tuple(updates),
            events=tuple(sink.events),
            records=dict(st.block),
            node_writes=update.node_writes,
        )

    def commit(self, result: BlockResult) -> None:
        """Make result the committed state; the caller has already written result.writes to the kv."""
        if result.base_root != self._root or result.height != self._meta.height + 1:
            raise StaleBlockResult(self._root, result.base_root)
        cache = self._cache
        if len(cache) + len(result.records) > self._max_cache:
            cache.clear()
        cache.update(result.records)
        self._nodes.update(result.node_writes)
        meta = result.records.get(META)
        assert isinstance(meta, state_pb2.LedgerMeta)
        self._meta = meta
        self._root = result.state_root

    def read_ahead(self, bodies: Sequence[tx_pb2.TxBody]) -> ReadAhead:
        """Read from the kv, in the calling thread (any thread), the committed entries that executing
        these transactions reads first and that are not cached: the signer, a transfer's payee and
        the client reference (a new reference is a miss that only the kv can confirm). absorb() puts
        them in the cache on the ledger's thread, so execution does not wait on the disk there."""
        height = self._meta.height  # before the reads: absorb() drops them if a block committed since
        cache = self._cache
        wanted: list[bytes] = []
        for body in bodies:
            wanted.append(ACCOUNT + body.signer)
            if body.client_ref:
                wanted.append(client_ref_key(body.signer, body.client_ref))
            if body.HasField("transfer"):
                wanted.append(ACCOUNT + body.transfer.to)
        kv = self._kv
        return ReadAhead(height, [(k, kv.get(k)) for k in dict.fromkeys(wanted) if k not in cache])

    def absorb(self, ahead: ReadAhead) -> int:
        """Cache what read_ahead() read, unless a block committed in between (its reads may predate
        the block's writes). A key already cached is left alone. Returns the entries added."""
        if ahead.height != self._meta.height:
            return 0
        cache = self._cache
        if len(cache) + len(ahead.entries) > self._max_cache:
            return 0
        added = 0
        for key, raw in ahead.entries:
            if key not in cache:
                cache[key] = None if raw is None else decode_record(key, raw)
                added += 1
        return added

    def check_tx(
        self, tx: VerifiedTx, *, expected_nonce: int | None = None, time_ms: int | None = None
    ) -> receipt_pb2.Receipt:
        """Dry-run tx against the committed state (as the next block would); nothing is kept.

        expected_nonce replaces the account's next nonce (the mempool admits a sender's
        consecutive transactions); time_ms defaults to the last block's time.
        """
        st = self._view()
        when = self._meta.time_ms if time_ms is None else time_ms
        receipt = apply_tx(st, tx, self._meta.height + 1, when, expected_nonce)
        receipt.height = 0
        return receipt

    def get_account(self, address: bytes) -> state_pb2.Account | None:
        rec = self._view().account(address)
        return None if rec is None else account_message(rec)

    def get_account_record(self, address: bytes) -> AccountRec | None:
        """The decoded committed account (read-only: do not mutate)."""
        return self._view().account(address)

    def get_instrument(self, instrument: tx_pb2.InstrumentId) -> state_pb2.Instrument | None:
        rec = self._view().instrument(ik_of(instrument))
        return None if rec is None else _copy(rec)

    def get_hold(self, hold_id: str) -> state_pb2.Hold | None:
        rec = self._view().hold(hold_id)
        return None if rec is None else _copy(rec)

    def list_holds(self, address: bytes) -> list[state_pb2.Hold]:
        """Active holds where address is the payer, by hold id (bounded per payer)."""
        st = self._view()
        holds = []
        for hold_id in st.hold_list(payer_holds_key(address)):
            hold = st.hold(hold_id)
            if hold is not None:
                holds.append(_copy(hold))
        return holds

    def get_entry(self, key: bytes) -> bytes | None:
        """The committed serialized state entry at key (what proofs are about)."""
        return self._kv.get(key)

    def prove(self, key: bytes) -> ledger_api_pb2.MerkleProof:
        """Inclusion or non-inclusion proof of any state key against state_root."""
        proof = merkle.MerkleTree(self._nodes).prove(key)
        if proof.present:
            value = self._kv.get(key)
            if value is None:
                raise StateCorrupted(f"the tree holds {key!r} but the store does not")
            proof.value = value
        return proof

    def prove_account(self, address: bytes) -> ledger_api_pb2.MerkleProof:
        """Proof of the account's entry (or of its absence) against state_root."""
        return self.prove(account_key(address))

    def validators(self) -> list[tuple[bytes, int]]:
        """(public key, power) as recorded in state, sorted by public key."""
        return [(v.public_key, v.power) for v in self._view().validator_set().validators]


_M = TypeVar("_M", state_pb2.Instrument, state_pb2.Hold)


def _copy(msg: _M) -> _M:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def verify_proof(root: bytes, key: bytes, value: bytes | None, proof: ledger_api_pb2.MerkleProof) -> bool:
    """True iff proof shows key holds value (value None: key is absent) under root. Pure."""
    return merkle.verify_proof(root, key, value, proof)


# --- genesis ----------------------------------------------------------------------------------------


def parse_genesis(text: str) -> state_pb2.Genesis:
    """Read a protobuf-JSON genesis file (bytes fields base64) and validate it; raises GenesisError."""
    genesis = state_pb2.Genesis()
    try:
        json_format.Parse(text, genesis)
    except json_format.ParseError as exc:
        raise GenesisError("", f"not a valid genesis document: {exc}") from exc
    validate_genesis(genesis)
    return genesis


def validate_genesis(genesis: state_pb2.Genesis) -> None:
    """Every rule a genesis must meet; raises GenesisError naming the field."""
    if not genesis.chain_id:
        raise GenesisError("chain_id", "is required")
    if not genesis.validators:
        raise GenesisError("validators", "at least one validator is required")
    seen_validators: set[bytes] = set()
    for n, v in enumerate(genesis.validators):
        if len(v.public_key) != crypto.PUBLIC_KEY_LEN:
            raise GenesisError(f"validators[{n}].public_key", "must be 32 bytes (base64 in JSON)")
        if v.power == 0:
            raise GenesisError(f"validators[{n}].power", "must be positive")
        if v.public_key in seen_validators:
            raise GenesisError(f"validators[{n}].public_key", "duplicate validator")
        seen_validators.add(v.public_key)
    accounts: dict[bytes, state_pb2.GenesisAccount] = {}
    for n, a in enumerate(genesis.accounts):
        if len(a.public_key) != crypto.PUBLIC_KEY_LEN:
            raise GenesisError(f"accounts[{n}].public_key", "must be 32 bytes (base64 in JSON)")
        address = crypto.address_of(a.public_key)
        if address in accounts:
            raise GenesisError(f"accounts[{n}].public_key", "duplicate account")
        accounts[address] = a
        for role in a.roles:
            if role not in VALID_ROLES:
                raise GenesisError(f"accounts[{n}].roles", f"unknown role {role}")
        if a.kyc_status and a.kyc_status not in VALID_KYC:
            raise GenesisError(f"accounts[{n}].kyc_status", f"unknown status {a.kyc_status}")
        if not a.kyc_status and a.kyc_expires_at:
            raise GenesisError(f"accounts[{n}].kyc_expires_at", "is set without a kyc_status")
    for n, a in enumerate(genesis.accounts):
        # The genesis KYC decision is one approver's (ops.py, "KYC"): an issuer's or compliance's.
        if not a.kyc_approver:
            continue
        if not a.kyc_status:
            raise GenesisError(f"accounts[{n}].kyc_approver", "is set without a kyc_status")
        approver = accounts.get(a.kyc_approver)
        if approver is None or tx_pb2.ROLE_ISSUER not in approver.roles:
            raise GenesisError(
                f"accounts[{n}].kyc_approver",
                "must be empty (compliance) or the address of a genesis account with the issuer role",
            )
    supplies: dict[tuple[bytes, str], int] = {}
    for n, inst in enumerate(genesis.instruments):
        ik = ik_of(inst.id)
        where = f"instruments[{n}]"
        issuer = accounts.get(ik[0])
        if issuer is None or tx_pb2.ROLE_ISSUER not in issuer.roles:
            raise GenesisError(
                f"{where}.id.issuer", "must be the address of a genesis account with the issuer role"
            )
        if not ik[1] or len(ik[1]) > MAX_SYMBOL_LEN:
            raise GenesisError(f"{where}.id.symbol", f"must be 1..{MAX_SYMBOL_LEN} characters")
        if ik in supplies:
            raise GenesisError(f"{where}.id", "duplicate instrument")
        if inst.decimals > MAX_DECIMALS:
            raise GenesisError(f"{where}.decimals", f"must be at most {MAX_DECIMALS}")
        if inst.kind == tx_pb2.INSTRUMENT_KIND_UNSPECIFIED:
            raise GenesisError(f"{where}.kind", "is required")
        if inst.supply or inst.minted or inst.redeemed:
            raise GenesisError(f"{where}.supply", "is computed from the accounts' balances; leave it 0")
        supplies[ik] = 0
    for n, a in enumerate(genesis.accounts):
        held: set[tuple[bytes, str]] = set()
        for m, bal in enumerate(a.balances):
            where = f"accounts[{n}].balances[{m}]"
            ik = ik_of(bal.instrument)
            if ik not in supplies:
                raise GenesisError(f"{where}.instrument", "unknown instrument")
            if ik in held:
                raise GenesisError(f"{where}.instrument", "duplicate balance")
            held.add(ik)
            if bal.amount == 0 or bal.frozen or bal.held:
                raise GenesisError(where, "amount must be positive; frozen and held must be 0")
            supplies[ik] += bal.amount
            if supplies[ik] > U64_MAX:
                raise GenesisError(where, "supply exceeds 2^64-1")
    for n, inst in enumerate(genesis.instruments):
        if inst.supply_cap and supplies[ik_of(inst.id)] > inst.supply_cap:
            raise GenesisError(f"instruments[{n}].supply_cap", "funded balances exceed the cap")


def build_genesis_state(st: StateView, genesis: state_pb2.Genesis) -> None:
    """Put the genesis records into st's transaction layer (genesis already validated)."""
    supplies: dict[tuple[bytes, str], int] = {}
    for a in genesis.accounts:
        address = crypto.address_of(a.public_key)
        rec = new_account(address, a.public_key)
        rec.roles = frozenset(a.roles)
        if a.kyc_status:
            set_kyc_approval(rec, a.kyc_approver, a.kyc_status, a.kyc_expires_at)
        for bal in a.balances:
            ik = ik_of(bal.instrument)
            rec.balances[ik] = (bal.amount, 0, 0)
            supplies[ik] = supplies.get(ik, 0) + bal.amount
        st.put_account(rec)
    for inst in genesis.instruments:
        ik = ik_of(inst.id)
        msg = state_pb2.Instrument()
        msg.CopyFrom(inst)
        msg.paused = inst.paused
        msg.supply = msg.minted = supplies.get(ik, 0)
        st.put(instrument_key(ik), msg)
    st.put(
        VALIDATORS,
        state_pb2.ValidatorSetState(
            validators=[
                state_pb2.ValidatorEntry(public_key=v.public_key, power=v.power)
                for v in sorted(genesis.validators, key=lambda v: v.public_key)
            ]
        ),
    )
    st.put(
        META,
        state_pb2.LedgerMeta(
            height=0,
            chain_id=genesis.chain_id,
            expiry_minute=0,
            genesis_time=genesis.genesis_time,
            time_ms=genesis.genesis_time * 1000,
        ),
    )


__all__ = [
    "BlockRejected",
    "BlockResult",
    "Ledger",
    "RootUpdate",
    "compute_root_update",
    "compute_state_root",
    "parse_genesis",
    "serialize_changes",
    "validate_genesis",
    "verify_proof",
]
