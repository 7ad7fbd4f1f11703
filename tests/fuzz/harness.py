"""The fuzzed node and what is checked around it: a real validator process, its health and its state.

The network has 1 + PEERS validators: node0 with three quarters of the voting power, node1..nodeN
sharing the last quarter. Only node0 runs: it commits on its own (> 2/3 of the power), and the
fuzzer holds the other validators' keys and TLS certificates, so it can open real authenticated
peer streams to node0 and send whatever it likes after a valid hello. Several identities because
the node bans a peer that sends too many invalid messages (node.router PEER_FAULT_LIMIT): the
fuzzer spreads its messages over them so its streams keep being read. The absent validators are
the scheduled proposers of one round in four; node0 times out on them and goes on.

`FuzzNode.snapshot()` reads everything the tests know about the state (every genesis account with
its holds, every instrument, the validator set); `FuzzNode.assert_healthy()` checks the process, the
gRPC health service, GetStatus and that the height keeps increasing; `assert_unchanged()` checks
that no block committed since a snapshot carried a transaction or evidence and that the state read
back is byte for byte the same. (The state root itself changes with every block: it commits the
ledger's height and block time.)
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, settings

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc, state_pb2, tx_pb2
from cluster.launcher import Launcher, tail
from cluster.netgen import VALIDATOR_POWER, Network, init_network
from cluster.ports import free_base_port
from node import crypto
from node.config import ConsensusConfig
from node.crypto import SigningKey

REASON_KEY = "clearline-reason"
MAX_DETAILS_BYTES = 1024
CALL_TIMEOUT_S = 5.0

# Short timeouts: the only round that times out is node1's (absent) turn to propose.
FUZZ_CONSENSUS = ConsensusConfig(
    timeout_propose_ms=400,
    timeout_propose_delta_ms=200,
    timeout_prevote_ms=200,
    timeout_prevote_delta_ms=200,
    timeout_precommit_ms=200,
    timeout_precommit_delta_ms=200,
    timeout_commit_ms=50,
    create_empty_blocks_interval_ms=300,
)

FUNDED = {
    "alice": [("bank-a", "USD", 1_000_000)],
    "bob": [("bank-a", "USD", 250_000), ("bank-b", "USD", 7)],
    "carol": [("bank-a", "BOND-2030", 40)],
}

_API_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Receive oversized error details as they are, so the test can report their size (gRPC's
    # default would turn them into a RESOURCE_EXHAUSTED of the client's own).
    ("grpc.max_metadata_size", 64 * 1024 * 1024),
    ("grpc.absolute_max_metadata_size", 64 * 1024 * 1024),
]


PEERS = 16  # validators the fuzzer can be


def _reweigh_genesis(network: Network) -> None:
    """node0 gets three times the others' voting power together, so it decides alone (3/4 > 2/3)."""
    paths = [Path(network.home) / "genesis.json", *(Path(n.home) / "genesis.json" for n in network.nodes)]
    genesis = json_format.Parse(paths[0].read_text(), state_pb2.Genesis())
    node0_key = bytes.fromhex(network.node(0).address)
    for v in genesis.validators:
        v.power = (
            3 * PEERS * VALIDATOR_POWER if crypto.address_of(v.public_key) == node0_key else VALIDATOR_POWER
        )
    text = json_format.MessageToJson(genesis, indent=2) + "\n"
    for path in paths:
        path.write_text(text)


@dataclass
class Snapshot:
    height: int
    reads: dict[str, bytes] = field(default_factory=dict)  # what was read -> the serialized answer


class FuzzNode:
    """The running validator node0 of a 1 + PEERS validator network, and the fuzzer's view of it."""

    def __repr__(self) -> str:
        return f"FuzzNode({self.api_target}, p2p {self.p2p_target})"

    def __init__(self, root: Path) -> None:
        self.root = root
        base = free_base_port(1 + PEERS)
        self.network = init_network(
            root / "net",
            validators=1 + PEERS,
            base_port=base,
            consensus=FUZZ_CONSENSUS,
            funded=FUNDED,
            snapshot_interval=5,  # snapshots to serve: state sync's calls are fuzzed too
        )
        _reweigh_genesis(self.network)
        self.launcher = Launcher(self.network)
        self.info = self.network.node(0)
        self.api_target = self.info.api_target
        self.p2p_target = self.info.p2p_target
        self.chain_id = self.network.chain_id
        self.accounts = {
            name: crypto.load_key_file(Path(path)) for name, path in self.network.accounts.items()
        }
        # Calls as the auditor (who may make every read), so the fuzzed requests get past
        # authentication to the checks they fuzz (tests/unit/test_auth.py fuzzes the tokens' checks).
        self.channel = self.network.channel(self.api_target, "auditor", options=_API_OPTIONS)
        self.ledger = ledger_api_pb2_grpc.LedgerStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.pid: int | None = None
        self._empty_upto = 0  # blocks up to here were checked to carry nothing

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.pid = self.launcher.start("node0")
        self.wait_height(2, timeout=60)

    def stop(self) -> None:
        self.channel.close()
        self.launcher.stop_all(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        return tail(Path(self.info.home) / "stdout.log", lines)

    def banned_peers(self) -> set[str]:
        """The peers node0 has banned so far (from its JSON-lines log)."""
        banned = set()
        try:
            text = (Path(self.info.home) / "node.log").read_text(errors="replace")
        except OSError:
            return banned
        for line in text.splitlines():
            if " banned for " in line:
                m = re.search(r"peer (node\d+) banned for", line)
                if m:
                    banned.add(m.group(1))
        return banned

    # --- identities the fuzzer uses -----------------------------------------------------------------

    def key(self, name: str) -> SigningKey:
        return self.accounts[name]

    def peer_home(self, index: int = 1) -> Path:
        """node<index>'s home: a validator key and TLS certificate the fuzzer connects with."""
        return Path(self.network.node(index).home)

    def peer_key(self, index: int = 1) -> SigningKey:
        return crypto.load_key_file(self.peer_home(index) / "keys" / "validator.json")

    def peer_channel(self, index: int = 1, *, as_home: Path | None = None) -> grpc.Channel:
        """A mutual-TLS channel to node0's peer service with node<index>'s certificate (or the
        certificate in as_home)."""
        home = as_home or self.peer_home(index)
        creds = grpc.ssl_channel_credentials(
            (home / "tls" / "ca.pem").read_bytes(),
            (home / "tls" / "node.key").read_bytes(),
            (home / "tls" / "node.pem").read_bytes(),
        )
        return grpc.secure_channel(
            self.p2p_target,
            creds,
            options=[("grpc.ssl_target_name_override", "node0"), *_API_OPTIONS],
        )

    # --- health -----------------------------------------------------------------------------------

    def status(self, timeout: float = CALL_TIMEOUT_S) -> ledger_api_pb2.GetStatusResponse:
        return self.ledger.GetStatus(ledger_api_pb2.GetStatusRequest(), timeout=timeout)

    def height(self) -> int:
        return self.status().height

    def wait_height(self, height: int, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self.assert_alive()
            try:
                h = self.status(timeout=2).height
                if h >= height:
                    return h
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.05)
        raise AssertionError(
            f"node0 not at height {height} after {timeout:.0f} s ({last!r}); log:\n{self.log_tail()}"
        )

    def assert_alive(self) -> None:
        pid = self.launcher.pid("node0")
        assert pid is not None and pid == self.pid, (
            f"node0 process {self.pid} is gone (now {pid}); log:\n{self.log_tail()}"
        )

    def assert_healthy(self, since_height: int | None = None) -> int:
        """The process is the one we started, health says SERVING, GetStatus answers, and the chain
        has grown past since_height (by default: grows by one more block). Returns the height."""
        self.assert_alive()
        for service in ("", "clearline.v1.Ledger"):
            resp = self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT_S)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, (service, resp)
        status = self.status()
        assert status.chain_id == self.chain_id
        return self.wait_height((status.height if since_height is None else since_height) + 1, timeout=20)

    # --- state --------------------------------------------------------------------------------------

    def _instruments(self) -> list[tx_pb2.InstrumentId]:
        a, b = self.key("bank-a").address, self.key("bank-b").address
        return [
            tx_pb2.InstrumentId(issuer=a, symbol="USD"),
            tx_pb2.InstrumentId(issuer=b, symbol="USD"),
            tx_pb2.InstrumentId(issuer=a, symbol="BOND-2030"),
        ]

    def snapshot(self) -> Snapshot:
        """Every state the tests know about, read at one height (retried if a block lands between)."""
        for _ in range(20):
            before = self.status()
            reads: dict[str, bytes] = {}
            for name, key in sorted(self.accounts.items()):
                resp = self.ledger.GetAccount(
                    ledger_api_pb2.GetAccountRequest(address=key.address), timeout=CALL_TIMEOUT_S
                )
                resp.height = 0  # read at before.height
                reads[f"account {name}"] = resp.SerializeToString(deterministic=True)
            for inst in self._instruments():
                resp_i = self.ledger.GetInstrument(
                    ledger_api_pb2.GetInstrumentRequest(instrument=inst), timeout=CALL_TIMEOUT_S
                )
                reads[f"instrument {inst.symbol}@{inst.issuer.hex()[:8]}"] = (
                    resp_i.instrument.SerializeToString(deterministic=True)
                )
            vs = self.ledger.GetValidators(ledger_api_pb2.GetValidatorsRequest(), timeout=CALL_TIMEOUT_S)
            reads["validators"] = vs.validators.SerializeToString(deterministic=True)
            after = self.status()
            if after.height == before.height:
                return Snapshot(before.height, reads)
        raise AssertionError("the height moved during every one of 20 snapshot attempts")

    def assert_unchanged(self, before: Snapshot) -> None:
        """No block since `before` carried a transaction or evidence; the state reads the same;
        the mempool is empty."""
        now = self.snapshot()
        assert now.height >= before.height
        for h in range(max(before.height, self._empty_upto) + 1, now.height + 1):
            block = self.ledger.GetBlock(
                ledger_api_pb2.GetBlockRequest(height=h), timeout=CALL_TIMEOUT_S
            ).block
            assert not block.body.txs and not block.body.evidence, (
                f"block {h} committed {len(block.body.txs)} txs and {len(block.body.evidence)} evidence "
                "while only invalid input was sent"
            )
            self._empty_upto = h
        changed = [k for k in before.reads if before.reads[k] != now.reads.get(k)]
        assert not changed, f"state changed: {changed}"
        status = self.status()
        assert status.mempool_size == 0, f"{status.mempool_size} transactions in the mempool"


# --- answers ---------------------------------------------------------------------------------------

# Codes a node may answer a client with (UNAVAILABLE only while starting: never in these tests).
CLIENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
# Codes that end or refuse a peer stream (the peer service has no reason metadata).
PEER_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.NOT_FOUND,  # state sync: no such snapshot chunk or block here
    }
)
# gRPC itself refuses a message above the receiver's limit, before any servicer runs.
_TRANSPORT_LIMIT = "larger than max"


@dataclass
class Answer:
    """What one call got: its status, reason, details and the raw responses before the status."""

    rpc: str
    code: grpc.StatusCode
    details: str
    reason: str
    responses: list[bytes]
    cancelled_by_us: bool = False

    def __str__(self) -> str:
        details = (
            self.details
            if len(self.details) <= 300
            else self.details[:300] + f"... ({len(self.details)} chars)"
        )
        return f"{self.rpc}: {self.code.name} reason={self.reason!r} details={details!r} responses={len(self.responses)}"


def reason_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The `clearline-reason` of a call's trailing metadata, or ""."""
    for item in metadata or ():
        if item[0] == REASON_KEY:
            return str(item[1])
    return ""


def call_unary(channel: grpc.Channel, path: str, payload: bytes, timeout: float = CALL_TIMEOUT_S) -> Answer:
    method = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    try:
        response, call = method.with_call(bytes(payload), timeout=timeout)
    except grpc.RpcError as err:
        return Answer(path, err.code(), err.details() or "", reason_of(err.trailing_metadata()), [])
    return Answer(path, call.code(), call.details() or "", reason_of(call.trailing_metadata()), [response])


def call_server_stream(
    channel: grpc.Channel, path: str, payload: bytes, timeout: float, max_responses: int = 3
) -> Answer:
    """Read at most max_responses, then cancel; a stream that waits for more ends at the deadline."""
    method = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
    call = method(bytes(payload), timeout=timeout)
    responses: list[bytes] = []
    try:
        for response in call:
            responses.append(response)
            if len(responses) >= max_responses:
                call.cancel()
                return Answer(path, grpc.StatusCode.CANCELLED, "", "", responses, cancelled_by_us=True)
    except grpc.RpcError as err:
        return Answer(path, err.code(), err.details() or "", reason_of(err.trailing_metadata()), responses)
    return Answer(path, call.code(), call.details() or "", reason_of(call.trailing_metadata()), responses)


def client_answer_problem(answer: Answer, *, malformed: bool, waits: bool) -> str | None:
    """Why an answer of the client API breaks the contract, or None.

    - OK, or one of CLIENT_CODES; never UNKNOWN, INTERNAL or anything else;
    - an error carries a non-empty `clearline-reason` and details of at most MAX_DETAILS_BYTES;
    - a request that is not a valid protobuf of the RPC's request type is INVALID_ARGUMENT (with a
      reason), like any other malformed input;
    - DEADLINE_EXCEEDED only for calls that wait (streams, commit waits); the client's own deadline
      carries no reason;
    - RESOURCE_EXHAUSTED without a reason only where gRPC refused an oversized message itself.
    """
    code = answer.code
    if code == grpc.StatusCode.OK or answer.cancelled_by_us:
        return None
    size = len(answer.details.encode())
    if size > MAX_DETAILS_BYTES:
        return f"error details are {size} bytes (limit {MAX_DETAILS_BYTES})"
    if malformed and code != grpc.StatusCode.INVALID_ARGUMENT:
        return "an unparseable request must be INVALID_ARGUMENT"
    if code not in CLIENT_CODES:
        return f"undefined status {code.name}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if not waits:
            return "DEADLINE_EXCEEDED on a call that does not wait: the node is slow or wedged"
        return None
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _TRANSPORT_LIMIT in answer.details:
        return None
    if not answer.reason:
        return f"{code.name} without a {REASON_KEY} reason"
    return None


def peer_answer_problem(answer: Answer, *, malformed: bool) -> str | None:
    """Why the end of a peer call breaks the contract, or None: OK or one of PEER_CODES, details of
    at most MAX_DETAILS_BYTES, INVALID_ARGUMENT for input that is not protobuf of the right type."""
    code = answer.code
    if code == grpc.StatusCode.OK or answer.cancelled_by_us:
        return None
    size = len(answer.details.encode())
    if size > MAX_DETAILS_BYTES:
        return f"error details are {size} bytes (limit {MAX_DETAILS_BYTES})"
    if malformed and code != grpc.StatusCode.INVALID_ARGUMENT:
        return "unparseable input must be INVALID_ARGUMENT"
    if code not in PEER_CODES:
        return f"undefined status {code.name}"
    return None


def fuzz_examples(default: int) -> int:
    """The example count of a fuzz test: its CI default, or FUZZ_EXAMPLES=N to run longer by hand."""
    return int(os.environ.get("FUZZ_EXAMPLES", default))


def fuzz_settings(default_examples: int) -> settings:
    """CI: a fixed sequence of default_examples examples (derandomized, no example database), so a
    run is reproducible; FUZZ_EXAMPLES=N: N random examples. The node is slow next to Hypothesis's
    expectations (real gRPC calls), hence no deadline and no health checks."""
    return settings(
        max_examples=fuzz_examples(default_examples),
        deadline=None,
        derandomize="FUZZ_EXAMPLES" not in os.environ,
        database=None,
        print_blob=True,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
