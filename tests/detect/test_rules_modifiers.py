"""Every field modifier, evaluated through the engine on a small http batch (appliance/detect/rules/modifiers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _rules_support import detection_rule, engine_for, hits

EVENTS = [
    {"source.port": 0, "url.domain": "api.openai.com", "url.path": "/v1/chat/completions", "destination.port": 443,
     "source.ip": "10.1.2.3", "user_agent.original": "Go-http-client/1.1", "http.request.body.bytes": 100},
    {"source.port": 1, "url.domain": "API.Anthropic.com", "url.path": "/v1/messages", "destination.port": 8080,
     "source.ip": "160.79.105.9", "user_agent.original": "litellm/1.2", "http.request.body.bytes": 5000},
    {"source.port": 2, "url.domain": "example.org", "url.path": "/index.html", "destination.port": 80,
     "source.ip": "2607:6bc0::10", "http.request.via": "1.1 proxy"},
    {"source.port": 3, "url.domain": None, "url.path": "/v1/CHAT/completions?x=1", "destination.port": 3000,
     "source.ip": "192.168.0.1", "user_agent.original": "python-requests/2.31"},
]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("url.domain: api.anthropic.com", [1]),  # Sigma: case-insensitive by default
        ("url.domain|cased: api.anthropic.com", []),
        ("url.domain|cased: API.Anthropic.com", [1]),
        ("url.domain: 'api.*.com'", [0, 1]),  # wildcard
        ("url.domain: 'exampl?.org'", [2]),
        ("url.path|contains: chat", [0, 3]),
        ("url.path|contains|cased: chat", [0]),
        ("url.path|contains: [messages, index]", [1, 2]),
        ("url.path|contains|all: [v1, completions]", [0, 3]),
        ("url.path|startswith: /v1/", [0, 1, 3]),
        ("url.path|endswith: .html", [2]),
        ("user_agent.original|re: '^[A-Za-z-]+/[0-9]'", [0, 1, 3]),
        ("user_agent.original|re: '^GO-'", []),
        ("user_agent.original|re|i: '^GO-'", [0]),
        ("source.ip|cidr: 160.79.104.0/23", [1]),
        ("source.ip|cidr: [10.0.0.0/8, 192.168.0.0/16]", [0, 3]),
        ("source.ip|cidr: '2607:6bc0::/48'", [2]),
        ("http.request.via|exists: true", [2]),
        ("user_agent.original|exists: false", [2]),
        ("destination.port|gt: 443", [1, 3]),
        ("destination.port|gte: 443", [0, 1, 3]),
        ("destination.port|lt: 443", [2]),
        ("destination.port|lte: 443", [0, 2]),
        ("destination.port: [80, 3000]", [2, 3]),
        ("url.domain: null", [3]),
        ("url.domain|in_list: ai_domains", [0, 1]),
        ("url.domain|expand: '%ai_domains%'", [0, 1]),
        ("url.domain|in_list: catalog:domain", [0]),
        ("source.ip|cidr|in_list: catalog:cidr", [1]),
        ("http.request.body.bytes|gt: 1000", [1]),
    ],
)
def test_modifier(tmp_path: Path, item: str, expected: list[int]) -> None:
    engine = engine_for(tmp_path, detection_rule(f"sel:\n  {item}\ncondition: sel"))
    assert hits(engine, "http", EVENTS) == expected


def test_hour_modifier_on_timestamp(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, detection_rule("sel:\n  '@timestamp|hour': [3, 4]\ncondition: sel", "request"))
    events = [{"@timestamp": f"2024-01-01T0{h}:30:00Z", "account.id": str(h)} for h in (2, 3, 4, 5)]
    alerts = engine.evaluate("request", __import__("_rules_support").frame("request", events))
    assert [a["related"]["account"] for a in alerts] == [["3"], ["4"]]


def test_list_fields_match_any_element(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, detection_rule("sel:\n  dns.answers.data|cidr: 10.0.0.0/8\ncondition: sel", "dns"))
    events = [
        {"source.port": 0, "dns.answers.data": ["1.1.1.1", "10.9.9.9"]},
        {"source.port": 1, "dns.answers.data": ["1.1.1.1"]},
        {"source.port": 2, "dns.answers.data": None},
    ]
    assert hits(engine, "dns", events) == [0]


def test_boolean_field(tmp_path: Path) -> None:
    engine = engine_for(tmp_path, detection_rule("sel:\n  source.anonymity.hosting: true\ncondition: sel", "tls"))
    events = [{"source.port": i, "source.anonymity.hosting": v} for i, v in enumerate([True, False, None])]
    assert hits(engine, "tls", events) == [0]
