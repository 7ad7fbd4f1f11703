"""The client API: the `Ledger` gRPC service, health checking and reflection, and the operator's
`Admin` service (a backup of the node, streamed), answered for the node's own key only.

Servicers only decode, validate and hand over to the node (`NodeApi`, implemented by the runtime);
they never touch consensus state. A failure is a gRPC status with a machine-readable reason in the
trailing metadata key `clearline-reason`, so `grpcurl` users and the Python client see both.

Every Ledger call but GetStatus names its caller: a `clearline-auth` token (node/auth.py) proves the
account or node key, node/access.py (through the client service) decides what it may read, and
node/network/limits.py holds each identity to its request rate and streams. GetStatus (height,
validators, version: nothing of a client's) stays open for load balancers and monitoring, and health
and reflection describe only the service. The port speaks TLS with the node's certificate from the
network CA unless `[api] plaintext` is set for development.

Message limits: a response may be as large as the largest block with its receipts and commit
certificate (`[api] max_message_bytes`, checked against the consensus limits by node.config), while a
request is bounded separately and much lower (`[api] max_request_bytes`): it is what a stranger can
make the node read. Fields that name something of a bounded size (a hash, a hold id, a symbol) are
checked here, so an oversized one is refused without reaching the node, and errors quote client
input only through `node.errors.quote`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clearline.v1 import admin_pb2, admin_pb2_grpc, ledger_api_pb2, ledger_api_pb2_grpc
from node import auth
from node.auth import Authenticator, Identity
from node.config import DEFAULT_API_MAX_REQUEST_BYTES
from node.errors import BASE_HEIGHT_KEY, MAX_MESSAGE_CHARS, ApiError, BelowBase, bound_message, quote
from node.ledger.ops import MAX_REF_LEN, MAX_SYMBOL_LEN
from node.network.limits import ClientLimits
from node.network.tolerant import add_tolerant

log = logging.getLogger("clearline.api")

REASON_KEY = "clearline-reason"
HASH_LEN = 32


class ApiListenError(Exception):
    """The client API cannot listen on its configured address (in use, or not an address of this host)."""


class NodeApi(Protocol):
    @property
    def chain_id(self) -> str: ...

    def now_ms(self) -> int: ...

    def identity_of(self, public_key: bytes) -> Identity | None: ...

    async def submit(
        self, raws: list[bytes], wait: int, timeout_s: float | None
    ) -> list[ledger_api_pb2.SubmitTxResult]: ...

    async def check_tx(self, raw: bytes) -> ledger_api_pb2.SubmitTxResponse: ...

    def get_tx(self, who: Identity, tx_hash: bytes) -> ledger_api_pb2.GetTxResponse: ...

    def get_account(
        self, who: Identity, address: bytes, prove: bool
    ) -> ledger_api_pb2.GetAccountResponse: ...

    def get_instrument(
        self, who: Identity, req: ledger_api_pb2.GetInstrumentRequest
    ) -> ledger_api_pb2.GetInstrumentResponse: ...

    def get_hold(self, who: Identity, hold_id: str) -> ledger_api_pb2.GetHoldResponse: ...

    def get_validators(self, who: Identity, height: int) -> ledger_api_pb2.GetValidatorsResponse: ...

    def get_block(
        self, who: Identity, req: ledger_api_pb2.GetBlockRequest
    ) -> ledger_api_pb2.GetBlockResponse: ...

    def status(self) -> ledger_api_pb2.GetStatusResponse: ...

    def get_statement(
        self, who: Identity, req: ledger_api_pb2.GetStatementRequest
    ) -> ledger_api_pb2.GetStatementResponse: ...

    def list_instruments(self, who: Identity) -> ledger_api_pb2.ListInstrumentsResponse: ...

    def list_pending(self, who: Identity, account: bytes) -> ledger_api_pb2.ListPendingResponse: ...

    def cancel_pending(self, who: Identity, nonces: list[int]) -> ledger_api_pb2.CancelPendingResponse: ...

    def list_holds(
        self, who: Identity, req: ledger_api_pb2.ListHoldsRequest
    ) -> ledger_api_pb2.ListHoldsResponse: ...

    def list_accounts(
        self, who: Identity, req: ledger_api_pb2.ListAccountsRequest
    ) -> ledger_api_pb2.ListAccountsResponse: ...

    def stream_blocks(
        self, who: Identity, from_height: int
    ) -> AsyncIterator[ledger_api_pb2.GetBlockResponse]: ...

    def subscribe_events(
        self, who: Identity, req: ledger_api_pb2.SubscribeEventsRequest
    ) -> AsyncIterator[ledger_api_pb2.EventEnvelope]: ...


async def _abort(context: grpc.aio.ServicerContext, err: ApiError) -> Any:
    code = getattr(grpc.StatusCode, err.code, grpc.StatusCode.UNKNOWN)
    metadata: tuple[tuple[str, str], ...] = ((REASON_KEY, err.reason),)
    if isinstance(err, BelowBase):
        metadata += ((BASE_HEIGHT_KEY, str(err.base)),)
    await context.abort(code, err.message, trailing_metadata=metadata)


def _address(value: bytes, what: str = "address") -> bytes:
    if len(value) != 20:
        raise ApiError("INVALID_ARGUMENT", "INVALID_ADDRESS", f"{what} must be 20 bytes, got {len(value)}")
    return value


def _hash(value: bytes, what: str) -> bytes:
    if len(value) != HASH_LEN:
        raise ApiError(
            "INVALID_ARGUMENT", "INVALID_HASH", f"{what} must be {HASH_LEN} bytes, got {len(value)}"
        )
    return value


def _bounded_text(value: str, limit: int, what: str, reason: str) -> str:
    """A name the ledger never stores longer than limit characters: a longer one cannot exist."""
    if len(value) > limit:
        raise ApiError("INVALID_ARGUMENT", reason, f"{what} {quote(value)} is longer than {limit} characters")
    return value


_METHOD_PREFIX = "/clearline.v1.Ledger/"
# CancelPending: nonces per request (a sender can have no more pending than the nonce window).
MAX_CANCEL_NONCES = 1024


def _host_of(peer: str) -> str:
    """The host part of a gRPC peer string ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000")."""
    return peer.rpartition(":")[0] or peer


def caller(
    context: grpc.aio.ServicerContext,
    authenticator: Authenticator,
    limits: ClientLimits,
    method: str,
    now_ms: int,
    now: float,
) -> Identity:
    """The identity a call of method (its full name) is made as, within its host's failed-
    authentication rate and its own request rate: the one check of every authenticated call.
    Raises ApiError (UNAUTHENTICATED, or RESOURCE_EXHAUSTED when a limit is reached)."""
    host = _host_of(context.peer() or "")
    limits.check_host(host, now)
    token = None
    for key, value in context.invocation_metadata() or ():
        if key == auth.METADATA_KEY:
            token = value if isinstance(value, str) else None
            break
    try:
        who = authenticator.authenticate(token, method, now_ms)
    except ApiError as err:
        if err.code == "UNAUTHENTICATED":
            limits.auth_failed(host, now)
        raise
    limits.request(who.address, now)
    return who


class LedgerService(ledger_api_pb2_grpc.LedgerServicer):
    def __init__(
        self,
        node: NodeApi,
        max_batch: int,
        limits: ClientLimits,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node = node
        self._max_batch = max_batch
        self._limits = limits
        self._monotonic = monotonic
        self._auth = Authenticator(node.chain_id, node.identity_of)

    def _who(self, context: grpc.aio.ServicerContext, method: str) -> Identity:
        """The caller's identity for method (the RPC's name), within its request rate; raises
        ApiError (UNAUTHENTICATED, or RESOURCE_EXHAUSTED when a limit is reached)."""
        return caller(
            context, self._auth, self._limits, _METHOD_PREFIX + method, self._node.now_ms(), self._monotonic()
        )

    async def SubmitTx(
        self, request: ledger_api_pb2.SubmitTxRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            self._who(context, "SubmitTx")
            if not request.tx:
                raise ApiError("INVALID_ARGUMENT", "MALFORMED", "empty transaction")
            (result,) = await self._node.submit([request.tx], request.wait, context.time_remaining())
            if not result.accepted:
                raise ApiError.for_status(result.status, result.message)
            return ledger_api_pb2.SubmitTxResponse(
                tx_hash=result.tx_hash,
                accepted=True,
                receipt=result.receipt if result.HasField("receipt") else None,
                height=result.height,
                replaced=result.replaced,
            )
        except ApiError as err:
            return await _abort(context, err)

    async def SubmitTxs(
        self, request: ledger_api_pb2.SubmitTxsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            self._who(context, "SubmitTxs")
            if len(request.txs) > self._max_batch:
                raise ApiError(
                    "RESOURCE_EXHAUSTED",
                    "BATCH_TOO_LARGE",
                    f"{len(request.txs)} txs in one batch, limit {self._max_batch}",
                )
            results = await self._node.submit(list(request.txs), request.wait, context.time_remaining())
            for result in results:
                if len(result.message) > MAX_MESSAGE_CHARS:
                    result.message = bound_message(result.message)
            return ledger_api_pb2.SubmitTxsResponse(results=results)
        except ApiError as err:
            return await _abort(context, err)

    async def CheckTx(
        self, request: ledger_api_pb2.SubmitTxRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            self._who(context, "CheckTx")
            return await self._node.check_tx(request.tx)
        except ApiError as err:
            return await _abort(context, err)

    async def GetTx(self, request: ledger_api_pb2.GetTxRequest, context: grpc.aio.ServicerContext) -> Any:
        try:
            who = self._who(context, "GetTx")
            return self._node.get_tx(who, _hash(request.tx_hash, "tx_hash"))
        except ApiError as err:
            return await _abort(context, err)

    async def GetAccount(
        self, request: ledger_api_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            who = self._who(context, "GetAccount")
            return self._node.get_account(who, _address(request.address), request.prove)
        except ApiError as err:
            return await _abort(context, err)

    async def GetInstrument(
        self, request: ledger_api_pb2.GetInstrumentRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            who = self._who(context, "GetInstrument")
            _address(request.instrument.issuer, "instrument issuer")
            _bounded_text(request.instrument.symbol, MAX_SYMBOL_LEN, "instrument symbol", "INVALID_SYMBOL")
            return self._node.get_instrument(who, request)
        except ApiError as err:
            return await _abort(context, err)

    async def GetHold(self, request: ledger_api_pb2.GetHoldRequest, context: grpc.aio.ServicerContext) -> Any:
        try:
            who = self._who(context, "GetHold")
            return self._node.get_hold(
                who, _bounded_text(request.hold_id, MAX_REF_LEN, "hold_id", "INVALID_HOLD_ID")
            )
        except ApiError as err:
            return await _abort(context, err)

    async def GetValidators(
        self, request: ledger_api_pb2.GetValidatorsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            who = self._who(context, "GetValidators")
            return self._node.get_validators(who, request.height)
        except ApiError as err:
            return await _abort(context, err)

    async def GetBlock(
        self, request: ledger_api_pb2.GetBlockRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            who = self._who(context, "GetBlock")
            if request.WhichOneof("by") == "hash":
                _hash(request.hash, "block hash")
            return self._node.get_block(who, request)
        except ApiError as err:
            return await _abort(context, err)

    async def GetStatement(
        self, request: ledger_api_pb2.GetStatementRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            who = self._who(context, "GetStatement")
            _address(request.account)
            _address(request.instrument.issuer, "instrument issuer")
            _bounded_text(request.instrument.symbol, MAX_SYMBOL_LEN, "instrument symbol", "INVALID_SYMBOL")
            return self._node.get_statement(who, request)
        except ApiError as err:
            return await _abort(context, err)

    async def ListInstruments(
        self, request: ledger_api_pb2.ListInstrumentsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            return self._node.list_instruments(self._who(context, "ListInstruments"))
        except ApiError as err:
            return await _abort(context, err)

    async def ListPending(
        self, request: ledger_api_pb2.ListPendingRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            who = self._who(context, "ListPending")
            if request.account:
                _address(request.account)
            return self._node.list_pending(who, request.account)
        except ApiError as err:
            return await _abort(context, err)

    async def CancelPending(
        self, request: ledger_api_pb2.CancelPendingRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            who = self._who(context, "CancelPending")
            if len(request.nonces) > MAX_CANCEL_NONCES:
                raise ApiError(
                    "INVALID_ARGUMENT",
                    "TOO_MANY_NONCES",
                    f"{len(request.nonces)} nonces in one request; at most {MAX_CANCEL_NONCES}",
                )
            return self._node.cancel_pending(who, list(request.nonces))
        except ApiError as err:
            return await _abort(context, err)

    async def ListHolds(
        self, request: ledger_api_pb2.ListHoldsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            who = self._who(context, "ListHolds")
            if request.account:
                _address(request.account)
            return self._node.list_holds(who, request)
        except ApiError as err:
            return await _abort(context, err)

    async def ListAccounts(
        self, request: ledger_api_pb2.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            who = self._who(context, "ListAccounts")
            if request.issuer:
                _address(request.issuer, "issuer")
            return self._node.list_accounts(who, request)
        except ApiError as err:
            return await _abort(context, err)

    async def GetStatus(
        self, request: ledger_api_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        return self._node.status()

    async def StreamBlocks(
        self, request: ledger_api_pb2.StreamBlocksRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            who = self._who(context, "StreamBlocks")
            self._limits.open_stream(who.address)
        except ApiError as err:
            await _abort(context, err)
            return
        try:
            async for block in self._node.stream_blocks(who, request.from_height):
                yield block
        except ApiError as err:
            await _abort(context, err)
        finally:
            self._limits.close_stream(who.address)

    async def SubscribeEvents(
        self, request: ledger_api_pb2.SubscribeEventsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            who = self._who(context, "SubscribeEvents")
            if request.account:
                _address(request.account, "account filter")
            self._limits.open_stream(who.address)
        except ApiError as err:
            await _abort(context, err)
            return
        try:
            async for event in self._node.subscribe_events(who, request):
                yield event
        except ApiError as err:
            await _abort(context, err)
        finally:
            self._limits.close_stream(who.address)


class NodeAdmin(Protocol):
    """The operator's service of a node (node/backup.py BackupService)."""

    @property
    def address(self) -> bytes:
        """The node's own address: the only caller answered."""
        ...

    def backup(self) -> AsyncGenerator[bytes, None]: ...


_ADMIN_PREFIX = "/clearline.v1.Admin/"


class AdminService(admin_pb2_grpc.AdminServicer):
    """Admin on the client API port: authenticated and rate-limited like every call, and answered
    only for the node's own key (the operator holds <home>/keys/validator.json); any other identity,
    a validator's or an account's, gets PERMISSION_DENIED."""

    def __init__(
        self,
        node: NodeApi,
        admin: NodeAdmin,
        limits: ClientLimits,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._node = node
        self._admin = admin
        self._limits = limits
        self._monotonic = monotonic
        self._auth = Authenticator(node.chain_id, node.identity_of)

    def _operator(self, context: grpc.aio.ServicerContext, method: str) -> Identity:
        who = caller(
            context, self._auth, self._limits, _ADMIN_PREFIX + method, self._node.now_ms(), self._monotonic()
        )
        if who.address != self._admin.address:
            raise ApiError("PERMISSION_DENIED", "PERMISSION_DENIED", "Admin answers this node's own key only")
        return who

    async def Backup(self, request: admin_pb2.BackupRequest, context: grpc.aio.ServicerContext) -> Any:
        try:
            who = self._operator(context, "Backup")
            self._limits.open_stream(who.address)
        except ApiError as err:
            await _abort(context, err)
            return
        try:
            # Closed at once when the caller goes away: the node's snapshot is released then.
            async with contextlib.aclosing(self._admin.backup()) as chunks:
                async for chunk in chunks:
                    yield admin_pb2.BackupChunk(data=chunk)
        except ApiError as err:
            await _abort(context, err)
        finally:
            self._limits.close_stream(who.address)


class ApiServer:
    """The client-facing gRPC server: Ledger + health + reflection, and Admin for the operator."""

    def __init__(
        self,
        node: NodeApi,
        listen: str,
        *,
        max_message_bytes: int,
        max_batch: int,
        max_request_bytes: int = DEFAULT_API_MAX_REQUEST_BYTES,
        max_concurrent_rpcs: int | None = None,
        limits: ClientLimits | None = None,
        tls: tuple[bytes, bytes] | None = None,
        admin: NodeAdmin | None = None,
    ) -> None:
        """max_message_bytes bounds a response (sized for the largest block), max_request_bytes a
        request. tls: the node's (private key PEM, certificate chain PEM); None serves plaintext
        (development only). admin: the operator's Admin service (AdminService), for the
        node's own key only. Raises ApiListenError if listen cannot be bound."""
        limits = limits or ClientLimits(
            requests_per_s=500, burst=1000, max_streams=16, auth_failures_per_s=20
        )
        self._server = grpc.aio.server(
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", max_request_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # gRPC binds with SO_REUSEPORT by default: a second node configured with the same
                # address would share the port (and half the clients) instead of refusing to start.
                ("grpc.so_reuseport", 0),
            ],
        )
        add_tolerant(
            ledger_api_pb2_grpc.add_LedgerServicer_to_server,
            LedgerService(node, max_batch, limits),
            self._server,
        )
        if admin is not None:
            add_tolerant(
                admin_pb2_grpc.add_AdminServicer_to_server, AdminService(node, admin, limits), self._server
            )
        self._health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = (
            ledger_api_pb2.DESCRIPTOR.services_by_name["Ledger"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self._server)
        try:
            if tls is None:
                self.port = self._server.add_insecure_port(listen)
            else:
                creds = grpc.ssl_server_credentials([tls], require_client_auth=False)
                self.port = self._server.add_secure_port(listen, creds)
        except RuntimeError:  # grpc's "Failed to bind to address"
            self.port = 0
        if self.port == 0:
            raise ApiListenError(
                f"[api] listen: cannot listen on {listen} (address in use, or not of this host)"
            )

    async def start(self) -> None:
        await self._server.start()

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        result = self._health.set("", status)
        if result is not None:
            await result
        result = self._health.set("clearline.v1.Ledger", status)
        if result is not None:
            await result

    async def stop(self, grace: float = 1.0) -> None:
        await self._server.stop(grace)
