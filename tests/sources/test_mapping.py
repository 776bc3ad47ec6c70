"""Field mappings: the shipped nginx/Envoy/ALB mappings on realistic samples, and each operation."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from appliance import secrets
from appliance.errors import ConfigError
from appliance.sources.mapping import load_mapping, parse_time
from appliance.sources.metadata import read_metadata

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests/fixtures/metadata"
MAPS = ROOT / "rules/mappings"


@pytest.fixture(autouse=True)
def _secret() -> None:
    secrets.set_secret("test-secret")


def _read(sample: str, mapping: str) -> tuple[pl.DataFrame, list[dict]]:
    result = read_metadata([str(FIX / sample)], "request", mapping=str(MAPS / mapping))
    return result.frame, result.rejects


def test_nginx_json() -> None:
    frame, rejects = _read("nginx-json.log", "nginx-json.yaml")
    assert frame["source.ip"].to_list() == ["203.0.113.7", "198.51.100.23", "2001:db8:200::15"]
    # $time_local with offsets, to UTC.
    assert [t.isoformat() for t in frame["@timestamp"]] == [
        "2024-05-01T12:00:00+00:00", "2024-05-01T12:00:01+00:00", "2024-05-01T12:00:02+00:00"]
    assert frame["event.duration"].to_list() == [532_000_000, 1_204_000_000, 3_000_000]
    assert frame["http.response.status_code"].to_list() == [200, 200, 401]
    assert frame["account.id"].to_list() == ["acct_1001", "acct_1002", None]  # "-" is absent
    assert frame["model"][0] == "gpt-4o-2024-05-13"
    key = "sk-proj-Zq8f3LmN0pQ7rS2tUv4wXy6zA1bC3dE5fG7hJ9kL"
    assert frame["api.key_id"][0] == secrets.fingerprint(key, "key")  # same fingerprint as the wire
    assert [(r["line"], r["reason"]) for r in rejects] == [(4, "bad_type:@timestamp")]


def test_envoy_json() -> None:
    frame, rejects = _read("envoy-json.log", "envoy-json.yaml")
    assert rejects == []
    assert frame["source.ip"].to_list() == ["203.0.113.7", "2001:db8:200::15", "10.0.0.1"]
    assert frame["account.id"].to_list() == ["acct_1001", "acct_1002", None]  # header, any case
    assert frame["api.key_id"].to_list() == ["key_3fa9", "key_77c1", None]
    assert frame["event.duration"].to_list() == [532_000_000, 3_004_000_000, 1_000_000]
    assert frame["@timestamp"][0].isoformat() == "2024-05-01T12:00:00.123000+00:00"
    assert frame["http.response.status_code"][1] == 529


def test_aws_alb() -> None:
    frame, rejects = _read("aws-alb.log", "aws-alb.yaml")
    assert rejects == []
    assert frame["source.ip"].to_list() == ["203.0.113.7", "198.51.100.23", "192.0.2.200"]
    assert frame["url.path"].to_list() == ["/v1/chat/completions", "/v1/messages", "/v1/chat/completions"]
    assert frame["user_agent.original"][1] == "Anthropic/Python 0.28.0"
    assert frame["event.duration"].to_list() == [532_000_000, 1_204_000_000, None]  # -1: no target
    assert frame["http.response.status_code"].to_list() == [200, 200, 503]
    assert frame["@timestamp"][0].isoformat() == "2024-05-01T12:00:00.186641+00:00"


def test_header_from_text_block_and_host_port_forms(tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        "format: jsonl\nfields:\n"
        "  '@timestamp': {from: ts, time: epoch_ms}\n"
        "  source.ip: {from: peer, host_port: host}\n"
        "  account.id: {from: headers, header: X-Account-Id}\n"
        "  model: {const: gpt-4o}\n")
    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"ts": 1714564800000, "peer": "[2001:db8::1]:443", "headers": "Host: a\\r\\nx-account-id: acct_9\\r\\n"}\n'
        '{"ts": 1714564800500, "peer": "192.0.2.1:51000", "headers": "Host: a"}\n'
        '{"ts": 1714564801000, "peer": "2001:db8::2", "headers": null}\n')
    frame = read_metadata([str(data)], "request", mapping=str(mapping)).frame
    assert frame["source.ip"].to_list() == ["2001:db8::1", "192.0.2.1", "2001:db8::2"]
    assert frame["account.id"].to_list() == ["acct_9", None, None]
    assert frame["model"].to_list() == ["gpt-4o"] * 3
    assert frame["@timestamp"].dt.epoch("ms").to_list() == [1714564800000, 1714564800500, 1714564801000]


@pytest.mark.parametrize(("value", "how", "epoch_s"), [
    ("10/Oct/2000:13:55:36 -0700", "nginx", 971211336),
    ("2000-10-10T20:55:36Z", "rfc3339", 971211336),
    ("2000-10-10T20:55:36.000000Z", "auto", 971211336),
    ("971211336", "epoch_s", 971211336),
    ("971211336000", "epoch_ms", 971211336),
    ("971211336000000000", "epoch_ns", 971211336),
    ("971211336000", "epoch", 971211336),
    ("2000/10/10 20:55:36", "%Y/%m/%d %H:%M:%S", 971211336),
])
def test_time_formats(value: str, how: str, epoch_s: int) -> None:
    out = pl.DataFrame({"t": [value]}).select(parse_time(pl.col("t"), pl.Utf8(), how))
    assert out.to_series().dt.epoch("s")[0] == epoch_s


@pytest.mark.parametrize(("body", "message"), [
    ("fields: {nope.field: x}\n", "fields.nope.field: not a field"),
    ("fields: {source.ip: {from: a, shout: 1}}\n", "unknown operation 'shout'"),
    ("fields: {source.ip: {from: a, const: b}}\n", "exactly one of"),
    ("format: xml\nfields: {}\n", "unknown format"),
    ("format: delimited\nfields: {}\n", "needs a 'columns' list"),
    ("fields: [\n", r"m.yaml:\d+:\d+: invalid YAML"),
])
def test_bad_mappings_name_the_file(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_mapping(path, "request")


def test_shipped_mappings_load_for_requests() -> None:
    for path in MAPS.glob("*.yaml"):
        assert load_mapping(path, "request").fields, path
