"""The bundled demo, end to end, against its ground truth (pcaps/truth.json).

Replays every demo capture with the request and account logs and the demo GeoIP database, as
`make demo` does, and checks the findings against what the simulator labelled.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "pcaps"


@cache
def demo_run() -> tuple[Path, dict[str, Any]]:
    out = Path(tempfile.mkdtemp(prefix="appliance-demo-"))
    r = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "replay", str(DEMO), "--out", str(out), "--json",
         "--geoip", str(DEMO / "geo" / "demo-geo.csv"), "--requests", str(DEMO / "requests.jsonl"),
         "--accounts", str(DEMO / "accounts.jsonl")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "APPLIANCE_SECRET": "demo"},
    )
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def findings(kind: str) -> list[dict[str, Any]]:
    out, _ = demo_run()
    lines = (out / "findings.jsonl").read_text().splitlines()
    return [f for f in map(json.loads, lines) if f["kind"] == kind]


def truth() -> dict[str, Any]:
    return json.loads((DEMO / "truth.json").read_text())


def test_demo_reads_everything_cleanly() -> None:
    _, s = demo_run()
    assert s["input_errors"] == [] and s["malformed_total"] == 0
    assert s["packets"] == sum(c["packets"] for c in truth()["captures"].values())
    assert s["metadata"]["request"]["rejected"] == 0 and s["metadata"]["account"]["rejected"] == 0


def test_the_account_farm_is_one_reseller_cluster() -> None:
    farm = set(truth()["accounts"]["farm"]["accounts"])
    clusters = findings("reseller_cluster")
    assert clusters, "no reseller cluster found"
    best = max(clusters, key=lambda f: len(farm & {e["value"] for e in f["entities"] if e["type"] == "account"}))
    members = {e["value"] for e in best["entities"] if e["type"] == "account"}
    jaccard = len(members & farm) / len(members | farm)
    assert jaccard >= 0.9 and best["score"] >= 0.5
    assert all(isinstance(e["value"], (int, float)) and e["summary"] for e in best["evidence"])


def test_no_look_alike_account_is_flagged() -> None:
    decoys = set()
    for group in truth()["accounts"]["decoys"].values():
        decoys |= set(group["accounts"])
    decoys |= set(truth()["accounts"]["ordinary"])
    flagged = {e["value"] for f in findings("reseller_cluster") for e in f["entities"] if e["type"] == "account"}
    assert flagged & decoys == set()


def test_every_labelled_relay_is_found_and_no_decoy_is() -> None:
    relays = {r["ip"] for c in truth()["captures"].values() for r in c["relays"]}
    decoys = {d["ip"] for c in truth()["captures"].values() for d in c["decoys"]}
    found = {f["subject"]["value"]: f for f in findings("relay_host")}
    assert relays and relays <= set(found)
    assert all(found[ip]["score"] >= 0.5 and found[ip]["evidence"] for ip in relays)
    assert decoys.isdisjoint(found)


def test_the_report_and_summary_describe_the_findings() -> None:
    out, s = demo_run()
    html = (out / "report.html").read_text()
    assert s["findings"] == len((out / "findings.jsonl").read_text().splitlines()) >= 3
    for f in findings("relay_host"):
        assert f["subject"]["value"] in html
