"""A workload with a history: concurrent clients submit transfers, mints, holds and settlements with
unique client references to random nodes, and record every operation as JSON lines.

Each operation is recorded once it is invoked and again when its outcome is known:

    ok       the node acknowledged it as committed with an OK receipt (an acknowledged transaction)
    failed   definitely not applied (rejected before the mempool, or committed with a failure receipt;
             `committed` says which)
    unknown  no answer in time (deadline, unavailable node): it may or may not commit

The checker (cluster/checker.py) reads this history back and compares it with the chains.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc, receipt_pb2, tx_pb2
from cluster.client import builders
from cluster.netgen import Network
from node import crypto, txs
from node.crypto import SigningKey

DEFINITE_REJECTIONS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass
class Op:
    id: int
    client: str
    kind: str
    node: str
    tx_hash: str
    signer: str
    client_ref: str
    status: str = "invoked"
    committed: bool = False
    height: int = 0
    reason: str = ""
    invoked_at: float = 0.0
    completed_at: float = 0.0
    amounts: dict[str, int] = field(default_factory=dict)


def workload_accounts(count: int) -> tuple[str, ...]:
    return tuple(f"w{i}" for i in range(count))


def funded(names: tuple[str, ...], amount: int = 10**12) -> dict[str, list[tuple[str, str, int]]]:
    return {name: [("bank-a", "USD", amount)] for name in names}


class Workload:
    def __init__(
        self,
        network: Network,
        accounts: tuple[str, ...],
        *,
        seed: int,
        history: Path,
        think_s: float = 0.05,
        timeout_s: float = 5.0,
    ) -> None:
        self.network = network
        self.accounts = accounts
        self.rng = random.Random(seed)
        self.history_path = history
        self.think_s = think_s
        self.timeout_s = timeout_s
        self.keys = {
            n: crypto.load_key_file(Path(network.accounts[n])) for n in (*accounts, "bank-a", "bank-b")
        }
        self.usd = tx_pb2.InstrumentId(issuer=self.keys["bank-a"].address, symbol="USD")
        self.ops: list[Op] = []
        self._ids = itertools.count()
        self._refs = itertools.count()
        self._holds: asyncio.Queue[str] = asyncio.Queue()
        self._file: Any = None
        self._stubs: dict[str, ledger_api_pb2_grpc.LedgerStub] = {}
        self._channels: list[grpc.aio.Channel] = []

    # --- history ----------------------------------------------------------------------------------

    def _record(self, op: Op) -> None:
        self._file.write(json.dumps(asdict(op)) + "\n")
        self._file.flush()

    @staticmethod
    def load_history(path: Path) -> list[Op]:
        """The final record of each operation, in invocation order."""
        latest: dict[int, Op] = {}
        for line in path.read_text().splitlines():
            if line.strip():
                doc = json.loads(line)
                latest[doc["id"]] = Op(**doc)
        return [latest[i] for i in sorted(latest)]

    # --- submitting -------------------------------------------------------------------------------

    def _stub(self, node: str) -> ledger_api_pb2_grpc.LedgerStub:
        stub = self._stubs.get(node)
        if stub is None:
            channel = self.network.aio_channel(self.network.node(node).api_target)
            self._channels.append(channel)
            stub = self._stubs[node] = ledger_api_pb2_grpc.LedgerStub(channel)
        return stub

    async def _nonce(self, key: SigningKey) -> int | None:
        for node in self.rng.sample([n.name for n in self.network.nodes], len(self.network.nodes)):
            try:
                resp = await self._stub(node).GetAccount(
                    ledger_api_pb2.GetAccountRequest(address=key.address), timeout=2
                )
                return int(resp.account.nonce)
            except grpc.aio.AioRpcError:
                continue
        return None

    async def _submit(self, client: str, kind: str, key: SigningKey, nonce: int, op_msg: Any,
                      cosigners: list[SigningKey], amounts: dict[str, int]) -> Op:  # fmt: skip
        ref = f"{client}-{next(self._refs)}"
        body = builders.make_body(self.network.chain_id, key.address, nonce, ref, op_msg)
        raw = txs.sign_tx(body, [key, *cosigners])
        node = self.rng.choice(self.network.nodes).name
        op = Op(
            id=next(self._ids), client=client, kind=kind, node=node, tx_hash=txs.tx_hash(raw).hex(),
            signer=key.address.hex(), client_ref=ref, invoked_at=time.time(), amounts=amounts,
        )  # fmt: skip
        self.ops.append(op)
        self._record(op)
        try:
            resp = await self._stub(node).SubmitTx(
                ledger_api_pb2.SubmitTxRequest(tx=raw, wait=ledger_api_pb2.WAIT_FOR_COMMITTED),
                timeout=self.timeout_s,
            )
            op.height = resp.height
            op.committed = True
            if resp.receipt.status == receipt_pb2.TX_STATUS_OK:
                op.status = "ok"
            else:
                op.status = "failed"
                op.reason = receipt_pb2.TxStatus.Name(resp.receipt.status).removeprefix("TX_STATUS_")
        except grpc.aio.AioRpcError as exc:
            reason = dict(exc.trailing_metadata() or ()).get("clearline-reason", exc.code().name)
            op.reason = str(reason)
            op.status = "failed" if exc.code() in DEFINITE_REJECTIONS else "unknown"
        op.completed_at = time.time()
        self._record(op)
        return op

    async def _client(self, index: int, stop: asyncio.Event) -> None:
        """One client: its own account (client 0 is the issuer's desk, minting against deposits)."""
        name = self.accounts[index]
        signer = self.keys["bank-a"] if index == 0 else self.keys[name]
        nonce: int | None = None
        while not stop.is_set():
            await asyncio.sleep(self.rng.uniform(0, 2 * self.think_s))
            if nonce is None:
                nonce = await self._nonce(signer)
                if nonce is None:
                    await asyncio.sleep(0.5)
                    continue
            other_name = self.accounts[
                (index + 1 + self.rng.randrange(len(self.accounts) - 1)) % len(self.accounts)
            ]
            other = self.keys[other_name]
            roll = self.rng.random()
            if index == 0:
                amount = self.rng.randint(1, 1000)
                op_msg: Any = builders.mint(self.usd, other.address, amount, f"dep-{next(self._refs)}")
                op = await self._submit("issuer", "mint", signer, nonce, op_msg, [], {"mint": amount})
            elif roll < 0.6:
                amount = self.rng.randint(1, 100)
                op_msg = builders.transfer(self.usd, other.address, amount)
                op = await self._submit(name, "transfer", signer, nonce, op_msg, [], {"amount": amount})
            elif roll < 0.8:
                hold_id = f"hold-{name}-{next(self._refs)}"
                op_msg = builders.create_hold(hold_id, self.usd, payee=other.address, notary=self.keys["bank-b"].address,
                                              amount=5, expires_at_height=10**9)  # fmt: skip
                op = await self._submit(name, "hold", signer, nonce, op_msg, [], {"amount": 5})
                if op.status == "ok":
                    self._holds.put_nowait(hold_id)
            else:
                legs = [builders.leg(self.usd, signer.address, other.address, 7),
                        builders.leg(self.usd, other.address, signer.address, 3)]  # fmt: skip
                op_msg = builders.settle(f"s-{next(self._refs)}", legs)
                op = await self._submit(name, "settle", signer, nonce, op_msg, [other], {"amount": 4})
            # A committed transaction consumed the nonce; anything else: re-read it.
            nonce = nonce + 1 if op.committed else None

    async def _notary(self, stop: asyncio.Event) -> None:
        """bank-b is the notary of every hold and executes them (the hold's second step)."""
        key = self.keys["bank-b"]
        nonce: int | None = None
        while not stop.is_set():
            try:
                hold_id = await asyncio.wait_for(self._holds.get(), timeout=0.5)
            except TimeoutError:
                continue
            if nonce is None:
                nonce = await self._nonce(key)
                if nonce is None:
                    continue
            op = await self._submit(
                "notary", "hold_execute", key, nonce, builders.execute_hold(hold_id), [], {}
            )
            nonce = nonce + 1 if op.committed else None

    async def run(self, stop: asyncio.Event) -> list[Op]:
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.history_path, "a") as f:
            self._file = f
            try:
                tasks = [asyncio.create_task(self._client(i, stop)) for i in range(len(self.accounts))]
                tasks.append(asyncio.create_task(self._notary(stop)))
                await asyncio.gather(*tasks)
            finally:
                for channel in self._channels:
                    await channel.close()
        return self.ops
