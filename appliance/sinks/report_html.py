"""HTML of the report (sinks stage): overview, findings, a section per finding, the alerts table.

Pure string building over the readers in report.py and the figures in report_charts.py; every
value from the inputs goes through html.escape (or JSON with `<` escaped inside script tags), so a
hostile SNI or User-Agent cannot inject markup. The page layout, style and the small filtering
script live in report_template.html next to this module.
"""

from __future__ import annotations

import html
import json
import os
import re
import statistics
from collections import Counter
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from appliance.sinks import report_charts as charts
from appliance.sinks.report import (
    ALERT_ROWS,
    LEVELS,
    SEVERITIES,
    AlertDigest,
    alert_entities,
    digest_alerts,
    level_rank,
    read_findings,
    read_summary,
    subject_text,
)

MAX_SECTIONS = 50  # findings drawn in detail; the table lists them all
MAX_ENTITIES = 60  # per type in a finding section
SECTION_ALERTS = 50
# default-src 'none' blocks every fetch (img, font, connect, frame…); only inline code may run.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:; base-uri 'none'; form-action 'none'")


def e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return e(v if v is not None else "")
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    return e(v)


def _bytes(n: Any) -> str:
    x = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if x < 1000 or unit == "TB":
            return f"{x:,.0f} {unit}" if unit == "B" else f"{x:,.1f} {unit}"
        x /= 1000
    return f"{x:,.1f} TB"


def _when(ts: Any) -> str:
    """A timestamp to the second for reading, the full RFC 3339 value on hover."""
    t = charts.parse_time(ts)
    if t is None:
        return e(ts or "—")
    return f'<span title="{e(ts)}">{t.strftime("%Y-%m-%d %H:%M:%S")}</span>'


def _anchor(fid: Any) -> str:
    return "f-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in str(fid))


def _kv_table(rows: list[tuple[str, str]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _count_table(title: str, counts: dict[str, Any], empty: str = "none") -> str:
    if not counts:
        return f"<div class=card><h3>{e(title)}</h3><p class=muted>{e(empty)}</p></div>"
    rows = "".join(f"<tr><td>{e(k)}</td><td class=num>{_fmt(v)}</td></tr>" for k, v in counts.items())
    return f"<div class=card><h3>{e(title)}</h3><table class=counts>{rows}</table></div>"


def _badge(level: Any) -> str:
    return f'<span class="badge lv-{e(level)}">{e(level)}</span>'


def overview(s: dict[str, Any], findings: list[dict[str, Any]], d: AlertDigest, bad_findings: int) -> str:
    files = s.get("files") or []
    evicted = s.get("evicted") or {}
    drops = {k: v for k, v in {"input errors": len(s.get("input_errors") or []),
                               "snaplen-truncated packets": s.get("snaplen_truncated"),
                               "IP fragments (not reassembled)": s.get("ip_fragments"),
                               "non-IP packets": s.get("non_ip"),
                               **{f"evicted {k}": v for k, v in evicted.items()}}.items() if v}
    tiles = [("packets", _fmt(s.get("packets", "—"))), ("bytes", _bytes(s.get("bytes"))),
             ("flows", _fmt(s.get("flows", "—"))), ("alerts", _fmt(d.total)), ("findings", _fmt(len(findings)))]
    tile_html = "".join(f"<div class=tile><div class=big>{v}</div><div class=muted>{e(k)}</div></div>" for k, v in tiles)
    span = f"{e(s.get('first_packet') or '—')} → {e(s.get('last_packet') or '—')}"
    read = _kv_table([
        ("files", "<br>".join(f"{e(f.get('path'))} <span class=muted>({e(f.get('format'))})</span>"
                              for f in files if isinstance(f, dict)) or "—"),
        ("time span", span),
        ("decoded", f"{_fmt(s.get('decoded', '—'))} of {_fmt(s.get('packets', '—'))} packets"),
        ("malformed", f"{_fmt(s.get('malformed_total', 0))}"),
        ("replay time", f"{_fmt(s.get('elapsed_s', '—'))} s ({_fmt(s.get('packets_per_s') or 0)} packets/s)"),
    ])
    meta = {f"{k}: accepted": (v or {}).get("accepted") for k, v in (s.get("metadata") or {}).items()}
    meta |= {f"{k}: rejected": (v or {}).get("rejected") for k, v in (s.get("metadata") or {}).items()}
    sev = Counter((str(f.get("kind")), str(f.get("severity"))) for f in findings)
    kinds = sorted({k for k, _ in sev})
    if kinds:
        head = "".join(f"<th>{_badge(x)}</th>" for x in SEVERITIES)
        body = "".join(f"<tr><td>{e(k)}</td>" + "".join(f"<td class=num>{sev[(k, x)] or ''}</td>" for x in SEVERITIES)
                       + "</tr>" for k in kinds)
        fk = f"<div class='card wide'><h3>Findings by kind and severity</h3><table class=counts><tr><th></th>{head}</tr>{body}</table></div>"
    else:
        fk = "<div class=card><h3>Findings by kind and severity</h3><p class=muted>no findings</p></div>"
    rules = sorted(d.by_rule.items(), key=lambda kv: (level_rank(kv[0][2]), -kv[1], kv[0][1]))
    rule_rows = "".join(
        f'<tr><td><a href="#alerts" class=rulelink data-rule="{e(rid)}">{e(name)}</a></td><td>{_badge(lv)}</td>'
        f"<td class=num>{n:,}</td></tr>" for (rid, name, lv), n in rules)
    by_rule = (f"<div class='card wide'><h3>Alerts by rule and level</h3><table class=counts>{rule_rows}</table></div>"
               if rules else "<div class='card wide'><h3>Alerts by rule and level</h3><p class=muted>no alerts</p></div>")
    warn = ""
    if bad_findings or d.unreadable:
        warn = (f"<p class=warn>Skipped unreadable lines: {bad_findings} in findings.jsonl, "
                f"{d.unreadable} in alerts.jsonl.</p>")
    if not s:
        warn += "<p class=warn>No summary.json in this directory: packet counts are unknown.</p>"
    return (f"<section id=overview><h2>Overview</h2>{warn}<div class=tiles>{tile_html}</div><div class=grid>"
            f"<div class='card wide'><h3>What was read</h3>{read}</div>"
            + _count_table("Events by type", s.get("events") or {})
            + _count_table("Dropped or skipped", drops)
            + _count_table("Malformed by reason", s.get("malformed") or {})
            + _count_table("Metadata records", {k: v for k, v in meta.items() if v is not None})
            + _count_table("Alerts by level", {k: d.by_level[k] for k in sorted(d.by_level, key=level_rank)})
            + fk + by_rule + "</div></section>")


def _score_bar(score: Any) -> str:
    try:
        x = max(0.0, min(1.0, float(score)))
    except (TypeError, ValueError):
        return e(score)
    return f'<span class=score><span style="width:{x * 100:.0f}%"></span></span> {x:.2f}'


def findings_table(findings: list[dict[str, Any]]) -> str:
    if not findings:
        return ("<section id=findings><h2>Findings</h2><p class=empty>No findings: no relay host or reseller "
                "cluster scored above the reporting threshold in this run.</p></section>")
    rows = []
    for i, f in enumerate(findings, 1):
        ev = next((x for x in f.get("evidence") or [] if isinstance(x, dict)), {})
        link = f'<a href="#{_anchor(f.get("id"))}">{e(f.get("id"))}</a>' if i <= MAX_SECTIONS else e(f.get("id"))
        rows.append(f"<tr><td class=num>{i}</td><td>{link}</td><td>{e(f.get('kind'))}</td>"
                    f"<td>{e(subject_text(f))}</td><td>{_badge(f.get('severity'))}</td><td>{_score_bar(f.get('score'))}</td>"
                    f"<td class=nowrap>{_when(f.get('first_seen'))}<br>{_when(f.get('last_seen'))}</td><td>{e(ev.get('summary', ''))}</td></tr>")
    note = (f"<p class=muted>Sections below cover the top {MAX_SECTIONS} of {len(findings):,} findings; "
            "`appliance explain ID` shows any of them.</p>" if len(findings) > MAX_SECTIONS else "")
    return ("<section id=findings><h2>Findings</h2>" + note + "<table id=findings-table class=data><thead><tr>"
            "<th>#</th><th>id</th><th>kind</th><th>subject</th><th>severity</th><th>score</th><th>first / last seen</th>"
            "<th>top evidence</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>")


def _evidence(f: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{e(x.get('summary'))}</td><td class=num>{_fmt(x.get('value'))}</td>"
                   f"<td><code>{e(x.get('rule'))}</code></td></tr>"
                   for x in f.get("evidence") or [] if isinstance(x, dict))
    if not rows:
        return "<p class=muted>The finding carries no evidence items.</p>"
    return f"<table class=data><thead><tr><th>evidence</th><th>value</th><th>rule</th></tr></thead><tbody>{rows}</tbody></table>"


def _entities(f: dict[str, Any]) -> str:
    groups: dict[str, list[str]] = {}
    for x in f.get("entities") or []:
        if isinstance(x, dict):
            groups.setdefault(str(x.get("type")), []).append(str(x.get("value")))
    if not groups:
        return ""
    out = []
    for t, vals in groups.items():
        color = charts.ENTITY_COLORS.get(t, "#777")
        chips = "".join(f'<span class=chip style="border-color:{color}">{e(v)}</span>' for v in vals[:MAX_ENTITIES])
        more = f" <span class=muted>… and {len(vals) - MAX_ENTITIES:,} more</span>" if len(vals) > MAX_ENTITIES else ""
        out.append(f"<div class=ents><b>{e(t)}</b> <span class=muted>({len(vals):,})</span> {chips}{more}</div>")
    return "<h4>Entities</h4>" + "".join(out)


def _alert_rows(alerts: list[dict[str, Any]]) -> str:
    rows = []
    for a in alerts:
        ents = alert_entities(a)
        ev = "; ".join(f"{x.get('field', x.get('rule', ''))}={x.get('value', x.get('summary', ''))}"
                       for x in a.get("evidence") or [] if isinstance(x, dict))
        src = f"{a.get('source.ip') or ''}{':' + str(a['source.port']) if a.get('source.port') is not None else ''}"
        dst = f"{a.get('destination.ip') or ''}{':' + str(a['destination.port']) if a.get('destination.port') is not None else ''}"
        rows.append(f'<tr data-rule="{e(a.get("rule.id"))}" data-level="{e(a.get("rule.level"))}" '
                    f'data-ents="{e(" ".join(ents).lower())}"><td>{e(a.get("@timestamp"))}</td>'
                    f'<td>{e(a.get("rule.name") or a.get("rule.id"))}</td><td>{_badge(a.get("rule.level"))}</td>'
                    f"<td>{e(src)} → {e(dst)}</td><td class=ents-cell>{e(', '.join(ents[:8]))}"
                    f"{' …' if len(ents) > 8 else ''}</td><td class=ev>{e(ev[:300])}</td></tr>")
    return "".join(rows)


_ALERT_HEAD = ("<thead><tr><th>time</th><th>rule</th><th>level</th><th>source → destination</th>"
               "<th>entities</th><th>evidence</th></tr></thead>")


class Figures:
    """Collects figures for the page: each gets a div here and its JSON in one script tag."""

    def __init__(self) -> None:
        self.items: dict[str, charts.Figure] = {}

    def div(self, fig: charts.Figure, name: str) -> str:
        key = f"fig{len(self.items)}"
        self.items[key] = fig
        return f'<div class="chart" id="{key}" data-fig="{key}" aria-label="{e(name)}"></div>'


def _relay_section(f: dict[str, Any], out_dir: str, figs: Figures) -> str:
    flows = charts.scan_events(out_dir, "flows")
    series = charts.relay_series(f, flows)
    out = ["<h4>Inbound vs upstream bytes</h4>"]
    if series and (any(series["inbound"]) or any(series["upstream"])):
        r = charts.correlation(series["inbound"], series["upstream"])
        src = ("derived from flows.parquet (each flow's bytes spread over its lifetime)" if series["derived"]
               else "from the finding's series")
        corr = f"; per-bin correlation r = {r:.2f}" if r is not None else ""
        out.append(f"<p class=caption>Bytes per {series['bin_s']:g} s bin, {src}{corr}.</p>")
        out.append(figs.div(charts.relay_timeline(series), "relay timeline"))
    else:
        out.append("<p class=muted>No flows of this host in events/flows.parquet and no series in the finding.</p>")
    lags, derived = charts.relay_lags(f, flows)
    out.append("<h4>Lag from inbound request to upstream call</h4>")
    if len(lags) >= 3:
        q = statistics.quantiles(lags, n=10)
        how = ("estimated: gap from each inbound flow to the next new upstream connection (pooled upstream "
               "connections hide lags)" if derived else "measured by the relay detector")
        out.append(f"<p class=caption>{len(lags):,} lags, {how}: median {statistics.median(lags):.1f} ms, "
                   f"p90 {q[8]:.1f} ms.</p>")
        out.append(figs.div(charts.lag_histogram(lags), "lag histogram"))
    else:
        out.append("<p class=muted>Too few matched lags to draw.</p>")
    return "".join(out)


def _cluster_section(f: dict[str, Any], out_dir: str, figs: Figures) -> str:
    requests, accounts = charts.scan_events(out_dir, "requests"), charts.scan_events(out_dir, "accounts")
    nodes, edges, notes = charts.cluster_edges(f, requests, accounts)
    out = ["<h4>Accounts, keys, payments, addresses and networks</h4>"]
    fig = charts.cluster_graph(nodes, edges)
    if fig is None:
        out.append("<p class=muted>The finding lists no entities to draw.</p>")
    else:
        cap = "".join(f" {e(n)}." for n in notes)
        out.append(f"<p class=caption>{len(nodes):,} nodes, {len(edges):,} links (from the finding and "
                   f"requests/accounts records).{cap} Drag to pan, scroll to zoom, click the legend to hide a type.</p>")
        out.append(figs.div(fig, "cluster graph"))
    tl, left = charts.cluster_timeline(f, requests, accounts)
    out.append("<h4>Account creation and activity</h4>")
    if tl is None:
        out.append("<p class=muted>No account or request records for these accounts.</p>")
    else:
        cap = f" {left:,} more accounts left out." if left else ""
        out.append(f"<p class=caption>One lane per account, oldest first.{cap}</p>")
        out.append(figs.div(tl, "cluster timeline"))
    return "".join(out)


def finding_sections(findings: list[dict[str, Any]], d: AlertDigest, out_dir: str, figs: Figures) -> str:
    out = []
    for f in findings[:MAX_SECTIONS]:
        fid = str(f.get("id"))
        kind = f.get("kind")
        head = (f'<section class=finding id="{_anchor(fid)}"><h3>{_badge(f.get("severity"))} {e(kind)} · '
                f"{e(subject_text(f))} <span class=muted>({e(fid)})</span></h3>")
        meta = _kv_table([("score", _score_bar(f.get("score"))), ("first seen", _when(f.get("first_seen"))),
                          ("last seen", _when(f.get("last_seen")))])
        body = [head, meta, _evidence(f)]
        if kind == "relay_host":
            body.append(_relay_section(f, out_dir, figs))
        elif kind == "reseller_cluster":
            body.append(_cluster_section(f, out_dir, figs))
        body.append(_entities(f))
        total = d.per_finding_total.get(fid, 0)
        shown = d.per_finding.get(fid, [])[:SECTION_ALERTS]
        listed = f"; first {len(shown)} listed" if total > len(shown) else ""
        label = (f"<b>Alerts behind it</b> <span class=muted>({total:,} sharing an address, account, key, "
                 f"payment or domain{listed})</span>")
        if shown:
            body.append(f"<details><summary>{label}</summary><table class='data small'>{_ALERT_HEAD}<tbody>"
                        f"{_alert_rows(shown)}</tbody></table></details>")
        else:
            body.append(f"<p>{label}</p>")
        body.append('<p><a href="#findings">↑ findings</a></p></section>')
        out.append("".join(body))
    return "<section id=details><h2>Finding details</h2>" + "".join(out) + "</section>" if out else ""


def alerts_table(d: AlertDigest) -> str:
    if not d.total:
        return "<section id=alerts><h2>Alerts</h2><p class=empty>No alerts in this run.</p></section>"
    rules = sorted({(rid, name) for rid, name, _ in d.by_rule}, key=lambda r: r[1])
    rule_opts = "".join(f'<option value="{e(rid)}">{e(name)}</option>' for rid, name in rules)
    levels = sorted(d.by_level, key=level_rank)
    level_opts = "".join(f'<option value="{e(lv)}">{e(lv)}</option>' for lv in levels)
    cap = ""
    if d.total > len(d.rows):
        cap = (f"<p class=warn>Showing {len(d.rows):,} of {d.total:,} alerts (most severe levels first, capped at "
               f"{ALERT_ROWS:,} per page); filters apply to the rows shown. The full list is alerts.jsonl.</p>")
    return ("<section id=alerts><h2>Alerts</h2>" + cap + "<div class=filters>"
            f"<label>rule <select id=f-rule><option value=''>all</option>{rule_opts}</select></label>"
            f"<label>level <select id=f-level><option value=''>all</option>{level_opts}</select></label>"
            "<label>entity <input id=f-ent type=search placeholder='ip, account, key, domain…'></label>"
            f"<span id=f-count class=muted>{len(d.rows):,} shown</span></div>"
            f"<table id=alerts-table class='data small'>{_ALERT_HEAD}<tbody>{_alert_rows(d.rows)}</tbody></table></section>")


def _script_json(obj: Any) -> str:
    # `<` escaped so no value can close the script element (HTML spec: script data state).
    return json.dumps(obj, separators=(",", ":"), default=str).replace("<", "\\u003c")


def plotly_js() -> str:
    """plotly.js as bundled by the plotly package (MIT): read from the installed package, never fetched."""
    return resources.files("plotly").joinpath("package_data/plotly.min.js").read_text(encoding="utf-8")


def render(out_dir: str) -> str:
    summary = read_summary(out_dir)
    findings, bad = read_findings(out_dir)
    digest = digest_alerts(out_dir, findings)
    figs = Figures()
    body = (overview(summary, findings, digest, bad) + findings_table(findings)
            + finding_sections(findings, digest, out_dir, figs) + alerts_table(digest))
    template = resources.files("appliance.sinks").joinpath("report_template.html").read_text(encoding="utf-8")
    title = f"appliance report · {os.path.basename(os.path.abspath(out_dir))}"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    sev = Counter(str(f.get("severity")) for f in findings)
    headline = ", ".join(f"{sev[s]} {s}" for s in SEVERITIES if sev[s]) or "none"
    values = {
        "CSP": CSP, "TITLE": e(title), "BODY": body, "FIGURES": _script_json(figs.items),
        "SUBTITLE": e(f"{len(findings):,} findings ({headline}) · {digest.total:,} alerts · "
                      f"generated {generated} from {os.path.abspath(out_dir)}"),
        # plotly.js is ~4.8 MB: inlined only when there is a chart to draw.
        "PLOTLY": f"<script>{plotly_js()}</script>" if figs.items else "",
    }
    # One pass over the template only: substituted text (input values, plotly.js) is never rescanned.
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: values[m.group(1)], template)


__all__ = ["LEVELS", "render"]
