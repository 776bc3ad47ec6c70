"""appliance/sinks/report.py, report_html.py and report_charts.py: readers, charts and the HTML page."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import schema
from appliance.sinks import report_charts as charts
from appliance.sinks.report import ALERT_ROWS, digest_alerts, find_finding, read_findings, write_report

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "report" / "demo"
EXTERNAL = re.compile(r"""\b(?:src|href|action|data)\s*=\s*["']?\s*(?:https?:|//|ftp:)""", re.I)


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    out = tmp_path / "demo"
    shutil.copytree(FIXTURE, out)
    return out


def _findings(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "findings.jsonl").read_text().splitlines()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_lists_findings_by_score_with_a_section_each(demo: Path) -> None:
    html = Path(write_report(str(demo))).read_text()
    expected = sorted(_findings(demo), key=lambda f: -f["score"])
    table = html[html.index('id=findings-table'):html.index("</table>", html.index('id=findings-table'))]
    positions = [table.index(f">{f['id']}<") for f in expected]
    assert positions == sorted(positions)
    for f in expected:
        assert f'href="#f-{f["id"]}"' in table and f'id="f-{f["id"]}"' in html
        for ev in f["evidence"]:
            assert ev["summary"] in html
    assert 'http-equiv="Content-Security-Policy"' in html and "default-src 'none'" in html
    assert html.count("plotly.js v") == 1  # inlined once, because there are charts
    assert not EXTERNAL.search(html.replace(charts_js_free(html), ""))


def charts_js_free(html: str) -> str:
    """The inlined plotly.js text (its source mentions URLs in strings; only our markup must have none)."""
    start = html.find("<script>/**\n* plotly.js")
    return html[start:html.index("</script>", start)] if start >= 0 else ""


def test_every_chart_div_has_a_figure_and_relay_and_cluster_charts_exist(demo: Path) -> None:
    html = Path(write_report(str(demo))).read_text()
    divs = re.findall(r'data-fig="(fig\d+)"', html)
    m = re.search(r'<script id="figures" type="application/json">(.*?)</script>', html, re.S)
    assert m is not None
    figs = json.loads(m[1])
    assert sorted(divs) == sorted(figs)
    names = re.findall(r'data-fig="fig\d+" aria-label="([^"]+)"', html)
    # two relays with a timeline each, one with a lag histogram (the other has too few lags), two clusters
    assert names.count("relay timeline") == 2 and names.count("cluster graph") == 2
    assert names.count("cluster timeline") == 2 and names.count("lag histogram") >= 1


def test_empty_run_gives_a_small_page_without_plotly(tmp_path: Path) -> None:
    path = write_report(str(tmp_path))
    html = Path(path).read_text()
    assert "No findings" in html and "No alerts in this run" in html and "No summary.json" in html
    assert "plotly.js v" not in html and len(html) < 100_000


def test_values_from_inputs_are_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    _write_jsonl(tmp_path / "findings.jsonl", [{
        "id": "f-evil", "kind": "relay_host", "score": 0.9, "severity": "high",
        "subject": {"type": "ip", "value": evil}, "entities": [{"type": "domain", "value": evil}],
        "evidence": [{"rule": evil, "summary": evil, "value": 1}],
        "series": {"bin_s": 1, "start": "2025-01-01T00:00:00Z", "inbound_bytes": [1, 2, 3], "upstream_bytes": [1, 2, 3]},
        "lags_ms": [1, 2, 3, 4], "first_seen": evil, "last_seen": None}])
    _write_jsonl(tmp_path / "alerts.jsonl", [{"rule.id": evil, "rule.name": evil, "rule.level": "high",
                                             "related": {"hosts": [evil]}}])
    html = Path(write_report(str(tmp_path))).read_text()
    assert evil not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_bad_lines_are_skipped_and_reported(tmp_path: Path) -> None:
    (tmp_path / "findings.jsonl").write_text('{"id": "f-1", "score": 0.2}\nnot json\n[1]\n')
    (tmp_path / "alerts.jsonl").write_text('{"rule.id": "r", "rule.level": "low"}\n{oops\n')
    findings, bad = read_findings(str(tmp_path))
    assert [f["id"] for f in findings] == ["f-1"] and bad == 2
    html = Path(write_report(str(tmp_path))).read_text()
    assert "2 in findings.jsonl, 1 in alerts.jsonl" in html


def test_100k_alerts_are_fast_and_capped(tmp_path: Path) -> None:
    levels = ["low", "medium", "high", "critical"]
    with open(tmp_path / "alerts.jsonl", "w") as fh:
        for i in range(100_000):
            ip = "203.0.113.7" if i % 10 == 0 else f"198.51.100.{i % 200}"
            fh.write(json.dumps({"@timestamp": f"2025-03-10T09:{i // 6000 % 60:02d}:00Z", "rule.id": f"r{i % 7}",
                                 "rule.name": f"rule {i % 7}", "rule.level": levels[i % 4], "source.ip": ip,
                                 "destination.ip": "192.0.2.1", "related": {"ip": [ip, "192.0.2.1"]},
                                 "evidence": [{"field": "x", "value": i}]}) + "\n")
    _write_jsonl(tmp_path / "findings.jsonl", [{"id": "f-r", "kind": "relay_host", "score": 0.8, "severity": "high",
                                              "subject": {"type": "ip", "value": "203.0.113.7"}, "entities": [],
                                              "evidence": []}])
    t0 = time.perf_counter()
    html = Path(write_report(str(tmp_path))).read_text()
    elapsed = time.perf_counter() - t0
    assert elapsed < 6.0, elapsed
    body = html[html.index("id=alerts-table"):]
    assert body.count("<tr data-rule=") == ALERT_ROWS
    assert f"Showing {ALERT_ROWS:,} of 100,000 alerts" in html
    # every 10th alert names the relay; the most severe level fills the table first
    d = digest_alerts(str(tmp_path), read_findings(str(tmp_path))[0])
    assert d.per_finding_total["f-r"] == 10_000
    assert {a["rule.level"] for a in d.rows} == {"critical"}
    assert d.by_level == {lv: 25_000 for lv in levels}


def test_digest_orders_rows_by_level_then_file_order(tmp_path: Path) -> None:
    rows = [{"rule.id": "a", "rule.level": lv, "@timestamp": str(i)} for i, lv in
            enumerate(["low", "high", "informational", "high", "critical", "weird"])]
    _write_jsonl(tmp_path / "alerts.jsonl", rows)
    d = digest_alerts(str(tmp_path), [])
    assert [(a["rule.level"], a["@timestamp"]) for a in d.rows] == [
        ("critical", "4"), ("high", "1"), ("high", "3"), ("low", "0"), ("informational", "2"), ("weird", "5")]


def test_find_finding_by_id_or_unique_prefix() -> None:
    fs = [{"id": "f-abc1"}, {"id": "f-abc2"}, {"id": "f-xyz"}]
    assert find_finding(fs, "f-abc2") == {"id": "f-abc2"}
    assert find_finding(fs, "f-x") == {"id": "f-xyz"}
    assert find_finding(fs, "f-abc") is None and find_finding(fs, "nope") is None and find_finding(fs, "") is None


def _flows(rows: list[tuple[str, str, int, int, int, str | None]]) -> pl.LazyFrame:
    """(src, dst, start_s, end_s, bytes, service) → an enriched flow frame in the declared schema."""
    base = datetime(2025, 3, 10, 9, 0, tzinfo=UTC).timestamp()
    frame = pl.DataFrame({
        "source.ip": [r[0] for r in rows], "destination.ip": [r[1] for r in rows],
        "event.start": [int((base + r[2]) * 1e9) for r in rows], "event.end": [int((base + r[3]) * 1e9) for r in rows],
        "source.bytes": [r[4] // 2 for r in rows], "destination.bytes": [r[4] - r[4] // 2 for r in rows],
        "destination.service": [r[5] for r in rows],
    }).with_columns(pl.col("event.start", "event.end").cast(pl.Datetime("ns", "UTC")))
    return schema.conform(frame, "flow", enriched=True).lazy()


def test_relay_series_from_flows_conserves_bytes_and_keeps_only_api_upstream() -> None:
    relay = "203.0.113.7"
    flows = _flows([("198.51.100.1", relay, 0, 100, 5000, None), ("198.51.100.2", relay, 30, 30, 700, None),
                    (relay, "162.159.140.245", 1, 99, 9000, "openai-api"), (relay, "192.0.2.53", 5, 5, 300, None),
                    ("198.51.100.1", "192.0.2.9", 0, 10, 123456, None)])
    s = charts.relay_series({"subject": {"type": "ip", "value": relay}}, flows)
    assert s is not None and s["derived"]
    assert sum(s["inbound"]) == pytest.approx(5700) and sum(s["upstream"]) == pytest.approx(9000)
    # the 100 s flow is spread evenly: equal bins hold equal shares (bin 1 s → 50 bytes a bin)
    assert s["bin_s"] == 1.0 and s["inbound"][10] == pytest.approx(50) and s["inbound"][30] == pytest.approx(750)


def test_relay_series_prefers_the_findings_own_series() -> None:
    f = {"first_seen": "2025-03-10T09:00:00Z", "subject": {"value": "x"},
         "series": {"bin_s": 5, "inbound_bytes": [1, 2], "upstream_bytes": [3, 4]}}
    s = charts.relay_series(f, None)
    assert s == {"start": datetime(2025, 3, 10, 9, tzinfo=UTC), "bin_s": 5.0, "derived": False,
                 "inbound": [1.0, 2.0], "upstream": [3.0, 4.0]}
    fig = charts.relay_timeline(s)
    assert fig["data"][0]["x"] == ["2025-03-10T09:00:00.000Z", "2025-03-10T09:00:05.000Z"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50), st.floats(1, 1e6)), min_size=1, max_size=40))
def test_spread_conserves_bytes_inside_the_edges(flows: list[tuple[float, float, float]]) -> None:
    start = np.array([min(a, b) for a, b, _ in flows])
    end = np.array([max(a, b) for a, b, _ in flows])
    nbytes = np.array([n for _, _, n in flows])
    out = charts._spread(start, end, nbytes, np.arange(0.0, 52.0, 2.0))
    assert out.sum() == pytest.approx(nbytes.sum(), rel=1e-6)
    assert (out >= -1e-6 * nbytes.sum()).all()


def test_lag_estimate_from_flow_starts() -> None:
    relay = "203.0.113.7"
    rows: list[tuple[str, str, int, int, int, str | None]] = []
    for i in range(5):
        rows.append(("198.51.100.1", relay, 10 * i, 10 * i + 2, 100, None))
        rows.append((relay, "162.159.140.245", 10 * i + 1, 10 * i + 2, 100, "openai-api"))
    lags, derived = charts.relay_lags({"subject": {"value": relay}}, _flows(rows))
    assert derived and lags == pytest.approx([1000.0] * 5)
    assert charts.relay_lags({"lags_ms": [3, 4.5, "x"]}, None) == ([3.0, 4.5], False)


def test_cluster_graph_links_accounts_to_payments_and_bundles_keys(demo: Path) -> None:
    cluster = next(f for f in _findings(demo) if f["id"] == "f-3c1e0b5a9d2f4e61")
    req, acc = charts.scan_events(str(demo), "requests"), charts.scan_events(str(demo), "accounts")
    nodes, edges, notes = charts.cluster_edges(cluster, req, acc)
    assert req is not None and acc is not None
    pays = acc.filter(pl.col("account.id").is_in([e["value"] for e in cluster["entities"] if e["type"] == "account"])) \
        .select("account.id", "payment.fingerprint").unique().collect()
    for a, p in pays.iter_rows():
        assert (f"account:{a}", f"payment:{p}") in edges
    n_keys = sum(e["type"] == "api_key" for e in cluster["entities"])
    assert n_keys > charts.MAX_GRAPH_KEYS and any(f"{n_keys:,} API keys" in n for n in notes)
    assert not any(n.startswith("api_key:key_") for n in nodes)
    assert "asn:64500" in nodes  # "AS64500" in the finding, 64500 in the events
    fig = charts.cluster_graph(nodes, edges)
    assert fig is not None and sum(len(t["x"]) for t in fig["data"][1:]) == len(nodes)


def test_cluster_members_and_edges_from_the_finding_are_drawn_without_events() -> None:
    f = {"entities": [], "members": ["a1", "a2"],
         "edges": [{"source": {"type": "account", "value": "a1"}, "target": {"type": "ip", "value": "192.0.2.20"}},
                   ["account:a2", "ip:192.0.2.20"]]}
    f["entities"] = [{"type": "ip", "value": "192.0.2.20"}]
    nodes, edges, _ = charts.cluster_edges(f, None, None)
    assert set(nodes) == {"account:a1", "account:a2", "ip:192.0.2.20"}
    assert edges == {("account:a1", "ip:192.0.2.20"), ("account:a2", "ip:192.0.2.20")}


def test_cluster_timeline_lanes_start_with_the_oldest_account(demo: Path) -> None:
    cluster = next(f for f in _findings(demo) if f["id"] == "f-3c1e0b5a9d2f4e61")
    acc = charts.scan_events(str(demo), "accounts")
    fig, left = charts.cluster_timeline(cluster, charts.scan_events(str(demo), "requests"), acc)
    assert fig is not None and left == 0 and acc is not None
    oldest = acc.sort("account.created").filter(
        pl.col("account.id").is_in([e["value"] for e in cluster["entities"] if e["type"] == "account"])
    ).select("account.id").collect().item(0, 0)
    assert fig["layout"]["yaxis"]["categoryarray"][-1] == oldest  # plotly draws the last category on top
    created = next(t for t in fig["data"] if t["name"] == "account created")
    assert len(created["x"]) == 24


def test_write_report_is_atomic_and_honours_output(demo: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.html"
    assert write_report(str(demo), str(target)) == str(target)
    assert target.read_text().startswith("<!DOCTYPE html>") and not os.path.exists(str(target) + ".tmp")
    assert not (demo / "report.html").exists()
