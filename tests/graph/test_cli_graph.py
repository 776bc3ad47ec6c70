"""`appliance graph` commands through click's CliRunner."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from click.testing import CliRunner

from appliance.cli_graph import graph
from appliance.graph import EntityGraph


def _state(scenario, tmp_path: Path) -> str:
    state = str(tmp_path / "st")
    g = EntityGraph.open(state)
    g.add_events("account", scenario.accounts)
    g.add_events("request", scenario.requests)
    g.add_findings(scenario.relay_findings)
    g.save()
    return state


def test_clusters_show_export(scenario, tmp_path: Path) -> None:
    state = _state(scenario, tmp_path)
    r = CliRunner()
    res = r.invoke(graph, ["clusters", "--state", state, "--min-score", "0.5"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == len(scenario.farms)
    assert all(line.startswith("f-") for line in lines)
    res = r.invoke(graph, ["clusters", "--state", state, "--json", "--min-score", "0.5"])
    found = [json.loads(x) for x in res.output.splitlines()]
    assert {f["kind"] for f in found} == {"reseller_cluster"}
    res = r.invoke(graph, ["show", "--state", state, "203.0.113.7"])
    assert res.exit_code == 0 and "-[egress x" in res.output and "account:a" in res.output
    out = tmp_path / "g.graphml"
    res = r.invoke(graph, ["export", "--state", state, "--format", "graphml", "--out", str(out)])
    assert res.exit_code == 0
    assert ET.parse(out).getroot().tag.endswith("graphml")
    res = r.invoke(graph, ["export", "--state", state, "--format", "json"])
    assert len(json.loads(res.output)["nodes"]) > 1000


def test_missing_state_and_entity_fail(scenario, tmp_path: Path) -> None:
    r = CliRunner()
    res = r.invoke(graph, ["clusters", "--state", str(tmp_path / "none")])
    assert res.exit_code != 0 and "no graph state" in str(res.exception)
    state = _state(scenario, tmp_path)
    res = r.invoke(graph, ["show", "--state", state, "198.51.100.250"])
    assert res.exit_code != 0 and "not in the graph" in str(res.exception)
