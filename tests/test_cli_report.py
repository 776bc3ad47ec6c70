"""appliance/cli_report.py: `report`, `explain` (and its exit codes) and the replay summary table."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from appliance import cli as cli_mod
from appliance.cli_report import ExplainStatus, explain, print_replay_summary, report

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "report" / "demo"
RELAY = "f-relay-203-0-113-7"


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    out = tmp_path / "demo"
    shutil.copytree(FIXTURE, out)
    return out


def _run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Through appliance.cli.main, so ApplianceError → exit 1 is the real handler's doing."""
    for cmd in (report, explain):
        if cmd.name not in cli_mod.cli.commands:
            cli_mod.cli.add_command(cmd)
    with pytest.raises(SystemExit) as exc:
        cli_mod.main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def _relay_alerts(out: Path) -> int:
    """Independent count: alerts naming 203.0.113.7 or the relay's domain/clients anywhere in their endpoints or related."""
    finding = next(json.loads(line) for line in (out / "findings.jsonl").read_text().splitlines() if RELAY in line)
    want = {e["value"] for e in finding["entities"] if e["type"] in ("ip", "domain")}
    n = 0
    for line in (out / "alerts.jsonl").read_text().splitlines():
        a = json.loads(line)
        vals = {a.get("source.ip"), a.get("destination.ip")}
        vals |= set((a.get("related") or {}).get("ip", [])) | set((a.get("related") or {}).get("hosts", []))
        n += bool(vals & want)
    return n


def test_report_command_writes_the_page_and_prints_its_path(demo: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(report, [str(demo), "--output", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(tmp_path / "r.html")
    assert RELAY in (tmp_path / "r.html").read_text()
    res = CliRunner().invoke(report, [str(demo)])
    assert res.exit_code == 0 and (demo / "report.html").is_file()


def test_explain_prints_evidence_entities_and_alerts(demo: Path) -> None:
    res = CliRunner().invoke(explain, [RELAY, "--out", str(demo)], env={"COLUMNS": "200"})
    assert res.exit_code == ExplainStatus.OK, res.output
    for text in ("42 inbound requests matched to upstream calls", "api.cheap-gpt.example", "203.0.113.7",
                 f"alerts behind it: {_relay_alerts(demo)}"):
        assert text in res.output


def test_explain_json_matches_an_independent_count(demo: Path) -> None:
    res = CliRunner().invoke(explain, [RELAY, "--out", str(demo), "--json", "--alerts", "7"])
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert data["finding"]["id"] == RELAY
    assert data["alerts_total"] == _relay_alerts(demo) > 7 and len(data["alerts"]) == 7
    levels = [a["rule.level"] for a in data["alerts"]]
    order = ["critical", "high", "medium", "low", "informational"]
    assert levels == sorted(levels, key=order.index)


def test_explain_accepts_a_unique_prefix(demo: Path) -> None:
    res = CliRunner().invoke(explain, ["f-3c1e", "--out", str(demo), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["finding"]["id"] == "f-3c1e0b5a9d2f4e61"


def test_explain_exit_codes(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run_main(["explain", "f-nope", "--out", str(demo)], capsys)
    assert code == ExplainStatus.NOT_FOUND == 4 and "no finding 'f-nope'" in err
    code, _, err = _run_main(["explain", "f-relay", "--out", str(demo)], capsys)
    assert code == 4 and "ambiguous prefix" in err
    code, _, err = _run_main(["explain", RELAY, "--out", str(tmp_path / "missing")], capsys)
    assert code == ExplainStatus.ERROR == 1 and err.startswith("appliance: error:")
    (tmp_path / "empty").mkdir()
    code, _, err = _run_main(["explain", RELAY, "--out", str(tmp_path / "empty")], capsys)
    assert code == 1 and "findings.jsonl" in err
    code, out, _ = _run_main(["explain", RELAY, "--out", str(demo), "--json"], capsys)
    assert code == 0 and json.loads(out)["finding"]["id"] == RELAY


def test_replay_summary_shows_severities_top_findings_and_report_path(demo: Path) -> None:
    summary = json.loads((demo / "summary.json").read_text())
    (demo / "report.html").write_text("x")
    console = Console(record=True, width=160)
    print_replay_summary(summary, str(demo), console)
    text = console.export_text()
    assert "critical 1, high 1, medium 1, low 1" in text
    lines = text.splitlines()
    top = [next(i for i, line in enumerate(lines) if fid in line) for fid in (RELAY, "f-3c1e0b5a9d2f4e61", "f-relay-203-0-113-45")]
    assert top == sorted(top)  # best score first
    assert "24 accounts, 425 keys, 3 payments, 5 IPs" in text
    assert f"report: {demo / 'report.html'}" in text and f"{summary['packets']:,}" in text


def test_replay_summary_without_findings(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    print_replay_summary({"packets": 3, "bytes": 10, "files": []}, str(tmp_path), console)
    text = console.export_text()
    assert re.search(r"findings +│ none", text) and re.search(r"time span +│ — → —", text)
    assert "top findings" not in text and "report:" not in text
