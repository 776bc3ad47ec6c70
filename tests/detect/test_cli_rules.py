"""`appliance rules` subcommands through click's CliRunner (appliance/cli_rules.py)."""

from __future__ import annotations

from pathlib import Path

from _rules_support import RID, lists_dir, write
from click.testing import CliRunner

from appliance.cli_rules import rules

GOOD = f"""
title: Odd port chat
id: {RID}
level: high
description: Chat completions to a port that is not 443.
references: [https://example.org/ref]
falsepositives: [Lab servers]
logsource: http
detection:
  sel:
    url.path|contains: /v1/chat/completions
    source.as.number: 24940
  filter:
    destination.port: 443
  condition: sel and not filter
tests:
  match:
    - {{url.path: /v1/chat/completions, destination.port: 8080, source.as.number: 24940}}
  nomatch:
    - {{url.path: /v1/chat/completions, destination.port: 443, source.as.number: 24940}}
"""


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(rules, list(args))
    return result.exit_code, result.output


def test_validate_ok_and_errors(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yml", GOOD)
    code, out = _invoke("validate", good, "--data-dir", lists_dir(tmp_path))
    assert code == 0 and out.strip() == "ok: 1 rules, 0 correlations"
    bad = write(tmp_path, "bad.yml", GOOD.replace("url.path|contains", "url.pth|contains")
                .replace("destination.port: 443", "destination.port|cidr: 443"))
    code, out = _invoke("validate", bad, "--data-dir", lists_dir(tmp_path))
    assert code == 1
    assert out.splitlines()[:2] == [
        f"{bad}:10:5: unknown field 'url.pth' for logsource 'http' (did you mean 'url.path'?)",
        f"{bad}:13:5: modifier 'cidr' does not apply to number field 'destination.port'",
    ]


def test_test_command_summary_and_failure(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yml", GOOD)
    code, out = _invoke("test", good, "--data-dir", lists_dir(tmp_path))
    assert code == 0 and out.strip().endswith("2 passed, 0 failed, 2 cases in 1 rules; 0 rules without tests")
    wrong = write(tmp_path, "wrong.yml", GOOD.replace("destination.port: 443, source", "destination.port: 444, source"))
    code, out = _invoke("test", wrong, "--data-dir", lists_dir(tmp_path))
    assert code == 1
    assert f"FAIL {wrong}:19:7: Odd port chat [nomatch[0]]: expected 0 alert(s), got 1" in out


def test_untested_rules_fail_unless_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "u.yml", GOOD.split("tests:")[0])
    assert _invoke("test", path, "--data-dir", lists_dir(tmp_path))[0] == 1
    assert _invoke("test", path, "--data-dir", lists_dir(tmp_path), "--allow-untested")[0] == 0


def test_list_and_explain(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yml", GOOD)
    code, out = _invoke("list", good, "--data-dir", lists_dir(tmp_path))
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "TITLE", "LEVEL", "LOGSOURCE"]
    assert row.split()[0] == RID and row.split()[-2:] == ["high", "http"]
    code, out = _invoke("explain", RID[:8], "--path", good, "--data-dir", lists_dir(tmp_path))
    assert code == 0
    assert "Raises an alert for each http event where: sel and not filter" in out
    assert "url.path contains '/v1/chat/completions'" in out
    assert "Needs enrichment (silent without it): source.as.number" in out
    code, out = _invoke("explain", "nope", "--path", good, "--data-dir", lists_dir(tmp_path))
    assert code == 1


def test_explain_pack_correlation() -> None:
    repo = Path(__file__).resolve().parents[2]
    code, out = _invoke("explain", "8f6fc271-6316-4d89-bf69-4df21ca07024", "--path", str(repo / "rules"),
                        "--data-dir", str(repo / "rules/lists"), "--data-dir", str(repo / "rules/data"))
    assert code == 0, out
    assert "counts distinct values of account.id" in out and "per source.ip within 1h" in out
