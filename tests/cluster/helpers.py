"""Helpers for cluster tests: signed transactions from the network's genesis accounts, chain reads."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import grpc

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc, tx_pb2
from cluster.client import SyncClient, builders
from cluster.netgen import Network
from node import crypto, txs
from node.crypto import SigningKey

_refs = itertools.count()
# The network each node's client API target belongs to (registered by the fixtures that make
# networks), so that helpers given a target connect with its CA and its auditor's identity.
_NETWORKS: dict[str, Network] = {}


def register(network: Network) -> Network:
    for node in network.all_nodes:
        _NETWORKS[node.api_target] = network
    return network


def network_of(target: str) -> Network:
    if target not in _NETWORKS:  # an observer added since: the networks' files say
        for home in {n.home for n in _NETWORKS.values()}:
            register(Network.load(home))
    try:
        return _NETWORKS[target]
    except KeyError:
        raise KeyError(
            f"{target} is not a node of a network the test fixtures made (helpers.register)"
        ) from None


def key(network: Network, name: str) -> SigningKey:
    return crypto.load_key_file(Path(network.accounts[name]))


def usd(network: Network, bank: str = "bank-a") -> tx_pb2.InstrumentId:
    return tx_pb2.InstrumentId(issuer=key(network, bank).address, symbol="USD")


def signed(
    network: Network, signer: SigningKey, nonce: int, op: builders.Op, ref: str | None = None
) -> bytes:
    body = builders.make_body(network.chain_id, signer.address, nonce, ref or f"t-{next(_refs)}", op)
    return txs.sign_tx(body, [signer])


def stub(
    target: str, identity: str | SigningKey | None = "auditor"
) -> tuple[grpc.Channel, ledger_api_pb2_grpc.LedgerStub]:
    """A channel to the client API at target (TLS with its network's CA), calling as identity."""
    channel = network_of(target).channel(
        target, identity, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    )
    return channel, ledger_api_pb2_grpc.LedgerStub(channel)


def submit(target: str, raw: bytes, wait: int = ledger_api_pb2.WAIT_FOR_COMMITTED, timeout: float = 30):
    channel, s = stub(target)
    with channel:
        return s.SubmitTx(ledger_api_pb2.SubmitTxRequest(tx=raw, wait=wait), timeout=timeout)


def block_hashes(target: str, upto: int) -> list[bytes]:
    channel, s = stub(target)
    with channel:
        return [
            s.GetBlock(ledger_api_pb2.GetBlockRequest(height=h), timeout=10).block_hash
            for h in range(1, upto + 1)
        ]


def get_block(target: str, height: int) -> ledger_api_pb2.GetBlockResponse:
    channel, s = stub(target)
    with channel:
        return s.GetBlock(ledger_api_pb2.GetBlockRequest(height=height), timeout=10)


def reason_of(err: grpc.RpcError) -> str:
    for k, v in err.trailing_metadata() or ():
        if k == "clearline-reason":
            return str(v)
    return ""


def setup_funded(network: Network, target: str, holders: list[str], amount: int = 1_000_000) -> None:
    """KYC-approve holders (by bank-a) and mint them bank-a USD."""
    bank = key(network, "bank-a")
    nonce = 0
    for name in holders:
        holder = key(network, name)
        submit(target, signed(network, bank, nonce, builders.set_kyc(holder.address, tx_pb2.KYC_STATUS_APPROVED,
                                                                     public_key=holder.public_key)))  # fmt: skip
        nonce += 1
        submit(
            target,
            signed(network, bank, nonce, builders.mint(usd(network), holder.address, amount, f"dep-{name}")),
        )
        nonce += 1


def connect(target: str, identity: str | SigningKey | None = "auditor", **kwargs: Any) -> SyncClient:
    """The SDK's SyncClient to a node of a registered network: its CA, calling as identity."""
    return SyncClient.connect(target, **{**network_of(target).client_options(identity), **kwargs})
