"""CLI for investigators: `report`, `explain`, and the summary table `replay` prints at its end.

This is part of the one CLI boundary (STYLE.md 7): it prints and exits; the reading and rendering
live in appliance/sinks/report*.py. `explain` has exit codes scripts can rely on (docs/report.md):

    0  the finding was found and printed
    1  an error: OUT_DIR or its findings.jsonl is missing or unreadable
    4  no finding with that id (or the id prefix is ambiguous)
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from enum import IntEnum
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from appliance.errors import InputError
from appliance.sinks.report import (
    FINDING_ALERTS,
    SEVERITIES,
    alert_entities,
    digest_alerts,
    find_finding,
    level_rank,
    read_findings,
    subject_text,
    write_report,
)


class ExplainStatus(IntEnum):
    OK = 0
    ERROR = 1  # raised as ApplianceError; the CLI's one handler prints it and exits 1
    NOT_FOUND = 4


_SEVERITY_STYLE = {"critical": "bold white on red", "high": "bold red", "medium": "yellow", "low": "cyan",
                   "informational": "dim"}


def _sev(level: Any) -> str:
    style = _SEVERITY_STYLE.get(str(level), "")
    return f"[{style}]{level}[/]" if style else str(level)


def _txt(v: Any) -> str:
    """Input text for a rich cell: markup-escaped, so a value like "[red]" prints as itself."""
    from rich.markup import escape

    return escape("" if v is None else str(v))


@click.command("report")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--output", "output", type=click.Path(dir_okay=False), help="HTML file to write (default OUT_DIR/report.html).")
def report(out_dir: str, output: str | None) -> None:
    """Write the self-contained HTML report for a replay's OUT_DIR (opens offline)."""
    err = Console(stderr=True)
    if err.is_terminal:
        with err.status("writing report…"):
            path = write_report(out_dir, output)
    else:
        path = write_report(out_dir, output)
    click.echo(path)


@click.command("explain")
@click.argument("finding_id")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Replay output directory.")
@click.option("--alerts", "max_alerts", default=20, show_default=True, type=click.IntRange(0, FINDING_ALERTS),
              help="Alerts to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the finding and its alerts as JSON.")
def explain(finding_id: str, out_dir: str, max_alerts: int, as_json: bool) -> None:
    """Show a finding's evidence, entities and the alerts behind it.

    FINDING_ID is the id from findings.jsonl or a unique prefix of it. Exit status: 0 found,
    1 error (missing directory or findings.jsonl), 4 no such finding.
    """
    path = os.path.join(out_dir, "findings.jsonl")
    if not os.path.isdir(out_dir):
        raise InputError(out_dir, "no such output directory")
    if not os.path.isfile(path):
        raise InputError(path, "missing: was OUT_DIR written by `appliance replay`?")
    findings, _bad = read_findings(out_dir)
    finding = find_finding(findings, finding_id)
    if finding is None:
        close = [str(f.get("id")) for f in findings if str(f.get("id", "")).startswith(finding_id)][:5]
        hint = f" (ambiguous prefix: {', '.join(close)})" if close else ""
        click.echo(f"appliance: error: no finding {finding_id!r} in {path}{hint}", err=True)
        sys.exit(ExplainStatus.NOT_FOUND)
    digest = digest_alerts(out_dir, [finding], max_rows=0)
    fid = str(finding["id"])
    alerts = sorted(digest.per_finding.get(fid, []), key=lambda a: (level_rank(a.get("rule.level")),
                                                                    str(a.get("@timestamp"))))
    if as_json:
        click.echo(json.dumps({"finding": finding, "alerts_total": digest.per_finding_total.get(fid, 0),
                               "alerts": alerts[:max_alerts]}, indent=2, sort_keys=True, default=str))
        return
    _print_explain(Console(), finding, alerts[:max_alerts], digest.per_finding_total.get(fid, 0))


def _print_explain(console: Console, f: dict[str, Any], alerts: list[dict[str, Any]], total: int) -> None:
    head = Table(title=f"{_txt(f.get('kind'))} {_txt(f.get('id'))}", show_header=False, title_justify="left")
    head.add_row("subject", _txt(subject_text(f)))
    head.add_row("score", f"{float(f.get('score') or 0):.2f} ({_sev(f.get('severity'))})")
    head.add_row("seen", f"{_txt(f.get('first_seen'))} → {_txt(f.get('last_seen'))}")
    console.print(head)
    ev = Table(title="evidence", title_justify="left")
    ev.add_column("summary")
    ev.add_column("value", justify="right")
    ev.add_column("rule", style="dim")
    for x in f.get("evidence") or []:
        if isinstance(x, dict):
            ev.add_row(_txt(x.get("summary")), _txt(x.get("value")), _txt(x.get("rule")))
    console.print(ev)
    groups: dict[str, list[str]] = {}
    for x in f.get("entities") or []:
        if isinstance(x, dict):
            groups.setdefault(str(x.get("type")), []).append(str(x.get("value")))
    ents = Table(title="entities", title_justify="left")
    ents.add_column("type")
    ents.add_column("count", justify="right")
    ents.add_column("values")
    for t, vals in groups.items():
        more = f" … and {len(vals) - 12} more" if len(vals) > 12 else ""
        ents.add_row(_txt(t), str(len(vals)), _txt(", ".join(vals[:12]) + more))
    console.print(ents)
    al = Table(title=f"alerts behind it: {total:,} (showing {len(alerts)})", title_justify="left")
    for col in ("time", "level", "rule", "source → destination", "entities"):
        al.add_column(col)
    for a in alerts:
        al.add_row(_txt(a.get("@timestamp")), _sev(a.get("rule.level")), _txt(a.get("rule.name") or a.get("rule.id")),
                   _txt(f"{a.get('source.ip') or ''} → {a.get('destination.ip') or ''}"),
                   _txt(", ".join(alert_entities(a)[:6])))
    console.print(al)


def print_replay_summary(summary: dict[str, Any], out_dir: str, console: Console) -> None:
    """The table `replay` prints at its end: what was read, then findings by severity and the top ones."""
    s = summary
    t = Table(title=f"replay → {_txt(out_dir)}", show_header=False)
    t.add_row("files", str(len(s.get("files") or [])))
    pps = s.get("packets_per_s") or 0
    t.add_row("packets", f"{s.get('packets', 0):,} ({s.get('bytes', 0):,} bytes) in {s.get('elapsed_s', '?')} s, {pps:,} pkt/s")
    t.add_row("time span", f"{s.get('first_packet') or '—'} → {s.get('last_packet') or '—'}")
    t.add_row("malformed", _txt(", ".join(f"{k} {v}" for k, v in (s.get("malformed") or {}).items()) or "none"))
    t.add_row("flows", f"{s.get('flows', 0):,} (evicted {(s.get('evicted') or {}).get('flows', 0)})")
    t.add_row("events", ", ".join(f"{k} {v:,}" for k, v in (s.get("events") or {}).items()) or "none")
    t.add_row("alerts", f"{s.get('alerts', 0):,}")
    findings, _ = read_findings(out_dir) if os.path.isdir(out_dir) else ([], 0)
    sev = Counter(str(f.get("severity")) for f in findings)
    t.add_row("findings", ", ".join(f"{_sev(k)} {sev[k]}" for k in SEVERITIES if sev[k]) or "none")
    console.print(t)
    if findings:
        top = Table(title=f"top findings ({min(len(findings), 10)} of {len(findings):,})", title_justify="left")
        for col, just in (("score", "right"), ("severity", "left"), ("kind", "left"), ("subject", "left"), ("id", "left")):
            top.add_column(col, justify=just)  # type: ignore[arg-type]
        for f in findings[:10]:
            top.add_row(f"{float(f.get('score') or 0):.2f}", _sev(f.get("severity")), _txt(f.get("kind")),
                        _txt(subject_text(f)), _txt(f.get("id")))
        console.print(top)
        console.print(f"explain one: appliance explain {_txt(findings[0].get('id'))} --out {_txt(out_dir)}")
    report_path = os.path.join(out_dir, "report.html")
    if os.path.isfile(report_path):
        console.print(f"report: {_txt(report_path)}")
    console.print(f"summary: {_txt(os.path.join(out_dir, 'summary.json'))}")
