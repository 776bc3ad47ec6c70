"""Metadata ingestion: formats, rejects with file:line, wrong-format errors, secrets never kept."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from appliance import schema, secrets
from appliance.errors import InputError
from appliance.sources.metadata import read_metadata

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "metadata"


@pytest.fixture(autouse=True)
def _secret() -> None:
    secrets.set_secret("test-secret")


def _requests_frame() -> pl.DataFrame:
    return read_metadata([str(FIX / "requests.csv")], "request").frame


def test_csv_with_dotted_headers_is_typed_and_conformed() -> None:
    result = read_metadata([str(FIX / "requests.csv")], "request")
    assert result.frame.schema == schema.polars_schema("request", enriched=False)
    first = result.frame.row(0, named=True)
    assert first["source.ip"] == "203.0.113.7" and first["tokens.input"] == 120
    assert first["http.response.status_code"] == 200 and first["event.duration"] == 532_000_000
    assert first["@timestamp"].isoformat() == "2024-05-01T12:00:00+00:00"
    assert result.counts["rows"] == 4 and result.counts["accepted"] == 2 and result.counts["rejected"] == 2


def test_rejects_carry_file_line_and_reason() -> None:
    rejects = read_metadata([str(FIX / "requests.csv")], "request").rejects
    assert [(Path(r["file"]).name, r["line"], r["reason"]) for r in rejects] == [
        ("requests.csv", 4, "bad_ip:source.ip"),
        ("requests.csv", 5, "bad_type:tokens.input"),
    ]
    assert rejects[0]["record"]["source.ip"] == "not-an-ip"


def test_nested_jsonl_with_blank_line_and_missing_required() -> None:
    result = read_metadata([str(FIX / "requests-nested.jsonl")], "request")
    assert result.frame["source.ip"].to_list() == ["203.0.113.7", "2001:db8:100::7"]
    assert result.frame["http.response.status_code"].to_list() == [200, 200]
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(4, "missing:source.ip")]


def test_flat_and_nested_jsonl_give_the_same_events(tmp_path: Path) -> None:
    nested = read_metadata([str(FIX / "requests-nested.jsonl")], "request").frame
    flat = tmp_path / "flat.jsonl"
    nested.write_ndjson(flat)  # flat dotted keys, timestamps as RFC 3339 text
    assert read_metadata([str(flat)], "request").frame.equals(nested)


def test_parquet_gzip_and_directories(tmp_path: Path) -> None:
    expected = _requests_frame()
    expected.write_parquet(tmp_path / "a.parquet")
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as fh:
        fh.write((FIX / "requests-nested.jsonl").read_bytes())
    with gzip.open(tmp_path / "c.csv.gz", "wb") as fh:
        fh.write((FIX / "requests.csv").read_bytes())
    (tmp_path / "README.md").write_text("not a log")  # ignored in directories
    result = read_metadata([str(tmp_path)], "request")
    assert result.counts["files"] == 3
    assert result.frame.height == 2 + 2 + 2
    assert result.frame.head(2).equals(expected)
    assert sorted({Path(r["file"]).name for r in result.rejects}) == ["b.jsonl.gz", "c.csv.gz"]


def test_format_detected_by_content_when_extension_is_silent(tmp_path: Path) -> None:
    target = tmp_path / "requests.log"
    shutil.copy(FIX / "requests-nested.jsonl", target)
    assert read_metadata([str(target)], "request").frame.height == 2


@pytest.mark.parametrize(("name", "content", "message"), [
    ("x.parquet", b"@timestamp,source.ip\n", "claims to be Parquet"),
    ("x.jsonl", b"@timestamp,source.ip\n2024-05-01T00:00:00Z,192.0.2.1\n", "claims to be JSON Lines"),
    ("x.csv", b'{"source.ip": "192.0.2.1"}\n', "claims to be CSV"),
    ("x.jsonl", b"\x00\x01\x02binary\xff" * 10, "binary"),
    ("x.jsonl", b'[{"source.ip": "192.0.2.1"}]', "JSON array"),
    ("x.jsonl.gz", b'{"a": 1}\n', "no gzip magic"),
    ("y.gz", b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
])
def test_wrong_format_is_a_clear_error(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        read_metadata([str(path)], "request")
    assert name in str(info.value)


def test_parquet_extension_on_csv_bytes_names_offset(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    path.write_bytes(b"a,b\n1,2\n")
    with pytest.raises(InputError) as info:
        read_metadata([str(path)], "request")
    assert info.value.path == str(path) and info.value.offset == 0


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.jsonl"):
        read_metadata([str(tmp_path / "nope.jsonl")], "request")


def test_invalid_json_lines_are_rejected_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    good = '{"@timestamp": "2024-05-01T12:00:00Z", "source.ip": "192.0.2.1"}'
    path.write_text(f'{good}\n{{"source.ip": oops}}\n[1, 2]\n{good}\n')
    result = read_metadata([str(path)], "request")
    assert result.frame.height == 2
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(2, "invalid_json"), (3, "not_an_object")]


def test_timestamps_in_several_forms(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    rows = ["2024-05-01T12:00:00Z", "2024-05-01T14:00:00+02:00", "2024-05-01 12:00:00.000Z",
            "2024-05-01T12:00:00", 1714564800, 1714564800000]
    path.write_text("".join(json.dumps({"@timestamp": t, "source.ip": "192.0.2.1"}) + "\n" for t in rows))
    result = read_metadata([str(path)], "request")
    assert result.rejects == []
    assert result.frame["@timestamp"].dt.epoch("s").to_list() == [1714564800] * len(rows)


def test_accounts_derive_email_and_card_fields() -> None:
    result = read_metadata([str(FIX / "accounts.jsonl")], "account")
    frame = result.frame
    assert frame.schema == schema.polars_schema("account", enriched=False)
    assert frame["email.domain"].to_list() == ["mailinator.com", "example.org", "example.com"]
    assert frame["email.fingerprint"][0] == secrets.fingerprint("li.wei.relay@mailinator.com", "email")
    assert frame["email.fingerprint"][1] == "fp:1b2c3d4e5f60718293a4b5c6"  # given: kept
    assert frame["payment.fingerprint"][0] == secrets.fingerprint("4242424242424242", "pan")
    assert frame["payment.card.bin"].to_list() == ["424242", "555555", "555555"]
    assert frame["@timestamp"].to_list() == frame["account.created"].to_list()
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(4, "missing:account.id")]


RAW_SECRETS = [
    "sk-proj-Zq8f3LmN0pQ7rS2tUv4wXy6zA1bC3dE5fG7hJ9kL",  # requests.csv / nginx
    "sk-ant-api03-Xk2mP9qR4sT6vW8yZ0aB2cD4eF6gH8jK0lM2nP4q",  # nginx
    "sk-proj-Qw9Er8Ty7Ui6Op5As4Df3Gh2Jk1Lz0Xc9Vb8",  # accounts note
    "4242 4242 4242 4242", "4242424242424242", "5555-5555-5555-4444", "5555555555554444",
    "li.wei.relay", "Zhang.San", "zhang.san", "nobody@", "ops@",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXZhbHVl",
    "4111111111111111",
]


def test_secrets_never_reach_the_frame_or_the_rejects(tmp_path: Path) -> None:
    extra = tmp_path / "more.jsonl"
    lines = [
        {"@timestamp": "2024-05-01T12:00:00Z", "source.ip": "192.0.2.1",
         "api.key_id": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJlLXZhbHVl",
         "url.path": "/v1/pay?card=4111111111111111"},
        {"@timestamp": "bad time", "source.ip": "192.0.2.1", "authorization": "Bearer 4111111111111111",
         "user_agent.original": "mail li.wei.relay@mailinator.com"},
    ]
    extra.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"broken": "4111 1111 1111 1111\n')
    outputs = []
    for paths, kind, mapping in [
        ([str(FIX / "requests.csv"), str(extra)], "request", None),
        ([str(FIX / "accounts.jsonl")], "account", None),
        ([str(FIX / "nginx-json.log")], "request", str(FIX.parents[1].parent / "rules/mappings/nginx-json.yaml")),
    ]:
        result = read_metadata(paths, kind, mapping=mapping)  # type: ignore[arg-type]
        out = tmp_path / f"{kind}-{len(outputs)}"
        result.frame.write_parquet(out.with_suffix(".parquet"))
        result.frame.write_ndjson(out.with_suffix(".jsonl"))
        out.with_suffix(".rejects.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in result.rejects))
        outputs += [out.with_suffix(s) for s in (".parquet", ".jsonl", ".rejects.jsonl")]
        assert result.rejects, "each input has rejects, so the reject path is exercised"
    blobs = b"".join(p.read_bytes() for p in outputs)
    texts = blobs + b"".join(pl.read_parquet(p).write_csv().encode() for p in outputs if p.suffix == ".parquet")
    for raw in RAW_SECRETS:
        assert raw.encode() not in texts, raw
    assert b"fp:" in blobs  # the fingerprints are there instead
