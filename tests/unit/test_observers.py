"""Observers (non-voting nodes) in the node and on disk: who a validator admits as a peer
(node/admission.py through PeerRouter.check_hello, against an in-memory account table standing for
the committed ledger, so a grant or a revocation shows at the next Hello), the observer's signer,
the `observer` config flag, and the layout `init_network(observers=N)` and `add_observer` write."""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from clearline.v1 import peer_pb2, tx_pb2
from cluster.netgen import Network, ObserverExistsError, add_observer, init_network
from node import crypto
from node.admission import PeerNames, is_observer_account, observer_name
from node.clock import ManualClock
from node.config import ConfigError, load_config, parse_config, render_config
from node.consensus import Proposal, Vote, VoteType
from node.errors import InvariantBroken
from node.ledger.state import AccountRec, new_account
from node.network.peers import validator_address_of_cert
from node.router import PeerRouter
from node.runtime import Node, ObserverSigner


def hello(key: crypto.SigningKey, chain_id: str) -> peer_pb2.Hello:
    return peer_pb2.Hello(
        chain_id=chain_id,
        validator=key.address,
        public_key=key.public_key,
        signature=key.sign(crypto.Domain.PEER_HELLO, chain_id, key.address + key.public_key),
    )


def account(key: crypto.SigningKey, *roles: int, closed: bool = False) -> AccountRec:
    rec = new_account(key.address, key.public_key)
    rec.roles = frozenset(roles)
    rec.closed = closed
    return rec


@pytest.fixture
def validator(tmp_path: Path) -> Iterator[Node]:
    """node0 of a 4-validator network, its state opened (LevelDB in tmp_path), not started."""
    net = init_network(tmp_path / "net", validators=4, tls=False)
    n = Node(load_config(net.node(0).home), clock=ManualClock())
    n.open()
    yield n
    n.close()
    n.verify_pool.shutdown(wait=False)
    n.io_pool.shutdown(wait=False)


def router_with(node: Node, accounts: dict[bytes, AccountRec]) -> PeerRouter:
    """node's router, whose observer lookups read `accounts` (the committed ledger, in memory)."""
    assert node.chain is not None
    return PeerRouter(
        cfg=node.cfg,
        key=node.key,
        names=PeerNames(node.names_by_address, accounts.get),
        chain=node.chain,
        driver=node.driver,  # type: ignore[arg-type]
        executor=node.executor,
        evidence=node.evidence,
        mempool=node.mempool,
        blocksync=node.blocksync,
        clock=node.clock,
    )


def test_an_observer_is_admitted_while_its_account_has_role_observer(validator: Node) -> None:
    obs = crypto.SigningKey.generate()
    accounts: dict[bytes, AccountRec] = {}
    router = router_with(validator, accounts)
    chain_id = validator.chain_id
    refused = "peer is neither a validator of this network nor an admitted observer"

    assert router.check_hello(hello(obs, chain_id), None, obs.address) == refused  # not in the ledger
    accounts[obs.address] = account(obs, tx_pb2.ROLE_PARTICIPANT)
    assert router.check_hello(hello(obs, chain_id), None, obs.address) == refused  # no ROLE_OBSERVER
    accounts[obs.address] = account(obs, tx_pb2.ROLE_PARTICIPANT, tx_pb2.ROLE_OBSERVER)  # GrantRole
    assert router.check_hello(hello(obs, chain_id), None, obs.address) is None
    accounts[obs.address] = account(obs, tx_pb2.ROLE_PARTICIPANT)  # RevokeRole: refused next time
    assert router.check_hello(hello(obs, chain_id), None, obs.address) == refused
    accounts[obs.address] = account(obs, tx_pb2.ROLE_OBSERVER, closed=True)
    assert router.check_hello(hello(obs, chain_id), None, obs.address) == refused


def test_an_admitted_observer_still_needs_its_own_signature_and_certificate(validator: Node) -> None:
    obs, other = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    router = router_with(validator, {obs.address: account(obs, tx_pb2.ROLE_OBSERVER)})
    chain_id = validator.chain_id
    forged = hello(other, chain_id)
    forged.validator = obs.address  # claims the observer's address with another key
    assert router.check_hello(forged, None, None) == "hello validator does not match its public key"
    assert router.check_hello(hello(obs, "another-chain"), None, None) is not None
    assert router.check_hello(hello(obs, chain_id), None, other.address) == (
        "TLS certificate is bound to another validator"
    )
    # A dialer expecting a validator does not take an observer in its place.
    assert router.check_hello(hello(obs, chain_id), "node1", None) is not None


def test_peer_names_prefer_validators_and_name_observers_by_address_only() -> None:
    val, obs = crypto.SigningKey.generate(), crypto.SigningKey.generate()
    accounts = {
        obs.address: account(obs, tx_pb2.ROLE_OBSERVER),
        val.address: account(val, tx_pb2.ROLE_OBSERVER),
    }
    names = PeerNames({val.address: "node0"}, accounts.get)
    assert names.name_of(val.address) == "node0" and names.is_validator("node0")
    assert names.name_of(obs.address) == observer_name(obs.address) == "obs-" + obs.address.hex()[:12]
    assert not names.is_validator(observer_name(obs.address))
    assert names.name_of(b"\x01" * 20) is None
    assert not is_observer_account(None)


def test_the_observer_signer_refuses_to_sign() -> None:
    signer = ObserverSigner()
    assert signer.address == b""
    with pytest.raises(InvariantBroken):
        signer.sign_vote(Vote(VoteType.PREVOTE, 3, 0, b"x" * 32, b""))
    with pytest.raises(InvariantBroken):
        signer.sign_proposal(Proposal(3, 0, -1, b"x" * 32, object(), b""))


def test_an_observer_node_gets_the_observer_signer_even_with_a_validators_key(tmp_path: Path) -> None:
    net = init_network(tmp_path / "net", validators=4, tls=False)
    cfg = dataclasses.replace(load_config(net.node(0).home), observer=True)  # node0's key, a validator's
    n = Node(cfg, clock=ManualClock())
    n.open()
    try:
        assert isinstance(n.signer, ObserverSigner)
    finally:
        n.close()
        n.verify_pool.shutdown(wait=False)
        n.io_pool.shutdown(wait=False)


# --- the config flag ------------------------------------------------------------------------------


def test_the_observer_flag_round_trips_and_is_checked(tmp_path: Path) -> None:
    net = init_network(tmp_path / "net", validators=4, observers=1, tls=False)
    cfg = load_config(net.observers[0].home)
    assert cfg.observer is True
    assert parse_config(render_config(cfg), cfg.home) == cfg
    assert "observer = true" in render_config(cfg).splitlines()
    validator = load_config(net.node(0).home)
    assert validator.observer is False and "observer" not in render_config(validator)
    text = render_config(cfg)
    with pytest.raises(ConfigError, match="observer: must be true or false"):
        parse_config(text.replace("observer = true", 'observer = "yes"'), cfg.home)
    with pytest.raises(ConfigError, match="byzantine"):
        parse_config(text.replace("observer = true", 'observer = true\nbyzantine = "silent"'), cfg.home)
    no_peers = render_config(dataclasses.replace(cfg, p2p=dataclasses.replace(cfg.p2p, peers=())))
    with pytest.raises(ConfigError, match=r"\[p2p\] peers"):
        parse_config(no_peers, cfg.home)


# --- the layout -----------------------------------------------------------------------------------


def test_init_lays_out_observers_beside_the_validators(tmp_path: Path) -> None:
    net = init_network(tmp_path / "net", validators=4, observers=2, base_port=30000)
    assert [n.name for n in net.nodes] == ["node0", "node1", "node2", "node3"]
    assert [o.name for o in net.observers] == ["obs0", "obs1"]
    assert [o.p2p_port for o in net.observers] == [30040, 30050]
    genesis = json.loads((tmp_path / "net" / "genesis.json").read_text())
    assert len(genesis["validators"]) == 4
    for obs in net.observers:
        home = Path(obs.home)
        key = crypto.load_key_file(home / "keys" / "validator.json")
        assert key.address.hex() == obs.address
        assert all(
            crypto.address_of(base64.b64decode(v["publicKey"])) != key.address for v in genesis["validators"]
        )
        (acct,) = [a for a in genesis["accounts"] if a["name"] == obs.name]
        assert acct["roles"] == ["ROLE_OBSERVER"] and "kycStatus" not in acct and "balances" not in acct
        cfg = load_config(home)
        assert cfg.observer and [p.name for p in cfg.p2p.peers] == [n.name for n in net.nodes]
        assert cfg.consensus == load_config(net.node(0).home).consensus
        cert = (home / "tls" / "node.pem").read_bytes()
        assert validator_address_of_cert(cert) == key.address
    loaded = Network.load(tmp_path / "net")
    assert loaded.observers == net.observers and loaded.nodes == net.nodes
    assert loaded.node("obs1") == net.observers[1] and loaded.node(0).name == "node0"
    assert loaded.is_observer("obs0") and not loaded.is_observer("node0")


def test_a_network_json_without_observers_loads_with_none(tmp_path: Path) -> None:
    net = init_network(tmp_path / "net", validators=2, observers=1)
    path = tmp_path / "net" / "network.json"
    doc = json.loads(path.read_text())
    del doc["observers"]
    path.write_text(json.dumps(doc))
    loaded = Network.load(tmp_path / "net")
    assert loaded.observers == () and loaded.nodes == net.nodes and loaded.all_nodes == net.nodes


def test_add_observer_lays_out_one_more_and_records_it(tmp_path: Path) -> None:
    init_network(tmp_path / "net", validators=4, faults=True, base_port=30000)
    net, info, key = add_observer(tmp_path / "net", "regulator")
    used = {p.port for p in net.proxies} | {n.p2p_port for n in net.nodes}
    assert info.p2p_port not in used and info.p2p_port > max(used)
    assert Network.load(tmp_path / "net").node("regulator") == info
    cfg = load_config(info.home)
    assert cfg.observer and cfg.moniker == "regulator"
    assert [p.port for p in cfg.p2p.peers] == [n.p2p_port for n in net.nodes]  # direct, not via proxies
    assert crypto.load_key_file(Path(info.home) / "keys" / "validator.json").address == key.address
    with pytest.raises(ObserverExistsError):
        add_observer(tmp_path / "net", "regulator")
    with pytest.raises(ObserverExistsError):
        add_observer(tmp_path / "net", "node0")
    with pytest.raises(ValueError, match="observer name"):
        add_observer(tmp_path / "net", "../evil")


async def test_an_observers_votes_are_faults_and_its_height_claims_are_ignored(validator: Node) -> None:
    from node import blocks, wire

    obs = crypto.SigningKey.generate()
    router = router_with(validator, {obs.address: account(obs, tx_pb2.ROLE_OBSERVER)})
    name = observer_name(obs.address)
    block_id = b"\x07" * 32
    signature = obs.sign_raw(
        blocks.vote_sign_bytes(validator.chain_id, int(VoteType.PREVOTE), 1, 0, block_id)
    )
    vote = Vote(VoteType.PREVOTE, 1, 0, block_id, obs.address, signature)
    await router.on_peer_message(name, peer_pb2.PeerMessage(vote=wire.vote_to_pb(vote)))
    assert router.faults.counts == {(name, "vote_not_a_validator"): 1}
    claim = peer_pb2.PeerMessage(status=peer_pb2.PeerStatus(height=10**9, last_committed=10**9 - 1))
    await router.on_peer_message(name, claim)
    assert name not in validator.blocksync.peers and not validator.blocksync.wanted()
    await router.on_peer_message("node1", claim)  # a validator's claim does reach block sync
    assert validator.blocksync.peers["node1"].claimed == 10**9 - 1
