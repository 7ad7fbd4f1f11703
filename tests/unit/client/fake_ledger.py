"""FAKE node for client tests only: an in-process grpc.aio `Ledger` servicer with canned behaviour.

This is NOT the node and implements no consensus or ledger rules beyond what the client tests
need: it verifies envelopes with node.txs, checks nonces, answers queries from dictionaries the
test fills in, and can be told to hang, to answer with the wrong hash, or to refuse with a given
status code and reason (trailing metadata "clearline-reason", as the real node does).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import grpc.aio

from clearline.v1 import block_pb2, ledger_api_pb2, ledger_api_pb2_grpc, receipt_pb2, state_pb2
from node import txs

CHAIN = "clearline-test"
REASON = "clearline-reason"


@dataclass
class Refusal:
    code: grpc.StatusCode
    reason: str
    message: str


@dataclass
class FakeLedger(ledger_api_pb2_grpc.LedgerServicer):  # type: ignore[misc]
    """FAKE Ledger service (tests only). Public attributes are the canned state and switches."""

    chain_id: str = CHAIN
    height: int = 3
    peers: int = 0
    accounts: dict[bytes, state_pb2.Account] = field(default_factory=dict)
    proofs: dict[bytes, ledger_api_pb2.GetAccountResponse] = field(default_factory=dict)
    blocks: list[ledger_api_pb2.GetBlockResponse] = field(default_factory=list)
    events: list[ledger_api_pb2.EventEnvelope] = field(default_factory=list)
    validator_set: block_pb2.ValidatorSet = field(default_factory=block_pb2.ValidatorSet)
    hang_s: float = 0.0  # SubmitTx and GetStatus sleep this long first
    refuse: Refusal | None = None  # SubmitTx refuses with this
    wrong_hash: bool = False  # SubmitTx answers with another tx hash
    keep_streams_open: bool = False  # after the canned items, wait instead of ending
    submitted: list[ledger_api_pb2.SubmitTxRequest] = field(default_factory=list)
    seen_timeouts: list[float | None] = field(default_factory=list)
    streams_cancelled: int = 0

    async def _abort(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str, msg: str
    ) -> None:
        await context.abort(code, msg, trailing_metadata=((REASON, reason),))

    def _admit(self, raw: bytes) -> tuple[txs.VerifiedTx | None, txs.TxRejected | None]:
        try:
            verified = txs.verify_tx(raw, self.chain_id)
        except txs.TxRejected as exc:
            return None, exc
        account = self.accounts.get(verified.body.signer)
        expected = account.nonce if account is not None else 0
        if verified.body.nonce != expected:
            return None, txs.TxRejected(
                receipt_pb2.TX_STATUS_BAD_NONCE, f"nonce {verified.body.nonce}, expected {expected}"
            )
        if account is None:
            account = self.accounts[verified.body.signer] = state_pb2.Account(address=verified.body.signer)
        account.nonce += 1
        return verified, None

    def _receipt(self, verified: txs.VerifiedTx) -> receipt_pb2.Receipt:
        return receipt_pb2.Receipt(
            tx_hash=verified.tx_hash,
            status=receipt_pb2.TX_STATUS_OK,
            height=self.height + 1,
            signer=verified.body.signer,
            nonce=verified.body.nonce,
            client_ref=verified.body.client_ref,
        )

    async def SubmitTx(
        self, request: ledger_api_pb2.SubmitTxRequest, context: grpc.aio.ServicerContext
    ) -> ledger_api_pb2.SubmitTxResponse:
        self.submitted.append(request)
        self.seen_timeouts.append(context.time_remaining())
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        if self.refuse is not None:
            await self._abort(context, self.refuse.code, self.refuse.reason, self.refuse.message)
        verified, rejected = self._admit(request.tx)
        if rejected is not None:
            code = (
                grpc.StatusCode.FAILED_PRECONDITION
                if rejected.status == receipt_pb2.TX_STATUS_BAD_NONCE
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            await self._abort(context, code, rejected.reason, rejected.message)
        assert verified is not None
        resp = ledger_api_pb2.SubmitTxResponse(
            tx_hash=b"\x00" * 32 if self.wrong_hash else verified.tx_hash, accepted=True
        )
        if request.wait >= ledger_api_pb2.WAIT_FOR_CHECKED:
            resp.receipt.CopyFrom(self._receipt(verified))
        if request.wait == ledger_api_pb2.WAIT_FOR_COMMITTED:
            self.height += 1
            resp.height = self.height
            resp.state_root = b"\x5a" * 32
        return resp

    async def CheckTx(
        self, request: ledger_api_pb2.SubmitTxRequest, context: grpc.aio.ServicerContext
    ) -> ledger_api_pb2.SubmitTxResponse:
        try:
            verified = txs.verify_tx(request.tx, self.chain_id)
        except txs.TxRejected as exc:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, exc.reason, exc.message)
            raise
        receipt = self._receipt(verified)
        receipt.status = receipt_pb2.TX_STATUS_INSUFFICIENT_FUNDS
        receipt.message = "balance 0, needs 100"
        return ledger_api_pb2.SubmitTxResponse(tx_hash=verified.tx_hash, accepted=True, receipt=receipt)

    async def SubmitTxs(
        self, request: ledger_api_pb2.SubmitTxsRequest, context: grpc.aio.ServicerContext
    ) -> ledger_api_pb2.SubmitTxsResponse:
        resp = ledger_api_pb2.SubmitTxsResponse()
        for raw in request.txs:
            verified, rejected = self._admit(raw)
            if rejected is not None:
                resp.results.add(
                    tx_hash=txs.tx_hash(raw), accepted=False, status=rejected.status, message=rejected.message
                )
            else:
                assert verified is not None
                resp.results.add(tx_hash=verified.tx_hash, accepted=True, receipt=self._receipt(verified))
        return resp

    async def GetTx(
        self, request: ledger_api_pb2.GetTxRequest, context: grpc.aio.ServicerContext
    ) -> ledger_api_pb2.GetTxResponse:
        for sub in self.submitted:
            if txs.tx_hash(sub.tx) == request.tx_hash:
                return ledger_api_pb2.GetTxResponse(
                    state=ledger_api_pb2.TX_STATE_COMMITTED, height=self.height, tx=sub.tx
                )
        return ledger_api_pb2.GetTxResponse(state=ledger_api_pb2.TX_STATE_UNKNOWN)

    async def GetAccount(
        self, request: ledger_api_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> ledger_api_pb2.GetAccountResponse:
        if len(request.address) != 20:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "bad address")
        if request.prove and request.address in self.proofs:
            return self.proofs[request.address]
        account = self.accounts.get(request.address)
        resp = ledger_api_pb2.GetAccountResponse(exists=account is not None, height=self.height)
        if account is not None:
            resp.account.CopyFrom(account)
        return resp

    async def GetInstrument(
        self, request: ledger_api_pb2.GetInstrumentRequest, context: grpc.aio.ServicerContext
    ) -> ledger_api_pb2.GetInstrumentResponse:
        return ledger_api_pb2.GetInstrumentResponse(
            exists=True,
            instrument=state_pb2.Instrument(id=request.instrument, name="fake"),
            height=self.height,
        )

    async def GetHold(
        self, request: ledger_api_pb2.GetHoldRequest, context: grpc.aio.ServicerContext
    ) -> ledger_api_pb2.GetHoldResponse:
        await self._abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_HOLD", f"no hold {request.hold_id!r}")
        raise AssertionError("unreachable")

    async def GetValidators(
        self, request: ledger_api_pb2.GetValidatorsRequest, context: grpc.aio.ServicerContext
    ) -> ledger_api_pb2.GetValidatorsResponse:
        return ledger_api_pb2.GetValidatorsResponse(height=self.height, validators=self.validator_set)

    async def GetBlock(
        self, request: ledger_api_pb2.GetBlockRequest, context: grpc.aio.ServicerContext
    ) -> ledger_api_pb2.GetBlockResponse:
        for block in self.blocks:
            by = request.WhichOneof("by")
            if (by == "hash" and block.block_hash == request.hash) or (
                by != "hash" and block.block.header.height == (request.height or len(self.blocks))
            ):
                return block
        await self._abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_BLOCK", "no such block")
        raise AssertionError("unreachable")

    async def GetStatus(
        self, request: ledger_api_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> ledger_api_pb2.GetStatusResponse:
        self.seen_timeouts.append(context.time_remaining())
        if self.hang_s:
            await asyncio.sleep(self.hang_s)
        return ledger_api_pb2.GetStatusResponse(
            chain_id=self.chain_id, height=self.height, name="fake", peers=self.peers
        )

    async def _linger(self) -> None:
        if self.keep_streams_open:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.streams_cancelled += 1
                raise

    async def StreamBlocks(
        self, request: ledger_api_pb2.StreamBlocksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ledger_api_pb2.GetBlockResponse]:
        for block in self.blocks:
            if block.block.header.height >= request.from_height:
                yield block
        await self._linger()

    async def SubscribeEvents(
        self, request: ledger_api_pb2.SubscribeEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ledger_api_pb2.EventEnvelope]:
        for env in self.events:
            if env.height < request.from_height:
                continue
            if request.account and request.account not in env.event.accounts:
                continue
            if request.HasField("instrument") and env.event.instrument != request.instrument:
                continue
            yield env
        await self._linger()


async def start_fake(
    fake: FakeLedger, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.aio.Server, str]:
    """Serve fake on 127.0.0.1 (a free port); returns the server and its target."""
    server = grpc.aio.server()
    ledger_api_pb2_grpc.add_LedgerServicer_to_server(fake, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, f"127.0.0.1:{port}"


class FakeServerThread:
    """FAKE server on its own event loop in a thread, for tests of the blocking SyncClient."""

    def __init__(self, fake: FakeLedger) -> None:
        self.fake = fake
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-ledger", daemon=True)
        self.target = ""
        self._server: grpc.aio.Server | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server, self.target = self.loop.run_until_complete(start_fake(self.fake))
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> FakeServerThread:
        self._thread.start()
        assert self._ready.wait(10), "fake server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        asyncio.run_coroutine_threadsafe(self._server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
