"""Helpers for cluster tests: signed transactions from the network's genesis accounts, chain reads."""

from __future__ import annotations

import itertools
from pathlib import Path

import grpc

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc, tx_pb2
from cluster.client import builders
from cluster.netgen import Network
from node import crypto, txs
from node.crypto import SigningKey

_refs = itertools.count()


def key(network: Network, name: str) -> SigningKey:
    return crypto.load_key_file(Path(network.accounts[name]))


def usd(network: Network, bank: str = "bank-a") -> tx_pb2.InstrumentId:
    return tx_pb2.InstrumentId(issuer=key(network, bank).address, symbol="USD")


def signed(
    network: Network, signer: SigningKey, nonce: int, op: builders.Op, ref: str | None = None
) -> bytes:
    body = builders.make_body(network.chain_id, signer.address, nonce, ref or f"t-{next(_refs)}", op)
    return txs.sign_tx(body, [signer])


def stub(target: str) -> tuple[grpc.Channel, ledger_api_pb2_grpc.LedgerStub]:
    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
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
