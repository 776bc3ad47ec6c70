"""Correlation types on event time, windows and bounded state (appliance/detect/rules/correlate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _rules_support import RID, RID2, RID3, engine_for, frame

from appliance.detect.rules.engine import RuleEngine

BASE_A = f"""title: a
name: rule_a
id: {RID}
level: low
logsource: request
detection:
  sel:
    url.path: /a
  condition: sel
"""
BASE_B = f"""title: b
name: rule_b
id: {RID2}
level: low
logsource: request
detection:
  sel:
    url.path: /b
  condition: sel
"""


def corr(body: str) -> str:
    return f"---\ntitle: c\nid: {RID3}\nlevel: high\ncorrelation:\n{body}"


def ev(minute: float, path: str = "/a", ip: str = "10.0.0.1", acct: str = "x") -> dict[str, Any]:
    s = int(minute * 60)
    return {"@timestamp": f"2024-01-01T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z", "url.path": path,
            "source.ip": ip, "account.id": acct}


def run(engine: RuleEngine, events: list[dict[str, Any]], batch: int = 1000) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(0, len(events), batch):
        out += engine.evaluate("request", frame("request", events[i : i + batch]))
    return out + engine.flush()


EVENT_COUNT = corr("  type: event_count\n  rules: [rule_a]\n  group-by: [source.ip]\n  timespan: 10m\n"
                   "  condition: {gte: 3}\n")


def test_event_count_sliding_window(tmp_path: Path) -> None:
    e = engine_for(tmp_path, BASE_A + EVENT_COUNT)
    # 3 in 10 minutes for 10.0.0.1 (minutes 5, 9, 14: the first is out of 14's window, so 14+15 fire)
    events = [ev(0), ev(9), ev(5), ev(0, ip="10.0.0.2"), ev(14), ev(15), ev(30)]
    events.sort(key=lambda x: x["@timestamp"])
    alerts = run(e, events)
    assert [(a["@timestamp"], a["source.ip"], a["evidence"][0]["count"]) for a in alerts] == [
        ("2024-01-01T00:09:00.000000Z", "10.0.0.1", 3)]
    assert alerts[0]["rule.id"] == RID3 and alerts[0]["event.type"] == "correlation"
    assert alerts[0]["evidence"][0]["group"] == {"source.ip": "10.0.0.1"}


def test_event_count_quiet_for_a_timespan_after_firing(tmp_path: Path) -> None:
    e = engine_for(tmp_path, BASE_A + EVENT_COUNT)
    # fires at 2; 3-5 fall in the quiet period (up to 12); 13-15 are a new burst
    alerts = run(e, [ev(m) for m in (0, 1, 2, 3, 4, 5, 13, 14, 15)])
    assert [a["@timestamp"][11:19] for a in alerts] == ["00:02:00", "00:15:00"]
    assert alerts[1]["evidence"][0]["count"] == 3


def test_event_count_lt_judged_at_window_end(tmp_path: Path) -> None:
    text = BASE_A + corr("  type: event_count\n  rules: [rule_a]\n  group-by: [source.ip]\n  timespan: 10m\n"
                         "  condition: {lt: 2}\n")
    e = engine_for(tmp_path, text)
    alerts = run(e, [ev(0), ev(1, ip="10.0.0.2"), ev(2, ip="10.0.0.2"), ev(30, ip="10.0.0.3")])
    # 10.0.0.1's window closes when 10.0.0.3's event passes its end; 10.0.0.3's at flush; 10.0.0.2 had 2.
    assert [(a["source.ip"], a["@timestamp"][11:19]) for a in alerts] == [
        ("10.0.0.1", "00:10:00"), ("10.0.0.3", "00:40:00")]
    e2 = engine_for(tmp_path, text, name="r2.yml")
    assert e2.evaluate("request", frame("request", [ev(30, ip="10.0.0.3")])) == []
    assert [a["source.ip"] for a in e2.flush()] == ["10.0.0.3"]


def test_value_count_distinct_within_window(tmp_path: Path) -> None:
    text = BASE_A + corr("  type: value_count\n  rules: [rule_a]\n  group-by: [source.ip]\n  timespan: 1h\n"
                         "  condition: {field: account.id, gte: 3}\n")
    e = engine_for(tmp_path, text)
    same = [ev(m, acct="a1") for m in range(10)]
    assert run(e, same) == []
    e = engine_for(tmp_path, text, name="r2.yml")
    spread = [ev(0, acct="a1"), ev(50, acct="a2"), ev(70, acct="a3"), ev(80, acct="a4")]
    alerts = run(e, spread)
    assert len(alerts) == 1
    assert alerts[0]["evidence"][0]["values"] == ["a2", "a3", "a4"]
    assert alerts[0]["related"]["account"] == ["a2", "a3", "a4"]


def test_temporal_and_ordered(tmp_path: Path) -> None:
    for ctype, events, expected in [
        ("temporal", [ev(0, "/b"), ev(5, "/a")], 1),
        ("temporal", [ev(0, "/b"), ev(15, "/a")], 0),
        ("temporal_ordered", [ev(0, "/b"), ev(5, "/a")], 0),
        ("temporal_ordered", [ev(0, "/a"), ev(5, "/b")], 1),
        ("temporal_ordered", [ev(0, "/a"), ev(12, "/a"), ev(13, "/b")], 1),
        ("temporal_ordered", [ev(0, "/a"), ev(5, "/b", ip="10.9.9.9")], 0),
    ]:
        text = BASE_A + BASE_B.replace("title: b", "---\ntitle: b") + corr(
            f"  type: {ctype}\n  rules: [rule_a, rule_b]\n  group-by: [source.ip]\n  timespan: 10m\n")
        e = engine_for(tmp_path, text, name=f"{ctype}{len(events)}{expected}.yml")
        assert len(run(e, events)) == expected, (ctype, events)


def test_batching_does_not_change_results(tmp_path: Path) -> None:
    text = BASE_A + EVENT_COUNT
    events = [ev(m * 0.7, ip=f"10.0.0.{m % 3}") for m in range(60)]
    one = run(engine_for(tmp_path, text), events, batch=1000)
    many = run(engine_for(tmp_path, text, name="r2.yml"), events, batch=7)
    assert one == many and len(one) > 3


def test_state_is_bounded_and_evictions_counted(tmp_path: Path) -> None:
    path = tmp_path / "r.yml"
    path.write_text(BASE_A + EVENT_COUNT)
    from _rules_support import lists_dir

    e = RuleEngine.load([str(path)], data_dirs=[lists_dir(tmp_path)], max_groups=5)
    run(e, [ev(m / 100, ip=f"10.0.1.{m}") for m in range(20)])
    assert e.stats["correlation.evicted_groups"] == 15
    # with no allowed lateness the watermark releases the matches at once, so they form groups
    e2 = RuleEngine.load([str(path)], data_dirs=[lists_dir(tmp_path)], max_groups=5, allowed_lateness_ns=0)
    e2.evaluate("request", frame("request", [ev(m / 100, ip=f"10.0.1.{m}") for m in range(4)]))
    assert e2.stats["correlation.groups"] == 4 and e2.stats["correlation.pending"] == 0


def test_null_group_values_are_skipped(tmp_path: Path) -> None:
    e = engine_for(tmp_path, BASE_A + EVENT_COUNT)
    events = [{"@timestamp": f"2024-01-01T00:00:0{i}Z", "url.path": "/a"} for i in range(5)]
    assert run(e, events) == []
    assert e.stats["correlation.skipped_null_group"] == 5


def test_referenced_rules_alert_only_with_generate(tmp_path: Path) -> None:
    e = engine_for(tmp_path, BASE_A + EVENT_COUNT)
    assert e.evaluate("request", frame("request", [ev(0)])) == []
    e = engine_for(tmp_path, BASE_A + EVENT_COUNT.replace("  condition: {gte: 3}", "  generate: true\n"
                                                          "  condition: {gte: 3}"), name="g.yml")
    assert [a["rule.id"] for a in e.evaluate("request", frame("request", [ev(0)]))] == [RID]
