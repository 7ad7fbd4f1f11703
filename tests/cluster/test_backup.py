"""Backup and restore on real nodes (`clearline node backup|restore`, the Admin API, node/backup.py):

- a validator backed up while it runs under load loses its disk, is restored from that (by then
  old) backup without its sign state, catches up with the same blocks and state roots as the
  others, signs nothing at the heights it sat out, votes again later, and no equivocation appears;
- only the node's own key may ask a node for a backup;
- restoring an old backup over a node whose sign state is newer keeps the newer one, and truncated,
  damaged, another node's and another network's backups are refused with the node's data unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from clearline.v1 import admin_pb2, admin_pb2_grpc
from cluster.netgen import Network
from node.crypto import load_key_file
from node.storage.backupfile import BackupReader, encode
from node.storage.signstate import files_of
from tests.cluster.conftest import RunningNetwork, status
from tests.cluster.helpers import get_block, key, reason_of, setup_funded
from tests.cluster.test_node_recovery import Load

ROOT = Path(__file__).resolve().parents[2]
GUARD_S = "12"  # the least margin the guard allows is 11 s: the test waits less for the node to vote


def cli(net: RunningNetwork, *args: str) -> tuple[int, dict, str]:
    """Run `clearline ARGS --json` as the operator would; (exit status, JSON document, stderr). A
    refusal's document is {"error": REASON, "message": ...}."""
    proc = subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args, "--home", net.network.home, "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ),
    )  # fmt: skip
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, doc, proc.stderr


def log_events(net: RunningNetwork, name: str, event: str) -> list[dict]:
    path = Path(net.network.node(name).home) / "node.log"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("event") == event]


def wait_event(net: RunningNetwork, name: str, event: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while not (found := log_events(net, name, event)):
        assert time.monotonic() < deadline, f"{name} never logged {event}"
        time.sleep(0.2)
    return found[-1]


def signers_of_commit(net: RunningNetwork, node: int, height: int) -> set[bytes]:
    """Validators whose precommit is in the certificate of `height` (carried in block height+1)."""
    return {s.validator for s in get_block(net.target(node), height + 1).block.last_commit.signatures}


def no_evidence(net: RunningNetwork, node: int, upto: int) -> bool:
    return all(not get_block(net.target(node), h).block.body.evidence for h in range(1, upto + 1))


def votes_again(net: RunningNetwork, subject: int, spare: int) -> None:
    """With `spare` down, three of four validators are left: the chain moves on only if `subject`
    votes, so every certificate from then on carries it."""
    net.launcher.kill(f"node{spare}")
    left = [i for i in range(4) if i != spare]
    ahead = max(status(net.target(i)).height for i in left)  # ahead + 1 may hold spare's precommit
    net.wait_height(ahead + 4, [f"node{i}" for i in left], timeout=90)
    address = bytes.fromhex(net.network.node(subject).address)
    for h in (ahead + 2, ahead + 3):
        assert address in signers_of_commit(net, left[0], h), h


def fingerprint(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    } | {p.name: "" for p in path.parent.iterdir()}


def test_a_validator_restored_from_an_old_backup_after_losing_its_disk_catches_up_without_signing_twice(
    make_network,
) -> None:
    net = make_network(4)
    network = net.network
    setup_funded(network, net.target(0), ["alice", "carol", "bob"])
    backup = Path(network.home) / "node3.backup"
    with Load(net, ["alice", "carol"], [0, 1, 2]) as load:
        time.sleep(2)
        code, made, err = cli(net, "node", "backup", "node3", "--out", str(backup))
        assert code == 0, err
        assert made["from"] == "running node" and made["records"] > 0 and made["height"] > 0
        # Consistent: the file's store is the chain at that height, whatever the load was doing.
        assert get_block(net.target(0), made["height"]).block.header.state_root.hex() == made["state_root"]
        assert made["files"] == ["config.toml", "genesis.json", "tls/node.pem", "tls/ca.pem"]
        only_its_own_key_may_ask(net)
        code, refused, _err = cli(net, "node", "restore", "node3", "--from", str(backup))
        assert code != 0 and refused["error"] == "NODE_RUNNING"  # never under a running node
        time.sleep(3)  # node3 signs on, past what the backup holds
        net.launcher.kill("node3")  # its machine dies: store and sign state are gone
    assert load.acked
    home = Path(network.node(3).home)
    shutil.rmtree(home / "data")
    code, restored, err = cli(
        net, "node", "restore", "node3", "--from", str(backup), "--guard-seconds", GUARD_S
    )
    assert code == 0, err
    assert restored["sign_state"] == "backup" and restored["guard"] is not None
    assert restored["height"] == made["height"] and restored["moved_aside"] is None
    restarted_at = max(status(net.target(i)).height for i in range(3))
    net.launcher.start("node3")
    net.launcher.wait_serving("node3", timeout=30)
    # It catches up: the same blocks and state roots as the others.
    top = status(net.target(0)).height
    net.wait_height(top, ["node3"], timeout=90)
    for h in (made["height"], made["height"] + 1, top):
        mine, theirs = get_block(net.target(3), h), get_block(net.target(0), h)
        assert (
            mine.block_hash == theirs.block_hash
            and mine.block.header.state_root == theirs.block.header.state_root
        )
    # It sat out the heights it may have signed before the loss, and signs again after them.
    sat_out = log_events(net, "node3", "sitting_out")
    assert sat_out and sat_out[0]["from_height"] == made["height"] + 1
    signs_from = int(wait_event(net, "node3", "signing")["from_height"])
    assert signs_from > restarted_at + 2  # heights were decided without it after it was back
    address = bytes.fromhex(network.node(3).address)
    for h in range(restarted_at + 2, signs_from):
        assert address not in signers_of_commit(net, 0, h), f"node3 signed at height {h}, which it sat out"
    votes_again(net, subject=3, spare=2)
    assert no_evidence(net, 0, status(net.target(0)).height)


def only_its_own_key_may_ask(net: RunningNetwork) -> None:
    """Admin.Backup answers node3's own key; another validator's key or an account's is
    PERMISSION_DENIED, and a call without a token UNAUTHENTICATED."""
    network: Network = net.network
    target = net.target(3)
    cases = [
        (load_key_file(Path(network.node(3).home) / "keys" / "validator.json"), None),
        (load_key_file(Path(network.node(0).home) / "keys" / "validator.json"), "PERMISSION_DENIED"),
        (key(network, "admin"), "PERMISSION_DENIED"),
        (None, "AUTH_REQUIRED"),
    ]
    for identity, refusal in cases:
        with network.channel(target, identity) as channel:
            stream = admin_pb2_grpc.AdminStub(channel).Backup(admin_pb2.BackupRequest(), timeout=30)
            if refusal is None:
                assert sum(len(chunk.data) for chunk in stream) > 0
                continue
            with pytest.raises(grpc.RpcError) as info:
                next(iter(stream))
            assert reason_of(info.value) == refusal


def test_an_old_backup_over_a_newer_sign_state_keeps_it_and_bad_backups_change_nothing(
    make_network, tmp_path: Path
) -> None:
    net = make_network(4)
    network = net.network
    old, other = tmp_path / "node1.backup", tmp_path / "node2.backup"
    assert cli(net, "node", "backup", "node1", "--out", str(old))[0] == 0
    assert cli(net, "node", "backup", "node2", "--out", str(other))[0] == 0
    net.wait_height(status(net.target(0)).height + 5, ["node1"], timeout=60)
    net.launcher.stop("node1")
    data = Path(network.node(1).home) / "data"
    code, stopped, err = cli(net, "node", "backup", "node1", "--out", str(tmp_path / "stopped.backup"))
    assert code == 0 and stopped["from"] == "stopped node", err

    # Refused, with the node's data as it was.
    blob = old.read_bytes()
    truncated = tmp_path / "truncated.backup"
    truncated.write_bytes(blob[: len(blob) - 1000])
    damaged = tmp_path / "damaged.backup"
    damaged.write_bytes(blob[:2000] + bytes([blob[2000] ^ 1]) + blob[2001:])
    other_chain = tmp_path / "other-chain.backup"
    with open(old, "rb") as f:
        reader = BackupReader(f, str(old))
        header = reader.header
        header.chain_id = "clearline-elsewhere"
        other_chain.write_bytes(b"".join(encode(header, list(reader.records()))))
    before = fingerprint(data)
    for bad, reason in (
        (truncated, "BACKUP_CORRUPT"),
        (damaged, "BACKUP_CORRUPT"),
        (other, "WRONG_NODE"),
        (other_chain, "WRONG_CHAIN"),
    ):
        code, refused, _err = cli(net, "node", "restore", "node1", "--from", str(bad))
        assert code != 0 and refused["error"] == reason, (bad.name, refused)
        assert fingerprint(data) == before, bad.name

    # The old backup over the node's newer sign state: the store goes back, the sign state does not.
    own = {p.name: p.read_bytes() for p in files_of(data / "sign_state.bin")}
    code, restored, err = cli(net, "node", "restore", "node1", "--from", str(old))
    assert code == 0, err
    assert restored["sign_state"] == "kept" and restored["guard"] is None
    assert restored["signed_at"][0] > restored["height"] + 1
    assert {p.name: p.read_bytes() for p in files_of(data / "sign_state.bin")} == own
    assert Path(restored["moved_aside"]).is_dir()
    net.launcher.start("node1")
    net.launcher.wait_serving("node1", timeout=30)
    net.wait_height(status(net.target(0)).height, ["node1"], timeout=90)
    assert wait_event(net, "node1", "sitting_out")["from_height"] == restored["height"] + 1
    assert int(wait_event(net, "node1", "signing")["from_height"]) == restored["signed_at"][0]
    votes_again(net, subject=1, spare=3)
    assert no_evidence(net, 0, status(net.target(0)).height)
