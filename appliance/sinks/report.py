"""DIR/report.html and the shared readers behind it (sinks stage, ARCHITECTURE.md output contract).

The report is for people: it reads what replay wrote (summary.json, findings.jsonl, alerts.jsonl,
events/*.parquet) and renders one self-contained HTML file that opens offline. Every script and
style is inlined: plotly.js comes from the plotly package installed with the project, and only when
there is a chart to draw (a report without findings stays small). A Content-Security-Policy meta tag
forbids every network fetch, so a report can never phone home even if a value tried to.

Reading is bounded for large runs: alerts are streamed line by line and only counts plus a capped
set of rows are kept (ALERT_ROWS for the table, FINDING_ALERTS per finding), so 100k alerts cost one
pass and constant memory. The same readers serve `appliance explain` (cli_report.py).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import InputError

# Sigma rule levels, most severe first (Sigma specification, "level"); unknown levels sort last.
LEVELS = ("critical", "high", "medium", "low", "informational")
SEVERITIES = ("critical", "high", "medium", "low")
ALERT_ROWS = 2000  # rows in the alerts table; the full list stays in alerts.jsonl
FINDING_ALERTS = 200  # alerts kept per finding for its section and for explain
# Entity types that tie an alert to a finding. ASNs, JA4s and organisations are shared by unrelated
# hosts (one hosting ASN, one Go TLS stack), so matching on them would bury the real alerts.
MATCH_TYPES = frozenset({"ip", "account", "api_key", "payment", "domain"})
_RELATED_TYPE = {"hosts": "domain"}  # alert `related` keys that differ from finding entity types


def level_rank(level: Any) -> int:
    return LEVELS.index(level) if level in LEVELS else len(LEVELS)


def iter_jsonl(path: str) -> Iterator[dict[str, Any] | None]:
    """Each line's object, or None for a line that is not a JSON object (the caller counts those)."""
    try:
        fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(path, exc.strerror or "unreadable") from exc
    with fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                yield None
                continue
            yield obj if isinstance(obj, dict) else None


def read_summary(out_dir: str) -> dict[str, Any]:
    path = os.path.join(out_dir, "summary.json")
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a JSON summary ({exc})") from exc
    return data if isinstance(data, dict) else {}


def read_findings(out_dir: str) -> tuple[list[dict[str, Any]], int]:
    """Findings sorted by score (best first), and how many lines were unreadable."""
    path = os.path.join(out_dir, "findings.jsonl")
    if not os.path.isfile(path):
        return [], 0
    good, bad = [], 0
    for obj in iter_jsonl(path):
        if obj is None or not obj.get("id"):
            bad += 1
        else:
            good.append(obj)
    good.sort(key=lambda f: (-_num(f.get("score")), str(f.get("id"))))
    return good, bad


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def _norm(etype: str, value: Any) -> tuple[str, str]:
    return etype, str(value).strip().lower()


def finding_keys(finding: dict[str, Any]) -> set[tuple[str, str]]:
    """The (type, value) pairs of a finding that an alert may share: subject plus entities."""
    keys = set()
    subject = finding.get("subject") or {}
    items = [subject, *(finding.get("entities") or [])]
    items += [{"type": "account", "value": m} for m in finding.get("members") or [] if isinstance(m, str)]
    for e in items:
        if isinstance(e, dict) and e.get("type") in MATCH_TYPES and e.get("value") not in (None, ""):
            keys.add(_norm(e["type"], e["value"]))
    return keys


def alert_keys(alert: dict[str, Any]) -> set[tuple[str, str]]:
    keys = {_norm("ip", alert[f]) for f in ("source.ip", "destination.ip") if alert.get(f)}
    related = alert.get("related")
    if isinstance(related, dict):
        for kind, values in related.items():
            etype = _RELATED_TYPE.get(kind, kind)
            if etype in MATCH_TYPES and isinstance(values, list):
                keys.update(_norm(etype, v) for v in values if v not in (None, ""))
    return keys


def alert_entities(alert: dict[str, Any]) -> list[str]:
    """Flat `type:value` strings of an alert, for display and for the entity filter."""
    out = []
    related = alert.get("related")
    if isinstance(related, dict):
        for kind, values in sorted(related.items()):
            if isinstance(values, list):
                out += [f"{_RELATED_TYPE.get(kind, kind)}:{v}" for v in values]
    return out


@dataclass
class AlertDigest:
    """One pass over alerts.jsonl: counts, a capped set of rows, and the alerts behind each finding."""

    total: int = 0
    unreadable: int = 0
    by_rule: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (rule.id, rule.name, level)
    by_level: Counter[str] = field(default_factory=Counter)
    rows: list[dict[str, Any]] = field(default_factory=list)
    per_finding: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    per_finding_total: Counter[str] = field(default_factory=Counter)


def digest_alerts(out_dir: str, findings: list[dict[str, Any]], max_rows: int = ALERT_ROWS,
                  per_finding: int = FINDING_ALERTS) -> AlertDigest:
    """Stream DIR/alerts.jsonl once. Table rows are kept per level up to max_rows each, then the most
    severe levels fill the table first (file order within a level, which is time order)."""
    d = AlertDigest()
    path = os.path.join(out_dir, "alerts.jsonl")
    if not os.path.isfile(path):
        return d
    index: dict[tuple[str, str], list[str]] = {}
    for f in findings:
        for k in finding_keys(f):
            index.setdefault(k, []).append(str(f["id"]))
    kept: dict[int, list[dict[str, Any]]] = {}
    for a in iter_jsonl(path):
        if a is None:
            d.unreadable += 1
            continue
        d.total += 1
        level = str(a.get("rule.level") or "unknown")
        key = (str(a.get("rule.id") or ""), str(a.get("rule.name") or a.get("rule.id") or "?"), level)
        d.by_rule[key] = d.by_rule.get(key, 0) + 1
        d.by_level[level] += 1
        bucket = kept.setdefault(level_rank(level), [])
        if len(bucket) < max_rows:
            bucket.append(a)
        if index:
            hits = {fid for k in alert_keys(a) for fid in index.get(k, ())}
            for fid in hits:
                d.per_finding_total[fid] += 1
                lst = d.per_finding.setdefault(fid, [])
                if len(lst) < per_finding:
                    lst.append(a)
    for rank in sorted(kept):
        d.rows += kept[rank][: max_rows - len(d.rows)]
    return d


def find_finding(findings: list[dict[str, Any]], finding_id: str) -> dict[str, Any] | None:
    """Exact id, else a unique id prefix (ids are long hashes; people type the start)."""
    for f in findings:
        if f.get("id") == finding_id:
            return f
    hits = [f for f in findings if str(f.get("id", "")).startswith(finding_id)] if finding_id else []
    return hits[0] if len(hits) == 1 else None


def subject_text(finding: dict[str, Any]) -> str:
    """What a finding is about in a few words: the relay's address, or a cluster's make-up."""
    subject = finding.get("subject") or {}
    if finding.get("kind") == "reseller_cluster" or subject.get("type") == "cluster":
        counts = Counter(e.get("type") for e in finding.get("entities") or [] if isinstance(e, dict))
        parts = [f"{counts[t]} {label}" for t, label in (("account", "accounts"), ("api_key", "keys"),
                                                         ("payment", "payments"), ("ip", "IPs")) if counts[t]]
        return ", ".join(parts) or str(subject.get("value", "?"))
    return str(subject.get("value", "?"))


def write_report(out_dir: str, output: str | None = None) -> str:
    """Render DIR's outputs into one HTML file (default DIR/report.html), atomically; returns its path."""
    from appliance.sinks.report_html import render

    if not os.path.isdir(out_dir):
        raise InputError(out_dir, "not a directory")
    html = render(out_dir)
    path = output or os.path.join(out_dir, "report.html")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(html)
    os.replace(tmp, path)
    return path
