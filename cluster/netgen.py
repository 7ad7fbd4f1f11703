"""Lay out a Clearline network on disk: keys, CA and certificates, genesis, one config per node.

    <home>/network.json            what was generated: chain id, nodes, ports, fault testing flag
    <home>/genesis.json            the genesis (protobuf JSON of clearline.v1.Genesis)
    <home>/ca/ca.pem, ca.key       the network's certificate authority (clients verify nodes with ca.pem)
    <home>/accounts/<name>.json    keys of the genesis accounts (admin, compliance, auditor, banks, demo
                                   clients): the identities clients and tools read as
    <home>/nodes/<node>/           one home per validator: config.toml, genesis.json, keys/, tls/, data/
    <home>/nodes/obs<j>/           one home per observer, laid out the same (`observer = true` in its
                                   config, its peers the validators; its node key an account with
                                   ROLE_OBSERVER, in the genesis or granted later: add_observer)
    <home>/faults/                 (fault-testing networks) the fault proxy's rules, status, pid and log

A fault-testing network (`faults=True`, local hosts only) gets one fault-proxy port per ordered pair of
validators (see cluster/faults/proxy.py): node A's config lists peer B at the port of link A->B, and
network.json records the layout under "proxies".

network.json lists the validators under "nodes" (what chaos, the checker and bench iterate) and the
observers under "observers" (absent in networks made before observers: none).

Every network gets its own chain id unless one is given (`clearline-<8 random hex digits>`): a
transaction signs its chain id, so one signed for one network is refused by every other.

Used by `clearline init` and by the tests that start real clusters.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import json_format

from clearline.v1 import state_pb2, tx_pb2
from cluster import pki
from cluster.client import channels
from cluster.client.tls import TlsConfig as ClientTls
from node import crypto
from node.config import (
    ApiConfig,
    ConsensusConfig,
    MetricsConfig,
    NodeConfig,
    P2PConfig,
    Peer,
    SnapshotsConfig,
    StorageConfig,
    TlsConfig,
    load_config,
    max_block_response_bytes,
    render_config,
)
from node.crypto import SigningKey

CHAIN_ID_PREFIX = "clearline-"
# Letters, digits, '.', '_' and '-', starting with a letter or digit; at most 50 characters.
_CHAIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,49}")
# A node name added later (an observer): it becomes a directory, a TLS name and a network.json key.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
DEFAULT_BASE_PORT = 26600
VALIDATOR_POWER = 10


class NetworkExistsError(Exception):
    """The target directory already holds a network and --force was not given."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str
    index: int
    home: str
    address: str  # validator address, hex
    host: str
    p2p_port: int
    api_port: int
    metrics_port: int

    @property
    def api_target(self) -> str:
        return f"{self.host}:{self.api_port}"

    @property
    def p2p_target(self) -> str:
        return f"{self.host}:{self.p2p_port}"


@dataclass(frozen=True, slots=True)
class ProxyLink:
    """The fault-proxy port through which node `src` reaches its peer `dst` (at host:port)."""

    src: str
    dst: str
    host: str
    port: int

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Network:
    home: str
    chain_id: str
    nodes: tuple[NodeInfo, ...]  # the validators
    faults: bool = False
    accounts: dict[str, str] = field(default_factory=dict)  # name -> key file
    proxies: tuple[ProxyLink, ...] = ()  # fault-proxy ports, one per ordered pair (faults=True only)
    # The client API speaks TLS (a network made with tls=False serves plaintext, for development).
    tls: bool = True

    def client_tls(self) -> ClientTls | None:
        """The TLS settings that verify this network's nodes (its CA), or None if it is plaintext."""
        return ClientTls(ca_cert_path=Path(self.home) / "ca" / "ca.pem") if self.tls else None

    def client_options(self, identity: str | SigningKey | None = "auditor") -> dict[str, Any]:
        """Keyword arguments for Client.connect and SyncClient.connect to any node of this network:
        its CA (or insecure for a plaintext network) and the identity, an account name of the
        network (default its auditor, who reads everything), a key, or None (GetStatus only)."""
        return {"tls": self.client_tls(), "insecure": not self.tls, "identity": self.identity(identity)}

    def identity(self, identity: str | SigningKey | None) -> SigningKey | None:
        """The key of an account name of this network (a key passes through)."""
        if isinstance(identity, str):
            return crypto.load_key_file(Path(self.accounts[identity]))
        return identity

    def channel(
        self,
        target: str,
        identity: str | SigningKey | None = "auditor",
        *,
        options: Sequence[tuple[str, object]] = (),
    ) -> grpc.Channel:
        """A blocking raw gRPC channel to a node's client API (target "host:port") whose calls are
        made as identity (see client_options)."""
        return channels.channel(
            target,
            tls=self.client_tls(),
            identity=self.identity(identity),
            chain_id=self.chain_id,
            options=options,
        )

    def aio_channel(
        self,
        target: str,
        identity: str | SigningKey | None = "auditor",
        *,
        options: Sequence[tuple[str, object]] = (),
    ) -> grpc.aio.Channel:
        """The asyncio version of channel."""
        return channels.aio_channel(
            target,
            tls=self.client_tls(),
            identity=self.identity(identity),
            chain_id=self.chain_id,
            options=options,
        )

    observers: tuple[NodeInfo, ...] = ()  # non-voting nodes (their index counts observers from 0)

    @property
    def all_nodes(self) -> tuple[NodeInfo, ...]:
        """The validators, then the observers: every process of the network."""
        return self.nodes + self.observers

    def is_observer(self, name: str) -> bool:
        return any(o.name == name for o in self.observers)

    def proxy(self, src: str, dst: str) -> ProxyLink:
        """The proxy port of link src -> dst; KeyError if this network has none."""
        for link in self.proxies:
            if link.src == src and link.dst == dst:
                return link
        raise KeyError(f"no fault-proxy link {src}->{dst} in this network")

    def node(self, name_or_index: str | int) -> NodeInfo:
        """A validator by name or index, or an observer by name."""
        for n in self.nodes:
            if n.name == name_or_index or n.index == name_or_index or str(n.index) == str(name_or_index):
                return n
        for n in self.observers:
            if n.name == name_or_index:
                return n
        raise KeyError(
            f"no node {name_or_index!r} in this network (nodes: {', '.join(n.name for n in self.all_nodes)})"
        )

    def save(self) -> None:
        doc = {
            "chain_id": self.chain_id,
            "faults": self.faults,
            "accounts": self.accounts,
            "nodes": [asdict(n) for n in self.nodes],
            "proxies": [asdict(p) for p in self.proxies],
            "tls": self.tls,
            "observers": [asdict(o) for o in self.observers],
        }
        (Path(self.home) / "network.json").write_text(json.dumps(doc, indent=2) + "\n")

    @classmethod
    def load(cls, home: str | Path) -> Network:
        path = Path(home) / "network.json"
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no network here (run `clearline init --home {home}`)") from None
        nodes = tuple(NodeInfo(**n) for n in doc["nodes"])
        return cls(
            home=str(Path(home).resolve()),
            chain_id=doc["chain_id"],
            nodes=nodes,
            faults=bool(doc.get("faults", False)),
            accounts=dict(doc.get("accounts", {})),
            proxies=tuple(ProxyLink(**p) for p in doc.get("proxies", [])),
            tls=bool(doc.get("tls", True)),
            observers=tuple(NodeInfo(**o) for o in doc.get("observers", [])),
        )


def new_chain_id() -> str:
    """A fresh chain id, e.g. clearline-3f9a61c2 (32 random bits)."""
    return CHAIN_ID_PREFIX + secrets.token_hex(4)


def check_chain_id(chain_id: str) -> str:
    """chain_id if it is a valid one; ValueError saying why not."""
    if not _CHAIN_ID.fullmatch(chain_id):
        raise ValueError(
            f"chain id {chain_id[:60]!r} must be 1..50 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return chain_id


def instrument(issuer: bytes, symbol: str) -> tx_pb2.InstrumentId:
    return tx_pb2.InstrumentId(issuer=issuer, symbol=symbol)


def _genesis_account(
    key: SigningKey, name: str, roles: Sequence[tx_pb2.Role.ValueType], kyc: bool
) -> state_pb2.GenesisAccount:
    acct = state_pb2.GenesisAccount(public_key=key.public_key, name=name)
    acct.roles.extend(roles)
    if kyc:
        acct.kyc_status = tx_pb2.KYC_STATUS_APPROVED
    return acct


def build_genesis(
    chain_id: str,
    validator_keys: list[SigningKey],
    account_keys: dict[str, SigningKey],
    *,
    genesis_time: int = 1_767_225_600,
    funded: dict[str, list[tuple[str, str, int]]] | None = None,
    observer_keys: dict[str, SigningKey] | None = None,
) -> state_pb2.Genesis:
    """The standard genesis: admin, compliance, two banks issuing USD deposit tokens, a bond.

    funded maps an account name to (issuer name, symbol, amount) balances granted at genesis. A
    funded client is KYC-approved by its home bank, the issuer of its first funded balance (that
    bank, and no other, can revoke it: ops.py "KYC"); admin, compliance and the banks are approved
    by compliance (the network's approval).
    observer_keys (name -> node key) get accounts with ROLE_OBSERVER (no KYC, no funds).
    """
    genesis = state_pb2.Genesis(chain_id=chain_id, genesis_time=genesis_time)
    for i, key in enumerate(validator_keys):
        genesis.validators.add(public_key=key.public_key, power=VALIDATOR_POWER, name=f"node{i}")
    roles: dict[str, list[tx_pb2.Role.ValueType]] = {
        "admin": [tx_pb2.ROLE_ADMIN],
        "compliance": [tx_pb2.ROLE_COMPLIANCE],
        "bank-a": [tx_pb2.ROLE_ISSUER],
        "bank-b": [tx_pb2.ROLE_ISSUER],
        "auditor": [tx_pb2.ROLE_AUDITOR],
    }
    for name, key in account_keys.items():
        acct = _genesis_account(key, name, roles.get(name, [tx_pb2.ROLE_PARTICIPANT]), kyc=name in roles)
        for issuer_name, symbol, amount in (funded or {}).get(name, []):
            if not acct.kyc_status:  # the client's home bank: the issuer of its first funded balance
                acct.kyc_status = tx_pb2.KYC_STATUS_APPROVED
                acct.kyc_approver = account_keys[issuer_name].address
            acct.balances.add(
                instrument=instrument(account_keys[issuer_name].address, symbol),
                amount=amount,
            )
        genesis.accounts.append(acct)
    for name, key in (observer_keys or {}).items():
        genesis.accounts.append(_genesis_account(key, name, [tx_pb2.ROLE_OBSERVER], kyc=False))
    bank_a, bank_b = account_keys["bank-a"].address, account_keys["bank-b"].address
    genesis.instruments.add(
        id=instrument(bank_a, "USD"),
        name="Bank A tokenized USD deposits",
        currency="USD",
        decimals=2,
        kind=tx_pb2.INSTRUMENT_KIND_DEPOSIT_TOKEN,
    )
    genesis.instruments.add(
        id=instrument(bank_b, "USD"),
        name="Bank B tokenized USD deposits",
        currency="USD",
        decimals=2,
        kind=tx_pb2.INSTRUMENT_KIND_DEPOSIT_TOKEN,
    )
    genesis.instruments.add(
        id=instrument(bank_a, "BOND-2030"),
        name="Tokenized 4% bond 2030",
        currency="USD",
        decimals=0,
        kind=tx_pb2.INSTRUMENT_KIND_ASSET,
    )
    return genesis


def layout_fault_proxies(nodes: Sequence[NodeInfo], base_port: int) -> tuple[ProxyLink, ...]:
    """One proxy port per ordered pair: link node i -> node j listens on base_port + i*n + j."""
    n = len(nodes)
    return tuple(
        ProxyLink(src=a.name, dst=b.name, host=a.host, port=base_port + a.index * n + b.index)
        for a in nodes
        for b in nodes
        if a.name != b.name
    )


def init_network(
    home: str | Path,
    *,
    validators: int = 4,
    hosts: list[str] | None = None,
    chain_id: str | None = None,
    base_port: int = DEFAULT_BASE_PORT,
    demo_accounts: tuple[str, ...] = ("alice", "bob", "carol", "dave"),
    funded: dict[str, list[tuple[str, str, int]]] | None = None,
    faults: bool = False,
    force: bool = False,
    consensus: ConsensusConfig | None = None,
    tls: bool = True,
    proxy_base_port: int | None = None,
    observers: int = 0,
    snapshot_interval: int | None = None,
    retain_blocks: int = 0,
) -> Network:
    """Create a network directory; refuses to overwrite an existing one unless force. Without
    chain_id the network gets a fresh one (new_chain_id).

    With faults=True and no hosts (all nodes on this machine), peers reach each other through fault
    proxies on ports proxy_base_port + i*n + j (default: just above the nodes' ports,
    base_port + 10*n); multi-host networks get no proxies.

    observers: that many observer homes obs0..obs<N-1> (their node keys get ROLE_OBSERVER in the
    genesis), on ports above every validator's and proxy's.

    retain_blocks: [storage] retain_blocks of every node (0: archive nodes, keeping every block)."""
    chain_id = new_chain_id() if chain_id is None else check_chain_id(chain_id)
    root = Path(home).resolve()
    if (root / "network.json").exists() or (root / "nodes").exists():
        if not force:
            raise NetworkExistsError(f"{root} already holds a network; use --force to replace it")
        shutil.rmtree(root / "nodes", ignore_errors=True)
        for sub in ("ca", "accounts", "faults"):
            shutil.rmtree(root / sub, ignore_errors=True)
    if validators < 1:
        raise ValueError("a network needs at least one validator")
    if observers < 0:
        raise ValueError("the number of observers cannot be negative")
    if hosts and len(hosts) not in (1, validators):
        raise ValueError(f"--hosts lists {len(hosts)} hosts for {validators} validators")
    root.mkdir(parents=True, exist_ok=True)

    ca = pki.new_ca(chain_id)
    (root / "ca").mkdir(exist_ok=True)
    (root / "ca" / "ca.pem").write_bytes(ca.cert_pem())
    pki.write_private(root / "ca" / "ca.key", pki.private_key_pem(ca.key))

    account_keys = {
        name: SigningKey.generate()
        for name in ("admin", "compliance", "auditor", "bank-a", "bank-b", *demo_accounts)
    }
    accounts: dict[str, str] = {}
    for name, key in account_keys.items():
        path = root / "accounts" / f"{name}.json"
        crypto.save_key_file(path, key)
        accounts[name] = str(path)

    validator_keys = [SigningKey.generate() for _ in range(validators)]
    observer_keys = {f"obs{j}": SigningKey.generate() for j in range(observers)}
    genesis = build_genesis(
        chain_id, validator_keys, account_keys, funded=funded, observer_keys=observer_keys
    )
    genesis.fault_testing = faults
    genesis_json = json_format.MessageToJson(genesis, indent=2) + "\n"
    (root / "genesis.json").write_text(genesis_json)

    infos: list[NodeInfo] = []
    for i in range(validators):
        host = hosts[i] if hosts and len(hosts) == validators else (hosts[0] if hosts else "127.0.0.1")
        port = base_port if hosts and len(hosts) == validators else base_port + 10 * i
        infos.append(
            NodeInfo(
                name=f"node{i}",
                index=i,
                home=str(root / "nodes" / f"node{i}"),
                address=validator_keys[i].address.hex(),
                host=host,
                p2p_port=port,
                api_port=port + 1,
                metrics_port=port + 2,
            )
        )
    consensus = consensus or ConsensusConfig()
    # Responses must carry the largest block of this consensus configuration (node.config checks it).
    api_max_message_bytes = max(
        ApiConfig().max_message_bytes,
        max_block_response_bytes(consensus.max_block_bytes, consensus.max_block_txs),
    )
    proxies: tuple[ProxyLink, ...] = ()
    if faults and not hosts:
        proxies = layout_fault_proxies(
            infos, base_port + 10 * validators if proxy_base_port is None else proxy_base_port
        )
    template: NodeConfig | None = None
    for info, key in zip(infos, validator_keys, strict=True):
        node_home = Path(info.home)
        bind = "0.0.0.0" if hosts else info.host
        peers = tuple(Peer(name=o.name, host=o.host, port=o.p2p_port) for o in infos if o.name != info.name)
        if proxies:
            peers = tuple(
                Peer(name=p.name, host=link.host, port=link.port)
                for p in peers
                for link in proxies
                if link.src == info.name and link.dst == p.name
            )
        cfg = NodeConfig(
            home=node_home,
            chain_id=chain_id,
            moniker=info.name,
            p2p=P2PConfig(listen=f"{bind}:{info.p2p_port}", peers=peers),
            api=ApiConfig(listen=f"{bind}:{info.api_port}", max_message_bytes=api_max_message_bytes),
            metrics=MetricsConfig(listen=f"{bind}:{info.metrics_port}"),
            consensus=consensus,
        )
        if snapshot_interval is not None:
            cfg = dataclasses.replace(cfg, snapshots=SnapshotsConfig(interval=snapshot_interval))
        if retain_blocks:
            cfg = dataclasses.replace(cfg, storage=StorageConfig(retain_blocks=retain_blocks))
        if not tls:
            cfg = dataclasses.replace(
                cfg, tls=TlsConfig(enabled=False), api=dataclasses.replace(cfg.api, plaintext=True)
            )
        _write_node_home(ca, info, key, genesis_json, cfg)
        template = template or cfg

    network = Network(
        home=str(root),
        chain_id=chain_id,
        nodes=tuple(infos),
        faults=faults,
        accounts=accounts,
        proxies=proxies,
        tls=tls,
    )
    assert template is not None
    for j, key in enumerate(observer_keys.values()):
        host = hosts[0] if hosts else "127.0.0.1"
        info = _observer_info(network, f"obs{j}", j, host, key)
        _write_node_home(
            ca, info, key, genesis_json, observer_config(template, info, network, bind_all=bool(hosts))
        )
        network = dataclasses.replace(network, observers=(*network.observers, info))
    network.save()
    return network


def _write_node_home(
    ca: pki.CertAuthority, info: NodeInfo, key: SigningKey, genesis_json: str, cfg: NodeConfig
) -> None:
    """A node's home: its node key, TLS certificate from the network CA (binding the key's address),
    genesis and config."""
    node_home = Path(info.home)
    crypto.save_key_file(node_home / "keys" / "validator.json", key)
    cert_pem, key_pem = pki.issue_node_cert(ca, info.name, key.address, [info.host])
    (node_home / "tls").mkdir(parents=True, exist_ok=True)
    (node_home / "tls" / "ca.pem").write_bytes(ca.cert_pem())
    (node_home / "tls" / "node.pem").write_bytes(cert_pem)
    pki.write_private(node_home / "tls" / "node.key", key_pem)
    (node_home / "genesis.json").write_text(genesis_json)
    (node_home / "config.toml").write_text(render_config(cfg))
    (node_home / "data").mkdir(exist_ok=True)


def _observer_info(network: Network, name: str, index: int, host: str, key: SigningKey) -> NodeInfo:
    """An observer's ports: the next slot of ten above every port the network uses (its nodes' and
    its fault proxies')."""
    used = [n.metrics_port for n in network.all_nodes] + [p.port for p in network.proxies]
    port = (max(used) // 10 + 1) * 10
    return NodeInfo(
        name=name,
        index=index,
        home=str(Path(network.home) / "nodes" / name),
        address=key.address.hex(),
        host=host,
        p2p_port=port,
        api_port=port + 1,
        metrics_port=port + 2,
    )


def observer_config(template: NodeConfig, info: NodeInfo, network: Network, *, bind_all: bool) -> NodeConfig:
    """An observer's config: a validator's (template: the same limits, timeouts and TLS setting) with
    the observer's name and ports, `observer = true`, and every validator as a peer to dial."""
    bind = "0.0.0.0" if bind_all else info.host
    peers = tuple(Peer(name=v.name, host=v.host, port=v.p2p_port) for v in network.nodes)
    return dataclasses.replace(
        template,
        home=Path(info.home),
        moniker=info.name,
        observer=True,
        byzantine="",
        p2p=dataclasses.replace(template.p2p, listen=f"{bind}:{info.p2p_port}", peers=peers),
        api=dataclasses.replace(template.api, listen=f"{bind}:{info.api_port}"),
        metrics=dataclasses.replace(template.metrics, listen=f"{bind}:{info.metrics_port}"),
    )


class ObserverExistsError(Exception):
    """add_observer: the network already has a node of that name."""


def add_observer(
    home: str | Path, name: str, host: str = "127.0.0.1"
) -> tuple[Network, NodeInfo, SigningKey]:
    """Lay out a new observer of an existing network: its node key, a certificate from the network's
    CA (<home>/ca), a config copied from node0's (observer = true, the validators as peers), the
    genesis; recorded in network.json. Its key is admitted only once the ledger gives its account
    ROLE_OBSERVER (a GrantRole the caller submits: `clearline observer add` does)."""
    network = Network.load(home)
    if not _NODE_NAME.fullmatch(name):
        raise ValueError(f"observer name {name[:40]!r} must be 1..32 letters, digits, '_' or '-'")
    if any(n.name == name for n in network.all_nodes):
        raise ObserverExistsError(f"the network already has a node named {name}")
    root = Path(network.home)
    if (root / "nodes" / name).exists():
        raise ObserverExistsError(f"{root / 'nodes' / name} exists already")
    key = SigningKey.generate()
    info = _observer_info(network, name, len(network.observers), host, key)
    template = load_config(network.nodes[0].home)
    bind_all = template.p2p.listen.startswith("0.0.0.0:")
    genesis_json = (root / "genesis.json").read_text()
    _write_node_home(
        pki.load_ca(root / "ca"),
        info,
        key,
        genesis_json,
        observer_config(template, info, network, bind_all=bind_all),
    )
    network = dataclasses.replace(network, observers=(*network.observers, info))
    network.save()
    return network, info, key
