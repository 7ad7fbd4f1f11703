"""cluster.client.sync.SyncClient: blocking calls through a private loop thread that close() ends.

The FAKE server runs on its own loop in another thread (FakeServerThread), since these tests block.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from clearline.v1 import ledger_api_pb2
from cluster.client import ClientError, SyncClient, WaitFor
from cluster.client import builders as b
from node import txs
from node.crypto import SigningKey

from .chain import CHAIN, proved_account, validator_set
from .fake_ledger import FakeLedger, FakeServerThread, Refusal
from .test_aio import canned_blocks
from .test_proofs import StubMerkle

ME = SigningKey.from_seed(b"\x31" * 32)
BOB = SigningKey.from_seed(b"\x32" * 32)
USD = b.instrument(ME.address, "USD")


def client_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("clearline-client-")]


@pytest.fixture
def served() -> Iterator[FakeServerThread]:
    with FakeServerThread(FakeLedger()) as server:
        yield server


def test_sync_client_submits_queries_and_closes_its_thread(served: FakeServerThread) -> None:
    before = len(client_threads())
    with SyncClient.connect(served.target, timeout_s=5, insecure=True) as client:
        thread = client.thread
        assert thread.is_alive() and len(client_threads()) == before + 1
        assert client.chain_id == CHAIN and client.status().height == 3
        result = client.send(ME, b.transfer(USD, BOB.address, 10), wait=WaitFor.COMMITTED)
        assert result.ok and result.height == 4
        assert client.next_nonce(ME.address) == 1
        raw = b.sign(b.make_body(CHAIN, ME.address, 1, "r2", b.transfer(USD, BOB.address, 3)), ME)
        assert [r.reason for r in client.submit_many([raw, raw], wait=WaitFor.NONE)] == ["OK", "BAD_NONCE"]
        assert client.get_tx(txs.tx_hash(raw)).state == ledger_api_pb2.TX_STATE_UNKNOWN
        assert client.get_account(ME.address).account.nonce == 2
    thread.join(5)
    assert not thread.is_alive() and len(client_threads()) == before
    client.close()  # idempotent


def test_sync_client_maps_errors_and_honours_timeouts(served: FakeServerThread) -> None:
    with SyncClient.connect(served.target, timeout_s=5, insecure=True) as client:
        served.fake.refuse = Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, "MEMPOOL_FULL", "full")
        with pytest.raises(ClientError) as info:
            client.send(ME, b.transfer(USD, BOB.address, 1))
        assert info.value.reason == "MEMPOOL_FULL"
        served.fake.refuse = None
        served.fake.hang_s = 5
        start = time.monotonic()
        with pytest.raises(ClientError) as info:
            client.status(timeout_s=0.3)
        assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - start < 2


def test_failed_connect_leaves_no_thread_behind() -> None:
    before = len(client_threads())
    with pytest.raises(ClientError):
        SyncClient.connect("127.0.0.1:1", timeout_s=0.3, insecure=True)
    assert len(client_threads()) == before


def test_sync_streams_iterate_and_stop(served: FakeServerThread) -> None:
    served.fake.blocks = canned_blocks(4)
    served.fake.keep_streams_open = True
    with SyncClient.connect(served.target, timeout_s=5, insecure=True) as client:
        heights = []
        stream = client.stream_blocks(2)
        for item in stream:
            heights.append(item.block.header.height)
            if len(heights) == 3:
                break
        stream.close()  # type: ignore[attr-defined]
        assert heights == [2, 3, 4]
        served.fake.keep_streams_open = False
        assert [e.height for e in client.subscribe_events(1)] == []
    for _ in range(500):  # up to 10 s: the server notices on its own loop, late under load
        if served.fake.streams_cancelled:
            break
        time.sleep(0.02)
    assert served.fake.streams_cancelled == 1


def test_a_stream_interrupted_while_waiting_closes_cleanly(served: FakeServerThread) -> None:
    # Ctrl-C during `clearline watch`: SIGINT reaches the main thread while it waits for the next item.
    served.fake.keep_streams_open = True
    with SyncClient.connect(served.target, timeout_s=5, insecure=True) as client:
        stream = client.subscribe_events(1)
        main = threading.main_thread().ident
        assert main is not None and threading.get_ident() == main
        timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT))
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):  # not RuntimeError from closing a running stream
                next(stream)
        finally:
            timer.cancel()
    for _ in range(500):  # up to 10 s: the server notices on its own loop
        if served.fake.streams_cancelled:
            break
        time.sleep(0.02)
    assert served.fake.streams_cancelled == 1


def test_sync_verified_read_across_two_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    from cluster.client import proofs

    stub = StubMerkle()
    monkeypatch.setattr(proofs, "_ledger_functions", lambda: (stub.verify_proof, stub.account_key))
    alice = b"\xa1" * 20
    first, second = FakeLedger(), FakeLedger()
    first.proofs[alice] = proved_account(alice, height=9, nonce=1)
    second.proofs[alice] = proved_account(alice, height=11, nonce=3)
    with (
        FakeServerThread(first) as s1,
        FakeServerThread(second) as s2,
        SyncClient.connect(s1.target, insecure=True) as c1,
        SyncClient.connect(s2.target, insecure=True) as c2,
    ):
        got = c1.get_account_verified(alice, validator_set(), [c2])
        assert got.height == 11 and got.account is not None and got.account.nonce == 3
