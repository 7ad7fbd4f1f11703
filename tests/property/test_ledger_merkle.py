"""Hypothesis: the state tree is a function of its contents, and its proofs are sound.

- any sequence of batched inserts/updates/deletes gives the root (and nodes) of building the final
  contents in one batch;
- proofs verify for random present and absent keys and fail for tampered values, keys or roots;
- the hand-written account encoder produces the protobuf library's deterministic bytes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from node.ledger import MemoryKV
from node.ledger.merkle import NODE_PREFIX, MerkleTree, key_hash, value_hash, verify_proof
from node.ledger.state import AccountRec, decode_account, encode_account, encode_account_pb

keys = st.binary(min_size=1, max_size=6)
values = st.binary(min_size=0, max_size=8)
batches = st.lists(st.dictionaries(keys, st.one_of(st.none(), values), max_size=60), min_size=1, max_size=6)


def apply(kv: MemoryKV, batch: dict[bytes, bytes | None]) -> bytes:
    root, writes = MerkleTree(kv).update(
        {key_hash(k): None if v is None else value_hash(v) for k, v in batch.items()}
    )
    kv.apply(writes)
    return root


@settings(max_examples=60, deadline=None)
@given(batches)
def test_root_depends_only_on_contents(sequence: list[dict[bytes, bytes | None]]) -> None:
    kv = MemoryKV()
    contents: dict[bytes, bytes] = {}
    root = b""
    for batch in sequence:
        root = apply(kv, batch)
        for k, v in batch.items():
            if v is None:
                contents.pop(k, None)
            else:
                contents[k] = v
    fresh = MemoryKV()
    assert apply(fresh, dict(contents.items())) == root == MerkleTree(kv).root_hash()
    assert dict(fresh.items()) == dict(kv.items())


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(keys, values, max_size=300), st.lists(keys, min_size=1, max_size=10), st.data())
def test_proofs_sound(contents: dict[bytes, bytes], probes: list[bytes], data: st.DataObject) -> None:
    kv = MemoryKV()
    root = apply(kv, dict(contents.items()))
    tree = MerkleTree(kv)
    for k in [*probes, *list(contents)[:10]]:
        value = contents.get(k)
        proof = tree.prove(k)
        assert proof.present == (value is not None)
        assert verify_proof(root, k, value, proof)
        other = data.draw(values.filter(lambda v, value=value: v != value))
        assert not verify_proof(root, k, other, proof)
        if value is not None:
            assert not verify_proof(root, k, None, proof)
        assert not verify_proof(value_hash(root), k, value, proof)
        other_key = data.draw(keys.filter(lambda x, k=k: x != k))
        assert not verify_proof(root, other_key, value, proof)
    assert all(k.startswith(NODE_PREFIX) for k, _ in kv.items())


u64 = st.integers(0, 2**64 - 1)
instrument_keys = st.tuples(st.binary(max_size=20), st.text(max_size=6))


@settings(max_examples=150, deadline=None)
@given(
    st.builds(
        AccountRec,
        address=st.binary(max_size=20),
        public_key=st.binary(max_size=32),
        roles=st.frozensets(st.integers(1, 5)),
        kyc_status=st.integers(0, 4),
        kyc_expires_at=u64,
        frozen=st.booleans(),
        nonce=u64,
        balances=st.dictionaries(instrument_keys, st.tuples(u64, u64, u64), max_size=3),
        limits=st.dictionaries(instrument_keys, st.tuples(u64, u64), max_size=2),
        usage=st.dictionaries(instrument_keys, st.tuples(u64, u64), max_size=2),
        closed=st.booleans(),
        recovered_to=st.binary(max_size=20),
        kyc_approvals=st.dictionaries(
            st.one_of(st.just(b""), st.binary(min_size=20, max_size=20), st.binary(max_size=200)),
            st.tuples(st.integers(0, 4), u64),
            max_size=3,
        ),
    )
)
def test_account_encoder_matches_protobuf(rec: AccountRec) -> None:
    raw = encode_account(rec)
    assert raw == encode_account_pb(rec)
    assert encode_account(decode_account(raw)) == raw
