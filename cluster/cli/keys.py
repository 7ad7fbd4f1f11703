"""`clearline keys new | show`: Ed25519 key files."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.cli.common import CliError, common_opts, emit, load_key


def cmd_keys_new(args: argparse.Namespace) -> int:
    from node.crypto import SigningKey, save_key_file

    out = Path(args.out)
    if out.exists() and not args.force:
        raise CliError("KEY_EXISTS", f"{out} exists; use --force to replace it", 2)
    key = SigningKey.generate()
    save_key_file(out, key)
    doc = {"file": str(out), "address": key.address.hex(), "public_key": key.public_key.hex()}
    emit(
        args, doc, f"new key in {out}\n  address    {key.address.hex()}\n  public key {key.public_key.hex()}"
    )
    return 0


def cmd_keys_show(args: argparse.Namespace) -> int:
    key = load_key(args, args.name)
    doc = {"address": key.address.hex(), "public_key": key.public_key.hex()}
    emit(args, doc, f"address    {key.address.hex()}\npublic key {key.public_key.hex()}")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="key files").add_subparsers(dest="keys_command", metavar="KEYS")
    sp = keys.add_parser("new", help="generate a key file")
    common_opts(sp)
    sp.add_argument("--out", required=True)
    sp.add_argument("--force", action="store_true")
    sp.set_defaults(func=cmd_keys_new)
    sp = keys.add_parser("show", help="address and public key of a key file or account name")
    common_opts(sp)
    sp.add_argument("name")
    sp.set_defaults(func=cmd_keys_show)
