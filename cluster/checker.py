"""The fault checker: after faults heal, read every node through the public API and verify.

    forks         heights at which two honest nodes committed different blocks
    lost          acknowledged transactions (status ok in the history) that are not committed
    duplicated    transactions committed more than once (by tx hash, or by signer + client reference)
    supply_ok     per instrument, genesis balances + minted - redeemed = instrument supply = the sum of
                  all balances (held and frozen included), and no balance is below its locked parts
    evidence_ok   every validator that was made to equivocate has evidence against it on chain

The history comes from cluster/workload.py; the chain is read block by block from the honest nodes.
Nodes that prune ([storage] retain_blocks) keep their last blocks only: the chain from genesis then
comes from a record made while the network ran (cluster/recorder.py), and each node's blocks are
compared with it from that node's base height on.
Two more properties are computed from what a run observed (pure functions, given the data):

    liveness      while at most f validators are faulty, the chain never goes longer than a bound
                  without a commit (compute_liveness: the block times on the chain against the spans
                  of time when more than f were faulty, which are left out; liveness_bound_s derives
                  the bound from the consensus timeouts)
    memory        no node's resident memory grew past its documented budget (compute_memory: the
                  peak RSS sampled during the run against node/budget.py's memory_budget_bytes)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from clearline.v1 import ledger_api_pb2, ledger_api_pb2_grpc, receipt_pb2, state_pb2, tx_pb2
from cluster.netgen import Network
from cluster.workload import Op
from node import crypto
from node.config import ConsensusConfig

MIB = 1 << 20
# Added to the worst case the consensus timeouts allow (liveness_bound_s): four validators, the fault
# proxy, the workload and a flooding client share two cores, so a garbage-collection pause or a
# busy scheduler costs seconds that no timeout accounts for.
LIVENESS_SLACK_S = 2.5


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
    # Each node's base height (the lowest whose block it keeps; 1 unless it prunes).
    base_heights: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    # Header time of each block read (height 1 first), in ms: the commit times compute_liveness needs.
    block_times_ms: list[int] = field(default_factory=list, repr=False)
    liveness: LivenessResult | None = None
    memory: MemoryResult | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    def add_liveness(self, result: LivenessResult) -> None:
        self.liveness = result
        self.violations.extend(result.violations)

    def add_memory(self, result: MemoryResult) -> None:
        self.memory = result
        self.violations.extend(result.violations)

    def as_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.liveness is not None:
            extra.update(self.liveness.as_dict())
        if self.memory is not None:
            extra.update(self.memory.as_dict())
        return extra | {
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
            "base_heights": self.base_heights,
            "violations": self.violations,
        }


def _stub(network: Network, target: str) -> tuple[grpc.Channel, ledger_api_pb2_grpc.LedgerStub]:
    """A channel reading as the network's auditor, who may read every block and account."""
    channel = network.channel(target, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)])
    return channel, ledger_api_pb2_grpc.LedgerStub(channel)


def rpc_reason(exc: grpc.RpcError) -> str:
    """The clearline-reason of a failed call ("" if it has none)."""
    for key, value in getattr(exc, "trailing_metadata", lambda: ())() or ():
        if key == "clearline-reason":
            return str(value)
    return ""


def _ik(inst: tx_pb2.InstrumentId) -> tuple[bytes, str]:
    return (bytes(inst.issuer), inst.symbol)


def check(
    network: Network,
    history: list[Op],
    *,
    honest: list[str] | None = None,
    equivocators: set[bytes] | None = None,
    recorded: list[ledger_api_pb2.GetBlockResponse] | None = None,
) -> Report:
    """recorded: the chain from height 1 as recorded during the run (cluster/recorder.py), for
    nodes that prune; without it the chain is read from the highest node."""
    report = Report()
    names = honest or [n.name for n in network.nodes]
    stubs = {name: _stub(network, network.node(name).api_target) for name in names}
    try:
        heights = {}
        for name, (_, stub) in stubs.items():
            try:
                st = stub.GetStatus(ledger_api_pb2.GetStatusRequest(), timeout=10)
            except grpc.RpcError as exc:
                report.violations.append(f"{name} does not answer: {exc.code().name}")
                continue
            heights[name] = st.height
            report.base_heights[name] = max(1, st.base_height)
        if not heights:
            return report
        reference = max(heights, key=lambda n: heights[n])
        top = heights[reference]
        report.heights_checked = top
        ref_stub = stubs[reference][1]

        # 1. The reference chain (recorded, then read from the highest node); compare block hashes
        # with every honest node's, from its base on.
        blocks: list[ledger_api_pb2.GetBlockResponse] = list(recorded or [])[:top]
        if len(blocks) < top and report.base_heights[reference] > len(blocks) + 1:
            report.violations.append(
                f"the chain cannot be read from height {len(blocks) + 1}: {reference} keeps blocks from "
                f"{report.base_heights[reference]} (record the chain while it runs: cluster/recorder.py)"
            )
            return report
        for h in range(len(blocks) + 1, top + 1):
            blocks.append(ref_stub.GetBlock(ledger_api_pb2.GetBlockRequest(height=h), timeout=30))
        report.block_times_ms = [b.block.header.time_ms for b in blocks]
        for name, height in heights.items():
            if name == reference and recorded is None:
                continue
            stub = stubs[name][1]
            for h in range(report.base_heights[name], height + 1):
                try:
                    other = stub.GetBlock(ledger_api_pb2.GetBlockRequest(height=h), timeout=30).block_hash
                except grpc.RpcError as exc:
                    if rpc_reason(exc) == "BELOW_BASE_HEIGHT":  # pruned since its status was read
                        continue
                    raise
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


def expected_supply(
    genesis: state_pb2.Genesis, receipts: Iterable[receipt_pb2.Receipt]
) -> tuple[Counter[tuple[bytes, str]], set[bytes]]:
    """Per instrument, genesis balances + minted - redeemed; and every account that can hold a
    balance (genesis accounts and those named by a committed event)."""
    expected: Counter[tuple[bytes, str]] = Counter()
    accounts: set[bytes] = set()
    for acct in genesis.accounts:
        accounts.add(crypto.address_of(acct.public_key))
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
    return expected, accounts


def count_balances(
    address: bytes, balances: Iterable[state_pb2.Balance], totals: Counter[tuple[bytes, str]]
) -> list[str]:
    """Add one account's balances to totals; what is wrong with them (less than frozen + held)."""
    problems: list[str] = []
    for bal in balances:
        totals[_ik(bal.instrument)] += bal.amount
        if bal.amount < bal.frozen + bal.held:
            problems.append(
                f"account {address.hex()[:12]} has {bal.amount} {bal.instrument.symbol} but {bal.frozen} frozen "
                f"and {bal.held} held"
            )
    return problems


def supply_mismatch(
    inst: tx_pb2.InstrumentId,
    supply: int,
    expected: Counter[tuple[bytes, str]],
    balances: Counter[tuple[bytes, str]],
) -> str | None:
    """The instrument's supply, genesis + minted - redeemed and the sum of balances must agree."""
    key = _ik(inst)
    if supply == expected[key] == balances[key]:
        return None
    return (
        f"{inst.symbol} of {inst.issuer.hex()[:8]}: supply {supply}, minted-redeemed {expected[key]}, "
        f"sum of balances {balances[key]}"
    )


def _check_supply(
    network: Network,
    stub: ledger_api_pb2_grpc.LedgerStub,
    receipts: list[receipt_pb2.Receipt],
    report: Report,
) -> None:
    genesis = json_format.Parse((Path(network.home) / "genesis.json").read_text(), state_pb2.Genesis())
    expected, accounts = expected_supply(genesis, receipts)
    balances: Counter[tuple[bytes, str]] = Counter()
    problems: list[str] = []
    for account in sorted(accounts):
        try:
            resp = stub.GetAccount(ledger_api_pb2.GetAccountRequest(address=account), timeout=10)
        except grpc.RpcError:
            continue
        problems += count_balances(account, resp.account.balances, balances)
    for inst in genesis.instruments:
        resp = stub.GetInstrument(ledger_api_pb2.GetInstrumentRequest(instrument=inst.id), timeout=10)
        problem = supply_mismatch(inst.id, resp.instrument.supply, expected, balances)
        if problem is not None:
            problems.append(problem)
    if problems:
        report.supply_ok = False
        report.violations += problems


# --- liveness under at most f faulty validators -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """A span of wall-clock time (time.time() seconds) during which `faulty` validators were counted
    as faulty: crashed, paused, Byzantine, or cut off from the majority."""

    start_s: float
    end_s: float
    faulty: int
    what: str = ""


@dataclass(frozen=True, slots=True)
class LivenessResult:
    """The longest time without a commit outside the spans when more than f were faulty."""

    max_commit_gap_s: float
    gap_from_s: float  # the longest counted gap, in seconds from the start of the observation
    gap_to_s: float
    bound_s: float
    commits: int  # commits observed in the window
    excluded_s: float  # seconds left out because more than f validators were faulty
    violations: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_commit_gap_s": round(self.max_commit_gap_s, 2),
            "max_commit_gap_at_s": [round(self.gap_from_s, 1), round(self.gap_to_s, 1)],
            "liveness_bound_s": round(self.bound_s, 2),
            "liveness_excluded_s": round(self.excluded_s, 1),
        }


def liveness_bound_s(consensus: ConsensusConfig, f: int) -> float:
    """The longest a healthy chain may go without a commit while at most f validators are faulty.

    With f faulty validators the proposers of up to f consecutive rounds may be faulty, so rounds
    0..f-1 can each run out all three timeouts (each growing by its delta per round) before round f
    commits (counted at its full timeouts too); then the pause after a commit, and an idle chain
    commits an empty block only every create_empty_blocks_interval_ms; plus LIVENESS_SLACK_S.
    """
    c = consensus
    rounds_ms = sum(
        c.timeout_propose_ms + r * c.timeout_propose_delta_ms
        + c.timeout_prevote_ms + r * c.timeout_prevote_delta_ms
        + c.timeout_precommit_ms + r * c.timeout_precommit_delta_ms
        for r in range(f + 1)
    )  # fmt: skip
    return (rounds_ms + c.timeout_commit_ms + c.create_empty_blocks_interval_ms) / 1000 + LIVENESS_SLACK_S


def compute_excluded(windows: Iterable[FaultWindow], f: int) -> list[tuple[float, float]]:
    """The spans during which more than f validators were faulty at once (overlapping windows add
    up), merged and in order."""
    events: list[tuple[float, int]] = []
    for w in windows:
        if w.end_s > w.start_s and w.faulty > 0:
            events += [(w.start_s, w.faulty), (w.end_s, -w.faulty)]
    events.sort(key=lambda e: (e[0], e[1]))  # at one instant, ends before starts
    spans: list[tuple[float, float]] = []
    faulty = 0
    opened: float | None = None
    for at, delta in events:
        faulty += delta
        if faulty > f and opened is None:
            opened = at
        elif faulty <= f and opened is not None:
            if spans and spans[-1][1] >= opened:
                spans[-1] = (spans[-1][0], at)
            else:
                spans.append((opened, at))
            opened = None
    return spans


def _longest_uncovered(a: float, b: float, spans: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The longest sub-interval of [a, b] that no span covers (spans merged and in order)."""
    best = (a, a)
    cursor = a
    for lo, hi in spans:
        if hi <= cursor or lo >= b:
            continue
        if lo > cursor and lo - cursor > best[1] - best[0]:
            best = (cursor, lo)
        cursor = max(cursor, hi)
        if cursor >= b:
            break
    if b > cursor and b - cursor > best[1] - best[0]:
        best = (cursor, b)
    return best


def compute_liveness(
    commit_times_s: Iterable[float],
    windows: Iterable[FaultWindow],
    *,
    f: int,
    start_s: float,
    end_s: float,
    bound_s: float,
) -> LivenessResult:
    """The longest stretch of [start_s, end_s] without a commit, counting only time when at most f
    validators were faulty: a gap between two commits (or the observation's edges) that spans a time
    of more than f faulty counts only its longest part outside that time. Above bound_s: a violation.
    """
    times = sorted(t for t in commit_times_s if start_s <= t <= end_s)
    excluded = compute_excluded(windows, f)
    clipped = [(max(lo, start_s), min(hi, end_s)) for lo, hi in excluded if hi > start_s and lo < end_s]
    longest = (start_s, start_s)
    for a, b in pairwise([start_s, *times, end_s]):
        lo, hi = _longest_uncovered(a, b, clipped)
        if hi - lo > longest[1] - longest[0]:
            longest = (lo, hi)
    gap = longest[1] - longest[0]
    violations: tuple[str, ...] = ()
    if gap > bound_s:
        violations = (
            f"no commit for {gap:.1f}s (from {longest[0] - start_s:.1f}s to {longest[1] - start_s:.1f}s "
            f"of the run) while at most f={f} validators were faulty; bound {bound_s:.1f}s",
        )
    return LivenessResult(
        max_commit_gap_s=gap,
        gap_from_s=longest[0] - start_s,
        gap_to_s=longest[1] - start_s,
        bound_s=bound_s,
        commits=len(times),
        excluded_s=sum(hi - lo for lo, hi in clipped),
        violations=violations,
    )


# --- memory ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryResult:
    """Each node's peak resident memory during the run next to its budget."""

    max_rss_bytes: dict[str, int]
    budget_bytes: dict[str, int]
    samples: int
    violations: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_rss_mib": {n: round(v / MIB, 1) for n, v in sorted(self.max_rss_bytes.items())},
            "memory_budget_mib": {n: round(v / MIB, 1) for n, v in sorted(self.budget_bytes.items())},
            "rss_samples": self.samples,
        }


def compute_memory(peaks: dict[str, int], budgets: dict[str, int], samples: int) -> MemoryResult:
    """A violation for every node whose peak RSS exceeds its budget, and for every node with a
    budget that was never sampled (its memory cannot have been checked)."""
    violations = []
    for name in sorted(budgets):
        peak = peaks.get(name)
        if peak is None:
            violations.append(f"{name}: no RSS sample, its memory was not checked")
        elif peak > budgets[name]:
            violations.append(
                f"{name}: RSS reached {peak / MIB:.0f} MiB, over its memory budget of {budgets[name] / MIB:.0f} MiB"
            )
    return MemoryResult(dict(peaks), dict(budgets), samples, tuple(violations))
