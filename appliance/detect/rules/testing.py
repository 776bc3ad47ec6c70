"""The rule test runner behind `appliance rules test`: every rule carries its own sample events.

A `match` sample must raise the rule on its own, a `nomatch` sample must not, and a `cases` entry
feeds a sequence of events (for correlations, of several types) and expects an exact alert count.
Each case runs on a fresh engine holding only the rule under test (and, for a correlation, the
rules it references), so one rule's test cannot pass because of another rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import polars as pl

from appliance.detect.rules.engine import DATA_DIRS, RuleEngine
from appliance.detect.rules.fields import field_types
from appliance.detect.rules.lists import load_lists
from appliance.detect.rules.loader import Loc
from appliance.detect.rules.model import Correlation, FieldMatch, Rule, RuleDiagnostic, RuleSet, TestCase
from appliance.detect.rules.parse import parse_paths

_BASE = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class CaseResult:
    rule_id: str
    title: str
    case: str
    loc: Loc
    expected: int | None
    got: int

    @property
    def ok(self) -> bool:
        return self.got >= 1 if self.expected is None else self.got == self.expected

    def describe(self) -> str:
        want = "at least 1 alert" if self.expected is None else f"{self.expected} alert(s)"
        return f"{self.loc}: {self.title} [{self.case}]: expected {want}, got {self.got}"


@dataclass
class TestReport:
    results: list[CaseResult] = field(default_factory=list)
    untested: list[tuple[str, str, Loc]] = field(default_factory=list)
    diagnostics: list[RuleDiagnostic] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.diagnostics and not self.failed


def plain_match(m: FieldMatch) -> pl.Expr:
    """The straightforward expression of one field match, on every row (any element for list
    columns): the reference the compiled matcher's shortcuts are tested against."""
    from appliance.detect.rules.compile import build

    if m.field == "dns.answers.data":
        return pl.col(m.field).list.eval(build(m, pl.element())).list.any().fill_null(False)
    return build(m, pl.col(m.field))


def _to_time(v: Any) -> datetime | None:
    if v is None or isinstance(v, datetime):
        return v if v is None or v.tzinfo else v.replace(tzinfo=UTC)  # type: ignore[union-attr]
    if isinstance(v, date):
        return datetime(v.year, v.month, v.day, tzinfo=UTC)
    text = str(v).replace("Z", "+00:00")
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def frame_from_records(event_type: str, records: list[dict[str, Any]]) -> pl.DataFrame:
    """A typed event frame from dicts with dotted field names (test samples, docs examples)."""
    types = field_types(event_type)
    names = [n for n in types if any(n in r for r in records)]
    data: dict[str, list[Any]] = {}
    for n in names:
        col = [r.get(n) for r in records]
        if isinstance(types[n], pl.Datetime):
            col = [_to_time(v) for v in col]
        data[n] = col
    return pl.DataFrame(data, schema={n: types[n] for n in names}, strict=False)


def _run_case(engine: RuleEngine, case: TestCase, rule_id: str) -> int:
    got = 0
    for i, (etype, event) in enumerate(case.events):
        ev = dict(event)
        ev.setdefault("@timestamp", _BASE.replace(second=i % 60, minute=i // 60))
        alerts = engine.evaluate(etype, frame_from_records(etype, [ev]))
        got += sum(1 for a in alerts if a["rule.id"] == rule_id)
    got += sum(1 for a in engine.flush() if a["rule.id"] == rule_id)
    return got


def _subset(ruleset: RuleSet, target: Rule | Correlation) -> RuleSet:
    if isinstance(target, Rule):
        return RuleSet([target], [])
    refs = set(target.rules)
    return RuleSet([r for r in ruleset.rules if r.id in refs or (r.name and r.name in refs)], [target])


def run_tests(paths: list[str], data_dirs: tuple[str, ...] | list[str] = DATA_DIRS) -> TestReport:
    """Run every rule's test cases. Invalid rules are reported as diagnostics and nothing runs."""
    lists, diags = load_lists(data_dirs)
    ruleset, more = parse_paths(paths, lists)
    report = TestReport(diagnostics=sorted(set(diags + more)))
    if report.diagnostics:
        return report
    targets: list[Rule | Correlation] = [*ruleset.rules, *ruleset.correlations]
    for target in targets:
        if not target.tests:
            report.untested.append((target.id, target.title, target.loc))
            continue
        for case in target.tests:
            engine = RuleEngine(_subset(ruleset, target))
            got = _run_case(engine, case, target.id)
            report.results.append(CaseResult(target.id, target.title, case.name, case.loc, case.expect, got))
    return report
