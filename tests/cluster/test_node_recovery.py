"""Crash recovery on real processes: kill -9 under load, all four killed, crash points in the commit
path, and a wiped validator rejoining by block sync."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import grpc

from clearline.v1 import ledger_api_pb2, receipt_pb2, state_pb2, tx_pb2
from cluster.client import builders
from node import execution
from tests.cluster.conftest import RunningNetwork, status
from tests.cluster.helpers import block_hashes, get_block, key, setup_funded, signed, stub, submit, usd


class Load:
    """Senders that each submit transfers (wait=COMMITTED) to the live nodes, recording acknowledgements."""

    def __init__(
        self, net: RunningNetwork, senders: list[str], targets: list[int], max_seconds: float = 120
    ) -> None:
        self.net = net
        self.senders = senders
        self.targets = targets
        self.acked: dict[bytes, int] = {}  # tx hash -> committed height
        self.errors = 0
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._threads = [
            threading.Thread(target=self._run, args=(i, s), daemon=True) for i, s in enumerate(senders)
        ]
        self._lock = threading.Lock()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _run(self, i: int, sender: str) -> None:
        network = self.net.network
        signer, payee = key(network, sender), key(network, "bob")
        nonce = None
        n = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            target = self.net.target(self.targets[(i + n) % len(self.targets)])
            n += 1
            try:
                if nonce is None:
                    channel, s = stub(target)
                    with channel:
                        acct = s.GetAccount(
                            ledger_api_pb2.GetAccountRequest(address=signer.address), timeout=5
                        )
                    nonce = acct.account.nonce
                raw = signed(network, signer, nonce, builders.transfer(usd(network), payee.address, 1))
                resp = submit(target, raw, timeout=15)
                if resp.receipt.status == receipt_pb2.TX_STATUS_OK:
                    with self._lock:
                        self.acked[resp.tx_hash] = resp.height
                nonce += 1
            except grpc.RpcError:
                self.errors += 1
                nonce = None  # re-read: the tx may or may not have committed
                time.sleep(0.2)


def _committed(net: RunningNetwork, node: int, tx_hash: bytes) -> int:
    channel, s = stub(net.target(node))
    with channel:
        got = s.GetTx(ledger_api_pb2.GetTxRequest(tx_hash=tx_hash), timeout=10)
    assert got.state == ledger_api_pb2.TX_STATE_COMMITTED
    return got.height


def _signers_of_commit(net: RunningNetwork, node: int, height: int) -> set[bytes]:
    """Validators whose precommit is in the certificate of `height` (carried in block height+1)."""
    block = get_block(net.target(node), height + 1).block
    return {s.validator for s in block.last_commit.signatures}


def _no_evidence(net: RunningNetwork, node: int, upto: int) -> bool:
    return all(not get_block(net.target(node), h).block.body.evidence for h in range(1, upto + 1))


def test_kill_one_validator_under_load_then_it_catches_up_and_votes(make_network) -> None:
    net = make_network(4)
    setup_funded(net.network, net.target(0), ["alice", "carol", "bob"])
    node3 = net.network.node(3)
    with Load(net, ["alice", "carol"], [0, 1, 2]) as load:
        time.sleep(2)
        net.launcher.kill("node3")
        h = status(net.target(0)).height
        net.wait_height(h + 10, ["node0", "node1", "node2"], timeout=60)
        acked_while_down = len(load.acked)
        net.launcher.start("node3")
        top = status(net.target(0)).height
        net.wait_height(top, ["node3"], timeout=60)
        time.sleep(2)
    assert acked_while_down > 0
    # A node may still be a block behind the one that acknowledged the last tx: wait until every
    # node has reached the highest acknowledged height before asking each of them for every tx.
    net.wait_height(max(load.acked.values()), [f"node{i}" for i in range(4)], timeout=60)
    final = min(status(net.target(i)).height for i in range(4))
    hashes = [block_hashes(net.target(i), final) for i in range(4)]
    assert all(h == hashes[0] for h in hashes)
    for tx_hash, height in load.acked.items():
        assert _committed(net, 3, tx_hash) == height
    # The restarted validator votes again. A certificate holds the first quorum of precommits, which
    # may leave it out while the other three are quicker; so take node2 down: with three of four left
    # the chain can only move on if node3 votes, and every certificate from then on must carry it.
    net.launcher.kill("node2")
    # Height ahead + 1 may have been decided with node2's precommit, sent just before the kill.
    ahead = max(status(net.target(i)).height for i in (0, 1, 3))
    net.wait_height(ahead + 4, ["node0", "node1", "node3"], timeout=60)
    for h in (ahead + 2, ahead + 3):
        assert bytes.fromhex(node3.address) in _signers_of_commit(net, 0, h)


def test_kill_all_four_and_restart_keeps_the_chain(make_network) -> None:
    net = make_network(4)
    setup_funded(net.network, net.target(0), ["alice", "carol", "bob"])
    with Load(net, ["alice", "carol"], [0, 1, 2, 3]) as load:
        time.sleep(3)
        for i in range(4):
            net.launcher.kill(f"node{i}")
    before = max(load.acked.values(), default=1)
    net.launcher.start_all()
    net.wait_height(before + 3, timeout=60)
    hashes = [block_hashes(net.target(i), before + 3) for i in range(4)]
    assert all(h == hashes[0] for h in hashes)
    assert load.acked, "the load committed nothing before the crash"
    for tx_hash, height in load.acked.items():
        assert _committed(net, 0, tx_hash) == height
    # No validator signed two different votes for one (height, round, step): no equivocation evidence.
    assert _no_evidence(net, 0, before + 3)


CRASH_POINTS = [
    "commit:before-batch",
    "commit:after-batch",
    "runtime:after-commit",
    "runtime:after-end-height",
    "signstate:before-write",
]


def test_crash_points_in_the_commit_path_recover_consistently(make_network) -> None:
    net = make_network(4)
    for point in CRASH_POINTS:
        net.launcher.stop("node3")
        net.launcher.start("node3", env={"CLEARLINE_CRASH_POINT": point})
        deadline = time.monotonic() + 30
        while net.launcher.status("node3").alive and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not net.launcher.status("node3").alive, f"node3 did not reach crash point {point}"
        net.launcher.start("node3")
        top = status(net.target(0)).height
        net.wait_height(top + 2, ["node3"], timeout=60)
        h = min(status(net.target(3)).height, status(net.target(0)).height)
        assert block_hashes(net.target(3), h) == block_hashes(net.target(0), h), point
        roots = {get_block(net.target(i), h).block.header.state_root for i in (0, 3)}
        assert len(roots) == 1, point


def test_wiped_validator_rejoins_by_block_sync_after_1000_blocks(make_network) -> None:
    import dataclasses

    from tests.cluster.conftest import FAST

    fast = dataclasses.replace(FAST, timeout_commit_ms=5, create_empty_blocks_interval_ms=0)
    net = make_network(4, consensus=fast)
    net.wait_height(1000, ["node0"], timeout=240)
    net.launcher.stop("node3")
    data = Path(net.network.node(3).home) / "data"
    shutil.rmtree(data)
    data.mkdir()
    top = status(net.target(0)).height
    started = time.monotonic()
    net.launcher.start("node3")
    net.wait_height(top, ["node3"], timeout=120)
    took = time.monotonic() - started
    assert block_hashes(net.target(3), top)[-5:] == block_hashes(net.target(0), top)[-5:]
    print(f"block sync: {top} blocks in {took:.1f}s")
    net.wait_height(status(net.target(0)).height + 3, ["node3"], timeout=60)


def test_a_proposer_killed_after_signing_sends_the_same_proposal_after_restart(make_network) -> None:
    """node3 dies right after persisting the signature of its proposal, before sending it. After the
    restart it proposes that same block again (the core gives back the stored signature: not a double
    sign), so its round is not lost: the block committed at that height is the one it signed, in the
    round it signed it, proposed by node3, and no equivocation evidence appears."""
    import dataclasses

    from node.storage import SignStateFile
    from tests.cluster.conftest import FAST

    patient = dataclasses.replace(FAST, timeout_propose_ms=8000)  # the others wait for node3's proposal
    net = make_network(4, consensus=patient)
    net.launcher.stop("node3")
    net.launcher.start("node3", env={"CLEARLINE_CRASH_POINT": "runtime:after-sign-proposal"})
    deadline = time.monotonic() + 60
    while net.launcher.status("node3").alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not net.launcher.status("node3").alive, "node3 never proposed"
    home = Path(net.network.node(3).home)
    signed = SignStateFile.open(home / "data" / "sign_state.bin").load_state()
    assert signed is not None and signed.proposal_block is not None
    height, round_ = signed.last_signed.height, signed.last_signed.round
    assert signed.last_signed.step == 1  # STEP_PROPOSE
    net.launcher.start("node3")
    net.wait_height(height + 2, ["node0", "node3"], timeout=60)
    got = get_block(net.target(0), height)
    assert got.block_hash == signed.last_signed.block_id  # the very block it signed before dying
    assert got.commit.round == round_
    assert got.block.header.proposer == bytes.fromhex(net.network.node(3).address)
    assert _no_evidence(net, 0, height + 2)


def test_a_validator_back_after_a_long_outage_is_redialed_within_the_back_off_cap(make_network) -> None:
    """node3 is dialed by all three others (the lower name dials). After a 20 s outage its peers
    must reach it within about [p2p] reconnect_max_ms (1 s), not on gRPC's own channel back-off
    (1 s growing 1.6x to 120 s), which after such an outage can leave it alone for many seconds."""
    net = make_network(4)
    net.launcher.kill("node3")
    h = status(net.target(0)).height
    time.sleep(20)
    net.wait_height(h + 3, ["node0", "node1", "node2"], timeout=30)  # three of four go on meanwhile
    net.launcher.start("node3")
    deadline = time.monotonic() + 30
    while True:  # node3 answers once it is up (its peers cannot know before)
        try:
            status(net.target(3), timeout=0.5)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline, "node3 did not come back up"
            time.sleep(0.05)
    up = time.monotonic()
    while min(status(net.target(i)).peers for i in range(4)) < 3:
        assert time.monotonic() - up < 3.0, [status(net.target(i)).peers for i in range(4)]
        time.sleep(0.05)
    net.wait_height(status(net.target(0)).height + 2, ["node3"], timeout=30)


def _account(target: str, address: bytes) -> state_pb2.Account:
    channel, s = stub(target)
    with channel:
        return s.GetAccount(ledger_api_pb2.GetAccountRequest(address=address), timeout=5).account


def _usd_balance(account: state_pb2.Account, instrument: tx_pb2.InstrumentId) -> int:
    return next((b.amount for b in account.balances if b.instrument == instrument), 0)


def test_blocks_over_the_inline_limit_are_written_in_the_io_thread_and_survive_a_restart(
    make_network,
) -> None:
    """A decided block of more than INLINE_COMMIT_MAX_TXS transactions is written by the io thread
    while the event loop goes on: its transactions all commit, every node holds the same chain, and
    a validator killed with -9 afterwards reads it back from LevelDB."""
    net = make_network(4)
    setup_funded(net.network, net.target(0), ["alice", "bob"])
    alice, bob, dollars = key(net.network, "alice"), key(net.network, "bob"), usd(net.network)
    nonce = _account(net.target(0), alice.address).nonce
    bob_before = _usd_balance(_account(net.target(0), bob.address), dollars)
    count = 3 * execution.INLINE_COMMIT_MAX_TXS
    raws = [
        signed(net.network, alice, nonce + i, builders.transfer(dollars, bob.address, 1))
        for i in range(count)
    ]
    channel, s = stub(net.target(0))
    with channel:  # one batch: the next proposal takes them all (up to max_block_txs)
        resp = s.SubmitTxs(
            ledger_api_pb2.SubmitTxsRequest(txs=raws, wait=ledger_api_pb2.WAIT_FOR_NONE), timeout=30
        )
    assert all(r.accepted for r in resp.results), [r.message for r in resp.results if not r.accepted][:3]
    deadline = time.monotonic() + 60
    while _account(net.target(0), alice.address).nonce < nonce + count:
        assert time.monotonic() < deadline, "the batch did not commit"
        time.sleep(0.1)
    top = status(net.target(0)).height
    sizes = [len(get_block(net.target(0), h).block.body.txs) for h in range(1, top + 1)]
    assert max(sizes) > execution.INLINE_COMMIT_MAX_TXS, sizes[-10:]
    net.launcher.kill("node1")
    net.launcher.start("node1")
    net.wait_height(top + 2, [f"node{i}" for i in range(4)], timeout=60)
    hashes = [block_hashes(net.target(i), top) for i in range(4)]
    assert all(h == hashes[0] for h in hashes)
    for i in range(4):
        assert _usd_balance(_account(net.target(i), bob.address), dollars) == bob_before + count
