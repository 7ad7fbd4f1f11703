"""A record of a running network's chain, read while it runs, for a checker that cannot read it
afterwards: nodes that prune ([storage] retain_blocks) delete their old blocks, so a campaign that
checks every acknowledged transaction and every supply from genesis on records each block soon
after it commits, from whichever node answers (cluster/chaos.py with --retain-blocks).

A thread polls: it asks one node its height and reads the blocks it has not recorded yet; a node
that is down, paused or cut off is left for the next. A height that every node has pruned before it
was read (a recorder stalled for longer than the nodes keep blocks) is a gap, reported in `gaps`:
the checker then cannot vouch for the chain and says so.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc
from cluster.checker import rpc_reason
from cluster.netgen import Network

CALL_TIMEOUT_S = 10.0


class ChainRecorder:
    """Records GetBlock answers (without their transactions' bytes: the receipts, the header and
    the evidence are what the checker reads) of heights 1, 2, ... as the chain grows."""

    def __init__(self, network: Network, names: list[str], interval_s: float = 0.5) -> None:
        self._network = network
        self._names = list(names)
        self._interval_s = interval_s
        self.blocks: list[ledger_api_pb2.GetBlockResponse] = []  # blocks[h - 1] is height h
        self.gaps: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._next = 0  # index of the node asked first

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chain-recorder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def catch_up(self, timeout_s: float = 60.0) -> None:
        """Stop polling and read up to the height of a node that answers (before the checker)."""
        self.stop()
        deadline = time.monotonic() + timeout_s
        while not self.poll() and time.monotonic() < deadline and not self.gaps:
            time.sleep(0.5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            if self.gaps:
                return
            self.poll()

    def poll(self) -> bool:
        """Read what one node has beyond the record; True if a node answered to its height."""
        with self._lock:
            bases: dict[str, int] = {}
            for attempt in range(len(self._names)):
                name = self._names[(self._next + attempt) % len(self._names)]
                try:
                    self._read_from(name)
                    self._next = (self._next + attempt) % len(self._names)
                    return True
                except _BelowBase as exc:
                    bases[name] = exc.base
                except grpc.RpcError:
                    continue
            if len(bases) == len(self._names):
                height = len(self.blocks) + 1
                self.gaps.append(
                    f"height {height} was pruned on every node before it was recorded (bases {bases})"
                )
            return False

    def _read_from(self, name: str) -> None:
        channel = self._network.channel(
            self._network.node(name).api_target, options=[("grpc.max_receive_message_length", 256 << 20)]
        )
        with channel:
            stub = ledger_api_pb2_grpc.LedgerStub(channel)
            top = stub.GetStatus(ledger_api_pb2.GetStatusRequest(), timeout=CALL_TIMEOUT_S).height
            while len(self.blocks) < top:
                height = len(self.blocks) + 1
                try:
                    block = stub.GetBlock(
                        ledger_api_pb2.GetBlockRequest(height=height), timeout=CALL_TIMEOUT_S
                    )
                except grpc.RpcError as exc:
                    if rpc_reason(exc) == "BELOW_BASE_HEIGHT":
                        status: Any = stub.GetStatus(
                            ledger_api_pb2.GetStatusRequest(), timeout=CALL_TIMEOUT_S
                        )
                        raise _BelowBase(int(status.base_height)) from None
                    raise
                block.block.body.ClearField("txs")
                self.blocks.append(block)


class _BelowBase(Exception):
    def __init__(self, base: int) -> None:
        super().__init__(f"keeps blocks from height {base}")
        self.base = base
