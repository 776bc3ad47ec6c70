"""`appliance simulate`: byte-identical output for a seed, merged truth.json, pcapng output."""

from __future__ import annotations

import json

import dpkt
from click.testing import CliRunner

from appliance.simulate.cli import simulate


def _files(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_same_seed_same_bytes(tmp_path) -> None:
    r = CliRunner()
    for sub in ("a", "b"):
        res = r.invoke(simulate, ["--scenario", "all", "--difficulty", "easy", "--seed", "9", "--out", str(tmp_path / sub)])
        assert res.exit_code == 0, res.output
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(a) == {"demo.pcap", "ordinary.pcap", "relay.pcap", "decoys.pcap", "requests.jsonl",
                      "accounts.jsonl", "truth.json"}
    assert a == b
    truth = json.loads(a["truth.json"])
    relay = truth["captures"]["relay.pcap"]
    assert relay["hosts"]["203.0.113.7"] == "relay"
    assert truth["captures"]["decoys.pcap"]["hosts"]["192.0.2.10"] == "decoy:connect_proxy"
    with open(tmp_path / "a" / "relay.pcap", "rb") as fh:
        n = sum(1 for _ in dpkt.pcap.Reader(fh))
    assert n == relay["packets"]


def test_merge_and_pcapng(tmp_path) -> None:
    r = CliRunner()
    r.invoke(simulate, ["--scenario", "demo", "--seed", "2", "--out", str(tmp_path)])
    res = r.invoke(simulate, ["--scenario", "relay", "--difficulty", "hard", "--seed", "2", "--out", str(tmp_path),
                              "--name", "{scenario}-{difficulty}", "--format", "pcapng", "--no-logs"])
    assert res.exit_code == 0, res.output
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert set(truth["captures"]) == {"demo.pcap", "relay-hard.pcapng"}
    assert "accounts" in truth  # kept from the first run
    with open(tmp_path / "relay-hard.pcapng", "rb") as fh:
        pk = list(dpkt.pcapng.Reader(fh))
    assert len(pk) == truth["captures"]["relay-hard.pcapng"]["packets"]
