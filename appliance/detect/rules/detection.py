"""Parsing a rule's `detection:` block: selections, field items with modifiers, named lists, condition.

Every check that can fail on one rule body lives here and records a diagnostic at the exact key
or value it is about, so `rules validate` can list every problem of a file at once.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any

import polars as pl

from appliance.detect.rules.condition import ConditionError, parse_condition
from appliance.detect.rules.fields import SIGMA_FIELDS, field_types, kind_of
from appliance.detect.rules.lists import NamedList
from appliance.detect.rules.loader import Loc, YList, YMap
from appliance.detect.rules.model import Cond, FieldMatch, RuleDiagnostic, Selection
from appliance.detect.rules.modifiers import (
    COMPARISONS,
    FLAGS,
    NUMBER_OPS,
    OTHER_OPS,
    STRING_OPS,
    UNSUPPORTED,
)

_PLACEHOLDER = re.compile(r"^%([A-Za-z0-9_.:-]+)%$")


class DetectionParser:
    """Parses detection blocks of one logsource; appends diagnostics instead of raising."""

    def __init__(self, lists: dict[str, NamedList], diags: list[RuleDiagnostic]) -> None:
        self.lists = lists
        self.diags = diags

    def error(self, loc: Loc, message: str) -> None:
        self.diags.append(RuleDiagnostic(loc, message))

    def parse(self, detection: Any, loc: Loc, logsource: str, sigma: bool) -> tuple[dict[str, Selection], Cond] | None:
        if not isinstance(detection, YMap):
            self.error(loc, "'detection' must be a mapping of selections and a 'condition'")
            return None
        selections: dict[str, Selection] = {}
        ok = True
        for name, body in detection.items():
            if name == "condition":
                continue
            if name == "timeframe":
                self.error(detection.key_loc(name), "'timeframe' is obsolete Sigma; write a correlation rule")
                ok = False
                continue
            sel = self.selection(name, body, detection.val_loc(name), logsource, sigma)
            if sel is None:
                ok = False
            else:
                selections[name] = sel
        if "condition" not in detection:
            self.error(detection.loc, "detection has no 'condition'")
            return None
        cond = self.condition(detection["condition"], detection.val_loc("condition"), list(detection))
        if cond is None or not ok:
            return None
        return selections, cond

    def condition(self, raw: Any, loc: Loc, names: list[str]) -> Cond | None:
        names = [n for n in names if n not in ("condition", "timeframe")]
        items: list[tuple[Any, Loc]]
        if isinstance(raw, YList):
            items = [(c, raw.item_loc(i)) for i, c in enumerate(raw)]
        else:
            items = [(raw, loc)]
        parts: list[Cond] = []
        for text, where in items:
            if not isinstance(text, str):
                self.error(where, "a condition must be a string")
                return None
            try:
                parts.append(parse_condition(text, names))
            except ConditionError as exc:
                # Plain and quoted scalars: the text starts at the value's column (+1 past a quote).
                shift = 1 if _quoted_at(where) else 0
                self.error(Loc(where.path, where.line, where.col + shift + exc.offset), exc.message)
                return None
        # A list of conditions means OR (Sigma rules specification, "Condition").
        return parts[0] if len(parts) == 1 else ("or", tuple(parts))

    def selection(self, name: str, body: Any, loc: Loc, logsource: str, sigma: bool) -> Selection | None:
        if isinstance(body, YMap):
            alt = self.alternative(body, logsource, sigma)
            return None if alt is None else Selection(name, (alt,), loc)
        if isinstance(body, YList) and body:
            if all(isinstance(b, YMap) for b in body):
                alts = [self.alternative(b, logsource, sigma) for b in body]
                if any(a is None for a in alts):
                    return None
                return Selection(name, tuple(a for a in alts if a is not None), loc)
            self.error(loc, f"selection '{name}': keyword (full-text) searches are not supported; "
                            "name a field, e.g. 'url.path|contains: …'")
            return None
        self.error(loc, f"selection '{name}' must be a mapping of fields or a list of mappings")
        return None

    def alternative(self, body: YMap, logsource: str, sigma: bool) -> tuple[FieldMatch, ...] | None:
        if not body:
            self.error(body.loc, "a selection needs at least one field")
            return None
        out: list[FieldMatch] = []
        ok = True
        for key, value in body.items():
            m = self.field_item(key, value, body.key_loc(key), body.val_loc(key), logsource, sigma)
            if m is None:
                ok = False
            else:
                out.append(m)
        return tuple(out) if ok else None

    def field_item(self, key: str, raw: Any, kloc: Loc, vloc: Loc, logsource: str, sigma: bool) -> FieldMatch | None:
        parts = key.split("|")
        name = parts[0]
        types = field_types(logsource)
        if sigma and name not in types:
            name = SIGMA_FIELDS.get(logsource, {}).get(name, name)
        if name not in types:
            hint = difflib.get_close_matches(name, list(types), n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            self.error(kloc, f"unknown field '{parts[0]}' for logsource '{logsource}'{extra}")
            return None
        op, flags, match_all, cased, from_list, expand = "eq", "", False, False, False, False
        col = kloc.col + len(name) + 1
        for mod in parts[1:]:
            mloc = Loc(kloc.path, kloc.line, col)
            col += len(mod) + 1
            if mod in COMPARISONS:
                if op != "eq":
                    self.error(mloc, f"two comparison modifiers ('{op}' and '{mod}') on one field")
                    return None
                op = mod
            elif mod in FLAGS:
                match_all |= mod == "all"
                cased |= mod == "cased"
                from_list |= mod == "in_list"
                expand |= mod == "expand"
                if mod in ("i", "m", "s"):
                    flags += mod
            elif mod in UNSUPPORTED:
                self.error(mloc, f"unsupported Sigma modifier '{mod}': our events carry no such encoding")
                return None
            else:
                self.error(mloc, f"unknown modifier '{mod}'")
                return None
        if flags and op != "re":
            self.error(kloc, f"regex flags '|{'|'.join(flags)}' need the 're' modifier")
            return None
        values, vlocs = _values(raw, vloc)
        if not values:
            self.error(vloc, "empty value list")
            return None
        list_names: tuple[str, ...] = ()
        if from_list or expand:
            expanded = self.expand_lists(values, vlocs, placeholders=expand)
            if expanded is None:
                return None
            values, list_names = expanded
            vlocs = [vloc] * len(values)
            if not values:
                self.error(vloc, "the named lists are empty")
                return None
        kind = kind_of(types[name])
        checked = self.check_values(name, kind, op, values, vlocs, kloc)
        if checked is None:
            return None
        return FieldMatch(name, op, tuple(checked), match_all, cased, flags, kloc, list_names)

    def expand_lists(self, values: list[Any], locs: list[Loc], placeholders: bool) -> tuple[list[Any], tuple[str, ...]] | None:
        out: list[Any] = []
        names: list[str] = []
        for v, loc in zip(values, locs, strict=True):
            ref = v
            if placeholders:
                m = _PLACEHOLDER.match(str(v))
                if not m:
                    self.error(loc, f"'|expand' values must be '%name%' placeholders, got {v!r}")
                    return None
                ref = m.group(1)
            if not isinstance(ref, str):
                self.error(loc, f"a list reference must be a name, got {ref!r}")
                return None
            base, _, kind = ref.partition(":")
            lst = self.lists.get(base)
            if lst is None:
                hint = difflib.get_close_matches(base, list(self.lists), n=1)
                extra = f" (did you mean '{hint[0]}'?)" if hint else ""
                self.error(loc, f"unknown list '{base}'{extra}")
                return None
            out.extend(lst.select(kind or None))
            names.append(ref)
        return out, tuple(names)

    def check_values(self, name: str, kind: str, op: str, values: list[Any], locs: list[Loc], kloc: Loc) -> list[Any] | None:
        allowed = STRING_OPS if kind in ("string", "list") else NUMBER_OPS if kind == "number" else OTHER_OPS
        if kind == "time":
            allowed = frozenset({"exists", "hour"})
        elif op == "hour":
            allowed = frozenset()
        if op not in allowed:
            self.error(kloc, f"modifier '{op}' does not apply to {kind} field '{name}'")
            return None
        if op == "exists":
            if len(values) != 1 or not isinstance(values[0], bool):
                self.error(locs[0], "'|exists' takes true or false")
                return None
            return values
        if op == "hour":
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 23 for v in values):
                self.error(locs[0], "'|hour' takes hours 0 to 23 (UTC)")
                return None
            return values
        if op in ("gt", "gte", "lt", "lte") and len(values) != 1:
            self.error(locs[0], f"'|{op}' takes exactly one number")
            return None
        out: list[Any] = []
        for v, loc in zip(values, locs, strict=True):
            if v is None:
                if op != "eq":
                    self.error(loc, f"null cannot be used with '|{op}'")
                    return None
                out.append(None)
                continue
            if kind in ("string", "list"):
                if isinstance(v, bool) or not isinstance(v, str | int | float):
                    self.error(loc, f"field '{name}' is a string; got {v!r}")
                    return None
                v = str(v)
                if op == "re" and not self.regex_ok(v, loc):
                    return None
                if op == "cidr":
                    try:
                        ipaddress.ip_network(v, strict=False)
                    except ValueError:
                        self.error(loc, f"bad CIDR '{v}'")
                        return None
            elif kind == "number":
                if isinstance(v, str) and re.fullmatch(r"-?[0-9]+", v.strip()):
                    v = int(v)  # catalogs store ASNs as strings; the field is numeric
                if isinstance(v, bool) or not isinstance(v, int | float):
                    self.error(loc, f"field '{name}' is a number; got {v!r}")
                    return None
            elif kind == "bool" and not isinstance(v, bool):
                self.error(loc, f"field '{name}' is true/false; got {v!r}")
                return None
            out.append(v)
        return out

    def regex_ok(self, pattern: str, loc: Loc) -> bool:
        try:
            re.compile(pattern)
            # The engine runs Rust's regex crate: no look-around or back-references (a Python-valid
            # pattern can still be rejected here, so check with the engine that will run it).
            pl.Series([""], dtype=pl.Utf8).str.contains(pattern)
        except re.error as exc:
            self.error(loc, f"bad regex {pattern!r}: {exc}")
            return False
        except pl.exceptions.PolarsError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip().startswith("error:")]
            reason = lines[0].removeprefix("error:").strip() if lines else "rejected by the regex engine"
            self.error(loc, f"bad regex {pattern!r}: {reason}")
            return False
        return True


def _values(raw: Any, loc: Loc) -> tuple[list[Any], list[Loc]]:
    if isinstance(raw, YList):
        return list(raw), [raw.item_loc(i) for i in range(len(raw))]
    if isinstance(raw, YMap):
        return [raw], [loc]
    return [raw], [loc]


def _quoted_at(loc: Loc) -> bool:
    try:
        with open(loc.path, encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if i == loc.line:
                    return line[loc.col - 1 : loc.col] in ("'", '"')
    except OSError:
        return False
    return False
