"""`appliance replay` end to end: outputs, bad input, merged inputs and secrets, through the real CLI."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "pcaps" / "peer"
DEMO = ROOT / "pcaps"
SECRET_ENV = {**os.environ, "APPLIANCE_SECRET": "test-secret"}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True, env=env or SECRET_ENV, timeout=300
    )


def events(out: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(out / "events" / f"{name}.parquet")


def test_replay_writes_the_output_contract(tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = run("replay", str(PEER / "foxio-ja4" / "tls-handshake.pcapng"), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["packets"] == 193 and summary["malformed_total"] == 0
    for name in ("flows", "tls", "http", "dns"):
        assert (out / "events" / f"{name}.parquet").exists()
    tls = events(out, "tls")
    assert tls.height == 84 and tls["tls.client.ja4"].null_count() == 0
    assert summary["events"]["tls"] == 84
    assert (out / "alerts.jsonl").exists()
    for stage in ("decode.headers", "decode.flows", "decode.deep"):
        assert stage in summary["timings_s"]


def test_gzip_and_several_inputs_merge_in_time_order(tmp_path: Path) -> None:
    a = tmp_path / "a.pcap.gz"
    with open(PEER / "arkime" / "dns-udp.pcap", "rb") as src, gzip.open(a, "wb") as dst:
        shutil.copyfileobj(src, dst)
    out = tmp_path / "out"
    r = run("replay", str(a), str(PEER / "arkime" / "bigendian.pcap"), str(PEER / "zeek" / "pcapng-multi-interface.pcapng"),
            "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["packets"] == 5 + 2 + 6
    assert [f["format"] for f in s["files"]] == ["pcap+gzip", "pcap", "pcapng"]
    flows = events(out, "flows")
    assert flows["@timestamp"].is_sorted() or flows.height == flows.sort("@timestamp").height


def test_directory_input_reads_captures_by_magic_and_skips_other_files(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(PEER / "foxio-ja4" / "http1.pcapng", d / "really-a-pcap.pcapng")  # libpcap despite the name
    (d / "notes.txt").write_text("not a capture")
    out = tmp_path / "out"
    r = run("replay", str(d), "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert len(s["files"]) == 1 and s["files"][0]["format"] == "pcap"
    assert events(out, "http").height == 56


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"", "not a pcap or pcapng file"),
        (b"GARBAGE-GARBAGE-GARBAGE-GARBAGE", "not a pcap or pcapng file (magic 47415242)"),
    ],
)
def test_not_a_capture_is_one_clear_line(tmp_path: Path, content: bytes, needle: str) -> None:
    f = tmp_path / "bad.pcap"
    f.write_bytes(content)
    r = run("replay", str(f), "--out", str(tmp_path / "out"))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert needle in r.stderr and str(f) in r.stderr


def test_truncated_file_keeps_everything_before_the_fault(tmp_path: Path) -> None:
    good = (PEER / "arkime" / "tls-split-client-hello.pcap").read_bytes()
    f = tmp_path / "cut.pcap"
    f.write_bytes(good[:-50])  # the last record loses its tail
    out = tmp_path / "out"
    r = run("replay", str(f), "--out", str(out), "--json")
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert f"{f} at byte" in r.stderr and "truncated packet record" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["packets"] == 34  # 35 in the whole file
    assert events(out, "tls").height == 1  # the split ClientHello was decoded and written


def test_absurd_caplen_names_the_offset(tmp_path: Path) -> None:
    good = (PEER / "arkime" / "dns-udp.pcap").read_bytes()
    bogus = struct.pack("<IIII", 1, 0, 0x7FFFFFF0, 0x7FFFFFF0) + b"x" * 32
    f = tmp_path / "absurd.pcap"
    f.write_bytes(good + bogus)
    r = run("replay", str(f), "--out", str(tmp_path / "out"), "--json")
    assert r.returncode == 3
    assert f"{f} at byte {len(good)}: absurd record length" in r.stderr
    assert json.loads(r.stdout)["packets"] == 5


def test_malformed_packets_are_counted_by_reason(tmp_path: Path) -> None:
    files = [str(PEER / "zeek" / "trunc" / n) for n in ("ip4-trunc.pcap", "ip6-trunc.pcap", "trunc-hdr.pcap", "ipv4-truncated-broken-header.pcap")]
    r = run("replay", *files, "--out", str(tmp_path / "out"), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["malformed"] == {"invalid_IP_header_size": 1, "truncated_IP": 2, "truncated_link_frame": 1}
    assert s["flows"] == 0


def test_unknown_config_key_names_file_line_and_column(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("flows:\n  max: 10\n  idle_tcp: 5\n")
    r = run("replay", str(PEER / "arkime" / "dns-udp.pcap"), "--out", str(tmp_path / "o"), "--config", str(cfg))
    assert r.returncode == 1
    assert f"{cfg}:3:3: unknown setting 'flows.idle_tcp'" in r.stderr


def test_flow_table_bound_evicts_and_counts(tmp_path: Path) -> None:
    r = run("replay", str(PEER / "ndpi" / "reddit.pcap"), "--out", str(tmp_path / "o"), "--max-flows", "8", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["evicted"]["flows"] > 0
    assert s["flows_by_end_reason"]["evicted"] == s["evicted"]["flows"]


def test_secrets_never_reach_any_output(tmp_path: Path) -> None:
    """Raw API keys, emails and card numbers in the demo's logs and captures appear in no output file."""
    raw: set[str] = set()
    for line in (DEMO / "requests.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("api.key"):
            raw.add(rec["api.key"])
    for line in (DEMO / "accounts.jsonl").read_text().splitlines():
        rec = json.loads(line)
        raw.update(v for k, v in rec.items() if k in ("email.address", "payment.card.number") and v)
    assert len(raw) > 100
    out = tmp_path / "out"
    r = run("replay", str(DEMO), "--out", str(out), "--geoip", str(DEMO / "geo" / "demo-geo.csv"),
            "--requests", str(DEMO / "requests.jsonl"), "--accounts", str(DEMO / "accounts.jsonl"))
    assert r.returncode == 0, r.stderr
    # the bearer keys sent in the demo's plaintext relay traffic are secrets too
    http = events(out, "http")
    assert http["http.request.auth.fingerprint"].drop_nulls().str.starts_with("fp:").all()
    assert http["http.request.auth.fingerprint"].drop_nulls().len() > 0
    texts = [r.stdout, r.stderr]
    for path in out.rglob("*"):
        if path.is_file():
            if path.suffix == ".parquet":
                texts.append("\n".join(json.dumps(row, default=str) for row in pl.read_parquet(path).to_dicts()))
            else:
                texts.append(path.read_text(errors="replace"))
    blob = "\n".join(texts)
    leaked = [s for s in raw if s in blob]
    assert leaked == []
    # and the bearer keys that the capture itself carries (sk-… after "Bearer ")
    capture_keys = set()
    for pcap in DEMO.glob("*.pcap"):
        data = pcap.read_bytes()
        start = 0
        while (i := data.find(b"Bearer sk-", start)) >= 0:
            capture_keys.add(data[i + 7 : i + 7 + 51].split(b"\r")[0].decode())
            start = i + 1
    assert capture_keys, "the demo capture should carry bearer keys"
    assert [k for k in capture_keys if k in blob] == []


def test_every_command_is_registered() -> None:
    r = run("--help")
    assert r.returncode == 0
    for command in ("replay", "run", "report", "explain", "rules", "graph", "simulate", "config", "schema"):
        assert f"  {command} " in r.stdout, command


def test_compiled_kernels_and_their_python_twins_give_the_same_replay(tmp_path: Path) -> None:
    """APPLIANCE_NO_COMPILED=1 runs the record walk, header decoding, ClientHello walk and the rules'
    string pass in Python: every count, event and alert must come out as with the C kernels."""
    inputs = [str(ROOT / "pcaps" / "demo.pcap"), str(PEER / "zeek" / "pcapng-multi-interface.pcapng")]
    outs = {}
    for name, extra in (("c", {}), ("py", {"APPLIANCE_NO_COMPILED": "1"})):
        r = subprocess.run([sys.executable, "-m", "appliance.cli", "replay", *inputs, "--out", str(tmp_path / name),
                            "--json", "--workers", "1"], capture_output=True, text=True, env={**SECRET_ENV, **extra}, timeout=300)
        assert r.returncode == 0, r.stderr
        outs[name] = json.loads(r.stdout)
    assert outs["py"]["compiled_kernels"] == {"record_walk": False, "headers": False, "tls_hello": False,
                                                 "rule_strings": False}
    assert outs["c"]["compiled_kernels"] == {"record_walk": True, "headers": True, "tls_hello": True,
                                                "rule_strings": True}
    for key in ("packets", "bytes", "decoded", "malformed", "flows", "events", "alerts", "findings"):
        assert outs["c"][key] == outs["py"][key], key
    for name in ("flows", "tls", "http", "dns"):
        a = pl.read_parquet(tmp_path / "c" / "events" / f"{name}.parquet")
        b = pl.read_parquet(tmp_path / "py" / "events" / f"{name}.parquet")
        assert a.equals(b), name
