"""The asynchronous Clearline client (grpc.aio): submit, wait, query, follow, verify.

    tls = TlsConfig(ca_cert_path="net/ca/ca.pem")                     # the network's CA
    async with await Client.connect("127.0.0.1:7100", tls=tls, identity=alice) as client:
        result = await client.send(alice, transfer(usd, bob, 100))    # nonce, build, sign, submit
        result.raise_for_status()
        verified = await client.get_account_verified(alice.address, trusted_validators)

Every call but status() names its caller with a fresh `clearline-auth` token signed by the
client's identity (an account's key, or a node's; node/auth.py), and the node answers only what
that identity may read (node/access.py). `send` signs its calls as the key it sends with. A node
serves TLS by default; plaintext needs insecure=True and a node configured for development.

Every unary call has a deadline (the client's timeout_s unless the call passes its own); streams run
until closed unless given one. gRPC errors are mapped at this edge to ClientError(code, reason,
message), the reason read from the trailing metadata key "clearline-reason".
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from clearline.v1 import block_pb2, ledger_api_pb2, ledger_api_pb2_grpc, receipt_pb2, state_pb2, tx_pb2
from cluster.client import builders
from cluster.client.errors import BadResponseError, ClientError, from_rpc_error
from cluster.client.proofs import latest_agreeing, verify_account_proof
from cluster.client.tls import TlsConfig
from cluster.client.values import SubmitResult, VerifiedAccount, WaitFor
from node import auth, txs
from node.crypto import Hash, SigningKey

DEFAULT_TIMEOUT_S = 10.0
# The largest response the client accepts: above a node's largest block response with the default
# limits (node.config.DEFAULT_API_MAX_MESSAGE_BYTES, about 29 MiB), so a full block is readable.
# A network configured with larger blocks passes max_message_bytes to connect.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_R = TypeVar("_R")


class Client:
    """A connection to one node's client API. Create with `await Client.connect(...)`."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        target: str,
        chain_id: str,
        timeout_s: float,
        identity: SigningKey | None = None,
    ) -> None:
        self._channel = channel
        self._identity = identity
        self._stub = ledger_api_pb2_grpc.LedgerStub(channel)
        self._target = target
        self._chain_id = chain_id
        self._timeout_s = timeout_s
        self._closed = False
        self._nonce_locks: dict[bytes, asyncio.Lock] = {}
        self._next_nonces: dict[bytes, int] = {}

    @classmethod
    async def connect(
        cls,
        target: str,
        *,
        chain_id: str | None = None,
        tls: TlsConfig | None = None,
        insecure: bool = False,
        identity: SigningKey | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> Client:
        """Open a channel to target ("host:port"): TLS verified with tls's CA, or plaintext only
        with insecure=True (a node configured with [api] plaintext, for development). identity is
        the key the calls are made as. Without chain_id, ask the node (GetStatus).
        max_message_bytes bounds what the client sends and receives in one message."""
        if tls is None and not insecure:
            raise ValueError("give tls=TlsConfig(ca_cert_path=...) (the network CA), or insecure=True")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls is None:
            channel = grpc.aio.insecure_channel(target, options=options)
        else:
            channel = grpc.aio.secure_channel(
                target, tls.credentials(), options=options + tls.channel_options()
            )
        client = cls(channel, target, chain_id or "", timeout_s, identity)
        if chain_id is None:
            try:
                client._chain_id = (await client.status()).chain_id
            except BaseException:
                await client.close()
                raise
        return client

    @property
    def target(self) -> str:
        return self._target

    @property
    def chain_id(self) -> str:
        return self._chain_id

    @property
    def identity(self) -> SigningKey | None:
        return self._identity

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled. Idempotent."""
        if not self._closed:
            self._closed = True
            await self._channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- plumbing -----------------------------------------------------------------------------

    def _metadata(self, rpc: str, as_: SigningKey | None) -> tuple[tuple[str, str], ...] | None:
        """A fresh token for one call of rpc, signed by as_ or the client's identity (none: the call
        goes without, and the node refuses all but GetStatus)."""
        key = as_ or self._identity
        if key is None:
            return None
        method = f"/clearline.v1.Ledger/{rpc}"
        return ((auth.METADATA_KEY, auth.make_token(key, self._chain_id, method, int(time.time() * 1000))),)

    async def _call(
        self, rpc: str, request: object, timeout_s: float | None = None, as_: SigningKey | None = None
    ) -> Any:
        if self._closed:
            raise ClientError(
                grpc.StatusCode.CANCELLED, "CLIENT_CLOSED", "the client is closed", target=self._target
            )
        method: Callable[..., Awaitable[Any]] = getattr(self._stub, rpc)
        try:
            return await method(
                request,
                timeout=timeout_s if timeout_s is not None else self._timeout_s,
                metadata=self._metadata(rpc, as_),
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self._target) from exc

    async def _stream(self, rpc: str, request: object, timeout_s: float | None) -> AsyncIterator[Any]:
        if self._closed:
            raise ClientError(
                grpc.StatusCode.CANCELLED, "CLIENT_CLOSED", "the client is closed", target=self._target
            )
        call = getattr(self._stub, rpc)(request, timeout=timeout_s, metadata=self._metadata(rpc, None))
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, self._target) from exc
        finally:
            call.cancel()

    # --- transactions -------------------------------------------------------------------------

    async def submit(
        self,
        raw_tx: bytes,
        wait: WaitFor = WaitFor.COMMITTED,
        timeout_s: float | None = None,
        as_: SigningKey | None = None,
    ) -> SubmitResult:
        """Submit one serialized SignedTx and wait as asked; a rejection raises ClientError. as_:
        the identity of this call (default: the client's)."""
        request = ledger_api_pb2.SubmitTxRequest(tx=raw_tx, wait=wait.value)
        resp: ledger_api_pb2.SubmitTxResponse = await self._call("SubmitTx", request, timeout_s, as_)
        return self._result(raw_tx, resp)

    async def check(self, raw_tx: bytes, timeout_s: float | None = None) -> SubmitResult:
        """Dry-run one transaction against the node's current state (CheckTx); nothing is kept."""
        request = ledger_api_pb2.SubmitTxRequest(tx=raw_tx, wait=ledger_api_pb2.WAIT_FOR_CHECKED)
        resp: ledger_api_pb2.SubmitTxResponse = await self._call("CheckTx", request, timeout_s)
        return self._result(raw_tx, resp)

    def _result(self, raw_tx: bytes, resp: ledger_api_pb2.SubmitTxResponse) -> SubmitResult:
        expected = txs.tx_hash(raw_tx)
        if resp.tx_hash != expected:
            raise BadResponseError(
                f"node answered for tx {resp.tx_hash.hex()}, submitted {expected.hex()}", target=self._target
            )
        receipt = _copy(resp.receipt) if resp.HasField("receipt") else None
        if receipt is not None:
            status = receipt.status
        else:
            status = receipt_pb2.TX_STATUS_OK if resp.accepted else receipt_pb2.TX_STATUS_UNSPECIFIED
        return SubmitResult(
            tx_hash=expected,
            accepted=resp.accepted,
            status=status,
            message=receipt.message if receipt is not None else "",
            receipt=receipt,
            height=resp.height,
            state_root=resp.state_root,
            replaced=resp.replaced,
        )

    async def submit_many(
        self, raws: Sequence[bytes], wait: WaitFor = WaitFor.COMMITTED, timeout_s: float | None = None
    ) -> list[SubmitResult]:
        """Submit a batch in one call; one result per transaction, in order (rejections included)."""
        request = ledger_api_pb2.SubmitTxsRequest(txs=list(raws), wait=wait.value)
        resp: ledger_api_pb2.SubmitTxsResponse = await self._call("SubmitTxs", request, timeout_s)
        if len(resp.results) != len(raws):
            raise BadResponseError(
                f"{len(resp.results)} results for {len(raws)} transactions", target=self._target
            )
        out: list[SubmitResult] = []
        for raw, item in zip(raws, resp.results, strict=True):
            expected = txs.tx_hash(raw)
            if item.tx_hash and item.tx_hash != expected:
                raise BadResponseError(
                    f"result for tx {item.tx_hash.hex()} in the place of {expected.hex()}",
                    target=self._target,
                )
            receipt = _copy(item.receipt) if item.HasField("receipt") else None
            if item.accepted:  # DROPPED: accepted, then dropped before it committed
                status = receipt.status if receipt is not None else (item.status or receipt_pb2.TX_STATUS_OK)
            else:
                status = item.status or (
                    receipt.status if receipt is not None else receipt_pb2.TX_STATUS_UNSPECIFIED
                )
            out.append(
                SubmitResult(
                    tx_hash=expected,
                    accepted=item.accepted,
                    status=status,
                    message=item.message or (receipt.message if receipt is not None else ""),
                    receipt=receipt,
                    height=item.height,
                    state_root=b"",
                    replaced=item.replaced,
                )
            )
        return out

    async def next_nonce(
        self, address: bytes, timeout_s: float | None = None, as_: SigningKey | None = None
    ) -> int:
        """The next nonce the ledger expects from address (0 for an account not yet created)."""
        resp = await self.get_account(address, timeout_s=timeout_s, as_=as_)
        return resp.account.nonce if resp.exists else 0

    async def send(
        self,
        key: SigningKey,
        op: builders.Op,
        *,
        client_ref: str | None = None,
        memo: str = "",
        cosigners: Sequence[SigningKey] = (),
        wait: WaitFor = WaitFor.COMMITTED,
        timeout_s: float | None = None,
        nonce: int | None = None,
    ) -> SubmitResult:
        """Fetch key's nonce, build, sign (key first, then cosigners) and submit op.

        Nonces of transactions sent through this client and accepted but not yet committed are
        remembered, so several sends with wait=NONE do not reuse a nonce. A rejection forgets them.
        The calls are made as key (an account may always read itself), whatever the client's identity.

        nonce: use this one instead: a nonce ahead of the account's next waits in the node's mempool
        until the ones before it arrive (see list_pending), and the nonce of one of key's waiting
        transactions replaces that transaction (the result's `replaced` names it).
        """
        address = key.address
        if nonce is None:
            lock = self._nonce_locks.setdefault(address, asyncio.Lock())
            async with lock:
                nonce = max(
                    await self.next_nonce(address, timeout_s, as_=key), self._next_nonces.get(address, 0)
                )
                self._next_nonces[address] = nonce + 1
        body = builders.make_body(
            self._chain_id, address, nonce, client_ref or uuid.uuid4().hex, op, memo=memo
        )
        raw = builders.sign(body, key, *cosigners)
        try:
            return await self.submit(raw, wait, timeout_s, as_=key)
        except ClientError:
            self._next_nonces.pop(address, None)
            raise

    async def wait_committed(
        self, tx_hash: bytes, *, timeout_s: float | None = None, poll_s: float = 0.1
    ) -> ledger_api_pb2.GetTxResponse:
        """Poll GetTx until tx_hash is committed; its answer (receipt, height, index).

        Raises ClientError(DEADLINE_EXCEEDED, "NOT_COMMITTED") if it is not committed within
        timeout_s (default: the client's timeout), and ClientError(ABORTED, "TX_<reason>") if the
        node dropped it uncommitted (replaced, cancelled, expired, nonce used, invalid)."""
        budget = timeout_s if timeout_s is not None else self._timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        while True:
            left = deadline - loop.time()
            if left <= 0:
                break
            resp = await self.get_tx(tx_hash, timeout_s=left)
            if resp.state == ledger_api_pb2.TX_STATE_COMMITTED:
                return resp
            if resp.state == ledger_api_pb2.TX_STATE_DROPPED:
                raise ClientError(
                    grpc.StatusCode.ABORTED,
                    f"TX_{resp.dropped_reason}",
                    f"tx {tx_hash.hex()} dropped: {resp.message}",
                    target=self._target,
                )
            await asyncio.sleep(min(poll_s, max(0.0, deadline - loop.time())))
        raise ClientError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "NOT_COMMITTED",
            f"tx {tx_hash.hex()} not committed within {budget} s",
            target=self._target,
        )

    # --- queries ------------------------------------------------------------------------------

    async def get_tx(self, tx_hash: bytes, timeout_s: float | None = None) -> ledger_api_pb2.GetTxResponse:
        """State (unknown, pending, committed, dropped), receipt, height and index of a transaction;
        for a dropped one, why (dropped_reason, message, replaced_by)."""
        resp: ledger_api_pb2.GetTxResponse = await self._call(
            "GetTx", ledger_api_pb2.GetTxRequest(tx_hash=tx_hash), timeout_s
        )
        return resp

    async def get_account(
        self,
        address: bytes,
        prove: bool = False,
        timeout_s: float | None = None,
        as_: SigningKey | None = None,
    ) -> ledger_api_pb2.GetAccountResponse:
        """Balances, holds, KYC and nonce of address; with prove, the proof, header and commit."""
        resp: ledger_api_pb2.GetAccountResponse = await self._call(
            "GetAccount", ledger_api_pb2.GetAccountRequest(address=address, prove=prove), timeout_s, as_
        )
        return resp

    async def get_instrument(
        self,
        instrument: tx_pb2.InstrumentId,
        timeout_s: float | None = None,
        as_: SigningKey | None = None,
    ) -> ledger_api_pb2.GetInstrumentResponse:
        resp: ledger_api_pb2.GetInstrumentResponse = await self._call(
            "GetInstrument", ledger_api_pb2.GetInstrumentRequest(instrument=instrument), timeout_s, as_
        )
        return resp

    async def get_hold(
        self, hold_id: str, timeout_s: float | None = None, as_: SigningKey | None = None
    ) -> ledger_api_pb2.GetHoldResponse:
        resp: ledger_api_pb2.GetHoldResponse = await self._call(
            "GetHold", ledger_api_pb2.GetHoldRequest(hold_id=hold_id), timeout_s, as_
        )
        return resp

    async def get_block(
        self, ref: int | bytes | None = None, timeout_s: float | None = None
    ) -> ledger_api_pb2.GetBlockResponse:
        """A block with its commit and receipts, by height (int; None or 0 = latest) or hash (bytes)."""
        if isinstance(ref, bytes):
            request = ledger_api_pb2.GetBlockRequest(hash=ref)
        else:
            request = ledger_api_pb2.GetBlockRequest(height=ref or 0)
        resp: ledger_api_pb2.GetBlockResponse = await self._call("GetBlock", request, timeout_s)
        return resp

    async def statement_page(
        self,
        account: bytes,
        instrument: tx_pb2.InstrumentId,
        *,
        from_height: int = 0,
        to_height: int = 0,
        limit: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> ledger_api_pb2.GetStatementResponse:
        """One page of account's statement in instrument (GetStatement)."""
        request = ledger_api_pb2.GetStatementRequest(
            account=account, instrument=instrument, from_height=from_height, to_height=to_height,
            limit=limit, page_token=page_token,
        )  # fmt: skip
        resp: ledger_api_pb2.GetStatementResponse = await self._call("GetStatement", request, timeout_s)
        return resp

    async def statement(
        self,
        account: bytes,
        instrument: tx_pb2.InstrumentId,
        *,
        from_height: int = 0,
        to_height: int = 0,
        timeout_s: float | None = None,
    ) -> ledger_api_pb2.GetStatementResponse:
        """The whole statement: every page, over one fixed range (the first page's, so that a block
        committed meanwhile does not change it), checked to tie out (opening + entries = closing)."""
        first = await self.statement_page(
            account, instrument, from_height=from_height, to_height=to_height, timeout_s=timeout_s
        )
        whole = _copy(first)
        token = first.next_page_token
        while token:
            page = await self.statement_page(
                account, instrument, from_height=first.from_height, to_height=first.to_height,
                page_token=token, timeout_s=timeout_s,
            )  # fmt: skip
            whole.entries.extend(page.entries)
            token = page.next_page_token
        whole.next_page_token = ""
        total = sum(-e.amount if e.debit else e.amount for e in whole.entries)
        if whole.opening + total != whole.closing:
            raise BadResponseError(
                f"statement does not tie out: opening {whole.opening} + entries {total} != closing {whole.closing}",
                target=self._target,
            )
        return whole

    async def list_instruments(self, timeout_s: float | None = None) -> list[state_pb2.Instrument]:
        """The instruments this client's identity may read."""
        resp: ledger_api_pb2.ListInstrumentsResponse = await self._call(
            "ListInstruments", ledger_api_pb2.ListInstrumentsRequest(), timeout_s
        )
        return list(resp.instruments)

    async def list_pending(
        self, account: bytes = b"", timeout_s: float | None = None
    ) -> ledger_api_pb2.ListPendingResponse:
        """account's (default: this identity's) transactions in the node's mempool, ready or waiting."""
        resp: ledger_api_pb2.ListPendingResponse = await self._call(
            "ListPending", ledger_api_pb2.ListPendingRequest(account=account), timeout_s
        )
        return resp

    async def list_holds(
        self,
        account: bytes = b"",
        *,
        include_closed: bool = False,
        timeout_s: float | None = None,
        max_pages: int = 1000,
    ) -> list[state_pb2.Hold]:
        """Holds where account (default: this identity) is payer, payee or notary, active only
        unless include_closed; those this identity may read, every page."""
        out: list[state_pb2.Hold] = []
        token = ""
        for _ in range(max_pages):
            resp: ledger_api_pb2.ListHoldsResponse = await self._call(
                "ListHolds",
                ledger_api_pb2.ListHoldsRequest(
                    account=account, include_closed=include_closed, page_token=token
                ),
                timeout_s,
            )
            out.extend(resp.holds)
            token = resp.next_page_token
            if not token:
                return out
        raise BadResponseError(f"ListHolds still had pages after {max_pages}", target=self._target)

    async def list_accounts(
        self, issuer: bytes = b"", *, timeout_s: float | None = None, max_pages: int = 1000
    ) -> list[state_pb2.Account]:
        """The accounts of issuer (default: this identity): those it approved, whole, and the other
        holders of its instruments, only the issuer's part of them; every page."""
        out: list[state_pb2.Account] = []
        token = ""
        for _ in range(max_pages):
            resp: ledger_api_pb2.ListAccountsResponse = await self._call(
                "ListAccounts", ledger_api_pb2.ListAccountsRequest(issuer=issuer, page_token=token), timeout_s
            )
            out.extend(resp.accounts)
            token = resp.next_page_token
            if not token:
                return out
        raise BadResponseError(f"ListAccounts still had pages after {max_pages}", target=self._target)

    async def cancel_pending(
        self, key: SigningKey, nonces: Sequence[int] = (), timeout_s: float | None = None
    ) -> list[bytes]:
        """Withdraw key's waiting transactions (a nonce ahead of its next one) from the node's
        mempool: those with these nonces, or all of them; returns their hashes. All or nothing:
        ClientError NOT_PENDING or TX_READY (already sent to the validators) names the first that
        cannot be withdrawn. Only the signer can: the call is made as key."""
        resp: ledger_api_pb2.CancelPendingResponse = await self._call(
            "CancelPending", ledger_api_pb2.CancelPendingRequest(nonces=list(nonces)), timeout_s, key
        )
        return list(resp.tx_hashes)

    async def status(self, timeout_s: float | None = None) -> ledger_api_pb2.GetStatusResponse:
        resp: ledger_api_pb2.GetStatusResponse = await self._call(
            "GetStatus", ledger_api_pb2.GetStatusRequest(), timeout_s
        )
        return resp

    async def validators(self, height: int = 0, timeout_s: float | None = None) -> block_pb2.ValidatorSet:
        """The validator set at height (0 = current), as the node reports it (not verified)."""
        resp: ledger_api_pb2.GetValidatorsResponse = await self._call(
            "GetValidators", ledger_api_pb2.GetValidatorsRequest(height=height), timeout_s
        )
        return _copy(resp.validators)

    # --- streams ------------------------------------------------------------------------------

    def stream_blocks(
        self, from_height: int = 1, *, timeout_s: float | None = None
    ) -> AsyncIterator[ledger_api_pb2.GetBlockResponse]:
        """Blocks from from_height on, then live ones as they commit; timeout_s bounds the whole
        stream (None: until closed)."""
        request = ledger_api_pb2.StreamBlocksRequest(from_height=from_height)
        return self._stream("StreamBlocks", request, timeout_s)

    def subscribe_events(
        self,
        from_height: int = 1,
        account: bytes | None = None,
        instrument: tx_pb2.InstrumentId | None = None,
        *,
        timeout_s: float | None = None,
    ) -> AsyncIterator[ledger_api_pb2.EventEnvelope]:
        """Events from from_height on, then live; optionally only those of account and/or instrument."""
        request = ledger_api_pb2.SubscribeEventsRequest(from_height=from_height, account=account or b"")
        if instrument is not None:
            request.instrument.CopyFrom(instrument)
        return self._stream("SubscribeEvents", request, timeout_s)

    # --- verified reads -----------------------------------------------------------------------

    async def get_account_verified(
        self,
        address: bytes,
        trusted_validators: block_pb2.ValidatorSet,
        quorum_nodes: Sequence[Client] | None = None,
        timeout_s: float | None = None,
    ) -> VerifiedAccount:
        """The account of address proved against trusted_validators, from this node and every node
        in quorum_nodes; all must answer with valid proofs that agree. The newest one is returned.
        Raises ClientError (a node failed) or ProofError (an answer does not verify)."""
        nodes = [self, *(quorum_nodes or ())]
        answers = await asyncio.gather(
            *(n.get_account(address, prove=True, timeout_s=timeout_s) for n in nodes), return_exceptions=True
        )
        verified: list[tuple[str, VerifiedAccount]] = []
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, BaseException):
                raise answer
            proved = verify_account_proof(
                answer,
                chain_id=self._chain_id,
                trusted_validators=trusted_validators,
                address=address,
                target=node.target,
            )
            verified.append((node.target, proved))
        return latest_agreeing(verified)


def _copy(message: _R) -> _R:
    out = type(message)()
    out.CopyFrom(message)  # type: ignore[attr-defined]
    return out


def tx_hash_of(raw_tx: bytes) -> Hash:
    """The hash a node reports for raw_tx."""
    return txs.tx_hash(raw_tx)
