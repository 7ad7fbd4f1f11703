"""`clearline init | up | down | status | logs | node | observer`: create a network directory, run its
nodes as real processes, back a node up and restore it (cluster/cli/backup.py), and add observers
(non-voting nodes) to a running network."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster.cli import backup
from cluster.cli.common import (
    CliError,
    client,
    client_opts,
    common_opts,
    emit,
    launcher,
    load_key,
    network,
    node_info,
)
from cluster.netgen import DEFAULT_BASE_PORT, Network, NetworkExistsError, init_network
from cluster.progress import Progress


def cmd_init(args: argparse.Namespace) -> int:
    hosts = [h.strip() for h in args.hosts.split(",")] if args.hosts else None
    if args.force and (Path(args.home) / "network.json").exists():
        from cluster.launcher import Launcher

        running = [
            n.name for n in Network.load(args.home).nodes if Launcher(Network.load(args.home)).pid(n.name)
        ]
        if running:
            raise CliError(
                "NETWORK_RUNNING", f"nodes {', '.join(running)} are running; `clearline down` first", 2
            )
    try:
        net = init_network(
            args.home,
            validators=args.validators,
            hosts=hosts,
            chain_id=args.chain_id,
            base_port=args.base_port,
            faults=args.faults,
            force=args.force,
            tls=not args.no_tls,
            observers=args.observers,
            snapshot_interval=args.snapshot_interval,
        )
    except NetworkExistsError as exc:
        raise CliError("NETWORK_EXISTS", str(exc), 2) from None
    except ValueError as exc:
        raise CliError("BAD_ARGUMENT", str(exc), 2) from None
    doc = {
        "home": net.home,
        "chain_id": net.chain_id,
        "nodes": [
            {"name": n.name, "api": n.api_target, "p2p": n.p2p_target, "address": n.address}
            for n in net.nodes
        ],
        "observers": [
            {"name": n.name, "api": n.api_target, "p2p": n.p2p_target, "address": n.address}
            for n in net.observers
        ],
        "accounts": sorted(net.accounts),
        "faults": net.faults,
    }
    lines = [f"initialized {len(net.nodes)} validators of {net.chain_id} in {net.home}"]
    lines += [
        f"  {n.name}: api {n.api_target}  p2p {n.p2p_target}  validator {n.address[:16]}" for n in net.nodes
    ]
    lines += [
        f"  {n.name}: api {n.api_target}  p2p {n.p2p_target}  observer {n.address[:16]}"
        for n in net.observers
    ]
    lines.append(f"  accounts: {', '.join(sorted(net.accounts))} (keys in {net.home}/accounts)")
    emit(args, doc, "\n".join(lines))
    return 0


def _healthy(network: Any) -> Any:
    from cluster.client import SyncClient

    def healthy(node: Any) -> bool:
        with SyncClient.connect(node.api_target, timeout_s=1.0, **network.client_options(None)) as client:
            return bool(client.status().height >= 1)

    return healthy


def _height(network: Any, node: Any) -> int:
    from cluster.client import SyncClient

    with SyncClient.connect(node.api_target, timeout_s=1.0, **network.client_options(None)) as client:
        return int(client.status().height)


def cmd_up(args: argparse.Namespace) -> int:
    from cluster.launcher import LaunchError

    runner = launcher(args)
    runner.start_all()
    nodes = runner.network.all_nodes
    with Progress("nodes ready", len(nodes), enabled=not args.json) as bar:

        def progress(line: str) -> None:
            bar.line(f"  {line}")
            bar.advance()

        bar.line(f"starting {len(nodes)} nodes, waiting for the first block...")
        try:
            for node in nodes:
                runner.wait_serving(node.name, timeout=args.wait)
            runner.wait_until(
                _healthy(runner.network), timeout=args.wait, what="committing blocks", progress=progress
            )
            if runner.network.observers:
                # Observers are ready once they have caught up with the validators' height of now.
                head = min(_height(runner.network, n) for n in runner.network.nodes)
                runner.wait_until(
                    lambda n: _height(runner.network, n) >= head,
                    [o.name for o in runner.network.observers],
                    timeout=args.wait,
                    what=f"following (at height {head})",
                    progress=progress,
                )
        except LaunchError as exc:
            raise CliError("NODE_UNHEALTHY", str(exc)) from None
    return cmd_status(args)


def cmd_down(args: argparse.Namespace) -> int:
    runner = launcher(args)
    runner.stop_all(timeout=args.grace)
    left = [n.name for n in runner.network.all_nodes if runner.status(n.name).alive]
    if left:
        raise CliError("STILL_RUNNING", f"nodes still running: {', '.join(left)}")
    emit(args, {"stopped": [n.name for n in runner.network.all_nodes]}, "all nodes stopped")
    return 0


def _node_status(node: Any, runner: Any) -> dict[str, Any]:
    from cluster.client import ClientError, SyncClient

    proc = runner.status(node.name)
    row: dict[str, Any] = {
        "node": node.name,
        "role": "observer" if runner.network.is_observer(node.name) else "validator",
        "pid": proc.pid,
        "alive": proc.alive,
        "paused": proc.paused,
        "api": node.api_target,
        "height": None,
        "round": None,
        "peers": None,
        "mempool": None,
        "last_block_age_s": None,
        "syncing": None,
    }
    if proc.alive and not proc.paused:
        try:
            options = runner.network.client_options(None)
            with SyncClient.connect(node.api_target, timeout_s=1.5, **options) as client:
                st = client.status()
            row.update(
                height=st.height,
                round=st.round,
                step=st.step,
                peers=st.peers,
                mempool=st.mempool_size,
                syncing=st.syncing,
                last_block_age_s=round(time.time() - st.latest_block_time_ms / 1000, 1)
                if st.latest_block_time_ms
                else None,
            )
        except ClientError as exc:
            row["error"] = exc.reason
    return row


def cmd_status(args: argparse.Namespace) -> int:
    runner = launcher(args)
    rows = [_node_status(n, runner) for n in runner.network.all_nodes]
    header = f"{'node':<8}{'pid':>8}  {'alive':<6}{'height':>8}{'round':>6}{'peers':>6}{'mempool':>9}{'age s':>8}  syncing  role"
    lines = [header]
    for r in rows:
        alive = "paused" if r["paused"] else ("yes" if r["alive"] else "no")

        def cell(key: str, r: dict[str, Any] = r) -> str:
            return "-" if r.get(key) is None else str(r[key])

        lines.append(
            f"{r['node']:<8}{cell('pid'):>8}  {alive:<6}{cell('height'):>8}{cell('round'):>6}{cell('peers'):>6}"
            f"{cell('mempool'):>9}{cell('last_block_age_s'):>8}  {cell('syncing'):<7}  {r['role']}"
        )
    emit(args, {"nodes": rows}, "\n".join(lines))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from cluster.launcher import tail

    net = network(args)
    nodes = [node_info(net, args.node_id)] if args.node_id is not None else list(net.all_nodes)
    for node in nodes:
        for name in ("stdout.log", "node.log"):
            path = Path(node.home) / name
            print(f"==> {node.name}/{name} <==")
            print(tail(path, args.lines))
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    """One node's process. start and restart wait until the node serves its client API: a node that
    refuses to start (bad config, missing genesis, address in use, ...) is reported with its reason
    and a non-zero exit, not as a pid."""
    from cluster.launcher import LaunchError, NodeRefusedError

    runner = launcher(args)
    node = node_info(runner.network, args.node_id)
    if args.action == "backup":
        return backup.cmd_backup(args, runner, node)
    if args.action == "restore":
        return backup.cmd_restore(args, runner, node)
    action: Callable[..., Any] = getattr(runner, args.action)
    extra = {}
    if args.action in ("start", "restart") and args.byzantine:
        if not runner.network.faults:
            raise CliError(
                "FAULTS_DISABLED", "--byzantine needs a network created with `clearline init --faults`", 2
            )
        extra["args"] = ["--byzantine", args.byzantine]
    if args.action == "start" and runner.status(node.name).alive:
        raise CliError("ALREADY_RUNNING", f"{node.name} is already running")
    pid = action(node.name, **extra)
    if pid is None:
        raise CliError("NOT_RUNNING", f"{node.name} is not running")
    if args.action in ("start", "restart"):
        try:
            runner.wait_serving(node.name, timeout=args.wait)
        except NodeRefusedError as exc:
            raise CliError("NODE_REFUSED", str(exc)) from None
        except LaunchError as exc:
            raise CliError("NODE_NOT_SERVING", str(exc)) from None
    emit(
        args, {"node": node.name, "action": args.action, "pid": pid}, f"{args.action} {node.name} (pid {pid})"
    )
    return 0


def cmd_observer_add(args: argparse.Namespace) -> int:
    """Lay out a new observer (key, certificate from the network CA, config, home, network.json) and
    have the network's admin grant its node key ROLE_OBSERVER; returns once the grant is committed.
    The observer is started with `clearline node start NAME` (or `clearline up`)."""
    from clearline.v1 import tx_pb2
    from cluster.client import ClientError
    from cluster.client import builders as b
    from cluster.netgen import ObserverExistsError, add_observer

    network(args)  # NO_NETWORK if there is none
    admin = load_key(args, args.admin)
    try:
        _net, info, key = add_observer(args.home, args.name, host=args.host)
    except ObserverExistsError as exc:
        raise CliError("NODE_EXISTS", str(exc), 2) from None
    except ValueError as exc:
        raise CliError("BAD_ARGUMENT", str(exc), 2) from None
    grant = b.grant_role(key.address, tx_pb2.ROLE_OBSERVER, public_key=key.public_key)
    with client(args) as api:
        try:
            result = api.send(admin, grant)
        except ClientError as exc:
            raise CliError(exc.reason, f"{info.name} laid out, but the grant failed: {exc.message}") from None
    doc = {
        "name": info.name,
        "home": info.home,
        "address": info.address,
        "api": info.api_target,
        "p2p": info.p2p_target,
        "grant_status": result.reason,
        "grant_height": result.height,
    }
    if not result.ok:
        emit(args, doc, f"FAILED {result.reason}: ROLE_OBSERVER for {info.name} was not granted")
        return 1
    emit(
        args,
        doc,
        f"added observer {info.name} ({info.address[:16]}, api {info.api_target}); ROLE_OBSERVER granted "
        f"at height {result.height}; start it with `clearline node start {info.name}`",
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """init, up, down, status, logs, node and observer, in that order."""
    sp = sub.add_parser("init", help="create a network directory")
    common_opts(sp)
    sp.add_argument("--validators", type=int, default=4)
    sp.add_argument("--hosts", default="", help="comma-separated hosts, one per validator")
    sp.add_argument(
        "--chain-id", default=None, help="the network's chain id (default: a fresh clearline-<8 hex digits>)"
    )
    sp.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    sp.add_argument(
        "--faults", action="store_true", help="allow fault injection (Byzantine modes, link proxies)"
    )
    sp.add_argument("--force", action="store_true", help="replace an existing network")
    sp.add_argument("--no-tls", action="store_true", help="plaintext peer links (development only)")
    sp.add_argument(
        "--observers",
        type=int,
        default=0,
        help="non-voting observer nodes obs0.. (ROLE_OBSERVER in the genesis)",
    )
    sp.add_argument(
        "--snapshot-interval",
        type=int,
        default=None,
        help="each node snapshots its state every N heights for peers joining by state sync "
        "(default 500; 0: none)",
    )
    sp.set_defaults(func=cmd_init)

    sp = sub.add_parser("up", help="start every node and wait until all commit blocks")
    common_opts(sp)
    sp.add_argument("--wait", type=float, default=90.0, help="seconds to wait for health")
    sp.set_defaults(func=cmd_up)

    sp = sub.add_parser("down", help="stop every node (SIGTERM, then SIGKILL)")
    common_opts(sp)
    sp.add_argument("--grace", type=float, default=10.0)
    sp.set_defaults(func=cmd_down)

    sp = sub.add_parser("status", help="a table of the nodes")
    common_opts(sp)
    sp.set_defaults(func=cmd_status)

    sp = sub.add_parser("logs", help="the tail of each node's logs")
    common_opts(sp)
    sp.add_argument("node_id", nargs="?", default=None)
    sp.add_argument("-n", "--lines", type=int, default=20)
    sp.set_defaults(func=cmd_logs)

    sp = sub.add_parser(
        "node", help="kill | stop | start | restart | pause | resume | backup | restore one node"
    )
    common_opts(sp)
    sp.add_argument(
        "action", choices=["kill", "stop", "start", "restart", "pause", "resume", "backup", "restore"]
    )
    sp.add_argument("node_id")
    sp.add_argument("--byzantine", default="", help="test-only misbehaviour (networks made with --faults)")
    sp.add_argument(
        "--wait", type=float, default=30.0, help="start/restart: seconds to wait for the node to serve"
    )
    sp.add_argument("--out", default=None, metavar="FILE", help="backup: the file to write")
    sp.add_argument("--force", action="store_true", help="backup: replace FILE if it exists")
    sp.add_argument(
        "--timeout", type=float, default=3600.0, help="backup of a running node: seconds for the whole stream"
    )
    sp.add_argument("--from", dest="from_file", default=None, metavar="FILE", help="restore: the backup file")
    sp.add_argument(
        "--guard-seconds",
        type=float,
        default=None,
        help="restore without the node's own sign state: it signs nothing at a height whose previous "
        "block is timed before the restore plus this (at least the proposal clock bound, 10 s, plus "
        "the clocks' disagreement; default 30)",
    )
    sp.set_defaults(func=cmd_node)

    observer = sub.add_parser("observer", help="observers: non-voting nodes that follow the chain")
    ops = observer.add_subparsers(dest="action", metavar="ACTION")
    sp = ops.add_parser("add", help="lay out an observer and grant its key ROLE_OBSERVER (signed by --admin)")
    client_opts(sp)
    sp.add_argument("name", help="the observer's name (letters, digits, '_', '-'; at most 32)")
    sp.add_argument("--host", default="127.0.0.1", help="the host the observer runs on")
    sp.add_argument(
        "--admin", default="admin", help="the admin account (name or key file) that grants the role"
    )
    sp.set_defaults(func=cmd_observer_add)
