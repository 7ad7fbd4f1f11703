"""Network fault rules: what the fault proxy does to the messages of each direction `src -> dst`.

The rules live in `<network home>/faults/rules.json`, written atomically (temp file + rename) by the
`Nemesis` and polled by the proxy process; no control port is needed. Schema (version 1):

    {
      "version": 1,
      "generation": 12,          # bumped on every write; the proxy reports the one it applied
      "seed": 7,                 # seeds the proxy's per-direction random choices (loss, duplication, jitter)
      "rules": [
        {"src": "node0", "dst": "node1", "kind": "partition",
         "drop": true, "sever": false, "delay_ms": 0.0, "jitter_ms": 0.0,
         "loss": 0.0, "duplicate": 0.0, "reorder": false},
        ...
      ]
    }

Each rule applies to the messages travelling from validator `src` to validator `dst` (whichever of
the two opened the gRPC stream). `kind` records which Nemesis operation made the rule (partition,
one_way, link, sever) so that operation can replace its own rules; the proxy ignores it. Several rules
on one direction combine (see `combine`): drop and sever are or-ed, delays and jitters add up, loss and
duplication probabilities combine as independent events, reorder is or-ed.

Meaning, per message of a direction:
- drop: discarded (also messages already delayed in the proxy); block-sync calls are refused;
- sever: like drop, and every stream between the two nodes is broken and new calls are refused
  (UNAVAILABLE) until the rule goes;
- loss p / duplicate p: a peer-stream message is discarded / sent twice with probability p;
- delay_ms +- jitter_ms (uniform): each message is held that long; FIFO per direction unless reorder.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NewType

NodeName = NewType("NodeName", str)
RuleKind = Literal["partition", "one_way", "link", "sever"]
RULE_KINDS: tuple[str, ...] = ("partition", "one_way", "link", "sever")
SCHEMA_VERSION = 1


class FaultRuleError(ValueError):
    """A rule or rules file is invalid. field names the offending setting, value is what was given."""

    def __init__(self, field_name: str, value: object, reason: str) -> None:
        self.field = field_name
        self.value = value
        self.reason = reason
        super().__init__(f"{field_name}={value!r}: {reason}")


@dataclass(frozen=True, slots=True)
class LinkRule:
    """One fault on the direction src -> dst."""

    src: NodeName
    dst: NodeName
    kind: RuleKind
    drop: bool = False
    sever: bool = False
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: bool = False

    def __post_init__(self) -> None:
        for name in ("src", "dst"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise FaultRuleError(name, value, "must be a node name")
        if self.src == self.dst:
            raise FaultRuleError("dst", self.dst, "a link joins two different nodes")
        if self.kind not in RULE_KINDS:
            raise FaultRuleError("kind", self.kind, f"must be one of {', '.join(RULE_KINDS)}")
        for name in ("drop", "sever", "reorder"):
            if not isinstance(getattr(self, name), bool):
                raise FaultRuleError(name, getattr(self, name), "must be true or false")
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise FaultRuleError(name, value, "must be a finite number")
            if value < 0:
                raise FaultRuleError(name, value, "must be >= 0")
        for name in ("loss", "duplicate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise FaultRuleError(name, value, "must be a probability in [0, 1]")

    @property
    def is_noop(self) -> bool:
        return not (self.drop or self.sever or self.delay_ms or self.jitter_ms or self.loss or self.duplicate)


@dataclass(frozen=True, slots=True)
class Effect:
    """The combined effect of every rule on one direction (what the proxy applies)."""

    drop: bool = False
    sever: bool = False
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: bool = False

    @property
    def blocked(self) -> bool:
        return self.drop or self.sever


NO_EFFECT = Effect()


def combine(rules: Iterable[LinkRule]) -> Effect:
    """Fold the rules of one direction into one Effect."""
    effect = NO_EFFECT
    for r in rules:
        effect = Effect(
            drop=effect.drop or r.drop,
            sever=effect.sever or r.sever,
            delay_ms=effect.delay_ms + r.delay_ms,
            jitter_ms=effect.jitter_ms + r.jitter_ms,
            loss=1 - (1 - effect.loss) * (1 - r.loss),
            duplicate=1 - (1 - effect.duplicate) * (1 - r.duplicate),
            reorder=effect.reorder or r.reorder,
        )
    return effect


@dataclass(frozen=True, slots=True)
class RuleSet:
    """The content of rules.json."""

    generation: int = 0
    seed: int = 0
    rules: tuple[LinkRule, ...] = ()
    version: int = SCHEMA_VERSION
    _effects: Mapping[tuple[str, str], Effect] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        by_dir: dict[tuple[str, str], list[LinkRule]] = {}
        for r in self.rules:
            by_dir.setdefault((r.src, r.dst), []).append(r)
        object.__setattr__(self, "_effects", {k: combine(v) for k, v in by_dir.items()})

    def effect(self, src: str, dst: str) -> Effect:
        return self._effects.get((src, dst), NO_EFFECT)

    def severed(self, a: str, b: str) -> bool:
        """True if streams between a and b (either direction) must be broken."""
        return self.effect(a, b).sever or self.effect(b, a).sever

    def to_json(self) -> str:
        doc = {
            "version": self.version,
            "generation": self.generation,
            "seed": self.seed,
            "rules": [asdict(r) for r in self.rules],
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RuleSet:
        """Parse rules.json text; raises FaultRuleError naming the bad field."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FaultRuleError("rules.json", text[:40], f"not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise FaultRuleError("rules.json", type(doc).__name__, "must be a JSON object")
        if doc.get("version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise FaultRuleError("version", doc.get("version"), f"only version {SCHEMA_VERSION} is known")
        for name in ("generation", "seed"):
            value = doc.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise FaultRuleError(name, value, "must be an integer >= 0")
        raw_rules = doc.get("rules", [])
        if not isinstance(raw_rules, list):
            raise FaultRuleError("rules", raw_rules, "must be a list")
        rules = []
        known = set(LinkRule.__dataclass_fields__)
        for i, raw in enumerate(raw_rules):
            if not isinstance(raw, dict):
                raise FaultRuleError(f"rules[{i}]", raw, "must be an object")
            unknown = set(raw) - known
            if unknown:
                raise FaultRuleError(f"rules[{i}]", sorted(unknown), f"unknown keys (known: {sorted(known)})")
            rules.append(_rule(raw))
        return cls(generation=doc.get("generation", 0), seed=doc.get("seed", 0), rules=tuple(rules))


def _rule(raw: dict[str, Any]) -> LinkRule:
    return LinkRule(**raw)


def rules_path(home: str | os.PathLike[str]) -> Path:
    return Path(home) / "faults" / "rules.json"


def load_rules(home: str | os.PathLike[str]) -> RuleSet:
    """The rules in force for the network at home (an empty RuleSet if none were ever written)."""
    try:
        text = rules_path(home).read_text()
    except FileNotFoundError:
        return RuleSet()
    return RuleSet.from_json(text)


def save_rules(home: str | os.PathLike[str], rules: RuleSet) -> None:
    """Write rules.json atomically (temp file, fsync, rename), so the proxy never reads half a file."""
    path = rules_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".rules.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(rules.to_json())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
