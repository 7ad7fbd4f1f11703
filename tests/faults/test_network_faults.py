"""Network faults through the fault proxy on real 4-validator networks: partitions 2|2 and 3|1, a
one-way partition, delay/jitter/loss/duplication on every link; plus the rules' validation, the
proxy's refusal of a caller that is not the link's source, and the Nemesis' refusals."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import grpc
import pytest

from clearline.v1 import ledger_api_pb2, peer_pb2, peer_pb2_grpc
from cluster.client import builders
from cluster.faults import FaultError, FaultRuleError, LinkRule, Nemesis, NoProxyError, UnknownNodeError
from cluster.faults.proxy import DirectionStats
from cluster.faults.rules import RuleSet, load_rules, rules_path
from cluster.netgen import Network
from tests.cluster.helpers import key, setup_funded, signed, submit, usd
from tests.faults.conftest import FaultNetwork

OTHERS = ["node1", "node2", "node3"]


def _transfer(net: FaultNetwork, nonce: int, amount: int, sender: str = "alice", to: str = "bob") -> bytes:
    network = net.network
    return signed(
        network,
        key(network, sender),
        nonce,
        builders.transfer(usd(network), key(network, to).address, amount),
    )


def _counter(net: FaultNetwork, direction: str, name: str) -> int:
    return int(net.nemesis.stats().get("directions", {}).get(direction, {}).get(name, 0))


def _signers(net: FaultNetwork, node: str, height: int) -> set[bytes]:
    """Validators whose precommit certifies `height` (carried in block height+1)."""
    from tests.cluster.helpers import get_block

    return {s.validator for s in get_block(net.target(node), height + 1).block.last_commit.signatures}


def test_partition_2_2_stops_progress_and_heal_restores_it(fault_network) -> None:
    net = fault_network(4)
    setup_funded(net.network, net.target(0), ["alice", "bob"])
    bob_before = net.balance("node0", "bob")
    net.nemesis.partition(["node0", "node1"], ["node2", "node3"])
    at_cut = max(net.heights().values())
    # A transfer submitted on one side during the partition: accepted, not committed until the heal.
    resp = submit(net.target(0), _transfer(net, 0, 7), wait=ledger_api_pb2.WAIT_FOR_CHECKED)
    assert resp.accepted and resp.height == 0
    tx_hash = resp.tx_hash
    time.sleep(6)
    during = net.heights()
    assert max(during.values()) <= at_cut + 1, f"progress during a 2|2 partition: {during} (cut at {at_cut})"
    assert all(net.tx(n, tx_hash).state != ledger_api_pb2.TX_STATE_COMMITTED for n in net.names)
    # The proxy really dropped the cross traffic and still carried traffic within each side.
    assert _counter(net, "node0->node2", "dropped") > 0 and _counter(net, "node3->node1", "dropped") > 0
    assert _counter(net, "node0->node1", "forwarded") > 0 and _counter(net, "node2->node3", "forwarded") > 0

    net.nemesis.heal()
    assert load_rules(net.network.home).rules == ()
    took = net.wait_all_at(max(during.values()) + 3, timeout=60)
    print(f"2|2 partition: progress resumed {took:.1f}s after heal")
    net.agree()
    deadline = time.monotonic() + 30
    while net.tx("node0", tx_hash).state != ledger_api_pb2.TX_STATE_COMMITTED and time.monotonic() < deadline:
        time.sleep(0.2)
    height = net.tx("node0", tx_hash).height
    assert height > at_cut, "the transfer submitted during the partition never committed"
    net.wait_height(height, timeout=30)
    where = {n: (net.tx(n, tx_hash).state, net.tx(n, tx_hash).height) for n in net.names}
    assert set(where.values()) == {(ledger_api_pb2.TX_STATE_COMMITTED, height)}, where
    assert all(count == 1 for count in collections.Counter(net.block_txs("node0", height)).values())
    assert net.balance("node3", "bob") == bob_before + 7


def test_partition_3_1_majority_commits_and_the_isolated_node_catches_up(fault_network) -> None:
    net = fault_network(4)
    net.nemesis.partition(["node0", "node1", "node2"], ["node3"])
    start = net.heights()
    net.wait_all_at(max(start.values()) + 5, ["node0", "node1", "node2"], timeout=60)
    assert net.height("node3") <= start["node3"] + 1
    assert _counter(net, "node3->node0", "dropped") > 0 and _counter(net, "node1->node3", "dropped") > 0
    net.nemesis.heal()
    top = net.height("node0")
    took = net.wait_all_at(top + 2, timeout=60)
    print(f"3|1 partition: node3 caught up {top - start['node3']} heights in {took:.1f}s after heal")
    assert net.agree() >= top + 2


def test_one_way_partition_keeps_the_network_live_and_consistent(fault_network) -> None:
    net = fault_network(4)
    me = bytes.fromhex(net.network.node("node0").address)
    for other in OTHERS:
        net.nemesis.one_way("node0", other)
    start = net.heights()
    net.wait_all_at(max(start.values()) + 6, OTHERS, timeout=75)
    during = net.heights()
    # node0 hears everyone, so it follows the chain; nobody hears node0, so no certificate of a height
    # decided entirely inside the window carries its precommit.
    assert during["node0"] > start["node0"]
    inside = range(max(start.values()) + 2, min(during[n] for n in OTHERS) - 1)
    assert len(inside) >= 2
    assert all(me not in _signers(net, "node1", h) for h in inside)
    assert _counter(net, "node1->node0", "forwarded") > 0 and _counter(net, "node0->node1", "dropped") > 0

    net.nemesis.heal()
    sent = _counter(net, "node0->node1", "forwarded")
    top = max(net.heights().values())
    net.wait_all_at(top + 4, timeout=60)
    assert net.agree() >= top + 4
    assert _counter(net, "node0->node1", "forwarded") > sent
    # node0's precommits reach the others again: some certificate after the heal carries one.
    deadline, h = time.monotonic() + 30, top + 1
    while me not in _signers(net, "node1", h):
        assert time.monotonic() < deadline, "node0's votes never came back after heal"
        h += 1
        net.wait_height(h + 1, ["node1"], timeout=30)


def test_delay_loss_and_duplication_on_every_link_still_commit_each_tx_once(fault_network) -> None:
    net = fault_network(4)
    setup_funded(net.network, net.target(0), ["alice", "bob"])
    alice_before, bob_before = net.balance("node0", "alice"), net.balance("node0", "bob")
    net.nemesis.link_all(delay_ms=30, jitter_ms=20, loss=0.05, duplicate=0.3)
    hashes = []
    for i in range(12):
        resp = submit(net.target(i % 4), _transfer(net, i, 1 + i), timeout=45)
        assert resp.height > 0
        hashes.append(resp.tx_hash)
    assert _counter(net, "node1->node2", "duplicated") > 0
    assert sum(_counter(net, f"{a}->{b}", "lost") for a in net.names for b in net.names if a != b) > 0
    assert _counter(net, "node0->node3", "delayed") > 0
    net.nemesis.heal()
    top = max(net.heights().values())
    net.wait_all_at(top + 1, timeout=30)
    top = net.agree()
    # Every transaction is in the chain exactly once, on every node, and the money moved exactly once.
    for n in net.names:
        states = {(net.tx(n, h).state, net.tx(n, h).height) for h in hashes}
        assert all(state == ledger_api_pb2.TX_STATE_COMMITTED for state, _ in states), n
    raws = collections.Counter(net.block_txs("node2", top))
    assert all(count == 1 for count in raws.values()), "a transaction was committed twice"
    total = sum(1 + i for i in range(12))
    for n in net.names:
        assert net.balance(n, "bob") == bob_before + total
        assert net.balance(n, "alice") == alice_before - total
        assert net.account(n, "alice").account.nonce == 12


def test_the_proxy_accepts_only_the_links_source_and_refuses_cut_block_sync(fault_network) -> None:
    net = fault_network(4)
    link = net.network.proxy("node0", "node1")
    home1, home2 = Path(net.network.node("node1").home), Path(net.network.node("node2").home)
    ca = (home1 / "tls" / "ca.pem").read_bytes()

    def sync_status_as(home: Path) -> peer_pb2.SyncStatusResponse:
        creds = grpc.ssl_channel_credentials(
            ca, (home / "tls" / "node.key").read_bytes(), (home / "tls" / "node.pem").read_bytes()
        )
        with grpc.secure_channel(
            link.target, creds, options=[("grpc.ssl_target_name_override", "node1")]
        ) as ch:
            return peer_pb2_grpc.PeerStub(ch).GetSyncStatus(peer_pb2.SyncStatusRequest(), timeout=5)

    # node2's certificate on the port of link node0->node1: refused, nothing forwarded.
    with pytest.raises(grpc.RpcError) as err:
        sync_status_as(home2)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "accepts only node0" in (err.value.details() or "")
    # node0's own certificate goes through to node1 (it answers with its height).
    home0 = Path(net.network.node("node0").home)
    assert sync_status_as(home0).height >= 1
    # Cut: block-sync calls on the link are refused at once (UNAVAILABLE), not left to time out.
    net.nemesis.one_way("node1", "node0")
    with pytest.raises(grpc.RpcError) as err:
        sync_status_as(home0)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # A damaged rules file is refused by the proxy, which keeps the rules in force; heal() replaces it.
    applied = net.nemesis.stats()["generation"]
    rules_path(net.network.home).write_text(
        '{"rules": [{"src": "node1", "dst": "node0", "kind": "link", "loss": 7}]}'
    )
    deadline = time.monotonic() + 5
    while not net.nemesis.stats().get("rules_error") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "loss" in net.nemesis.stats()["rules_error"] and net.nemesis.stats()["generation"] == applied
    with pytest.raises(grpc.RpcError) as err:
        sync_status_as(home0)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the one-way cut is still in force
    with pytest.raises(FaultError, match="damaged"):
        net.nemesis.one_way("node2", "node0")
    # Sever breaks the live streams between two nodes; heal lets them reconnect.
    net.nemesis.heal()
    net.nemesis.sever("node0", "node1")
    time.sleep(0.5)
    assert net.nemesis.stats()["links"]["node0->node1"]["severed"] >= 1
    net.nemesis.heal()
    net.wait_all_at(max(net.heights().values()) + 2, timeout=60)
    net.agree()


def test_invalid_rules_are_refused_and_leave_the_rules_unchanged(fault_network, tmp_path: Path) -> None:
    net = fault_network(4, start=False)
    nemesis = net.nemesis
    nemesis.link("node0", "node1", delay_ms=5)
    before = load_rules(net.network.home)
    bad_calls = [
        (lambda: nemesis.link("node0", "node1", loss=1.5), FaultRuleError, "loss"),
        (lambda: nemesis.link("node0", "node1", delay_ms=-1), FaultRuleError, "delay_ms"),
        (lambda: nemesis.link("node0", "node0", delay_ms=1), FaultError, "itself"),
        (lambda: nemesis.one_way("node0", "node9"), UnknownNodeError, "node9"),
        (
            lambda: nemesis.partition(["node0", "node1"], ["node1", "node2"]),
            FaultError,
            "two partition groups",
        ),
        (lambda: nemesis.partition("node0"), FaultError, "not a string"),
    ]
    for call, error, words in bad_calls:
        with pytest.raises(error) as exc:
            call()
        assert words in str(exc.value)
        assert load_rules(net.network.home) == before
    for text, field in [
        ('{"version": 2}', "version"),
        ('{"rules": [{"src": "node0", "dst": "node1", "kind": "bogus"}]}', "kind"),
        ('{"rules": [{"src": "node0", "dst": "node1", "kind": "link", "loss": "x"}]}', "loss"),
        ('{"rules": [{"src": "node0", "dst": "node1", "kind": "link", "speed": 1}]}', "rules[0]"),
        ('{"generation": -1}', "generation"),
        ("[1, 2]", "rules.json"),
    ]:
        with pytest.raises(FaultRuleError) as exc:
            RuleSet.from_json(text)
        assert exc.value.field == field
    with pytest.raises(FaultRuleError):
        LinkRule("node0", "node1", "link", duplicate=-0.1)  # type: ignore[arg-type]
    # Combined rules on one direction: delays add, probabilities combine, drop wins.
    rs = RuleSet(
        rules=(
            LinkRule("node0", "node1", "link", delay_ms=10, loss=0.5),  # type: ignore[arg-type]
            LinkRule("node0", "node1", "one_way", drop=True),  # type: ignore[arg-type]
            LinkRule("node0", "node1", "link", delay_ms=5, loss=0.5),  # type: ignore[arg-type]
        )
    )
    eff = rs.effect("node0", "node1")
    assert (eff.delay_ms, eff.loss, eff.drop) == (15, 0.75, True)
    assert not rs.effect("node1", "node0").blocked
    # A plain network has no proxies: network faults are refused, nothing written.
    plain = fault_network(4, start=False, faults=False)
    with pytest.raises(NoProxyError):
        plain.nemesis.partition(["node0"], ["node1", "node2", "node3"])
    assert not rules_path(plain.network.home).exists() or load_rules(plain.network.home).rules == ()
    # The layout survives a reload of network.json, and each node's config points at its proxies.
    reloaded = Network.load(net.network.home)
    assert reloaded.proxies == net.network.proxies and len(reloaded.proxies) == 12
    config = (Path(net.network.node("node2").home) / "config.toml").read_text()
    assert f'"node0@127.0.0.1:{net.network.proxy("node2", "node0").port}"' in config
    assert json.loads(Path(net.network.home, "network.json").read_text())["faults"] is True
    assert isinstance(Nemesis(net.network, net.launcher).rules(), RuleSet)


# --- the proxy's per-direction pipe, in process (no sockets) ---------------------------------------


async def _through_pipe(
    tmp_path: Path, rules: tuple[LinkRule, ...], count: int, seed: int = 3, cut_after_s: float | None = None
) -> tuple[list[bytes], DirectionStats]:
    """Put count messages through a node0->node1 pipe under rules (optionally partitioned after
    cut_after_s); returns what was written, in order, and the direction's counters."""
    import asyncio

    from cluster.faults.proxy import FaultState, Pipe

    state = FaultState(tmp_path)
    state.rules = RuleSet(seed=seed, rules=rules)
    out: list[bytes] = []

    async def write(msg: bytes) -> None:
        out.append(msg)

    pipe = Pipe(state, "node0", "node1", write, chaotic=True)
    runner = asyncio.create_task(pipe.run())
    for i in range(count):
        pipe.put(b"m%03d" % i)
    if cut_after_s is not None:
        await asyncio.sleep(cut_after_s)
        state.rules = RuleSet(seed=seed, rules=(*rules, LinkRule("node0", "node1", "partition", drop=True)))  # type: ignore[arg-type]
    pipe.close()
    await asyncio.wait_for(runner, timeout=10)
    return out, pipe.stats


def _rule(**kw: object) -> LinkRule:
    return LinkRule("node0", "node1", "link", **kw)  # type: ignore[arg-type]


async def test_pipe_delays_with_jitter_in_fifo_order_unless_reordering(tmp_path: Path) -> None:
    sent = [b"m%03d" % i for i in range(40)]
    fifo, stats = await _through_pipe(tmp_path, (_rule(delay_ms=20, jitter_ms=15),), 40)
    assert fifo == sent and stats.delayed == 40 and stats.forwarded == 40
    mixed, _ = await _through_pipe(tmp_path, (_rule(delay_ms=20, jitter_ms=15, reorder=True),), 40)
    assert sorted(mixed) == sent and mixed != sent


async def test_pipe_loss_and_duplication_are_seeded_and_spare_the_handshake(tmp_path: Path) -> None:
    rules = (_rule(loss=0.3, duplicate=0.3),)
    a, stats = await _through_pipe(tmp_path, rules, 200, seed=5)
    b, _ = await _through_pipe(tmp_path, rules, 200, seed=5)
    c, _ = await _through_pipe(tmp_path, rules, 200, seed=6)
    assert a == b and a != c
    assert a[0] == b"m000" and a.count(b"m000") == 1  # the hello is never lost nor doubled
    assert stats.lost > 30 and stats.duplicated > 30
    assert len(a) == 200 - stats.lost + stats.duplicated
    assert [m for i, m in enumerate(a) if i == 0 or m != a[i - 1]] == sorted(set(a))  # order kept


async def test_pipe_drops_messages_in_flight_when_a_partition_starts(tmp_path: Path) -> None:
    out, stats = await _through_pipe(tmp_path, (_rule(delay_ms=300),), 5, cut_after_s=0.05)
    assert out == [] and stats.dropped == 5 and stats.forwarded == 0
