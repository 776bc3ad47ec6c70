"""Sigma correlation rules over rule matches: event_count, value_count, temporal, temporal_ordered.

Windows run on event time (`@timestamp` of the matching events), never wall time, so a replay at
any speed and live capture in any micro-batching give the same alerts (ARCHITECTURE.md "Event
time, not wall time"). Semantics, per group-by key (Sigma correlation rules specification v2):

- `gt`/`gte` conditions slide: the alert fires at the event that makes the count in
  [t - timespan, t] reach the threshold, then the group's window restarts (one alert per burst).
- `lt`/`lte`/`eq` need the whole window: it opens at the group's first event, closes at
  first + timespan, and is judged when a later event (of any group) passes its end, or at flush.
- temporal: every referenced rule (or `condition` many distinct rules) matched within timespan;
  temporal_ordered: in the listed order.

State is bounded (STYLE.md "State is explicit and bounded"): at most `max_groups` groups per
correlation and `max_values` distinct values per value_count group; evictions are counted.
Events with a null group-by value are skipped: grouping unrelated events under "null" would
invent a common entity.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.detect.rules.alerts import alert, iso
from appliance.detect.rules.model import Correlation

MAX_GROUPS = 100_000
MAX_VALUES = 10_000
_SAMPLE = 20  # counted values listed in an alert's evidence


@dataclass
class Match:
    """One event that matched a rule referenced by correlations."""

    t: int
    rule_id: str
    record: dict[str, Any]


@dataclass
class _Group:
    key: tuple[Any, ...]
    start: int = 0
    times: list[int] = field(default_factory=list)
    values: OrderedDict[Any, int] = field(default_factory=OrderedDict)
    rule_times: dict[int, int] = field(default_factory=dict)
    chain: dict[int, int] = field(default_factory=dict)


class _State:
    """The groups of one correlation, oldest first, with the per-type step function."""

    def __init__(self, corr: Correlation, group_fields: dict[str, tuple[str, ...]],
                 value_fields: dict[str, str | None], stats: dict[str, int], limits: tuple[int, int]) -> None:
        self.c = corr
        self.group_fields = group_fields
        self.value_fields = value_fields
        self.stats = stats
        self.max_groups, self.max_values = limits
        self.groups: OrderedDict[tuple[Any, ...], _Group] = OrderedDict()
        self.order = {ref: i for i, ref in enumerate(corr.rules)}
        self.early = corr.threshold is None or corr.threshold.fires_early()
        self.step = _bind(self)

    def feed(self, m: Match, ref: str) -> list[dict[str, Any]]:
        key = tuple(m.record.get(f) for f in self.group_fields[ref])
        if any(v is None for v in key):
            self.stats["correlation.skipped_null_group"] = self.stats.get("correlation.skipped_null_group", 0) + 1
            return []
        out: list[dict[str, Any]] = []
        g = self.groups.get(key)
        if g is not None and not self.early and m.t > g.start + self.c.timespan_ns:
            fired = self.close(g)
            if fired:
                out.append(fired)
            g = None
        if g is None:
            g = _Group(key, start=m.t)
            self.groups[key] = g
            if len(self.groups) > self.max_groups:
                self.groups.popitem(last=False)
                self.stats["correlation.evicted_groups"] = self.stats.get("correlation.evicted_groups", 0) + 1
        if self.early:
            self.groups.move_to_end(key)  # least recently updated first, for eviction
        fired = self.step(g, m, self.order[ref])
        if fired is not None:
            out.append(self.emit(g, m.t, fired))
            del self.groups[key]
        return out

    def value_of(self, m: Match, ref: str) -> Any:
        fld = self.value_fields.get(ref)
        return m.record.get(fld) if fld else None

    def close(self, g: _Group) -> dict[str, Any] | None:
        """Judge a whole window (lt/lte/eq conditions) at its end."""
        self.groups.pop(g.key, None)
        n = len(g.values) if self.c.type == "value_count" else len(g.times)
        if self.c.threshold is not None and self.c.threshold.holds(n):
            return self.emit(g, g.start + self.c.timespan_ns, {"count": n})
        return None

    def expire(self, watermark: int) -> list[dict[str, Any]]:
        """Close every whole-window group whose window ended before the watermark (oldest first)."""
        out: list[dict[str, Any]] = []
        if self.early:
            return out
        while self.groups:
            g = next(iter(self.groups.values()))
            if g.start + self.c.timespan_ns >= watermark:
                break
            fired = self.close(g)
            if fired:
                out.append(fired)
        return out

    def emit(self, g: _Group, t: int, info: dict[str, Any]) -> dict[str, Any]:
        group = dict(zip(self.c.group_by, g.key, strict=True))
        record = dict(group)
        ev: dict[str, Any] = {"correlation": self.c.type, "group": group, "timespan": self.c.timespan_text,
                              "window.start": iso(max(g.start, t - self.c.timespan_ns)), "window.end": iso(t),
                              "rules": list(self.c.rules), **info}
        if self.c.type == "value_count" and self.c.threshold and self.c.threshold.field:
            fld = self.c.threshold.field
            ev["field"] = fld
            ev["values"] = sorted(g.values, key=str)[:_SAMPLE]
            record[fld] = sorted(g.values, key=str)[:_SAMPLE]
        out = alert(t, self.c.id, self.c.title, self.c.level, "correlation", record, [ev])
        out["_sort"] = (t, self.c.id, str(g.key))
        return out


class Correlator:
    """All correlation rules; `process` takes time-sorted matches of one batch, `flush` ends input."""

    def __init__(self, corrs: list[Correlation], fields_for: Callable[[Correlation, str, str], str],
                 max_groups: int = MAX_GROUPS, max_values: int = MAX_VALUES) -> None:
        self.stats: dict[str, int] = {}
        self.states: list[_State] = []
        self.by_rule: dict[str, list[tuple[_State, str]]] = {}
        self.watermark = -(2**63)
        for c in corrs:
            gf = {ref: tuple(fields_for(c, ref, f) for f in c.group_by) for ref in c.rules}
            vf = {ref: (fields_for(c, ref, c.threshold.field) if c.threshold and c.threshold.field else None)
                  for ref in c.rules}
            self.states.append(_State(c, gf, vf, self.stats, (max_groups, max_values)))
        for st in self.states:
            for ref in st.c.rules:
                self.by_rule.setdefault(ref, []).append((st, ref))

    def wants(self, refs: tuple[str, ...]) -> bool:
        return any(r in self.by_rule for r in refs)

    def process(self, matches: list[tuple[Match, tuple[str, ...]]]) -> list[dict[str, Any]]:
        """Matches sorted by event time; each with the references (id, name) its rule answers to."""
        out: list[dict[str, Any]] = []
        for m, refs in matches:
            if m.t < self.watermark:
                self.stats["correlation.late_events"] = self.stats.get("correlation.late_events", 0) + 1
            else:
                self.watermark = m.t
                for st in self.states:
                    out.extend(st.expire(m.t))
            for ref in refs:
                for st, own in self.by_rule.get(ref, []):
                    out.extend(st.feed(m, own))
        return out

    def flush(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for st in self.states:
            out.extend(st.expire(2**63 - 1))
            st.groups.clear()
        return out

    def group_count(self) -> int:
        return sum(len(st.groups) for st in self.states)


def _bind(st: _State) -> Callable[[_Group, Match, int], dict[str, Any] | None]:
    """The step function of the state's correlation type, closed over its settings."""
    c = st.c
    span = c.timespan_ns
    thr = c.threshold
    n_rules = len(c.rules)

    def event_count(g: _Group, m: Match, idx: int) -> dict[str, Any] | None:
        bisect.insort(g.times, m.t)
        if not st.early:
            return None
        lo = bisect.bisect_left(g.times, m.t - span)
        del g.times[:lo]
        g.start = g.times[0]
        return {"count": len(g.times)} if thr is not None and thr.holds(len(g.times)) else None

    def value_count(g: _Group, m: Match, idx: int) -> dict[str, Any] | None:
        ref = c.rules[idx]
        v = st.value_of(m, ref)
        if v is None:
            return None
        g.values[v] = max(m.t, g.values.get(v, m.t))
        g.values.move_to_end(v)
        if len(g.values) > st.max_values:
            g.values.popitem(last=False)
            st.stats["correlation.evicted_values"] = st.stats.get("correlation.evicted_values", 0) + 1
        if not st.early:
            return None
        while g.values and next(iter(g.values.values())) < m.t - span:
            g.values.popitem(last=False)
        g.start = min(g.values.values()) if g.values else m.t
        return {"count": len(g.values)} if thr is not None and thr.holds(len(g.values)) else None

    def temporal(g: _Group, m: Match, idx: int) -> dict[str, Any] | None:
        g.rule_times[idx] = m.t
        for k in [k for k, t in g.rule_times.items() if t < m.t - span]:
            del g.rule_times[k]
        g.start = min(g.rule_times.values())
        n = len(g.rule_times)
        ok = thr.holds(n) if thr is not None else n == n_rules
        return {"count": n} if ok else None

    def temporal_ordered(g: _Group, m: Match, idx: int) -> dict[str, Any] | None:
        # chain[k] = latest start time of a sequence rule0 → … → rule k seen in order.
        for k in [k for k, t in g.chain.items() if t < m.t - span]:
            del g.chain[k]
        if idx == 0:
            g.chain[0] = m.t
        elif idx - 1 in g.chain:
            g.chain[idx] = max(g.chain.get(idx, g.chain[idx - 1]), g.chain[idx - 1])
        g.start = min(g.chain.values()) if g.chain else m.t
        if n_rules - 1 in g.chain:
            g.start = g.chain[n_rules - 1]
            return {"count": n_rules}
        return None

    # The registry of correlation types (STYLE.md §6); parse.CORRELATION_TYPES lists the same keys.
    steps: dict[str, Callable[[_Group, Match, int], dict[str, Any] | None]] = {
        "event_count": event_count,
        "value_count": value_count,
        "temporal": temporal,
        "temporal_ordered": temporal_ordered,
    }
    return steps[c.type]

