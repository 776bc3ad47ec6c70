"""Validation diagnostics at exact file:line:column (appliance/detect/rules/parse.py, detection.py, loader.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _rules_support import RID, RID2, diags_for, engine_for, lists_dir, write

from appliance.detect.rules.engine import validate
from appliance.errors import RuleError

HEAD = f"title: t\nid: {RID}\nlevel: high\nlogsource: http\ndetection:\n"


def one(tmp_path: Path, text: str) -> str:
    out = diags_for(tmp_path, text)
    assert len(out) == 1, out
    return out[0]


def test_unknown_field(tmp_path: Path) -> None:
    d = one(tmp_path, HEAD + "  sel:\n    url.pathh|contains: x\n  condition: sel\n")
    assert d == f"{tmp_path}/r.yml:7:5: unknown field 'url.pathh' for logsource 'http' (did you mean 'url.path'?)"


def test_bad_regex(tmp_path: Path) -> None:
    d = one(tmp_path, HEAD + "  sel:\n    url.path|re: 'a(b'\n  condition: sel\n")
    assert d.startswith(f"{tmp_path}/r.yml:7:18: bad regex 'a(b'")


def test_regex_the_engine_cannot_run(tmp_path: Path) -> None:
    # Valid for Python's re, but look-behind is not in the Rust regex engine polars runs.
    d = one(tmp_path, HEAD + "  sel:\n    url.path|re: '(?<=a)b'\n  condition: sel\n")
    assert d == f"{tmp_path}/r.yml:7:18: bad regex '(?<=a)b': look-around, including look-ahead and " \
                "look-behind, is not supported"


def test_bad_cidr(tmp_path: Path) -> None:
    d = one(tmp_path, HEAD + "  sel:\n    source.ip|cidr:\n      - 10.0.0.0/8\n      - 10.0.0.0/33\n  condition: sel\n")
    assert d == f"{tmp_path}/r.yml:9:9: bad CIDR '10.0.0.0/33'"


def test_unknown_list(tmp_path: Path) -> None:
    d = one(tmp_path, HEAD + "  sel:\n    url.domain|in_list: ai_domain\n  condition: sel\n")
    assert d == f"{tmp_path}/r.yml:7:25: unknown list 'ai_domain' (did you mean 'ai_domains'?)"


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    d = one(tmp_path, HEAD + "  sel:\n    url.path: a\n    url.path: b\n  condition: sel\n")
    assert d == f"{tmp_path}/r.yml:8:5: duplicate key 'url.path' (first at line 7, column 5)"


def test_duplicate_id_across_files(tmp_path: Path) -> None:
    rule = HEAD + "  sel:\n    url.path: a\n  condition: sel\n"
    write(tmp_path, "rules/a.yml", rule)
    write(tmp_path, "rules/b.yml", rule)
    out = [str(d) for d in validate([str(tmp_path / "rules")], data_dirs=[lists_dir(tmp_path)])]
    assert out == [f"{tmp_path}/rules/b.yml:2:5: duplicate rule id '{RID}' (first defined at {tmp_path}/rules/a.yml:2:5)"]


def test_unknown_referenced_rule(tmp_path: Path) -> None:
    text = (
        HEAD + "  sel:\n    url.path: a\n  condition: sel\n---\n"
        f"title: c\nid: {RID2}\nlevel: high\ncorrelation:\n  type: event_count\n  rules:\n"
        f"    - {RID}\n    - no_such_rule\n  group-by: [source.ip]\n  timespan: 1h\n  condition: {{gte: 2}}\n"
    )
    d = one(tmp_path, text)
    assert d == f"{tmp_path}/r.yml:17:7: unknown rule 'no_such_rule' referenced by correlation"


def test_condition_error_column(tmp_path: Path) -> None:
    d = one(tmp_path, HEAD + "  sel:\n    url.path: a\n  condition: sel and nope\n")
    assert d == f"{tmp_path}/r.yml:8:22: unknown selection 'nope' in condition"


def test_unsupported_sigma_modifier_and_logsource(tmp_path: Path) -> None:
    d = one(tmp_path, HEAD + "  sel:\n    url.path|base64offset|contains: a\n  condition: sel\n")
    assert d == f"{tmp_path}/r.yml:7:14: unsupported Sigma modifier 'base64offset': our events carry no such encoding"
    text = HEAD.replace("logsource: http\n", "logsource:\n  product: windows\n  category: process_creation\n")
    d = one(tmp_path, text + "  sel:\n    Image: a\n  condition: sel\n")
    assert d == f"{tmp_path}/r.yml:5:3: unsupported logsource (category=process_creation, product=windows): " \
                "it does not map onto our events"


def test_validate_collects_every_error(tmp_path: Path) -> None:
    text = HEAD + "  sel:\n    url.pathh: a\n    source.ip|cidr: nope\n    destination.port|gt: x\n  condition: sel\n"
    out = diags_for(tmp_path, text)
    assert [d.split(": ", 1)[0].rsplit("/", 1)[1] for d in out] == ["r.yml:7:5", "r.yml:8:21", "r.yml:9:26"]


def test_load_raises_first_error(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match=r"r\.yml:7:5: unknown field 'url\.pathh'.*and 1 more"):
        engine_for(tmp_path, HEAD + "  sel:\n    url.pathh: a\n    source.ip|cidr: nope\n  condition: sel\n")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("destination.port|contains: 1", "modifier 'contains' does not apply to number field 'destination.port'"),
        ("url.path|gt: 3", "modifier 'gt' does not apply to string field 'url.path'"),
        ("url.path|exists: yes please", "'|exists' takes true or false"),
        ("url.path|frobnicate: a", "unknown modifier 'frobnicate'"),
        ("url.path|contains|startswith: a", "two comparison modifiers"),
        ("url.path|i: a", "regex flags"),
        ("destination.port: abc", "field 'destination.port' is a number"),
    ],
)
def test_type_and_modifier_errors(tmp_path: Path, item: str, message: str) -> None:
    assert message in one(tmp_path, HEAD + f"  sel:\n    {item}\n  condition: sel\n")


def test_meta_errors(tmp_path: Path) -> None:
    text = "title: t\nid: not-a-uuid\nlevel: severe\nlogsource: http\ncolour: red\ndetection:\n" \
           "  sel:\n    url.path: a\n  condition: sel\n"
    out = [d.split("r.yml:", 1)[1] for d in diags_for(tmp_path, text)]
    assert out == ["2:5: 'id' must be a UUID, got 'not-a-uuid'",
                   "3:8: 'level' must be one of informational, low, medium, high, critical",
                   "5:1: unknown rule key 'colour'"]


def test_keyword_selections_rejected(tmp_path: Path) -> None:
    assert "keyword (full-text) searches are not supported" in one(
        tmp_path, HEAD + "  keywords:\n    - evil\n  condition: keywords\n")


def test_plain_sigma_rule_loads_and_maps_fields(tmp_path: Path) -> None:
    text = f"""
    title: sigma proxy
    id: {RID}
    level: low
    logsource:
      category: proxy
    detection:
      selection:
        c-useragent|startswith: 'litellm/'
        cs-method: POST
        c-uri|contains: /chat/
      condition: selection
    """
    engine = engine_for(tmp_path, text)
    (rule,) = engine.ruleset.rules
    assert rule.sigma and rule.logsource == "http"
    fields = [m.field for m in rule.selections["selection"].alternatives[0]]
    assert fields == ["user_agent.original", "http.request.method", "url.path"]


def test_yaml_syntax_error_location(tmp_path: Path) -> None:
    d = one(tmp_path, HEAD + "  sel: [a\n")
    assert d.startswith(f"{tmp_path}/r.yml:") and "invalid YAML" in d
