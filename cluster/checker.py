"""The fault checker: after faults heal, read every node through the public API and verify.

    forks         heights at which two honest nodes committed different blocks
    lost          acknowledged transactions (status ok in the history) that are not committed
    duplicated    transactions committed more than once (by tx hash, or by signer + client reference)
    supply_ok     per instrument, genesis balances + minted - redeemed = instrument supply = the sum of
                  all balances (held and frozen included), and no balance is below its locked parts
    evidence_ok   every validator that was made to equivocate has evidence against it on chain

The history comes from cluster/workload.py; the chain is read block by block from the honest nodes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc, receipt_pb2, state_pb2, tx_pb2
from cluster.netgen import Network
from cluster.workload import Op
from node import crypto


@dataclass
class Report:
    acknowledged: int = 0
    committed: int = 0
    unknown: int = 0
    failed: int = 0
    lost: int = 0
    duplicated: int = 0
    forks: int = 0
    heights_checked: int = 0
    supply_ok: bool = True
    evidence_ok: bool = True
    evidence_count: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "acknowledged": self.acknowledged,
            "committed": self.committed,
            "unknown": self.unknown,
            "failed": self.failed,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "forks": self.forks,
            "heights_checked": self.heights_checked,
            "supply_ok": self.supply_ok,
            "evidence_ok": self.evidence_ok,
            "evidence": self.evidence_count,
            "violations": self.violations,
        }


def _stub(target: str) -> tuple[grpc.Channel, ledger_api_pb2_grpc.LedgerStub]:
    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)])
    return channel, ledger_api_pb2_grpc.LedgerStub(channel)


def _ik(inst: tx_pb2.InstrumentId) -> tuple[bytes, str]:
    return (bytes(inst.issuer), inst.symbol)


def check(
    network: Network,
    history: list[Op],
    *,
    honest: list[str] | None = None,
    equivocators: set[bytes] | None = None,
) -> Report:
    report = Report()
    names = honest or [n.name for n in network.nodes]
    stubs = {name: _stub(network.node(name).api_target) for name in names}
    try:
        heights = {}
        for name, (_, stub) in stubs.items():
            try:
                heights[name] = stub.GetStatus(ledger_api_pb2.GetStatusRequest(), timeout=10).height
            except grpc.RpcError as exc:
                report.violations.append(f"{name} does not answer: {exc.code().name}")
        if not heights:
            return report
        reference = max(heights, key=lambda n: heights[n])
        top = heights[reference]
        report.heights_checked = top
        ref_stub = stubs[reference][1]

        # 1. Read the reference chain; compare block hashes with every other honest node.
        blocks: list[ledger_api_pb2.GetBlockResponse] = []
        for h in range(1, top + 1):
            blocks.append(ref_stub.GetBlock(ledger_api_pb2.GetBlockRequest(height=h), timeout=30))
        for name, height in heights.items():
            if name == reference:
                continue
            stub = stubs[name][1]
            for h in range(1, height + 1):
                other = stub.GetBlock(ledger_api_pb2.GetBlockRequest(height=h), timeout=30).block_hash
                if other != blocks[h - 1].block_hash:
                    report.forks += 1
                    report.violations.append(f"fork at height {h}: {reference} and {name} differ")
                    break

        # 2. Committed transactions: exactly once, by hash and by (signer, client reference).
        by_hash: Counter[bytes] = Counter()
        by_ref: Counter[tuple[bytes, str]] = Counter()
        receipts: list[receipt_pb2.Receipt] = []
        for b in blocks:
            for r in b.receipts:
                by_hash[r.tx_hash] += 1
                receipts.append(r)
                if r.client_ref and r.status == receipt_pb2.TX_STATUS_OK:
                    by_ref[(bytes(r.signer), r.client_ref)] += 1
        report.committed = len(by_hash)
        for tx_hash, n in by_hash.items():
            if n > 1:
                report.duplicated += 1
                report.violations.append(f"tx {tx_hash.hex()[:16]} committed {n} times")
        for (signer, ref), n in by_ref.items():
            if n > 1:
                report.duplicated += 1
                report.violations.append(f"client reference {ref!r} of {signer.hex()[:12]} applied {n} times")
        for op in history:
            if op.status == "ok":
                report.acknowledged += 1
                if by_hash.get(bytes.fromhex(op.tx_hash), 0) == 0:
                    report.lost += 1
                    report.violations.append(
                        f"acknowledged {op.kind} {op.tx_hash[:16]} (op {op.id}) is not committed"
                    )
            elif op.status == "unknown":
                report.unknown += 1
            elif op.status == "failed":
                report.failed += 1

        # 3. Supplies, recomputed from genesis and the committed receipts.
        _check_supply(network, ref_stub, receipts, report)

        # 4. Evidence against every injected equivocator.
        accused: set[bytes] = set()
        for b in blocks:
            for ev in b.block.body.evidence:
                accused.add(bytes(ev.duplicate_vote.vote_a.validator))
                report.evidence_count += 1
        for validator in sorted(equivocators or ()):
            if validator not in accused:
                report.evidence_ok = False
                report.violations.append(
                    f"no evidence on chain against equivocating validator {validator.hex()[:16]}"
                )
    finally:
        for channel, _ in stubs.values():
            channel.close()
    return report


def _check_supply(
    network: Network,
    stub: ledger_api_pb2_grpc.LedgerStub,
    receipts: list[receipt_pb2.Receipt],
    report: Report,
) -> None:
    genesis = json_format.Parse((Path(network.home) / "genesis.json").read_text(), state_pb2.Genesis())
    expected: Counter[tuple[bytes, str]] = Counter()
    accounts: set[bytes] = set()
    for acct in genesis.accounts:
        address = crypto.address_of(acct.public_key)
        accounts.add(address)
        for bal in acct.balances:
            expected[_ik(bal.instrument)] += bal.amount
    for r in receipts:
        if r.status != receipt_pb2.TX_STATUS_OK:
            continue
        for ev in r.events:
            accounts.update(bytes(a) for a in ev.accounts)
            if ev.kind == "mint":
                expected[_ik(ev.instrument)] += ev.amount
            elif ev.kind == "redeem":
                expected[_ik(ev.instrument)] -= ev.amount
    balances: Counter[tuple[bytes, str]] = Counter()
    for account in sorted(accounts):
        try:
            resp = stub.GetAccount(ledger_api_pb2.GetAccountRequest(address=account), timeout=10)
        except grpc.RpcError:
            continue
        for bal in resp.account.balances:
            balances[_ik(bal.instrument)] += bal.amount
            if bal.amount < bal.frozen + bal.held:
                report.supply_ok = False
                report.violations.append(
                    f"account {account.hex()[:12]} has {bal.amount} {bal.instrument.symbol} but {bal.frozen} frozen "
                    f"and {bal.held} held"
                )
    for inst in genesis.instruments:
        key = _ik(inst.id)
        resp = stub.GetInstrument(ledger_api_pb2.GetInstrumentRequest(instrument=inst.id), timeout=10)
        supply = resp.instrument.supply
        if not (supply == expected[key] == balances[key]):
            report.supply_ok = False
            report.violations.append(
                f"{inst.id.symbol} of {inst.id.issuer.hex()[:8]}: supply {supply}, minted-redeemed {expected[key]}, "
                f"sum of balances {balances[key]}"
            )
