"""`make run`: a fresh 4-validator network and a demo of every capability, then the live chain.

    python -m cluster.demo [--home .clearline/net] [--seconds N]

Initializes a network (replacing an earlier demo network in the same directory), starts four
validators as real processes, then runs real transactions: two banks issue USD deposit tokens,
clients pass KYC, deposits are minted, clients pay each other across banks, a hold is created and
executed by its notary, a tokenized bond settles against cash in one atomic DvP, a payment from a
frozen account is refused with its reason, a balance is read with a verified Merkle proof, and
reads are shown permissioned (each caller sees only what it may).
Then it prints committed blocks until Ctrl-C (or for --seconds / RUN_SECONDS), and stops every node.

What it prints is for people, as `clearline` text output is: amounts in the instrument's units with
its symbol (1000.00 USD, never minor units), instruments as ISSUER:SYMBOL (bank-a:USD), accounts by
their names in the network, validators by name.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from clearline.v1 import tx_pb2
from cluster.cli.common import Names, event_text, show_amount
from cluster.client import ClientError, SyncClient, builders, to_minor
from cluster.launcher import Launcher, LaunchError
from cluster.netgen import Network, init_network
from node import crypto

STEP = "\033[1m==>\033[0m " if sys.stdout.isatty() else "==> "


class Demo:
    def __init__(self, network: Network, client: SyncClient) -> None:
        self.net = network
        self.client = client
        self.keys = {name: crypto.load_key_file(Path(path)) for name, path in network.accounts.items()}
        self.usd_a = tx_pb2.InstrumentId(issuer=self.keys["bank-a"].address, symbol="USD")
        self.usd_b = tx_pb2.InstrumentId(issuer=self.keys["bank-b"].address, symbol="USD")
        self.bond = tx_pb2.InstrumentId(issuer=self.keys["bank-a"].address, symbol="BOND-2030")
        self.names = Names(network.accounts)
        self._decimals: dict[tuple[bytes, str], int] = {}
        self.failures = 0

    def decimals(self, inst: tx_pb2.InstrumentId) -> int:
        key = (bytes(inst.issuer), inst.symbol)
        if key not in self._decimals:
            self._decimals[key] = int(self.client.get_instrument(inst).instrument.decimals)
        return self._decimals[key]

    def minor(self, inst: tx_pb2.InstrumentId, units: str) -> int:
        """An amount written in inst's units ("2500.00" of USD) in the minor units the ledger counts."""
        return to_minor(units, self.decimals(inst), self.names.instrument(inst))

    def amount(self, inst: tx_pb2.InstrumentId, minor: int) -> str:
        """minor units of inst for people: `2500.00 USD (bank-a:USD)`."""
        return f"{show_amount(minor, self.decimals(inst), inst.symbol)} ({self.names.instrument(inst)})"

    def send(self, who: str, op: Any, *, cosigners: tuple[str, ...] = (), expect: str = "OK") -> Any:
        key = self.keys[who]
        events: list[Any] = []
        try:
            result = self.client.send(key, op, cosigners=[self.keys[c] for c in cosigners])
            reason = result.reason if result.receipt is not None else "OK"
            message = result.receipt.message if result.receipt is not None else ""
            height = result.height
            if result.receipt is not None and reason == "OK":
                events = list(result.receipt.events)
        except ClientError as exc:
            reason, message, height = exc.reason, exc.message, 0
        kind = builders.op_field(op)
        ok = reason == expect
        mark = "ok" if ok else "UNEXPECTED"
        where = f" at height {height}" if height else ""
        detail = f": {self.names.humanize(message)}" if message and reason != "OK" else ""
        print(f"    {kind} by {who}: {reason}{detail}{where} [{mark}]")
        for event in events:  # what it did: amounts in units, accounts and instruments by name
            decimals = self.decimals(event.instrument) if event.amount and event.instrument.symbol else None
            print(f"        {event_text(self.names, event, decimals)}")
        if not ok:
            self.failures += 1
        return reason

    def balance(self, who: str, inst: tx_pb2.InstrumentId) -> int:
        acct = self.client.get_account(self.keys[who].address).account
        return sum(b.amount for b in acct.balances if b.instrument == inst)

    def run(self) -> int:
        k = self.keys
        print(f"{STEP}1. Two banks issue USD deposit tokens")
        for inst in (self.usd_a, self.usd_b, self.bond):
            info = self.client.get_instrument(inst).instrument
            self._decimals[(bytes(inst.issuer), inst.symbol)] = int(info.decimals)
            print(f"    {self.names.instrument(info.id)}: {info.name} ({info.currency}, {info.decimals} decimals) "
                  "registered by the admin")  # fmt: skip

        print(f"{STEP}2. Clients pass KYC at their banks")
        for bank, client in (("bank-a", "alice"), ("bank-a", "bob"), ("bank-b", "carol"), ("bank-b", "dave")):
            self.send(bank, builders.set_kyc(k[client].address, tx_pb2.KYC_STATUS_APPROVED,
                                             public_key=k[client].public_key))  # fmt: skip

        print(f"{STEP}3. Deposits are minted as tokens (against off-ledger deposit references)")
        deposit = self.minor(self.usd_a, "1000000.00")
        self.send("bank-a", builders.mint(self.usd_a, k["alice"].address, deposit, "DEP-A-0001"))
        self.send("bank-b", builders.mint(self.usd_b, k["carol"].address, self.minor(self.usd_b, "500000.00"),
                                          "DEP-B-0001"))  # fmt: skip
        print("    the same deposit reference cannot be minted twice:")
        self.send("bank-a", builders.mint(self.usd_a, k["alice"].address, deposit, "DEP-A-0001"),
                  expect="DUPLICATE_DEPOSIT_REF")  # fmt: skip

        print(f"{STEP}4. Clients pay each other across banks")
        self.send(
            "alice", builders.transfer(self.usd_a, k["carol"].address, self.minor(self.usd_a, "2500.00"))
        )
        self.send("carol", builders.transfer(self.usd_b, k["bob"].address, self.minor(self.usd_b, "1200.00")))
        print(f"    carol holds {self.amount(self.usd_a, self.balance('carol', self.usd_a))}; "
              f"bob holds {self.amount(self.usd_b, self.balance('bob', self.usd_b))}")  # fmt: skip

        print(f"{STEP}5. A hold (escrow) is created and executed by its notary")
        hold_id = f"escrow-{int(time.time())}"
        self.send("alice", builders.create_hold(hold_id, self.usd_a, payee=k["dave"].address,
                                                notary=k["compliance"].address,
                                                amount=self.minor(self.usd_a, "10000.00"),
                                                expires_at_height=self.client.status().height + 1000))  # fmt: skip
        self.send("compliance", builders.execute_hold(hold_id))
        print(f"    dave received {self.amount(self.usd_a, self.balance('dave', self.usd_a))} from the hold")

        print(f"{STEP}6. A tokenized bond settles against cash in one atomic DvP")
        self.send(
            "bank-a",
            builders.mint(self.bond, k["carol"].address, self.minor(self.bond, "100"), "BOND-ISSUE-1"),
        )
        legs = [
            builders.leg(self.bond, k["carol"].address, k["alice"].address, self.minor(self.bond, "10")),
            builders.leg(
                self.usd_a, k["alice"].address, k["carol"].address, self.minor(self.usd_a, "9950.00")
            ),
        ]
        self.send("alice", builders.settle(f"dvp-{int(time.time())}", legs), cosigners=("carol",))
        print(f"    alice now holds {self.amount(self.bond, self.balance('alice', self.bond))}; carol "
              f"{self.amount(self.usd_a, self.balance('carol', self.usd_a))}")  # fmt: skip
        print("    a settlement missing a payer's signature is refused, all legs or none:")
        self.send("alice", builders.settle("dvp-unsigned", legs), expect="MISSING_SIGNATURE")

        print(f"{STEP}7. Compliance freezes an account; its payment is refused with the reason")
        self.send("compliance", builders.freeze_account(k["bob"].address, "court order 42"))
        self.send("bob", builders.transfer(self.usd_b, k["alice"].address, self.minor(self.usd_b, "100.00")),
                  expect="ACCOUNT_FROZEN")  # fmt: skip

        print(f"{STEP}8. A balance read with a verified Merkle proof and commit certificate")
        trusted = self.client.validators(0)
        verified = self.client.get_account_verified(k["alice"].address, trusted)
        assert verified.account is not None
        bal = sum(b.amount for b in verified.account.balances if b.instrument == self.usd_a)
        print(f"    alice: {self.amount(self.usd_a, bal)}, proof VERIFIED against the commit certificate of "
              f"height {verified.height} (state root {verified.state_root.hex()[:16]}...)")  # fmt: skip

        print(f"{STEP}9. Reads are permissioned: each caller signs its calls and sees only its own")
        self.read("alice", "alice")
        self.read("alice", "bob", expect="PERMISSION_DENIED")
        self.read("bank-b", "alice", expect="PERMISSION_DENIED")  # not its client, none of its tokens
        self.read("bank-a", "alice")  # its client
        self.read("compliance", "bob")
        return self.failures

    def read(self, who: str, whose: str, expect: str = "OK") -> None:
        """who reads whose account, as itself (its key signs the call)."""
        try:
            self.client.get_account(self.keys[whose].address, as_=self.keys[who])
            reason = "OK"
        except ClientError as exc:
            reason = exc.reason
        ok = reason == expect
        print(f"    {who} reads {whose}'s account: {reason} [{'ok' if ok else 'UNEXPECTED'}]")
        if not ok:
            self.failures += 1


def stream_blocks(client: SyncClient, seconds: float | None, stop: threading.Event) -> None:
    start = client.status().height
    # Proposers by validator name (the set of a height is read again for an address it lacks).
    validators = {bytes(v.address): v.name for v in client.validators(0).validators if v.name}
    print(f"{STEP}Committed blocks (Ctrl-C to stop)" + (f", for {seconds:.0f}s" if seconds else ""))
    deadline = time.monotonic() + seconds if seconds else None
    stream = client.stream_blocks(start, timeout_s=seconds + 5 if seconds else None)
    try:
        for block in stream:
            h = block.block.header
            proposer = bytes(h.proposer)
            if proposer not in validators:
                validators.update(
                    {bytes(v.address): v.name for v in client.validators(h.height).validators if v.name}
                )
            print(f"    block {h.height:>6}  {block.block_hash.hex()[:16]}  txs {len(block.block.body.txs):>4}  "
                  f"proposer {validators.get(proposer) or proposer.hex()}")  # fmt: skip
            if stop.is_set() or (deadline is not None and time.monotonic() > deadline):
                break
    except ClientError as exc:
        if exc.reason != "DEADLINE_EXCEEDED":
            raise
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="clearline-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", default=".clearline/net")
    env_seconds = os.environ.get("RUN_SECONDS")
    p.add_argument("--seconds", type=float, default=float(env_seconds) if env_seconds else None)
    p.add_argument("--validators", type=int, default=4)
    args = p.parse_args(argv)

    if (Path(args.home) / "network.json").exists():
        Launcher(Network.load(args.home)).stop_all()  # an earlier demo's nodes, if any survive
    print(f"{STEP}Initializing a {args.validators}-validator network in {args.home}")
    network = init_network(args.home, validators=args.validators, force=True,
                           base_port=int(os.environ.get("BASE_PORT", "26600")))  # fmt: skip
    launcher = Launcher(network)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    failures = 0
    try:
        launcher.start_all()

        def healthy(node: Any) -> bool:
            with SyncClient.connect(node.api_target, timeout_s=1, **network.client_options(None)) as c:
                return bool(c.status().height >= 1)

        launcher.wait_until(healthy, timeout=90, what="committing blocks",
                            progress=lambda line: print(f"    {line}"))  # fmt: skip
        with SyncClient.connect(
            network.nodes[0].api_target, timeout_s=30, **network.client_options()
        ) as client:
            failures = Demo(network, client).run()
            if not stop.is_set():
                stream_blocks(client, args.seconds, stop)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        failures += 1
    except KeyboardInterrupt:
        pass
    finally:
        print(f"{STEP}Stopping every node")
        launcher.stop_all()
    print(
        "demo finished" + (f" with {failures} unexpected results" if failures else ": every step as expected")
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
