"""graph stage: the entity graph of IPs, ASNs, keys, accounts and payments, and reseller clusters.

Entry point: `EntityGraph` (entity_graph.py). Layout: build (frames -> edges), store (persistent,
bounded), cluster (components + Leiden), features + score (explainable score), findings (output
contract), export (GraphML/JSON), synthetic (labelled scenarios for tests and benchmarks).
"""

from appliance.graph.entity_graph import EntityGraph
from appliance.graph.model import Cluster, GraphLimits, GraphStats

__all__ = ["Cluster", "EntityGraph", "GraphLimits", "GraphStats"]
