"""node.service: the client service hears of commits through `on_commit` (the consensus driver's
listener) and resolves SubmitTx(wait=COMMITTED) from it; nothing else reaches into its waiters.
On a node whose state is opened for real (LevelDB in a temporary directory), no network."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clearline.v1 import block_pb2, ledger_api_pb2, receipt_pb2, tx_pb2
from cluster.client import builders
from cluster.netgen import init_network
from node import crypto
from node.clock import ManualClock
from node.config import load_config
from node.errors import ApiError
from node.execution import Committed
from node.runtime import Node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    net = init_network(tmp_path / "net", validators=4, tls=False)
    n = Node(load_config(net.node(0).home), clock=ManualClock())
    n.open()
    n.accounts = tmp_path / "net" / "accounts"  # type: ignore[attr-defined]
    yield n
    n.wal.close()
    n.sign_state.close()
    n.store.close()
    n.verify_pool.shutdown(wait=False)
    n.io_pool.shutdown(wait=False)


def _kyc_tx(node: Node, nonce: int = 0) -> bytes:
    bank = crypto.load_key_file(node.accounts / "bank-a.json")  # type: ignore[attr-defined]
    alice = crypto.load_key_file(node.accounts / "alice.json")  # type: ignore[attr-defined]
    body = builders.make_body(
        node.chain_id,
        bank.address,
        nonce,
        f"kyc-{nonce}",
        builders.set_kyc(alice.address, tx_pb2.KYC_STATUS_APPROVED),
    )
    return builders.sign(body, bank)


def _committed(tx_hash: bytes, height: int) -> Committed:
    receipt = receipt_pb2.Receipt(tx_hash=tx_hash, status=receipt_pb2.TX_STATUS_OK, height=height)
    return Committed(height, block_pb2.Block(), b"\x01" * 32, block_pb2.CommitCertificate(), (receipt,), 0.0)


async def test_a_commit_notification_resolves_the_waiting_submission(node: Node) -> None:
    service = node.service
    service.started = True
    submit = asyncio.create_task(service.submit([_kyc_tx(node)], ledger_api_pb2.WAIT_FOR_COMMITTED, 30.0))
    for _ in range(50):
        await asyncio.sleep(0.01)
        if len(service.mempool):
            break
    assert not submit.done() and len(service.mempool) == 1
    (pending,) = [e for e in service.mempool.reap(1 << 20, 10)]
    service.on_commit(_committed(pending.tx_hash, 7))
    (result,) = await asyncio.wait_for(submit, timeout=5)
    assert result.accepted and result.height == 7 and result.receipt.tx_hash == pending.tx_hash


async def test_a_submission_before_the_node_is_started_is_refused(node: Node) -> None:
    with pytest.raises(ApiError) as info:
        await node.service.submit([_kyc_tx(node)], ledger_api_pb2.WAIT_FOR_COMMITTED, 1.0)
    assert (info.value.code, info.value.reason) == ("UNAVAILABLE", "STARTING")
    assert len(node.service.mempool) == 0


async def test_hold_expiry_events_reach_the_payer_in_subscribe_events() -> None:
    """The block's own receipt (holds expired at its start) is streamed before its transactions'
    events, marked block_level, to the payer (an account of the event) and not to a stranger."""
    from types import SimpleNamespace

    from node.auth import Identity
    from node.service import ClientService

    payer, payee, stranger = b"\x01" * 20, b"\x02" * 20, b"\x09" * 20
    expired = receipt_pb2.Event(kind="hold_expired", accounts=[payer, payee], amount=300)
    expired.attributes.add(key="hold_id", value="h1")
    transfer = receipt_pb2.Event(kind="transfer", accounts=[payee, stranger], amount=5)
    block = ledger_api_pb2.GetBlockResponse(
        block=block_pb2.Block(header=block_pb2.Header(height=7)),
        receipts=[receipt_pb2.Receipt(tx_hash=b"\x05" * 32, height=7, events=[transfer])],
        block_receipt=receipt_pb2.Receipt(height=7, status=receipt_pb2.TX_STATUS_OK, events=[expired]),
    )

    async def blocks_from(from_height: int) -> Any:
        yield block

    fake = SimpleNamespace(_blocks_from=blocks_from)

    async def events(who: bytes) -> list[ledger_api_pb2.EventEnvelope]:
        identity = Identity(who, b"\x00" * 32, frozenset({tx_pb2.ROLE_PARTICIPANT}))
        stream = ClientService.subscribe_events(fake, identity, ledger_api_pb2.SubscribeEventsRequest())  # type: ignore[arg-type]
        return [e async for e in stream]

    (seen,) = await events(payer)
    assert seen.block_level and seen.height == 7 and seen.tx_hash == b""
    assert seen.event == expired
    payee_sees = await events(payee)
    assert [(e.event.kind, e.block_level) for e in payee_sees] == [
        ("hold_expired", True),
        ("transfer", False),
    ]
    assert [e.event.kind for e in await events(stranger)] == ["transfer"]


def test_list_pages_cover_every_record_once_and_a_forged_token_is_refused(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ListHolds and ListAccounts page through committed state: a page ends at its limit or where the
    bounded scan stopped, and the next starts just after it, so every record comes exactly once."""
    from clearline.v1 import state_pb2
    from node import service as service_module
    from node.ledger.state import ACCOUNT

    every = [state_pb2.Account.FromString(raw).address for _k, raw in node.store.state.items(ACCOUNT)]
    assert len(every) >= 8
    monkeypatch.setattr(service_module, "LIST_MAX_SCAN", 3)
    service = node.service
    for limit, keep in ((2, lambda a: True), (5, lambda a: a[0] % 2 == 0)):
        seen: list[bytes] = []
        token, pages = "", 0
        while True:
            page, token = service._scan(
                ACCOUNT, token, limit,
                lambda raw, keep=keep: (a.address if keep((a := state_pb2.Account.FromString(raw)).address)
                                        else None),
            )  # fmt: skip
            assert len(page) <= min(limit, 3)
            seen.extend(page)
            pages += 1
            if not token:
                break
        assert seen == [a for a in every if keep(a)] and pages >= len(every) // 3
    for forged in ("zz", "00" * 300):
        with pytest.raises(ApiError) as info:
            service._scan(ACCOUNT, forged, 10, lambda raw: raw)
        assert info.value.reason == "BAD_PAGE_TOKEN"
