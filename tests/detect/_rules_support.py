"""Shared helpers for the rule-language tests: write rule text to a temp dir, build engines."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import polars as pl

from appliance.detect.rules.engine import RuleEngine, validate
from appliance.detect.rules.testing import frame_from_records

RID = "11111111-1111-4111-8111-111111111111"
RID2 = "22222222-2222-4222-8222-222222222222"
RID3 = "33333333-3333-4333-8333-333333333333"


def write(tmp: Path, name: str, text: str) -> str:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def lists_dir(tmp: Path) -> str:
    d = tmp / "lists"
    d.mkdir(exist_ok=True)
    (d / "ai.yaml").write_text("name: ai_domains\ndescription: t\nvalues: [api.openai.com, api.anthropic.com]\n")
    (d / "cat.yaml").write_text(
        "name: catalog\ndescription: t\nentries:\n"
        "  - {value: api.openai.com, kind: domain, source: s}\n"
        "  - {value: 160.79.104.0/23, kind: cidr, source: s}\n"
    )
    return str(d)


def detection_rule(detection: str, logsource: str = "http", rid: str = RID, extra: str = "") -> str:
    body = textwrap.indent(textwrap.dedent(detection).strip("\n"), "  ")
    return f"title: t\nid: {rid}\nlevel: high\nlogsource: {logsource}\n{extra}detection:\n{body}\n"


def engine_for(tmp: Path, text: str, name: str = "r.yml") -> RuleEngine:
    path = write(tmp, name, text)
    return RuleEngine.load([path], data_dirs=[lists_dir(tmp)])


def diags_for(tmp: Path, text: str, name: str = "r.yml") -> list[str]:
    path = write(tmp, name, text)
    return [str(d) for d in validate([path], data_dirs=[lists_dir(tmp)])]


def frame(event_type: str, records: list[dict[str, Any]]) -> pl.DataFrame:
    return frame_from_records(event_type, records)


def hits(engine: RuleEngine, event_type: str, records: list[dict[str, Any]]) -> list[int]:
    """Row indexes (by source.port as a row tag when present) that raised alerts."""
    alerts = engine.evaluate(event_type, frame(event_type, records))
    return [a["source.port"] for a in alerts]
