"""Graph exports for investigators: GraphML (Gephi, Cytoscape, yEd) and JSON (Neo4j import, scripts).

Both carry every node (id, type, value, cluster id and score where the node is a clustered
account) and every edge (type, count, first/last seen). GraphML follows the GraphML 1.0 schema
(graphml.graphdrawing.org): <key> declarations, then <node>/<edge> with <data> children; written
with xml.etree so escaping is always right.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import IO

import polars as pl

from appliance.graph.entity_graph import EntityGraph

GRAPHML_NS = "http://graphml.graphdrawing.org/xmlns"
_NODE_KEYS = (("type", "string"), ("value", "string"), ("cluster", "string"), ("score", "double"))
_EDGE_KEYS = (("etype", "string"), ("count", "long"), ("first", "string"), ("last", "string"))


def _tables(graph: EntityGraph) -> tuple[pl.DataFrame, pl.DataFrame]:
    st = graph.store
    labels: list[dict[str, object]] = []
    for c in graph.clusters():
        labels.extend({"value": a, "cluster": c.id, "score": round(c.score, 4)} for a in c.accounts)
    lab = pl.DataFrame(labels, schema={"value": pl.Utf8, "cluster": pl.Utf8, "score": pl.Float64})
    nodes = st.tables["nodes"].with_columns(pl.col("type").cast(pl.Utf8)).sort("id")
    accounts = nodes.filter(pl.col("type") == "account").join(lab, on="value", how="left")
    nodes = nodes.join(accounts.select("id", "cluster", "score"), on="id", how="left")
    edges = st.tables["edges"].with_columns(
        pl.col("etype").cast(pl.Utf8), pl.col("first").dt.to_string("%Y-%m-%dT%H:%M:%SZ"),
        pl.col("last").dt.to_string("%Y-%m-%dT%H:%M:%SZ")).sort("src", "dst", "etype")
    return nodes, edges


def write_json(graph: EntityGraph, out: IO[str]) -> None:
    nodes, edges = _tables(graph)
    doc = {"nodes": nodes.rename({"id": "id"}).to_dicts(),
           "edges": edges.rename({"src": "source", "dst": "target", "etype": "type"}).to_dicts()}
    json.dump(doc, out, sort_keys=True)


def write_graphml(graph: EntityGraph, out: IO[str]) -> None:
    nodes, edges = _tables(graph)
    root = ET.Element("graphml", xmlns=GRAPHML_NS)
    for name, typ in _NODE_KEYS:
        ET.SubElement(root, "key", id=f"n_{name}", attrib={"for": "node", "attr.name": name, "attr.type": typ})
    for name, typ in _EDGE_KEYS:
        ET.SubElement(root, "key", id=f"e_{name}", attrib={"for": "edge", "attr.name": name, "attr.type": typ})
    g = ET.SubElement(root, "graph", id="G", edgedefault="directed")
    for r in nodes.iter_rows(named=True):
        n = ET.SubElement(g, "node", id=f"n{r['id']}")
        for name, _ in _NODE_KEYS:
            if r.get(name) is not None:
                ET.SubElement(n, "data", key=f"n_{name}").text = str(r[name])
    for i, r in enumerate(edges.iter_rows(named=True)):
        e = ET.SubElement(g, "edge", id=f"e{i}", source=f"n{r['src']}", target=f"n{r['dst']}")
        for name, _ in _EDGE_KEYS:
            if r.get(name) is not None:
                ET.SubElement(e, "data", key=f"e_{name}").text = str(r[name])
    ET.ElementTree(root).write(out, encoding="unicode", xml_declaration=True)


WRITERS = {"json": write_json, "graphml": write_graphml}
