"""`clearline fault ...`: network and disk faults on a network made with `clearline init --faults`."""

from __future__ import annotations

import argparse

from cluster.cli.common import CliError, common_opts, emit, launcher, network


def cmd_fault(args: argparse.Namespace) -> int:
    from cluster.faults import FaultError, Nemesis
    from cluster.faults.rules import FaultRuleError

    nemesis = Nemesis(network(args), launcher(args))
    a = args
    try:
        if a.fault == "partition":
            groups = [g.split(",") for g in a.groups]
            nemesis.partition(*groups)
            text = "partitioned: " + " | ".join(",".join(g) for g in groups)
        elif a.fault == "one-way":
            nemesis.one_way(a.src, a.dst)
            text = f"messages {a.src} -> {a.dst} dropped"
        elif a.fault == "link":
            kw = dict(delay_ms=a.delay_ms, jitter_ms=a.jitter_ms, loss=a.loss, duplicate=a.duplicate)
            if a.src == "all":
                nemesis.link_all(**kw)
            else:
                nemesis.link(a.src, a.dst, **kw)
            text = f"link {a.src}->{a.dst or 'all'}: {kw}"
        elif a.fault == "heal":
            nemesis.heal()
            text = "healed: every network rule removed"
        elif a.fault == "wal-truncate":
            removed = nemesis.truncate_wal(a.node_id, a.bytes)
            text = f"removed {removed} bytes from the tail of {a.node_id}'s WAL"
        elif a.fault == "wal-corrupt":
            offset = nemesis.corrupt_wal(a.node_id, at_tail=not a.middle)
            text = f"corrupted the frame at offset {offset} of {a.node_id}'s WAL"
        else:
            raise CliError("UNKNOWN_FAULT", f"unknown fault {a.fault}", 2)
    except (FaultError, FaultRuleError, KeyError, ValueError) as exc:
        raise CliError(type(exc).__name__, str(exc)) from None
    emit(args, {"fault": a.fault, "result": text}, text)
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    faults = sub.add_parser("fault", help="network and disk faults (networks made with init --faults)")
    fsub = faults.add_subparsers(dest="fault", metavar="FAULT")
    sp = fsub.add_parser("partition", help="split the nodes into groups that cannot talk")
    common_opts(sp)
    sp.add_argument("groups", nargs="+", help="comma-separated node names, one argument per group")
    sp = fsub.add_parser("one-way", help="drop messages from SRC to DST only")
    common_opts(sp)
    sp.add_argument("src")
    sp.add_argument("dst")
    sp = fsub.add_parser("link", help="delay, loss and duplication on SRC->DST (SRC 'all' for every link)")
    common_opts(sp)
    sp.add_argument("src")
    sp.add_argument("dst", nargs="?", default="")
    sp.add_argument("--delay-ms", type=float, default=0)
    sp.add_argument("--jitter-ms", type=float, default=0)
    sp.add_argument("--loss", type=float, default=0)
    sp.add_argument("--duplicate", type=float, default=0)
    sp = fsub.add_parser("heal", help="remove every network fault")
    common_opts(sp)
    sp = fsub.add_parser("wal-truncate", help="cut the tail of a stopped node's WAL")
    common_opts(sp)
    sp.add_argument("node_id")
    sp.add_argument("bytes", type=int)
    sp = fsub.add_parser("wal-corrupt", help="flip a byte in a stopped node's WAL (last frame, or --middle)")
    common_opts(sp)
    sp.add_argument("node_id")
    sp.add_argument("--middle", action="store_true")
    for sp in fsub.choices.values():
        sp.set_defaults(func=cmd_fault)
