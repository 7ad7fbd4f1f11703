"""What a node tells its operator, on real nodes: counters typed as counters, each instrument's supply,
missed signatures per validator and evidence as metrics, and the block timeline as log fields."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

from clearline.v1 import tx_pb2
from cluster.client import builders
from tests.cluster.conftest import RunningNetwork
from tests.cluster.helpers import connect, key, usd


def _scrape(net: RunningNetwork, index: int) -> str:
    node = net.network.node(index)
    with urllib.request.urlopen(f"http://{node.host}:{node.metrics_port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def test_metrics_and_the_structured_block_timeline(make_network) -> None:  # type: ignore[no-untyped-def]
    net: RunningNetwork = make_network(4)
    network = net.network
    alice = key(network, "alice")
    with connect(net.target(0), "bank-a") as client:
        approve = builders.set_kyc(alice.address, tx_pb2.KYC_STATUS_APPROVED, public_key=alice.public_key)
        assert client.send(key(network, "bank-a"), approve).ok
        minted = client.send(
            key(network, "bank-a"), builders.mint(usd(network), alice.address, 4321, "dep-m")
        )
        assert minted.ok
        supply = client.get_instrument(usd(network)).instrument.supply
        # A rejected transaction (its nonce already used): the rejection counter gets a sample.
        stale = builders.sign(
            builders.make_body(
                network.chain_id, alice.address, 0, "x", builders.transfer(usd(network), alice.address, 1)
            ),
            alice,
        )
        assert not client.submit_many([stale])[0].accepted
    net.wait_height(minted.height + 1)
    deadline = time.monotonic() + 30
    while "clearline_mempool_rejections_total" not in (text := _scrape(net, 0)):  # the next status tick
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.2)
    assert re.search(r"^# TYPE clearline_mempool_rejections(_total)? counter$", text, flags=re.M)
    assert re.search(r"^# TYPE clearline_validator_missed_signatures(_total)? counter$", text, flags=re.M)
    assert re.search(r"^# TYPE clearline_evidence_committed(_total)? counter$", text, flags=re.M)
    label = f'clearline_instrument_supply{{instrument="{usd(network).issuer.hex()}:USD"}}'
    (value,) = re.findall(rf"^{re.escape(label)} (\S+)$", text, flags=re.M)
    assert float(value) == supply >= 4321
    # The block timeline: the commit of the mint's block, as fields of the JSON log.
    lines = (Path(network.nodes[0].home) / "node.log").read_text().splitlines()
    commits = [json.loads(line) for line in lines if '"block_committed"' in line]
    (mint_block,) = [c for c in commits if c["block_height"] == minted.height]
    assert mint_block["txs"] >= 1 and mint_block["persist_ms"] >= 0 and mint_block["height_ms"] >= 0
