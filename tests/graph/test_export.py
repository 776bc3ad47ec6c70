"""GraphML and JSON exports parse and carry the graph."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

from appliance.graph import EntityGraph
from appliance.graph.export import GRAPHML_NS, write_graphml, write_json
from appliance.graph.synthetic import generate


def _small() -> EntityGraph:
    sc = generate(seed=11, n_background=50, farm_sizes=(6,), enterprise_size=5, university_size=5, vpn_size=0)
    g = EntityGraph.open(None)
    g.add_events("account", sc.accounts)
    g.add_events("request", sc.requests)
    return g


def test_graphml_parses() -> None:
    g = _small()
    buf = io.StringIO()
    write_graphml(g, buf)
    root = ET.fromstring(buf.getvalue().split("?>", 1)[1])
    ns = {"g": GRAPHML_NS}
    nodes = root.findall("g:graph/g:node", ns)
    edges = root.findall("g:graph/g:edge", ns)
    assert len(nodes) == g.stats.nodes and len(edges) == g.stats.edges
    ids = {n.get("id") for n in nodes}
    assert all(e.get("source") in ids and e.get("target") in ids for e in edges)
    clustered = [n for n in nodes if n.find("g:data[@key='n_cluster']", ns) is not None]
    assert len(clustered) >= 6


def test_json_parses() -> None:
    g = _small()
    buf = io.StringIO()
    write_json(g, buf)
    doc = json.loads(buf.getvalue())
    assert len(doc["nodes"]) == g.stats.nodes and len(doc["edges"]) == g.stats.edges
    types = {n["type"] for n in doc["nodes"]}
    assert {"account", "ip", "payment", "api_key", "card_bin", "prefix", "asn"} <= types
    e = next(e for e in doc["edges"] if e["type"] == "egress")
    assert e["count"] >= 1 and e["first"].endswith("Z")
