"""Correlation alerts do not depend on batching or type order (appliance/detect/rules/correlate.py).

The same matches fed in one frame per type, one event per frame, whole types in shuffled order,
random splits, or pipeline-like batches with flow-style delays must give the same alerts; matches
later than the allowed lateness are counted; the real CLI gives the same alerts.jsonl for small and
big packet batches.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _rules_support import RID, RID2, RID3, engine_for, frame, lists_dir, write

from appliance.detect.rules.engine import RuleEngine

ROOT = Path(__file__).resolve().parents[2]
MIN = 60 * 10**9
H_RULE = f"""title: h
name: rule_h
id: {RID}
level: low
logsource: http
detection:
  sel:
    url.path: /a
  condition: sel
---
title: t
name: rule_t
id: {RID2}
level: low
logsource: tls
detection:
  sel:
    tls.client.server_name: api.openai.com
  condition: sel
"""
CORRS = {
    "event_count": "  type: event_count\n  rules: [rule_h, rule_t]\n  condition: {gte: 4}\n",
    "event_count_lt": "  type: event_count\n  rules: [rule_h, rule_t]\n  condition: {lt: 3}\n",
    "value_count": "  type: value_count\n  rules: [rule_h, rule_t]\n  condition: {field: destination.ip, gte: 3}\n",
    "temporal": "  type: temporal\n  rules: [rule_h, rule_t]\n",
    "temporal_ordered": "  type: temporal_ordered\n  rules: [rule_h, rule_t]\n",
}
HOURS = 3


def rules_text(kind: str) -> str:
    return (H_RULE + f"---\ntitle: c\nid: {RID3}\nlevel: high\ncorrelation:\n{CORRS[kind]}"
            "  group-by: [source.ip]\n  timespan: 10m\n")


def iso(ns: int) -> str:
    s, rem = divmod(ns, 10**9)
    return f"2024-01-01T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{rem:09d}Z"


def make_events(seed: int, n: int = 240) -> list[tuple[str, int, dict[str, Any]]]:
    """(type, event time ns, record): 4 hosts over three hours, matching and non-matching events,
    times on a 10 s grid so that equal timestamps (tie-breaks) are common."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.randrange(0, HOURS * 3600, 10) * 10**9
        ip = f"10.0.0.{rng.randrange(4)}"
        dst = f"203.0.113.{rng.randrange(5)}"
        if rng.random() < 0.5:
            rec = {"url.path": rng.choice(["/a", "/a", "/b"]), "source.ip": ip, "destination.ip": dst}
            out.append(("http", t, {"@timestamp": iso(t), **rec}))
        else:
            sni = rng.choice(["api.openai.com", "api.openai.com", "example.org"])
            out.append(("tls", t, {"@timestamp": iso(t), "tls.client.server_name": sni, "source.ip": ip,
                                   "destination.ip": dst}))
    out.sort(key=lambda e: e[1])
    return out


Batch = list[tuple[str, list[dict[str, Any]]]]


def feed(engine: RuleEngine, batches: Batch) -> list[str]:
    out: list[dict[str, Any]] = []
    for etype, recs in batches:
        if recs:
            out += engine.evaluate(etype, frame(etype, recs))
    out += engine.flush()
    return sorted(json.dumps(a, sort_keys=True) for a in out)


def by_type(events: list[tuple[str, int, dict[str, Any]]], order: list[str]) -> Batch:
    return [(t, [e[2] for e in events if e[0] == t]) for t in order]


def modes(events: list[tuple[str, int, dict[str, Any]]], rng: random.Random) -> dict[str, Batch]:
    cuts = sorted(rng.sample(range(1, len(events)), 12))
    chunks = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    # pipeline-like: events arrive up to 20 min after their time (flows are stamped with their
    # start), in 5-minute batches, each batch one frame per type in a random type order
    delay = {id(e): rng.randrange(0, 20 * MIN, 10**9) if e[0] == "tls" else 0 for e in events}
    arrival: dict[int, list[tuple[str, int, dict[str, Any]]]] = {}
    for e in sorted(events, key=lambda e: e[1] + delay[id(e)]):
        arrival.setdefault((e[1] + delay[id(e)]) // (5 * MIN), []).append(e)
    piped: Batch = []
    for k in sorted(arrival):
        piped += by_type(arrival[k], rng.sample(["http", "tls"], 2))
    return {
        "one frame per type": by_type(events, ["http", "tls"]),
        "one event per frame": [(e[0], [e[2]]) for e in events],
        "types in shuffled order": by_type(events, ["tls", "http"]),
        "random splits": [b for c in chunks for b in by_type(c, rng.sample(["http", "tls"], 2))],
        "pipeline-like delays": piped,
    }


@pytest.mark.parametrize("kind", sorted(CORRS))
@pytest.mark.parametrize("seed", [1, 2])
def test_alerts_do_not_depend_on_batching_or_type_order(tmp_path: Path, kind: str, seed: int) -> None:
    events = make_events(seed)
    results = {}
    for i, (name, batches) in enumerate(modes(events, random.Random(seed)).items()):
        # whole types in one go span three hours of event time: allow that much lateness
        engine = engine_for(tmp_path, rules_text(kind), name=f"{kind}{i}.yml")
        engine.correlator.lateness = HOURS * 3600 * 10**9
        results[name] = feed(engine, batches)
        assert engine.stats.get("correlation.late_events", 0) == 0, name
    first = results["one frame per type"]
    assert len(first) >= 2, kind  # the data exercises the rule
    for name, got in results.items():
        assert got == first, (kind, name)


def test_default_lateness_covers_flow_style_delays(tmp_path: Path) -> None:
    events = make_events(3)
    batches = modes(events, random.Random(3))
    ref = feed(engine_for(tmp_path, rules_text("temporal"), name="a.yml"), batches["one event per frame"])
    engine = engine_for(tmp_path, rules_text("temporal"), name="b.yml")  # default lateness (1 h)
    assert feed(engine, batches["pipeline-like delays"]) == ref and ref
    assert engine.stats.get("correlation.late_events", 0) == 0
    # with no allowed lateness the same arrival order loses the delayed matches, and says so
    strict = engine_for(tmp_path, rules_text("temporal"), name="c.yml")
    strict.correlator.lateness = 0
    assert feed(strict, batches["pipeline-like delays"]) != ref
    assert strict.stats["correlation.late_events"] > 0


def reference_event_count(events: list[tuple[str, int, dict[str, Any]]], span: int, n: int) -> list[tuple[int, str]]:
    """The documented gte semantics, written out plainly: fire at the n-th match within the
    timespan, then stay quiet for a timespan and start afresh."""
    fired = []
    state: dict[str, tuple[list[int], int]] = {}
    for etype, t, rec in events:
        hit = rec.get("url.path") == "/a" if etype == "http" else rec.get("tls.client.server_name") == "api.openai.com"
        if not hit:
            continue
        times, muted = state.get(rec["source.ip"], ([], -1))
        if t <= muted:
            continue
        times = [x for x in times if x >= t - span] + [t]
        if len(times) >= n:
            fired.append((t, rec["source.ip"]))
            times, muted = [], t + span
        state[rec["source.ip"]] = (times, muted)
    return sorted(fired)


def test_event_count_matches_the_documented_semantics(tmp_path: Path) -> None:
    events = make_events(5)
    engine = engine_for(tmp_path, rules_text("event_count"))
    alerts = [json.loads(a) for a in feed(engine, modes(events, random.Random(5))["one event per frame"])]
    got = sorted((_ns(a["@timestamp"]), a["evidence"][0]["group"]["source.ip"]) for a in alerts)
    assert got == reference_event_count(events, 10 * MIN, 4) and got


def _ns(text: str) -> int:
    h, m, s = text[11:26].split(":")
    return (int(h) * 3600 + int(m) * 60) * 10**9 + round(float(s) * 10**9)


def test_late_matches_are_counted_and_left_out(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yml", rules_text("temporal"))
    engine = RuleEngine.load([path], data_dirs=[lists_dir(tmp_path)], allowed_lateness_ns=10 * MIN)
    http = {"url.path": "/a", "source.ip": "10.0.0.1", "destination.ip": "203.0.113.1"}
    tls = {"tls.client.server_name": "api.openai.com", "source.ip": "10.0.0.1"}
    assert engine.evaluate("http", frame("http", [{"@timestamp": iso(60 * MIN), **http}])) == []
    # 30 minutes behind the packet clock: beyond the 10-minute lateness, so left out and counted
    assert engine.evaluate("tls", frame("tls", [{"@timestamp": iso(31 * MIN), **tls}])) == []
    assert engine.stats["correlation.late_events"] == 1
    # 5 minutes behind: on time, and it completes the pair
    engine.evaluate("tls", frame("tls", [{"@timestamp": iso(55 * MIN), **tls}]))
    # a frame without matches still moves the watermark past the window: the alert comes out now
    alerts = engine.evaluate("tls", frame("tls", [{"@timestamp": iso(80 * MIN), **tls, "source.ip": "10.0.0.9"}]))
    assert [a["rule.id"] for a in alerts] == [RID3]
    assert alerts[0]["@timestamp"].startswith("2024-01-01T01:00:00")
    assert engine.stats["correlation.late_events"] == 1 and engine.flush() == []


def test_metadata_logs_keep_their_own_clock(tmp_path: Path) -> None:
    text = rules_text("temporal").replace("logsource: http", "logsource: request").replace(
        "rules: [rule_h, rule_t]", "rules: [rule_h]\n  condition: {gte: 1}")
    engine = engine_for(tmp_path, text)
    # packet events a day later arrive first; the request log's history is not late against them
    engine.evaluate("tls", frame("tls", [{"@timestamp": "2024-01-02T00:00:00Z", "source.ip": "10.0.0.1",
                                          "tls.client.server_name": "api.openai.com"}]))
    alerts = engine.evaluate("request", frame("request", [{"@timestamp": iso(0), "url.path": "/a",
                                                           "source.ip": "10.0.0.1"}]))
    assert engine.stats.get("correlation.late_events", 0) == 0
    assert len(alerts + engine.flush()) == 1


def test_pending_matches_are_bounded(tmp_path: Path) -> None:
    path = write(tmp_path, "r.yml", rules_text("event_count"))
    engine = RuleEngine.load([path], data_dirs=[lists_dir(tmp_path)], max_pending=10)
    recs = [{"@timestamp": iso(i * 10**9), "url.path": "/a", "source.ip": f"10.0.1.{i}"} for i in range(25)]
    engine.evaluate("http", frame("http", recs))
    assert engine.stats["correlation.pending"] == 10
    assert engine.stats["correlation.forced_releases"] == 15
    # the forced releases moved the frontier: an older match is now late
    engine.evaluate("http", frame("http", [{**recs[0], "source.ip": "10.0.2.1"}]))
    assert engine.stats["correlation.late_events"] == 1


def test_cli_alerts_identical_for_small_and_big_batches(tmp_path: Path) -> None:
    env = {**os.environ, "APPLIANCE_SECRET": "test-secret"}
    got = {}
    for n in (256, 65536):
        out = tmp_path / f"b{n}"
        r = subprocess.run([sys.executable, "-m", "appliance.cli", "replay", str(ROOT / "pcaps" / "relay-easy.pcap"),
                            "--out", str(out), "--geoip", str(ROOT / "pcaps" / "geo" / "demo-geo.csv"),
                            "--batch-packets", str(n), "--workers", "1"],
                           capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        got[n] = sorted((out / "alerts.jsonl").read_text().splitlines())
    assert got[256] == got[65536]
    corr = [json.loads(line) for line in got[256] if '"event.type": "correlation"' in line]
    assert corr and all(a["rule.level"] == "critical" for a in corr)


def test_ties_on_numeric_and_missing_values_are_ordered(tmp_path: Path) -> None:
    text = H_RULE + (f"---\ntitle: c\nid: {RID3}\nlevel: high\ncorrelation:\n  type: value_count\n"
                     "  rules: [rule_h, rule_t]\n  group-by: [destination.port]\n  timespan: 10m\n"
                     "  condition: {field: source.port, gte: 3}\n")
    rng = random.Random(9)
    events = []
    for i in range(120):
        t = rng.randrange(0, 1800, 30) * 10**9  # many equal timestamps
        rec = {"@timestamp": iso(t), "source.ip": "10.0.0.1", "destination.port": rng.choice([80, 443, 8080]),
               "source.port": rng.choice([None, 1000 + i % 7])}
        events.append(("http", t, {**rec, "url.path": "/a"}) if i % 2 else
                      ("tls", t, {**rec, "tls.client.server_name": "api.openai.com"}))
    events.sort(key=lambda e: e[1])
    shuffled = events[:]
    rng.shuffle(shuffled)
    a = feed(engine_for(tmp_path, text, name="a.yml"), [(e[0], [e[2]]) for e in events])
    b = feed(engine_for(tmp_path, text, name="b.yml"), [(e[0], [e[2]]) for e in shuffled])
    assert a == b and a
    assert all(isinstance(json.loads(x)["evidence"][0]["group"]["destination.port"], int) for x in a)
