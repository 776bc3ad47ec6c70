"""Sharded replay (--workers N) gives the same events, alerts and findings as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "pcaps" / "peer"
ENV = {**os.environ, "APPLIANCE_SECRET": "test-secret"}


def replay(out: Path, workers: int, *inputs: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "replay", *inputs, "--out", str(out), "--json",
                        "--workers", str(workers), "--geoip", str(ROOT / "pcaps" / "geo" / "demo-geo.csv")],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(["@timestamp", "flow.id", "source.port"], maintain_order=True)


@pytest.mark.parametrize("inputs", [
    [str(ROOT / "pcaps" / "demo.pcap")],  # one plain file: workers share a memory map of it
    [str(PEER / "zeek" / "echo-connections.pcap.gz"), str(PEER / "ndpi" / "reddit.pcap")],  # each worker reads
])
def test_workers_give_the_same_results(tmp_path: Path, inputs: list[str]) -> None:
    one = replay(tmp_path / "one", 1, *inputs)
    two = replay(tmp_path / "two", 2, *inputs)
    assert two["workers"] == 2
    for key in ("packets", "bytes", "decoded", "flows", "events", "malformed", "flows_by_end_reason", "alerts", "findings"):
        assert one[key] == two[key], key
    for name in ("flows", "tls", "http", "dns"):
        a = _sorted(pl.read_parquet(tmp_path / "one" / "events" / f"{name}.parquet"))
        b = _sorted(pl.read_parquet(tmp_path / "two" / "events" / f"{name}.parquet"))
        assert a.equals(b), name
    for name in ("alerts.jsonl", "findings.jsonl"):
        a = sorted((tmp_path / "one" / name).read_text().splitlines())
        b = sorted((tmp_path / "two" / name).read_text().splitlines())
        assert a == b, name
