"""`python -m node` refuses to start with a one-line reason on stderr and a non-zero exit status:
a bad config, a missing genesis, a Byzantine mode on a network not made for fault testing, an
address in use. Real processes on a network directory made by init (no node keeps running)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster.netgen import Network, init_network
from cluster.ports import free_base_port
from node.config import DEFAULT_API_MAX_MESSAGE_BYTES

ROOT = Path(__file__).resolve().parents[2]


def run_node(node_home: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", "--home", node_home, *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


@pytest.fixture
def net(tmp_path: Path) -> Network:
    return init_network(tmp_path / "net", validators=1, base_port=free_base_port(1))


def bad_config(net: Network) -> None:
    path = Path(net.nodes[0].home) / "config.toml"
    setting = f"max_message_bytes = {DEFAULT_API_MAX_MESSAGE_BYTES}"  # [api]'s, set to the old default
    path.write_text(path.read_text().replace(setting, "max_message_bytes = 4194304", 1))


def no_genesis(net: Network) -> None:
    (Path(net.nodes[0].home) / "genesis.json").unlink()


def reason_line(stderr: str) -> str:
    """The node's reason: its last line on stderr, the only one of its own (gRPC may log before it)."""
    lines = stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    assert [line for line in lines if line.startswith("clearline-node: ")] == lines[-1:], stderr
    return lines[-1].removeprefix("clearline-node: ")


@pytest.mark.parametrize(
    ("break_it", "args", "status", "parts"),
    [
        (
            bad_config,
            (),
            2,
            ["configuration error: ", "config.toml: [api] max_message_bytes: 4194304 is too small"],
        ),
        (no_genesis, (), 1, ["genesis file ", "genesis.json does not exist"]),
        (lambda net: None, ("--byzantine", "equivocate"), 2, ["fault"]),
    ],
    ids=["bad config", "missing genesis", "byzantine refused"],
)
def test_a_refusal_is_one_line_on_stderr_and_a_non_zero_exit(
    net: Network, break_it: Callable[[Network], None], args: tuple[str, ...], status: int, parts: list[str]
) -> None:
    break_it(net)
    proc = run_node(net.nodes[0].home, *args)
    assert proc.returncode == status, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    reason = reason_line(proc.stderr)
    assert all(part in reason for part in parts), reason


def test_an_address_in_use_is_refused_in_one_line(net: Network) -> None:
    node = net.nodes[0]
    with socket.socket() as held:
        held.bind(("127.0.0.1", node.api_port))
        held.listen()
        proc = run_node(node.home)
    assert proc.returncode == 1
    assert reason_line(proc.stderr) == (
        f"[api] listen: cannot listen on {node.api_target} (address in use, or not of this host)"
    )
