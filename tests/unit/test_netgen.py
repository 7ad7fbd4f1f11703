"""cluster.netgen chain ids: every `clearline init` makes a network of its own chain id (unless one is
given), so a transaction signed for one network is refused by every other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from clearline.v1 import receipt_pb2, state_pb2, tx_pb2
from cluster.client import builders
from cluster.netgen import CHAIN_ID_PREFIX, Network, build_genesis, init_network
from node import crypto, txs
from node.config import load_config
from node.ledger import validate_genesis


def chain_ids_on_disk(net: Network) -> set[str]:
    """The chain id as network.json, the genesis files and every node's config record it."""
    home = Path(net.home)
    ids = {json.loads((home / "network.json").read_text())["chain_id"]}
    ids.add(json.loads((home / "genesis.json").read_text())["chainId"])
    for node in net.nodes:
        ids.add(load_config(node.home).chain_id)
        ids.add(json.loads((Path(node.home) / "genesis.json").read_text())["chainId"])
    return ids


def test_each_init_picks_a_fresh_chain_id(tmp_path: Path) -> None:
    a = init_network(tmp_path / "a", validators=2)
    b = init_network(tmp_path / "b", validators=2)
    assert a.chain_id != b.chain_id
    for net in (a, b):
        assert net.chain_id.startswith(CHAIN_ID_PREFIX)
        assert len(net.chain_id) == len(CHAIN_ID_PREFIX) + 8
        assert chain_ids_on_disk(net) == {net.chain_id}
        assert Network.load(net.home).chain_id == net.chain_id
    replaced = init_network(tmp_path / "a", validators=2, force=True)
    assert replaced.chain_id != a.chain_id


def test_a_given_chain_id_is_used_everywhere(tmp_path: Path) -> None:
    net = init_network(tmp_path / "net", validators=2, chain_id="bank-test.net_1")
    assert chain_ids_on_disk(net) == {"bank-test.net_1"}


@pytest.mark.parametrize("bad", ["", "-leading-dash", "has space", "x" * 51, "ümlaut", "a/b"])
def test_an_invalid_chain_id_is_refused_and_nothing_is_written(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="chain id"):
        init_network(tmp_path / "net", validators=1, chain_id=bad)
    assert not (tmp_path / "net").exists()


def test_a_transaction_signed_for_one_network_is_wrong_chain_on_another(tmp_path: Path) -> None:
    a = init_network(tmp_path / "a", validators=1)
    b = init_network(tmp_path / "b", validators=1)
    alice = crypto.load_key_file(Path(a.accounts["alice"]))
    usd = tx_pb2.InstrumentId(issuer=crypto.load_key_file(Path(a.accounts["bank-a"])).address, symbol="USD")
    body = builders.make_body(a.chain_id, alice.address, 0, "r-1", builders.transfer(usd, alice.address, 1))
    raw = txs.sign_tx(body, [alice])
    assert txs.decode_tx(raw, a.chain_id).body.chain_id == a.chain_id
    with pytest.raises(txs.TxRejected) as info:
        txs.decode_tx(raw, b.chain_id)
    assert info.value.status == receipt_pb2.TX_STATUS_WRONG_CHAIN
    # The genesis of each network states its own chain id, so each node enforces it.
    genesis = state_pb2.Genesis()
    json_format.Parse((Path(b.home) / "genesis.json").read_text(), genesis)
    assert genesis.chain_id == b.chain_id != a.chain_id


def test_a_funded_demo_client_is_kyc_approved_by_its_home_bank() -> None:
    """The issuer of a client's first funded balance approves it at genesis, so that bank (and no
    other) can revoke it; the privileged accounts carry the network's (compliance's) approval."""
    names = ("admin", "compliance", "bank-a", "bank-b", "alice", "bob", "carol")
    keys = {name: crypto.SigningKey.generate() for name in names}
    funded = {"alice": [("bank-a", "USD", 5)], "bob": [("bank-b", "USD", 5), ("bank-a", "USD", 1)]}
    genesis = build_genesis("clearline-test", [crypto.SigningKey.generate()], keys, funded=funded)
    validate_genesis(genesis)
    by_name = {a.name: a for a in genesis.accounts}
    assert by_name["alice"].kyc_approver == keys["bank-a"].address
    assert by_name["bob"].kyc_approver == keys["bank-b"].address
    assert by_name["carol"].kyc_status == 0 and not by_name["carol"].kyc_approver
    for name in ("admin", "compliance", "bank-a", "bank-b"):
        assert by_name[name].kyc_status == tx_pb2.KYC_STATUS_APPROVED and not by_name[name].kyc_approver
