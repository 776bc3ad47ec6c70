"""RuleEngine end to end: alert shape, evidence, determinism, and the rules/ pack's own tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

from _rules_support import RID, detection_rule, engine_for, frame

from appliance.detect.rules.engine import RuleEngine
from appliance.detect.rules.testing import run_tests

REPO = Path(__file__).resolve().parents[2]

RULE = detection_rule("""
sel_path:
  url.path|contains: /v1/chat/completions
sel_key:
  http.request.auth.key_format|in_list: ai_domains
filter_port:
  destination.port: [80, 443]
condition: sel_path and not filter_port
""")


def _event(i: int, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "@timestamp": f"2024-05-01T12:00:{i % 60:02d}.123456789Z", "source.ip": f"198.51.100.{i % 7}",
        "source.port": 40000 + i, "destination.ip": "203.0.113.7", "destination.port": 8080,
        "network.community_id": f"1:abc{i}=", "url.domain": "relay.example.net",
        "url.path": "/v1/chat/completions", "http.request.auth.fingerprint": "fp:0123456789abcdef01234567",
        "tls.client.ja4": None,
    }
    base.update(kw)
    return base


def test_alert_follows_output_contract(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, RULE)
    (alert,) = engine.evaluate("http", frame("http", [_event(1), _event(2, **{"destination.port": 443})]))
    assert alert == {
        "@timestamp": "2024-05-01T12:00:01.123456Z",
        "rule.id": RID, "rule.name": "t", "rule.level": "high", "event.type": "http",
        "source.ip": "198.51.100.1", "source.port": 40001, "destination.ip": "203.0.113.7",
        "destination.port": 8080, "network.community_id": "1:abc1=",
        "related": {"api_key": ["fp:0123456789abcdef01234567"], "hosts": ["relay.example.net"],
                    "ip": ["198.51.100.1", "203.0.113.7"]},
        "evidence": [{"selection": "sel_path", "field": "url.path", "match": "contains",
                      "value": "/v1/chat/completions"}],
    }


def test_missing_columns_are_null_not_errors(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, detection_rule("sel:\n  source.as.number: 24940\ncondition: sel"))
    assert engine.evaluate("http", frame("http", [_event(1)])) == []


def test_alerts_are_deterministic_and_sorted(tmp_path: Path) -> None:
    events = [_event(i, **{"destination.port": random.Random(i).choice([443, 8080])}) for i in range(200)]
    shuffled = events[:]
    random.Random(7).shuffle(shuffled)
    a = engine_for(tmp_path, RULE).evaluate("http", frame("http", events))
    b = engine_for(tmp_path, RULE, name="r2.yml").evaluate("http", frame("http", events))
    c = engine_for(tmp_path, RULE, name="r3.yml").evaluate("http", frame("http", shuffled))
    dump = [json.dumps(x, sort_keys=False) for x in a]
    assert dump == [json.dumps(x, sort_keys=False) for x in b]
    # Same events in another order: same alerts, ordered by event time then row.
    assert sorted(dump) == sorted(json.dumps(x) for x in c)
    assert [x["@timestamp"] for x in c] == sorted(x["@timestamp"] for x in c)
    assert len(a) == sum(1 for e in events if e["destination.port"] == 8080)


def test_many_rules_share_predicates(tmp_path: Path) -> None:
    docs = []
    for i in range(30):
        rid = f"{i:08d}-1111-4111-8111-111111111111"
        docs.append(detection_rule(f"sel:\n  url.path|contains: /v1/chat\n  destination.port: {8000 + i}\n"
                                   "condition: sel", rid=rid))
    engine = engine_for(tmp_path, "---\n".join(docs))
    compiled = engine.compiled["http"]
    assert len(compiled.preds) == 31  # one shared url.path predicate + 30 port predicates
    alerts = engine.evaluate("http", frame("http", [_event(i, **{"destination.port": 8000 + i}) for i in range(3)]))
    assert [a["rule.id"][:8] for a in alerts] == ["00000000", "00000001", "00000002"]


def test_pack_validates_and_its_tests_pass() -> None:
    paths = [str(REPO / "rules")]
    dirs = [str(REPO / "rules" / "lists"), str(REPO / "rules" / "data")]
    report = run_tests(paths, dirs)
    assert report.diagnostics == []
    assert report.failed == [], [f.describe() for f in report.failed]
    assert report.untested == []
    engine = RuleEngine.load(paths, dirs)
    detections = engine.ruleset.rules
    assert len(detections) + len(engine.ruleset.correlations) >= 20
    for r in [*detections, *engine.ruleset.correlations]:
        assert r.references and r.falsepositives and r.tests, r.title
    kinds = {c.type for c in engine.ruleset.correlations}
    assert kinds == {"event_count", "value_count", "temporal", "temporal_ordered"}


def test_sibling_tests_file(tmp_path: Path) -> None:
    from _rules_support import lists_dir, write

    rule = write(tmp_path, "pack/r.yml", detection_rule("sel:\n  url.path|contains: chat\ncondition: sel"))
    write(tmp_path, "pack/r.tests.yml", f"{RID}:\n  match:\n    - {{url.path: /chat}}\n  nomatch:\n"
                                        "    - {url.path: /other}\n    - {url.path: /chat2}\n")
    report = run_tests([str(tmp_path / "pack")], [lists_dir(tmp_path)])
    assert [(r.case, r.ok) for r in report.results] == [("match[0]", True), ("nomatch[0]", True),
                                                        ("nomatch[1]", False)]
    assert rule.endswith("r.yml")
