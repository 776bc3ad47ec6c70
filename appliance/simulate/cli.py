"""`appliance simulate`: write labelled captures, provider logs and their ground truth to a folder.

This is the front of the test and demo data flow: its pcaps feed `appliance replay`, its logs feed
the request/account ingesters, and truth.json is what detectors and the graph are scored against.
Output is byte-identical for a given seed and command line.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

from appliance.simulate import logs, scenario
from appliance.simulate.packets import write_capture

ALL = ("demo", "ordinary", "relay", "decoys")


def _jsonl(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, separators=(",", ":")) + "\n")


def host_labels(truth: dict[str, Any]) -> dict[str, str]:
    """Flat IP → label map for scoring: relay, relay_client, decoy:<kind>, ordinary."""
    labels: dict[str, str] = {}
    for r in truth.get("relays", []):
        for ip in (r["ip"], r.get("ip6")):
            if ip:
                labels[ip] = "relay"
        for c in r["clients"]:
            labels.setdefault(c["ip"], "relay_client")
    for d in truth.get("decoys", []):
        labels[d["ip"]] = "decoy:" + d["kind"]
    for c in truth.get("clients", []):
        labels.setdefault(c["ip"], c.get("role", "client"))
    return dict(sorted(labels.items()))


def generate(scenarios: list[str], difficulty: str, seed: int, out: str, name: str = "{scenario}",
             fmt: str = "pcap", with_logs: bool = True) -> dict[str, Any]:
    """Build the scenarios and write DIR/<name>.<fmt> each, requests.jsonl + accounts.jsonl (from
    their API calls) and truth.json. truth.json is merged with an existing one, keyed by capture file,
    so several runs can fill one folder. Returns the summary: per file, packets and bytes."""
    os.makedirs(out, exist_ok=True)
    truth_path = os.path.join(out, "truth.json")
    truth: dict[str, Any] = {"version": 1, "captures": {}}
    if os.path.exists(truth_path):
        with open(truth_path, encoding="utf-8") as fh:
            truth = json.load(fh)
    summary: dict[str, Any] = {}
    calls = []
    ordinary_ips: list[str] = []
    for sc in scenarios:
        w = scenario.run(sc, difficulty, seed)
        fname = name.format(scenario=sc, difficulty=difficulty, seed=seed) + "." + fmt
        size = write_capture(os.path.join(out, fname), w.records)
        calls += w.calls
        clients: list[dict[str, str]] = w.truth.get("clients", [])  # type: ignore[assignment]
        ordinary_ips += [c["ip"] for c in clients if c.get("role") == "ordinary"]
        truth["captures"][fname] = {
            "scenario": sc, "difficulty": difficulty, "seed": seed, "packets": len(w.records),
            "start": logs.rfc3339(w.records[0][0]), "end": logs.rfc3339(w.records[-1][0]),
            "api_calls": len(w.calls), **w.truth, "hosts": host_labels(w.truth),
        }
        summary[fname] = {"packets": len(w.records), "bytes": size}
    if with_logs:
        calls.sort(key=lambda c: c.ts)
        requests, accounts, acct_truth = logs.build(calls, seed, ordinary_ips)
        _jsonl(os.path.join(out, "requests.jsonl"), requests)
        _jsonl(os.path.join(out, "accounts.jsonl"), accounts)
        truth["accounts"] = acct_truth
        truth["logs"] = {"requests.jsonl": len(requests), "accounts.jsonl": len(accounts),
                         "scenarios": scenarios, "seed": seed, "difficulty": difficulty}
        summary["requests.jsonl"] = {"rows": len(requests)}
        summary["accounts.jsonl"] = {"rows": len(accounts)}
    truth["captures"] = dict(sorted(truth["captures"].items()))
    with open(truth_path, "w", encoding="utf-8") as fh:
        json.dump(truth, fh, indent=1)
        fh.write("\n")
    return summary


@click.command("simulate")
@click.option("--scenario", "scenario_name", type=click.Choice([*ALL, "all"]), default="demo", show_default=True,
              help="Scenario to generate; 'all' writes every scenario.")
@click.option("--difficulty", type=click.Choice(list(scenario.DIFFICULTIES)), default="medium", show_default=True,
              help="easy: plaintext inbound, short lag; hard: inbound TLS, 20-200 ms jitter, upstream pooling.")
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, byte-identical output.")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--name", default="{scenario}", show_default=True,
              help="Capture file stem; may use {scenario}, {difficulty}, {seed}.")
@click.option("--format", "fmt", type=click.Choice(["pcap", "pcapng"]), default="pcap", show_default=True)
@click.option("--logs/--no-logs", "with_logs", default=True, show_default=True,
              help="Also write requests.jsonl and accounts.jsonl (provider logs with raw secrets).")
def simulate(scenario_name: str, difficulty: str, seed: int, out: str, name: str, fmt: str,
             with_logs: bool) -> None:
    """Write labelled scenario captures, provider logs and truth.json to OUT."""
    scenarios = list(ALL) if scenario_name == "all" else [scenario_name]
    summary = generate(scenarios, difficulty, seed, out, name, fmt, with_logs)
    for fname, info in summary.items():
        what = ", ".join(f"{v} {k}" for k, v in info.items())
        click.echo(f"{os.path.join(out, fname)}: {what}")
