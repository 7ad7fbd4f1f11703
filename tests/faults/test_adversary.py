"""One validator attacking the others with its own key and certificate (the hardening issue's
findings 1, 2 and 5), on real 4-validator networks: a lying height claim must not stall the chain,
a stalled or tampered block sync must not stop a node from catching up (and is the serving peer's
fault, counted), and proposals out of turn are refused before any of their transactions is
verified."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

from tests.cluster.conftest import RunningNetwork, make_network, status  # noqa: F401 - fixture

HONEST = ["node0", "node1", "node2"]


def _start_byzantine(net: RunningNetwork, mode: str) -> None:
    net.launcher.stop("node3")
    net.launcher.start("node3", args=["--byzantine", mode])


def _metrics(net: RunningNetwork, name: str) -> str:
    port = net.network.node(name).metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of metric `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(rf"{re.escape(name)}(?:_total)?(\{{[^}}]*\}})?\s+(\S+)$", line)
        if m is None:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def _longest_commit_gap(net: RunningNetwork, name: str, seconds: float) -> tuple[float, int]:
    """Watch a node's height for `seconds`: the longest time it did not move, and how far it got."""
    start = status(net.target(name)).height
    last_height, last_change = start, time.monotonic()
    longest = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        h = status(net.target(name)).height
        now = time.monotonic()
        if h != last_height:
            last_height, last_change = h, now
        longest = max(longest, now - last_change)
        time.sleep(0.05)
    return longest, last_height - start


def _agree(net: RunningNetwork, names: list[str]) -> None:
    from tests.cluster.helpers import block_hashes

    top = min(status(net.target(n)).height for n in names)
    chains = [block_hashes(net.target(n), top) for n in names]
    assert all(c == chains[0] for c in chains), "the honest nodes committed different blocks"


def test_a_validator_claiming_height_2_pow_64_does_not_stall_the_chain(make_network) -> None:  # noqa: F811
    net = make_network(4, faults=True)
    _start_byzantine(net, "lying-status")
    net.wait_height(status(net.target(0)).height + 2, HONEST, timeout=60)
    # Idle, the network commits an empty block about every second: a gap of several seconds means
    # the lie stalls it.
    gap, progressed = _longest_commit_gap(net, "node0", 12.0)
    print(f"lying-status: node0's longest commit gap {gap:.2f} s over 12 s, {progressed} heights")
    assert progressed >= 5, f"only {progressed} heights in 12 s while one validator lies"
    assert gap < 4.0, f"node0 did not commit for {gap:.1f} s while one validator lies about its height"
    _agree(net, HONEST)
    # The lie cost the liar: the honest nodes counted its unserved claims and stopped asking.
    text = _metrics(net, "node0")
    faults = _metric(text, "clearline_peer_faults", peer="node3")
    assert faults >= 1, "the lying validator's unserved height claims were not counted"
    log = (Path(net.network.node(0).home) / "node.log").read_text()
    assert log.count("block sync: peer node3") <= 12, "a lying peer should be asked less and less often"


def test_a_node_catches_up_past_a_peer_that_stalls_block_sync(make_network) -> None:  # noqa: F811
    net = make_network(4, faults=True)
    _start_byzantine(net, "stall-sync")
    net.launcher.stop("node2")
    target = status(net.target(0)).height + 15
    net.wait_height(target, ["node0", "node1"], timeout=90)
    net.launcher.start("node2")
    net.wait_height(target, ["node2"], timeout=60)
    _agree(net, HONEST)


def test_a_tampered_sync_body_is_the_serving_peers_fault(make_network) -> None:  # noqa: F811
    net = make_network(4, faults=True)
    from tests.cluster.helpers import setup_funded

    setup_funded(net.network, net.target(0), ["alice", "bob"])  # blocks with transactions to tamper with
    _start_byzantine(net, "tamper-sync")
    net.launcher.stop("node2")
    target = status(net.target(0)).height + 15
    net.wait_height(target, ["node0", "node1"], timeout=90)
    net.launcher.start("node2")
    net.wait_height(target, ["node2"], timeout=60)
    _agree(net, HONEST)
    assert net.launcher.pid("node2") is not None, "the syncing node stopped"
    log = (Path(net.network.node(2).home) / "node.log").read_text()
    assert "state root mismatch" not in log
    # node2 asked the tamperer (it claims the most) at least once and struck it.
    text = _metrics(net, "node2")
    tampered = _metric(text, "clearline_peer_faults", peer="node3", kind="sync_bad_block")
    unserved = _metric(text, "clearline_peer_faults", peer="node3", kind="sync_false_claim")
    assert tampered >= 1, f"the tampering peer was not counted (unserved claims: {unserved})"


def test_proposals_out_of_turn_are_refused_before_their_signatures_are_checked(make_network) -> None:  # noqa: F811
    net = make_network(4, faults=True)
    _start_byzantine(net, "out-of-turn")
    start = status(net.target(0)).height
    # Wait until node0 has refused a good number of them (5 a second, 200 fresh transactions each).
    deadline = time.monotonic() + 60
    refused = 0.0
    while time.monotonic() < deadline and refused < 20:
        refused = _metric(
            _metrics(net, "node0"), "clearline_peer_faults", peer="node3", kind="invalid_proposal"
        )
        time.sleep(0.5)
    assert refused >= 20, f"node0 refused only {refused} out-of-turn proposals"
    text = _metrics(net, "node0")
    # No client load: the only signatures a node verified would be the attacker's transactions.
    verified_batches = _metric(text, "clearline_signature_verify_seconds_count")
    assert verified_batches <= 2, f"node0 verified {verified_batches} batches of out-of-turn transactions"
    net.wait_height(start + 5, HONEST, timeout=60)
    _agree(net, HONEST)
    log = (Path(net.network.node(0).home) / "node.log").read_text()
    assert "peer node3 banned" in log, "a peer sending invalid proposals was not penalized"
