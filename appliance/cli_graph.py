"""`appliance graph …`: investigation commands over the persistent entity graph (`--state DIR`).

`clusters` lists candidate reseller clusters with their score and strongest evidence, `show ENTITY`
prints an entity's neighbourhood with edge evidence, `export` writes GraphML or JSON for Gephi,
Neo4j or Cytoscape. Only this module prints; the graph package returns values (STYLE.md §7).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from appliance.errors import ConfigError
from appliance.graph import export as graph_export
from appliance.graph.entity_graph import EntityGraph

_STATE = click.option("--state", "state", required=True, type=click.Path(file_okay=False),
                      help="Directory holding the persistent graph (written by replay/run --state).")


def _open(state: str) -> EntityGraph:
    if not (Path(state) / "CURRENT").exists():
        raise ConfigError(f"{state}: no graph state here (expected a CURRENT file from a --state run)")
    return EntityGraph.open(state)


@click.group("graph")
def graph() -> None:
    """Investigate the entity graph: clusters, neighbourhoods, exports."""


@graph.command("clusters")
@_STATE
@click.option("--min-score", type=float, default=0.0, show_default=True, help="Only clusters scoring at least this.")
@click.option("--json", "as_json", is_flag=True, help="One JSON finding per line instead of a table.")
def clusters(state: str, min_score: float, as_json: bool) -> None:
    """List candidate reseller clusters, best score first."""
    from appliance.graph.findings import cluster_finding

    g = _open(state)
    for c in g.clusters():
        if c.score < min_score:
            continue
        if as_json:
            click.echo(json.dumps(cluster_finding(c), sort_keys=True, default=str))
            continue
        top = sorted(((v, k) for k, v in c.features.items() if not k.endswith("_raw") and v > 0), reverse=True)[:4]
        why = ", ".join(f"{k}={v:.2f}" for v, k in top)
        click.echo(f"{c.id}  score={c.score:.3f}  accounts={len(c.accounts)}  ips={len(c.egress_ips)}  "
                   f"payments={len(c.payments)}  {why}")


@graph.command("show")
@_STATE
@click.argument("entity")
@click.option("--type", "node_type", default=None, help="Node type (ip, account, api_key, payment, …).")
@click.option("--limit", type=int, default=50, show_default=True)
def show(state: str, entity: str, node_type: str | None, limit: int) -> None:
    """Print ENTITY's neighbourhood: every edge with its type, count and first/last seen."""
    g = _open(state)
    rows = g.neighbourhood(entity, node_type, limit)
    if rows.height == 0:
        raise ConfigError(f"{entity}: not in the graph")
    for r in rows.iter_rows(named=True):
        click.echo(f"{r['src_type']}:{r['src_value']} -[{r['etype']} x{r['count']}]-> "
                   f"{r['dst_type']}:{r['dst_value']}  first={r['first']} last={r['last']}")


@graph.command("export")
@_STATE
@click.option("--format", "fmt", type=click.Choice(sorted(graph_export.WRITERS)), required=True)
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None, help="File to write (default: stdout).")
def export(state: str, fmt: str, out: str | None) -> None:
    """Write the whole graph as GraphML or JSON."""
    g = _open(state)
    writer = graph_export.WRITERS[fmt]
    if out is None:
        writer(g, sys.stdout)
        return
    with open(out, "w", encoding="utf-8") as fh:
        writer(g, fh)
