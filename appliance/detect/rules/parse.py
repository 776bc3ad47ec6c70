"""Rule files → a validated RuleSet plus every diagnostic, each at file:line:column.

A file holds one or more YAML documents; each is a detection rule (`logsource` + `detection`) or a
Sigma correlation rule (`correlation:`). Test cases sit inline under `tests:` or in a sibling
`<file>.tests.yml` mapping rule ids to tests. Cross-file checks (duplicate ids, references to
rules, group-by fields, test event fields) run after every file is read.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import replace
from datetime import date, datetime
from typing import Any

from appliance.detect.rules.detection import DetectionParser
from appliance.detect.rules.fields import LOGSOURCES, field_types, sigma_logsource
from appliance.detect.rules.lists import NamedList
from appliance.detect.rules.loader import Loc, YamlProblem, YList, YMap, load_documents
from appliance.detect.rules.model import (
    LEVELS,
    STATUSES,
    Correlation,
    Rule,
    RuleDiagnostic,
    RuleSet,
    TestCase,
    Threshold,
)

CORRELATION_TYPES = ("event_count", "value_count", "temporal", "temporal_ordered")
_META = {"title", "id", "name", "status", "description", "author", "date", "modified", "references", "tags",
         "level", "falsepositives", "related", "license", "fields", "scope", "taxonomy", "tests"}
_TIMESPAN = re.compile(r"^([1-9][0-9]*)([smhdw])$")
_UNIT_NS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9, "w": 7 * 86400 * 10**9}
SKIP_DIRS = ("lists", "data", "mappings")


def rule_files(paths: list[str]) -> list[str]:
    """YAML rule files under the paths, sorted; list/catalog folders and *.tests.yml are not rules."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
                out.extend(os.path.join(root, f) for f in files if _is_rule_file(f))
        else:
            out.append(p)
    return sorted(dict.fromkeys(out))


def _is_rule_file(name: str) -> bool:
    return name.endswith((".yml", ".yaml")) and not name.endswith((".tests.yml", ".tests.yaml"))


def _text(v: Any) -> str:
    if isinstance(v, datetime | date):
        return v.isoformat()
    return "" if v is None else str(v)


class Parser:
    def __init__(self, lists: dict[str, NamedList]) -> None:
        self.lists = lists
        self.diags: list[RuleDiagnostic] = []
        self.detection = DetectionParser(lists, self.diags)
        self.rules: list[Rule] = []
        self.corrs: list[Correlation] = []
        self.id_locs: dict[str, Loc] = {}

    def error(self, loc: Loc, message: str) -> None:
        self.diags.append(RuleDiagnostic(loc, message))

    # -- files ------------------------------------------------------------------------------------
    def parse_file(self, path: str) -> None:
        try:
            docs = load_documents(path)
        except YamlProblem as exc:
            self.error(exc.loc, exc.message)
            return
        start_rules, start_corrs = len(self.rules), len(self.corrs)
        for doc, loc in docs:
            if not isinstance(doc, YMap):
                self.error(loc, "a rule document must be a mapping")
            elif "action" in doc:
                self.error(doc.key_loc("action"), "Sigma multi-document 'action' collections are not supported")
            elif "correlation" in doc:
                self.correlation(path, doc)
            elif "detection" in doc or "logsource" in doc:
                self.rule(path, doc)
            else:
                self.error(doc.loc, "a rule needs 'logsource' and 'detection', or 'correlation'")
        self.sibling_tests(path, start_rules, start_corrs)

    def meta(self, doc: YMap, allowed: set[str]) -> dict[str, Any] | None:
        ok = True
        for key in doc:
            if key not in allowed:
                self.error(doc.key_loc(key), f"unknown rule key '{key}'")
                ok = False
        title = doc.get("title")
        if not isinstance(title, str) or not title.strip():
            self.error(doc.val_loc("title") if "title" in doc else doc.loc, "a rule needs a 'title'")
            ok = False
        rid = doc.get("id")
        try:
            uuid.UUID(str(rid))
        except ValueError:
            self.error(doc.val_loc("id") if "id" in doc else doc.loc, f"'id' must be a UUID, got {rid!r}")
            ok = False
        level = doc.get("level", "medium")
        if level not in LEVELS:
            self.error(doc.val_loc("level"), f"'level' must be one of {', '.join(LEVELS)}")
            ok = False
        status = doc.get("status", "experimental")
        if status not in STATUSES:
            self.error(doc.val_loc("status"), f"'status' must be one of {', '.join(STATUSES)}")
            ok = False
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("references", "tags", "falsepositives"):
            raw = doc.get(key, [])
            raw = [raw] if isinstance(raw, str) else raw
            if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
                self.error(doc.val_loc(key), f"'{key}' must be a list of strings")
                ok = False
                raw = []
            lists[key] = tuple(raw)
        name = doc.get("name")
        if name is not None and not isinstance(name, str):
            self.error(doc.val_loc("name"), "'name' must be a string")
            ok = False
        if not ok:
            return None
        return {
            "id": str(rid), "title": title, "level": level, "status": status, "name": name,
            "description": _text(doc.get("description")), "author": _text(doc.get("author")),
            "date": _text(doc.get("date")), **lists,
        }

    def register(self, rid: str, name: str | None, doc: YMap) -> bool:
        for key, value in (("id", rid), ("name", name)):
            if value is None:
                continue
            if value in self.id_locs:
                first = self.id_locs[value]
                self.error(doc.val_loc(key), f"duplicate rule {key} '{value}' (first defined at {first})")
                return False
        self.id_locs[rid] = doc.val_loc("id")
        if name:
            self.id_locs[name] = doc.val_loc("name")
        return True

    # -- detection rules --------------------------------------------------------------------------
    def logsource(self, raw: Any, loc: Loc) -> tuple[str, bool] | None:
        if isinstance(raw, str):
            if raw in LOGSOURCES:
                return raw, False
            self.error(loc, f"unknown logsource '{raw}' (one of {', '.join(LOGSOURCES)})")
            return None
        if isinstance(raw, YMap):
            cat, prod, svc = raw.get("category"), raw.get("product"), raw.get("service")
            if prod in (None, "appliance") and svc is None and cat in LOGSOURCES:
                return str(cat), False
            ours = sigma_logsource(cat, prod, svc)
            if ours is not None:
                return ours, True
            desc = ", ".join(f"{k}={v}" for k, v in (("category", cat), ("product", prod), ("service", svc)) if v)
            self.error(loc, f"unsupported logsource ({desc or 'empty'}): it does not map onto our events")
            return None
        self.error(loc, "'logsource' must be an event type or a Sigma logsource mapping")
        return None

    def rule(self, path: str, doc: YMap) -> None:
        meta = self.meta(doc, _META | {"logsource", "detection"})
        if "logsource" not in doc or "detection" not in doc:
            self.error(doc.loc, "a detection rule needs both 'logsource' and 'detection'")
            return
        ls = self.logsource(doc["logsource"], doc.val_loc("logsource"))
        if ls is None:
            return
        parsed = self.detection.parse(doc["detection"], doc.val_loc("detection"), ls[0], ls[1])
        if meta is None or parsed is None or not self.register(meta["id"], meta["name"], doc):
            return
        tests = self.tests(doc.get("tests"), doc.val_loc("tests"), ls[0]) if "tests" in doc else ()
        self.rules.append(Rule(
            logsource=ls[0], selections=parsed[0], condition=parsed[1], loc=doc.loc, path=path,
            tests=tests or (), sigma=ls[1], **meta,
        ))

    # -- correlation rules ------------------------------------------------------------------------
    def correlation(self, path: str, doc: YMap) -> None:
        meta = self.meta(doc, _META | {"correlation", "generate"})
        body = doc["correlation"]
        if not isinstance(body, YMap):
            self.error(doc.val_loc("correlation"), "'correlation' must be a mapping")
            return
        for key in body:
            if key not in ("type", "rules", "group-by", "timespan", "condition", "aliases", "generate"):
                self.error(body.key_loc(key), f"unknown correlation key '{key}'")
                return
        ctype = body.get("type")
        if ctype not in CORRELATION_TYPES:
            self.error(body.val_loc("type") if "type" in body else body.loc,
                       f"correlation 'type' must be one of {', '.join(CORRELATION_TYPES)}")
            return
        rules = body.get("rules")
        if isinstance(rules, str):
            rules = YList([rules])
            rules.loc, rules.item_locs = body.val_loc("rules"), [body.val_loc("rules")]
        if not isinstance(rules, YList) or not rules or not all(isinstance(r, str) for r in rules):
            self.error(body.val_loc("rules") if "rules" in body else body.loc, "'rules' must list rule ids or names")
            return
        span = body.get("timespan")
        m = _TIMESPAN.match(str(span)) if span is not None else None
        if not m:
            self.error(body.val_loc("timespan") if "timespan" in body else body.loc,
                       "'timespan' must be a number and a unit s, m, h, d or w, e.g. 1h")
            return
        group = body.get("group-by", [])
        group = [group] if isinstance(group, str) else group
        if not isinstance(group, list) or not all(isinstance(g, str) for g in group):
            self.error(body.val_loc("group-by"), "'group-by' must list field names")
            return
        glocs = tuple(group.item_loc(i) for i in range(len(group))) if isinstance(group, YList) else ()
        threshold = self.threshold(ctype, body)
        aliases = self.aliases(body)
        if meta is None or threshold is False or aliases is None or not self.register(meta["id"], meta["name"], doc):
            return
        generate = bool(body.get("generate", doc.get("generate", False)))
        tests = self.tests(doc.get("tests"), doc.val_loc("tests"), None) if "tests" in doc else ()
        self.corrs.append(Correlation(
            type=ctype, rules=tuple(rules), rule_locs=tuple(rules.item_locs), group_by=tuple(group),
            timespan_ns=int(m.group(1)) * _UNIT_NS[m.group(2)], timespan_text=str(span),
            threshold=threshold if isinstance(threshold, Threshold) else None, aliases=aliases, generate=generate, loc=doc.loc, path=path,
            group_locs=glocs, tests=tests or (), **meta,
        ))

    def threshold(self, ctype: str, body: YMap) -> Threshold | None | bool:
        raw = body.get("condition")
        if raw is None:
            if ctype in ("event_count", "value_count"):
                self.error(body.loc, f"a {ctype} correlation needs a 'condition' such as 'gte: 10'")
                return False
            return None
        if not isinstance(raw, YMap):
            self.error(body.val_loc("condition"), "a correlation 'condition' is a mapping such as {gte: 10}")
            return False
        ops: list[tuple[str, float]] = []
        fld = None
        for key, value in raw.items():
            if key == "field":
                fld = value
            elif key in ("gt", "gte", "lt", "lte", "eq"):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    self.error(raw.val_loc(key), f"'{key}' needs a number")
                    return False
                ops.append((key, float(value)))
            else:
                self.error(raw.key_loc(key), f"unknown correlation condition '{key}' (gt, gte, lt, lte, eq, field)")
                return False
        if not ops:
            self.error(raw.loc, "a correlation condition needs gt, gte, lt, lte or eq")
            return False
        if ctype == "value_count" and not isinstance(fld, str):
            self.error(raw.loc, "a value_count condition needs 'field': the field whose distinct values are counted")
            return False
        if ctype != "value_count" and fld is not None:
            self.error(raw.key_loc("field"), f"'field' only applies to value_count, not {ctype}")
            return False
        return Threshold(tuple(ops), fld, raw.val_loc("field") if fld else raw.loc)

    def aliases(self, body: YMap) -> dict[str, dict[str, str]] | None:
        raw = body.get("aliases", {})
        if not isinstance(raw, dict) or not all(
            isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in raw.values()
        ):
            self.error(body.val_loc("aliases"), "'aliases' maps an alias to {rule: field}")
            return None
        return {k: dict(v) for k, v in raw.items()}

    # -- tests ------------------------------------------------------------------------------------
    def tests(self, raw: Any, loc: Loc, logsource: str | None) -> tuple[TestCase, ...]:
        if not isinstance(raw, YMap):
            self.error(loc, "'tests' must be a mapping with 'match', 'nomatch' and/or 'cases'")
            return ()
        out: list[TestCase] = []
        for key in raw:
            if key not in ("match", "nomatch", "cases"):
                self.error(raw.key_loc(key), f"unknown tests key '{key}' (match, nomatch, cases)")
                return ()
            items = raw[key]
            if not isinstance(items, YList):
                self.error(raw.val_loc(key), f"'{key}' must be a list")
                return ()
            for i, item in enumerate(items):
                where = items.item_loc(i)
                if key == "cases":
                    case = self.case(item, where, logsource, i)
                    if case:
                        out.append(case)
                    continue
                event = self.event(item, where, logsource)
                if event is not None:
                    out.append(TestCase(f"{key}[{i}]", (event,), None if key == "match" else 0, where))
        return tuple(out)

    def case(self, item: Any, where: Loc, logsource: str | None, i: int) -> TestCase | None:
        if not isinstance(item, YMap) or not isinstance(item.get("events"), YList):
            self.error(where, "a test case needs 'events' (a list) and 'expect' (alert count)")
            return None
        expect = item.get("expect", 1)
        if isinstance(expect, bool) or not isinstance(expect, int) or expect < 0:
            self.error(item.val_loc("expect"), "'expect' must be a count of alerts (0 or more)")
            return None
        evs = item["events"]
        events = [self.event(e, evs.item_loc(j), logsource) for j, e in enumerate(evs)]
        if any(e is None for e in events):
            return None
        return TestCase(str(item.get("name", f"cases[{i}]")), tuple(e for e in events if e), expect, where)

    def event(self, item: Any, where: Loc, logsource: str | None) -> tuple[str, dict[str, Any]] | None:
        if not isinstance(item, YMap):
            self.error(where, "a test event must be a mapping of field: value")
            return None
        etype = item.get("logsource", logsource)
        if etype is None:
            self.error(where, "test events of a correlation need 'logsource' (the event type)")
            return None
        if etype not in LOGSOURCES:
            self.error(item.val_loc("logsource"), f"unknown logsource '{etype}'")
            return None
        types = field_types(etype)
        ok = True
        for key in item:
            if key != "logsource" and key not in types:
                self.error(item.key_loc(key), f"unknown field '{key}' in test event for '{etype}'")
                ok = False
        if not ok:
            return None
        return etype, {k: v for k, v in item.items() if k != "logsource"}

    def sibling_tests(self, path: str, start_rules: int, start_corrs: int) -> None:
        stem, _ = os.path.splitext(path)
        for ext in (".tests.yml", ".tests.yaml"):
            side = stem + ext
            if not os.path.exists(side):
                continue
            try:
                docs = load_documents(side)
            except YamlProblem as exc:
                self.error(exc.loc, exc.message)
                return
            mine = {r.id: ("r", i) for i, r in enumerate(self.rules) if i >= start_rules}
            mine.update({c.id: ("c", i) for i, c in enumerate(self.corrs) if i >= start_corrs})
            for doc, loc in docs:
                if not isinstance(doc, YMap):
                    self.error(loc, "a tests file maps rule ids to tests")
                    continue
                for rid, spec in doc.items():
                    if rid not in mine:
                        self.error(doc.key_loc(rid), f"tests for unknown rule '{rid}' (not in {path})")
                        continue
                    kind, idx = mine[rid]
                    if kind == "r":
                        r = self.rules[idx]
                        self.rules[idx] = replace(r, tests=r.tests + self.tests(spec, doc.val_loc(rid), r.logsource))
                    else:
                        c = self.corrs[idx]
                        self.corrs[idx] = replace(c, tests=c.tests + self.tests(spec, doc.val_loc(rid), None))

    # -- cross-file checks ------------------------------------------------------------------------
    def cross_check(self) -> None:
        by_ref: dict[str, Rule] = {}
        for r in self.rules:
            by_ref[r.id] = r
            if r.name:
                by_ref[r.name] = r
        corr_refs = {c.id for c in self.corrs} | {c.name for c in self.corrs if c.name}
        for c in self.corrs:
            targets: list[Rule] = []
            for ref, loc in zip(c.rules, c.rule_locs, strict=True):
                if ref in by_ref:
                    targets.append(by_ref[ref])
                elif ref in corr_refs:
                    self.error(loc, f"rule '{ref}' is a correlation; chained correlations are not supported")
                else:
                    self.error(loc, f"unknown rule '{ref}' referenced by correlation")
            if len(targets) != len(c.rules):
                continue
            fields = list(c.group_by) + ([c.threshold.field] if c.threshold and c.threshold.field else [])
            locs = list(c.group_locs) + ([c.threshold.loc] if c.threshold and c.threshold.field else [])
            for fld, loc in zip(fields, locs or [c.loc] * len(fields), strict=False):
                for t in targets:
                    actual = resolve_alias(c, t, fld)
                    if actual not in field_types(t.logsource):
                        self.error(loc, f"field '{actual}' is not in logsource '{t.logsource}' of rule '{t.title}'")
                        break

    def result(self) -> tuple[RuleSet, list[RuleDiagnostic]]:
        self.cross_check()
        return RuleSet(self.rules, self.corrs), sorted(set(self.diags))


def resolve_alias(corr: Correlation, rule: Rule, fld: str) -> str:
    """A correlation field for one referenced rule, through Sigma `aliases` (by rule id or name)."""
    mapping = corr.aliases.get(fld)
    if not mapping:
        return fld
    return mapping.get(rule.id) or (mapping.get(rule.name) if rule.name else None) or fld


def parse_paths(paths: list[str], lists: dict[str, NamedList]) -> tuple[RuleSet, list[RuleDiagnostic]]:
    parser = Parser(lists)
    for path in rule_files(paths):
        parser.parse_file(path)
    return parser.result()
