"""Alerts built column-wise (engine._detection_alerts, alerts.iso_many/related_many) are the records
alert() builds one by one: same keys in the same order, same values, same JSON bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.detect.rules.alerts import RELATED_FIELDS, alert, iso, iso_many, related, related_many
from appliance.detect.rules.engine import RuleEngine
from appliance.detect.rules.fields import field_types

NS = st.one_of(st.none(), st.integers(-(2**62), 2**63 - 1), st.integers(1_600_000_000 * 10**9, 1_900_000_000 * 10**9))


@settings(max_examples=200, deadline=None)
@given(st.lists(NS, max_size=30))
def test_iso_many_is_iso(values: list[int | None]) -> None:
    assert iso_many(pl.Series(values, dtype=pl.Int64)) == [iso(v) for v in values]


ENTITY = st.one_of(st.none(), st.just(""), st.sampled_from(["10.0.0.1", "10.0.0.2", "a.example", "B.example", "b"]))
NUMBER = st.one_of(st.none(), st.sampled_from([0, 7, 13, 100, 20]))
LISTY = st.one_of(st.none(), st.lists(st.one_of(st.none(), st.just(""), st.sampled_from(["x", "y"])), max_size=3))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_related_many_is_related(data: Any) -> None:
    fields = data.draw(st.lists(st.sampled_from(list(RELATED_FIELDS)), unique=True, max_size=8))
    n = data.draw(st.integers(0, 6))
    columns: dict[str, list[Any]] = {}
    for f in fields:
        kind = st.sampled_from([ENTITY, LISTY]) if f != "source.as.number" else st.just(NUMBER)
        columns[f] = data.draw(st.lists(data.draw(kind), min_size=n, max_size=n))
    records = [{f: columns[f][k] for f in fields} for k in range(n)]
    strings = [f for f in fields if all(v is None or type(v) is str for v in columns[f])]
    for got in (related_many(columns, n), related_many(columns, n, strings)):
        assert got == [related(r) for r in records]
        assert [list(g) for g in got] == [list(related(r)) for r in records]  # key order too


def test_related_many_orders_a_pair_of_addresses() -> None:
    columns: dict[str, list[Any]] = {"source.ip": ["10.0.0.9", "10.0.0.1", "", None, "10.0.0.5"],
                                     "destination.ip": ["10.0.0.1", "10.0.0.9", "10.0.0.3", None, "10.0.0.5"],
                                     "url.domain": ["b.example", None, "", "a.example", "c.example"]}
    records = [{f: columns[f][k] for f in columns} for k in range(5)]
    assert related_many(columns, 5, list(columns)) == [related(r) for r in records]


RULES = """
title: path
id: 11111111-1111-4111-8111-111111111111
level: high
logsource: http
detection:
  sel:
    url.path|contains: /v1/
  other:
    user_agent.original|startswith: curl/
  condition: sel or other
---
title: agent
id: 22222222-2222-4222-8222-222222222222
level: low
logsource: http
detection:
  sel:
    user_agent.original|startswith: [curl/, python-]
  condition: sel
"""


def test_engine_alerts_equal_alert_records(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(RULES)
    engine = RuleEngine.load([str(tmp_path / "r.yml")], data_dirs=[])
    rng = np.random.default_rng(3)
    n = 2000

    def pick(values: list[str | None]) -> pl.Series:
        return pl.Series([values[i] for i in rng.integers(0, len(values), n)], dtype=pl.Utf8)

    frame = pl.DataFrame({
        "@timestamp": pl.Series(rng.integers(1_700_000_000 * 10**9, 1_700_000_100 * 10**9, n)).cast(pl.Datetime("ns", "UTC")),
        "source.ip": pick(["10.0.0.1", "10.0.0.2", None]),
        "source.port": rng.integers(1000, 2000, n).astype(np.int32),
        "destination.ip": pick(["203.0.113.7", "10.0.0.0", "", None]),
        "url.domain": pick(["a.example", "10.0.0.1", None]),
        "url.path": pick(["/v1/chat", "/index", "/v2/x"]),
        "user_agent.original": pick(["curl/8", "Mozilla/5.0", "python-requests"]),
    })
    got = engine.evaluate("http", frame)
    assert len(got) > 1000
    # The reference: alert() per matched row, from the row's record, sorted the engine's way.
    types = field_types("http")
    cols = [c for c in frame.columns if c in types]
    ts = frame.get_column("@timestamp").dt.epoch("ns").to_list()
    expect = []
    for hit in engine.compiled["http"].match(frame):
        for row, ev in zip(hit.rows, hit.evidence, strict=True):
            record = frame.select(cols).row(row, named=True)
            expect.append(((ts[row], hit.rule.id, row),
                           alert(ts[row], hit.rule.id, hit.rule.title, hit.rule.level, "http", record, ev)))
    expect.sort(key=lambda x: x[0])
    assert [list(a) for a in got] == [list(a) for _, a in expect]
    assert [json.dumps(a, sort_keys=True, default=str) for a in got] == \
        [json.dumps(a, sort_keys=True, default=str) for _, a in expect]
