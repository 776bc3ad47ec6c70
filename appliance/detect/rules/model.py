"""The parsed, validated form of rules: what the compiler, correlator, test runner and explainer read.

Parsing (parse.py) turns YAML into these immutable records once; nothing downstream looks at YAML
again, so every check that can fail lives in one place and carries a location.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.detect.rules.loader import Loc

LEVELS = ("informational", "low", "medium", "high", "critical")
STATUSES = ("stable", "test", "experimental", "deprecated", "unsupported")


@dataclass(frozen=True, order=True)
class RuleDiagnostic:
    """One problem in a rule file, printed as `file:line:column: message`."""

    loc: Loc
    message: str

    def __str__(self) -> str:
        return f"{self.loc}: {self.message}"


@dataclass(frozen=True)
class FieldMatch:
    """One `field|mod|mod: values` item of a selection.

    `op` is the comparison modifier (eq, contains, re, cidr, gt, exists, …); `values` are already
    expanded from named lists; `match_all` is Sigma's `|all` (AND over the values instead of OR).
    """

    field: str
    op: str
    values: tuple[Any, ...]
    match_all: bool
    cased: bool
    flags: str
    loc: Loc
    lists: tuple[str, ...] = ()

    def key(self) -> tuple[Any, ...]:
        """Identity for sharing one computed predicate between rules that ask the same question."""
        vals = tuple((type(v).__name__, v) for v in self.values)
        return (self.field, self.op, vals, self.match_all, self.cased, self.flags)


@dataclass(frozen=True)
class Selection:
    """A named detection item: OR over alternatives, each an AND of field matches."""

    name: str
    alternatives: tuple[tuple[FieldMatch, ...], ...]
    loc: Loc


# Condition AST: ("name", sel) | ("not", x) | ("and", (x, y, …)) | ("or", (x, y, …))
Cond = tuple[Any, ...]


@dataclass(frozen=True)
class TestCase:
    """A rule test: events in order (each with its event type) and the expected alert count.

    `expect` None means "at least one" (a `match` sample); 0 is a `nomatch` sample.
    """

    name: str
    events: tuple[tuple[str, dict[str, Any]], ...]
    expect: int | None
    loc: Loc


@dataclass(frozen=True, kw_only=True)
class RuleMeta:
    """What detections and correlations both carry besides their logic (keyword-only)."""

    name: str | None = None
    status: str = "experimental"
    description: str = ""
    author: str = ""
    date: str = ""
    references: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    falsepositives: tuple[str, ...] = ()
    tests: tuple[TestCase, ...] = ()


@dataclass(frozen=True)
class Rule(RuleMeta):
    """A detection rule over one event type."""

    id: str
    title: str
    level: str
    logsource: str
    selections: dict[str, Selection]
    condition: Cond
    loc: Loc
    path: str
    sigma: bool = False
    kind: str = field(default="detection")


@dataclass(frozen=True)
class Threshold:
    """A correlation condition: every (op, number) must hold; `field` is value_count's counted field."""

    ops: tuple[tuple[str, float], ...]
    field: str | None
    loc: Loc

    def holds(self, n: float) -> bool:
        return all(_CMP[op](n, v) for op, v in self.ops)

    def fires_early(self) -> bool:
        """gt/gte can fire as soon as they hold; lt/lte/eq need the whole window (fire at its end)."""
        return all(op in ("gt", "gte") for op, _ in self.ops)


_CMP = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "eq": lambda a, b: a == b,
}


@dataclass(frozen=True)
class Correlation(RuleMeta):
    """A Sigma correlation rule over the matches of other rules (Sigma correlation spec v2)."""

    id: str
    title: str
    level: str
    type: str
    rules: tuple[str, ...]
    rule_locs: tuple[Loc, ...]
    group_by: tuple[str, ...]
    timespan_ns: int
    timespan_text: str
    threshold: Threshold | None
    aliases: dict[str, dict[str, str]]
    generate: bool
    loc: Loc
    path: str
    group_locs: tuple[Loc, ...] = ()
    kind: str = field(default="correlation")


@dataclass
class RuleSet:
    """Every rule and correlation from a set of paths, in load order (files sorted, documents in order)."""

    rules: list[Rule] = field(default_factory=list)
    correlations: list[Correlation] = field(default_factory=list)

    def by_id(self) -> dict[str, Rule | Correlation]:
        out: dict[str, Rule | Correlation] = {}
        everything: list[Rule | Correlation] = [*self.rules, *self.correlations]
        for r in everything:
            out[r.id] = r
            if r.name:
                out[r.name] = r
        return out
