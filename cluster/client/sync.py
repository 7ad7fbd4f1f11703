"""A small synchronous wrapper around the async Client, for scripts and the CLI.

`SyncClient` owns a private event loop running in a daemon thread; each method hands the async
call to that loop and waits for it. `close()` (or leaving the `with` block) closes the client, stops
the loop and joins the thread, so nothing outlives it.

    with SyncClient.connect("127.0.0.1:7100", tls=TlsConfig("net/ca/ca.pem"), identity=alice) as client:
        print(client.status().height)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from clearline.v1 import block_pb2, ledger_api_pb2, state_pb2, tx_pb2
from cluster.client import builders
from cluster.client.aio import DEFAULT_TIMEOUT_S, MAX_MESSAGE_BYTES, Client
from cluster.client.proofs import latest_agreeing, verify_account_proof
from cluster.client.tls import TlsConfig
from cluster.client.values import SubmitResult, VerifiedAccount, WaitFor
from node.crypto import SigningKey

_T = TypeVar("_T")
_END = object()
_STOP_WAIT_S = 10.0


class _LoopThread:
    """An event loop running forever in its own daemon thread until stop()."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, _T], wait_s: float | None = None) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(wait_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {wait_s} s") from None

    def stop(self) -> None:
        """Cancel what is left on the loop, stop it, join the thread and close the loop."""
        if self.loop.is_closed():
            return
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(_wind_down(), self.loop).result(_STOP_WAIT_S)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(_STOP_WAIT_S)
        self.loop.close()


async def _wind_down() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_asyncgens()


class SyncClient:
    """Blocking version of Client; the same methods without `await`. Create with connect()."""

    def __init__(self, runner: _LoopThread, client: Client) -> None:
        self._runner = runner
        self._client = client

    @classmethod
    def connect(
        cls,
        target: str,
        *,
        chain_id: str | None = None,
        tls: TlsConfig | None = None,
        insecure: bool = False,
        identity: SigningKey | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> SyncClient:
        """See Client.connect."""
        runner = _LoopThread(f"clearline-client-{target}")
        try:
            client = runner.run(
                Client.connect(
                    target,
                    chain_id=chain_id,
                    tls=tls,
                    insecure=insecure,
                    identity=identity,
                    timeout_s=timeout_s,
                    max_message_bytes=max_message_bytes,
                )
            )
        except BaseException:
            runner.stop()
            raise
        return cls(runner, client)

    @property
    def target(self) -> str:
        return self._client.target

    @property
    def chain_id(self) -> str:
        return self._client.chain_id

    @property
    def thread(self) -> threading.Thread:
        """The thread running this client's event loop (for tests and diagnostics)."""
        return self._runner.thread

    def close(self) -> None:
        """Close the client and stop its loop thread. Idempotent."""
        if self._runner.loop.is_closed():
            return
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self._runner.run(coro)

    def submit(
        self, raw_tx: bytes, wait: WaitFor = WaitFor.COMMITTED, timeout_s: float | None = None
    ) -> SubmitResult:
        return self._run(self._client.submit(raw_tx, wait, timeout_s))

    def check(self, raw_tx: bytes, timeout_s: float | None = None) -> SubmitResult:
        return self._run(self._client.check(raw_tx, timeout_s))

    def submit_many(
        self, raws: Sequence[bytes], wait: WaitFor = WaitFor.COMMITTED, timeout_s: float | None = None
    ) -> list[SubmitResult]:
        return self._run(self._client.submit_many(raws, wait, timeout_s))

    def next_nonce(self, address: bytes, timeout_s: float | None = None) -> int:
        return self._run(self._client.next_nonce(address, timeout_s))

    def send(
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
        return self._run(
            self._client.send(
                key,
                op,
                client_ref=client_ref,
                memo=memo,
                cosigners=cosigners,
                wait=wait,
                timeout_s=timeout_s,
                nonce=nonce,
            )
        )

    def wait_committed(
        self, tx_hash: bytes, *, timeout_s: float | None = None, poll_s: float = 0.1
    ) -> ledger_api_pb2.GetTxResponse:
        return self._run(self._client.wait_committed(tx_hash, timeout_s=timeout_s, poll_s=poll_s))

    def get_tx(self, tx_hash: bytes, timeout_s: float | None = None) -> ledger_api_pb2.GetTxResponse:
        return self._run(self._client.get_tx(tx_hash, timeout_s))

    def get_account(
        self,
        address: bytes,
        prove: bool = False,
        timeout_s: float | None = None,
        as_: SigningKey | None = None,
    ) -> ledger_api_pb2.GetAccountResponse:
        return self._run(self._client.get_account(address, prove, timeout_s, as_))

    def get_instrument(
        self,
        instrument: tx_pb2.InstrumentId,
        timeout_s: float | None = None,
        as_: SigningKey | None = None,
    ) -> ledger_api_pb2.GetInstrumentResponse:
        return self._run(self._client.get_instrument(instrument, timeout_s, as_))

    def get_hold(
        self, hold_id: str, timeout_s: float | None = None, as_: SigningKey | None = None
    ) -> ledger_api_pb2.GetHoldResponse:
        return self._run(self._client.get_hold(hold_id, timeout_s, as_))

    def get_block(
        self, ref: int | bytes | None = None, timeout_s: float | None = None
    ) -> ledger_api_pb2.GetBlockResponse:
        return self._run(self._client.get_block(ref, timeout_s))

    def list_instruments(self, timeout_s: float | None = None) -> list[state_pb2.Instrument]:
        return self._run(self._client.list_instruments(timeout_s))

    def list_pending(
        self, account: bytes = b"", timeout_s: float | None = None
    ) -> ledger_api_pb2.ListPendingResponse:
        return self._run(self._client.list_pending(account, timeout_s))

    def list_holds(
        self, account: bytes = b"", *, include_closed: bool = False, timeout_s: float | None = None
    ) -> list[state_pb2.Hold]:
        return self._run(self._client.list_holds(account, include_closed=include_closed, timeout_s=timeout_s))

    def list_accounts(
        self, issuer: bytes = b"", *, timeout_s: float | None = None
    ) -> list[state_pb2.Account]:
        return self._run(self._client.list_accounts(issuer, timeout_s=timeout_s))

    def cancel_pending(
        self, key: SigningKey, nonces: Sequence[int] = (), timeout_s: float | None = None
    ) -> list[bytes]:
        return self._run(self._client.cancel_pending(key, nonces, timeout_s))

    def statement_page(
        self, account: bytes, instrument: tx_pb2.InstrumentId, **kwargs: Any
    ) -> ledger_api_pb2.GetStatementResponse:
        """One page (Client.statement_page's keywords: from_height, to_height, limit, page_token)."""
        return self._run(self._client.statement_page(account, instrument, **kwargs))

    def statement(
        self,
        account: bytes,
        instrument: tx_pb2.InstrumentId,
        *,
        from_height: int = 0,
        to_height: int = 0,
        timeout_s: float | None = None,
    ) -> ledger_api_pb2.GetStatementResponse:
        return self._run(
            self._client.statement(
                account, instrument, from_height=from_height, to_height=to_height, timeout_s=timeout_s
            )
        )

    def status(self, timeout_s: float | None = None) -> ledger_api_pb2.GetStatusResponse:
        return self._run(self._client.status(timeout_s))

    def validators(self, height: int = 0, timeout_s: float | None = None) -> block_pb2.ValidatorSet:
        return self._run(self._client.validators(height, timeout_s))

    def get_account_verified(
        self,
        address: bytes,
        trusted_validators: block_pb2.ValidatorSet,
        quorum_nodes: Sequence[SyncClient] | None = None,
        timeout_s: float | None = None,
    ) -> VerifiedAccount:
        """As Client.get_account_verified; each node is asked on its own loop, one after another."""
        verified = []
        for node in [self, *(quorum_nodes or ())]:
            answer = node.get_account(address, prove=True, timeout_s=timeout_s)
            proved = verify_account_proof(
                answer,
                chain_id=self.chain_id,
                trusted_validators=trusted_validators,
                address=address,
                target=node.target,
            )
            verified.append((node.target, proved))
        return latest_agreeing(verified)

    def stream_blocks(
        self, from_height: int = 1, *, timeout_s: float | None = None
    ) -> Iterator[ledger_api_pb2.GetBlockResponse]:
        """Blocking iterator over blocks; close it (or break out of the loop) to end the stream."""
        return self._iterate(self._client.stream_blocks(from_height, timeout_s=timeout_s))

    def subscribe_events(
        self,
        from_height: int = 1,
        account: bytes | None = None,
        instrument: tx_pb2.InstrumentId | None = None,
        *,
        timeout_s: float | None = None,
    ) -> Iterator[ledger_api_pb2.EventEnvelope]:
        return self._iterate(
            self._client.subscribe_events(from_height, account, instrument, timeout_s=timeout_s)
        )

    def _iterate(self, stream: Any) -> Iterator[Any]:
        reading: set[asyncio.Task[Any]] = set()  # the read of the next item while it runs on the loop

        async def next_item() -> Any:
            task = asyncio.current_task()
            assert task is not None
            reading.add(task)
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return _END
            finally:
                reading.discard(task)

        async def close() -> None:
            # A caller interrupted while waiting for an item (Ctrl-C) leaves its read running on the
            # loop, and aclose() of a stream whose __anext__ runs raises RuntimeError: cancel it first.
            running = list(reading)
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await stream.aclose()

        try:
            while (item := self._run(next_item())) is not _END:
                yield item
        finally:
            if not self._runner.loop.is_closed():
                self._run(close())
