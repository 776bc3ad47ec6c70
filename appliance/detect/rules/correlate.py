"""Sigma correlation rules over rule matches: event_count, value_count, temporal, temporal_ordered.

Windows run on event time (`@timestamp` of the matching events), never wall time or arrival
order (ARCHITECTURE.md "Event time, not wall time"): replay in big batches and the live daemon in
micro-batches must give the same alerts. Events do not arrive in event-time order: a flow event
carries the flow's *start* but is emitted at its end (up to the active timeout plus the idle
timeout later), and the pipeline hands over one frame per event type per batch. So matches are
not judged on arrival. Each correlation keeps a reorder buffer (a heap keyed by event time, then
a deterministic tie-break) and releases matches in that order only once the event-time watermark
has passed them:

    watermark = min over the correlation's clock domains of (latest @timestamp seen) - allowed lateness

A clock domain is the set of event types sharing one clock: the packet events (flow, tls, http,
dns) share the capture's, each metadata log (request, account) has its own, so a week of request
history ingested after the pcaps is not "late" against packet time. A match is late when the
watermark had already passed it on arrival (its window may have been judged): it is counted in
`correlation.late_events` and left out, never silently. Given the released order, the semantics
(per group-by key, Sigma correlation rules specification v2) are:

- `gt`/`gte` (event_count, value_count) and temporal/temporal_ordered fire at the event that
  satisfies the condition within [t - timespan, t]; the group then stays quiet for one timespan
  (matches up to alert time + timespan are absorbed) and starts afresh: one alert per burst.
- `lt`/`lte`/`eq` need the whole window: it opens at the group's first event, ends at
  first + timespan and is judged once the watermark has passed its end (or at flush).
- Equal timestamps are ordered by the rule's position in `rules:` (so temporal_ordered counts
  them as in order), then by group and value: the outcome never depends on arrival order.

State is bounded (STYLE.md "State is explicit and bounded"): at most `max_groups` groups per
correlation, `max_values` distinct values per value_count group and `max_pending` buffered
matches per correlation; evictions and forced early releases are counted. Events with a null
group-by value are skipped: grouping unrelated events under "null" would invent a common entity.
"""

from __future__ import annotations

import bisect
import heapq
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.detect.rules.alerts import alert, iso
from appliance.detect.rules.model import Correlation

MAX_GROUPS = 100_000
MAX_VALUES = 10_000
# A buffered match costs ~0.5 kB; 200k per correlation caps a burst at ~100 MB each.
MAX_PENDING = 200_000
# Allowed lateness: a flow event is emitted at most active timeout (1800 s) + TCP idle timeout
# (300 s) after its start (appliance/decode/flows.py defaults); the remaining 1500 s cover the
# flow table's expiry sweep, the deep parser's answer waits and the packet time one replay batch
# spans. Matches within it give identical alerts however they are batched.
DEFAULT_LATENESS_NS = 3600 * 10**9
# Event types stamped by the packet clock; every other type (request, account logs) is its own clock.
PACKET_CLOCK = {"flow": "packet", "tls": "packet", "http": "packet", "dns": "packet"}
_MIN = -(2**63)
_MAX = 2**63 - 1
_SAMPLE = 20  # counted values listed in an alert's evidence
COUNTERS = ("correlation.late_events", "correlation.forced_releases", "correlation.evicted_groups",
            "correlation.evicted_values", "correlation.skipped_null_group", "correlation.skipped_null_time")


def clock_of(event_type: str) -> str:
    """The clock domain an event type's timestamps belong to."""
    return PACKET_CLOCK.get(event_type, event_type)


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
    last: int = 0
    muted_until: int = _MIN
    times: list[int] = field(default_factory=list)
    values: OrderedDict[Any, int] = field(default_factory=OrderedDict)
    rule_times: dict[int, int] = field(default_factory=dict)
    chain: dict[int, int] = field(default_factory=dict)

    def reset(self) -> None:
        self.times.clear()
        self.values.clear()
        self.rule_times.clear()
        self.chain.clear()


# (t, rule index, sortable key, sortable value, arrival seq, key, value)
_Entry = tuple[int, int, tuple[int, Any], tuple[int, Any], int, tuple[Any, ...], Any]


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _sortable(v: Any) -> tuple[str, Any]:
    """A total order over mixed values: same-type values compare natively, others by type name."""
    if isinstance(v, str | int | float):
        return (type(v).__name__, v)
    return (type(v).__name__, repr(v))


def _bump(stats: dict[str, int], name: str, n: int = 1) -> None:
    stats[name] = stats.get(name, 0) + n


class _State:
    """One correlation: its reorder buffer, its groups (oldest first) and its step function."""

    def __init__(self, corr: Correlation, group_fields: dict[str, tuple[str, ...]],
                 value_fields: dict[str, str | None], clocks: frozenset[str], stats: dict[str, int],
                 limits: tuple[int, int, int]) -> None:
        self.c = corr
        self.span = corr.timespan_ns
        self.group_fields = group_fields
        self.value_fields = value_fields
        self.clocks = clocks
        self.stats = stats
        self.max_groups, self.max_values, self.max_pending = limits
        self.groups: OrderedDict[tuple[Any, ...], _Group] = OrderedDict()
        self.order = {ref: i for i, ref in enumerate(corr.rules)}
        self.early = corr.threshold is None or corr.threshold.fires_early()
        self.step = _bind(self)
        self.heap: list[_Entry] = []
        self.frontier = _MIN  # every match at or before it has been released
        self.seq = 0

    # -- reorder buffer -----------------------------------------------------------------------
    def push(self, m: Match, ref: str) -> None:
        rec = m.record
        key = tuple([rec.get(f) for f in self.group_fields[ref]])
        simple = True  # all strings (addresses, ids): the common case, compared as they are
        for v in key:
            if v is None:
                _bump(self.stats, "correlation.skipped_null_group")
                return
            if type(v) is not str:
                simple = False
        if m.t <= self.frontier:
            _bump(self.stats, "correlation.late_events")
            return
        if not simple:
            key = tuple(_hashable(v) for v in key)
        fld = self.value_fields.get(ref)
        value = _hashable(rec.get(fld)) if fld else None
        # The tie-break after the time must be total over mixed types: tag plain strings 0,
        # anything else 1 with (type name, value).
        skey = (0, key) if simple else (1, tuple(_sortable(v) for v in key))
        sval = (0, value) if type(value) is str else (1, _sortable(value))
        self.seq += 1
        heapq.heappush(self.heap, (m.t, self.order[ref], skey, sval, self.seq, key, value))

    def release(self, watermark: int) -> list[dict[str, Any]]:
        """Feed every buffered match at or before the watermark, in event-time order."""
        out: list[dict[str, Any]] = []
        heap = self.heap
        while heap and heap[0][0] <= watermark:
            self._apply(heapq.heappop(heap), out)
        if watermark > self.frontier:
            self.frontier = watermark
        out.extend(self.expire(self.frontier))
        while len(heap) > self.max_pending:
            # Over the cap: release the oldest early. Arrivals before it now count as late.
            entry = heapq.heappop(heap)
            _bump(self.stats, "correlation.forced_releases")
            self.frontier = max(self.frontier, entry[0])
            self._apply(entry, out)
        return out

    def _apply(self, entry: _Entry, out: list[dict[str, Any]]) -> None:
        t, idx, _, _, _, key, value = entry
        out.extend(self.expire(t))
        self.feed(t, idx, key, value, out)

    def reset(self) -> None:
        self.groups.clear()
        self.heap.clear()
        self.frontier = _MIN

    # -- groups (fed in event-time order) ------------------------------------------------------
    def feed(self, t: int, idx: int, key: tuple[Any, ...], value: Any, out: list[dict[str, Any]]) -> None:
        g = self.groups.get(key)
        if g is None:
            g = _Group(key, start=t, last=t)
            self.groups[key] = g
            if len(self.groups) > self.max_groups:
                self.groups.popitem(last=False)
                _bump(self.stats, "correlation.evicted_groups")
        if self.early:
            g.last = t
            self.groups.move_to_end(key)  # least recently updated first, for eviction and expiry
            if t <= g.muted_until:
                return
        fired = self.step(g, t, value, idx)
        if fired is None:
            return
        out.append(self.emit(g, t, fired))
        if self.early:
            g.reset()
            g.muted_until = t + self.span
        else:
            del self.groups[key]

    def expire(self, bound: int) -> list[dict[str, Any]]:
        """Close what no match after `bound` can change. Whole windows (lt/lte/eq) ending before
        it are judged; sliding groups whose content and quiet period ended are dropped (a fresh
        group behaves the same). Only prefixes are removed and the test is monotone in `bound`,
        so the groups alive at each fed match do not depend on how often this runs."""
        out: list[dict[str, Any]] = []
        groups = self.groups
        while groups:
            g = next(iter(groups.values()))
            if self.early:
                if max(g.last + self.span, g.muted_until) >= bound:
                    break
                del groups[g.key]
                continue
            if g.start + self.span >= bound:
                break
            fired = self.close(g)
            if fired:
                out.append(fired)
        return out

    def close(self, g: _Group) -> dict[str, Any] | None:
        """Judge a whole window (lt/lte/eq conditions) at its end."""
        self.groups.pop(g.key, None)
        n = len(g.values) if self.c.type == "value_count" else len(g.times)
        if self.c.threshold is not None and self.c.threshold.holds(n):
            return self.emit(g, g.start + self.span, {"count": n})
        return None

    def emit(self, g: _Group, t: int, info: dict[str, Any]) -> dict[str, Any]:
        group = dict(zip(self.c.group_by, g.key, strict=True))
        record = dict(group)
        ev: dict[str, Any] = {"correlation": self.c.type, "group": group, "timespan": self.c.timespan_text,
                              "window.start": iso(max(g.start, t - self.span)), "window.end": iso(t),
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
    """All correlation rules. `process` takes one frame's matches (any order) and that frame's
    latest timestamp; it returns the alerts of whatever the watermark released. `flush` ends input."""

    def __init__(self, corrs: list[Correlation], fields_for: Callable[[Correlation, str, str], str],
                 clock_for: Callable[[Correlation, str], str], max_groups: int = MAX_GROUPS,
                 max_values: int = MAX_VALUES, allowed_lateness_ns: int = DEFAULT_LATENESS_NS,
                 max_pending: int = MAX_PENDING) -> None:
        # Every counter present from the start, so a zero is visible in summary.json.
        self.stats: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.states: list[_State] = []
        self.by_rule: dict[str, list[tuple[_State, str]]] = {}
        self.by_clock: dict[str, list[_State]] = {}
        self.lateness = allowed_lateness_ns
        self.clocks: dict[str, int] = {}  # clock domain → latest @timestamp seen
        for c in corrs:
            gf = {ref: tuple(fields_for(c, ref, f) for f in c.group_by) for ref in c.rules}
            vf = {ref: (fields_for(c, ref, c.threshold.field) if c.threshold and c.threshold.field else None)
                  for ref in c.rules}
            clocks = frozenset(clock_for(c, ref) for ref in c.rules)
            self.states.append(_State(c, gf, vf, clocks, self.stats, (max_groups, max_values, max_pending)))
        for st in self.states:
            for ref in st.c.rules:
                self.by_rule.setdefault(ref, []).append((st, ref))
            for clk in st.clocks:
                self.by_clock.setdefault(clk, []).append(st)

    def wants(self, refs: tuple[str, ...]) -> bool:
        return any(r in self.by_rule for r in refs)

    def tracks(self, clock: str) -> bool:
        """Whether any correlation's watermark follows this clock domain."""
        return clock in self.by_clock

    def watermark(self, st: _State) -> int:
        seen = [self.clocks[c] for c in st.clocks if c in self.clocks]
        return min(seen) - self.lateness if seen else _MIN

    def process(self, clock: str, matches: list[tuple[Match, tuple[str, ...]]], latest: int | None) -> list[dict[str, Any]]:
        """Buffer one frame's matches (each with the references, id and name, its rule answers to),
        advance `clock` to the frame's latest timestamp, release what the watermark passed."""
        for m, refs in matches:
            for ref in refs:
                for st, own in self.by_rule.get(ref, []):
                    st.push(m, own)
        if latest is not None and latest > self.clocks.get(clock, _MIN):
            self.clocks[clock] = latest
        out: list[dict[str, Any]] = []
        for st in self.by_clock.get(clock, []):
            out.extend(st.release(self.watermark(st)))
        return out

    def flush(self) -> list[dict[str, Any]]:
        """End of input: release and judge everything; the correlator then starts afresh."""
        out: list[dict[str, Any]] = []
        for st in self.states:
            out.extend(st.release(_MAX))
            st.reset()
        self.clocks.clear()
        return out

    def group_count(self) -> int:
        return sum(len(st.groups) for st in self.states)

    def pending_count(self) -> int:
        return sum(len(st.heap) for st in self.states)


def _bind(st: _State) -> Callable[[_Group, int, Any, int], dict[str, Any] | None]:
    """The step function of the state's correlation type, closed over its settings."""
    c = st.c
    span = c.timespan_ns
    thr = c.threshold
    n_rules = len(c.rules)

    def event_count(g: _Group, t: int, value: Any, idx: int) -> dict[str, Any] | None:
        bisect.insort(g.times, t)
        if not st.early:
            return None
        lo = bisect.bisect_left(g.times, t - span)
        del g.times[:lo]
        g.start = g.times[0]
        return {"count": len(g.times)} if thr is not None and thr.holds(len(g.times)) else None

    def value_count(g: _Group, t: int, value: Any, idx: int) -> dict[str, Any] | None:
        if value is None:
            return None
        g.values[value] = max(t, g.values.get(value, t))
        g.values.move_to_end(value)
        if len(g.values) > st.max_values:
            g.values.popitem(last=False)
            _bump(st.stats, "correlation.evicted_values")
        if not st.early:
            return None
        while g.values and next(iter(g.values.values())) < t - span:
            g.values.popitem(last=False)
        g.start = min(g.values.values()) if g.values else t
        return {"count": len(g.values)} if thr is not None and thr.holds(len(g.values)) else None

    def temporal(g: _Group, t: int, value: Any, idx: int) -> dict[str, Any] | None:
        g.rule_times[idx] = t
        for k in [k for k, tk in g.rule_times.items() if tk < t - span]:
            del g.rule_times[k]
        g.start = min(g.rule_times.values())
        n = len(g.rule_times)
        ok = thr.holds(n) if thr is not None else n == n_rules
        return {"count": n} if ok else None

    def temporal_ordered(g: _Group, t: int, value: Any, idx: int) -> dict[str, Any] | None:
        # chain[k] = latest start time of a sequence rule0 → … → rule k seen in order.
        for k in [k for k, tk in g.chain.items() if tk < t - span]:
            del g.chain[k]
        if idx == 0:
            g.chain[0] = t
        elif idx - 1 in g.chain:
            g.chain[idx] = max(g.chain.get(idx, g.chain[idx - 1]), g.chain[idx - 1])
        g.start = min(g.chain.values()) if g.chain else t
        if n_rules - 1 in g.chain:
            g.start = g.chain[n_rules - 1]
            return {"count": n_rules}
        return None

    # The registry of correlation types (STYLE.md §6); parse.CORRELATION_TYPES lists the same keys.
    steps: dict[str, Callable[[_Group, int, Any, int], dict[str, Any] | None]] = {
        "event_count": event_count,
        "value_count": value_count,
        "temporal": temporal,
        "temporal_ordered": temporal_ordered,
    }
    return steps[c.type]
