"""Shared vocabulary of the graph stage: node types, edge types, limits and the Cluster record.

Every other module in appliance/graph/ imports its names from here, so the node and edge types the
issue lists (ip, prefix, asn, account, organization, api_key, payment, card_bin, email_domain, ja4,
user_agent, domain) are declared once, like the event schema in appliance/schema.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import polars as pl

NODE_TYPES: tuple[str, ...] = (
    "ip", "prefix", "asn", "account", "organization", "api_key", "payment", "card_bin",
    "email_domain", "ja4", "user_agent", "domain",
)

# edge type -> (source node type, destination node type, one-line doc). "*" means any type.
EDGE_TYPES: dict[str, tuple[str, str, str]] = {
    "egress": ("account", "ip", "the account's requests came from this address (request log)"),
    "signup": ("account", "ip", "the account was created from this address (account log)"),
    "uses_key": ("account", "api_key", "the account's requests used this key (request log)"),
    "member_of": ("account", "organization", "the account belongs to this organization"),
    "pays_with": ("account", "payment", "the account's payment instrument (fingerprint)"),
    "email_domain": ("account", "email_domain", "domain of the sign-up email"),
    "tls_client": ("*", "ja4", "the account's or address's TLS client fingerprint"),
    "user_agent": ("*", "user_agent", "the account's or address's claimed User-Agent"),
    "card_bin": ("payment", "card_bin", "issuer range of the card"),
    "in_prefix": ("ip", "prefix", "covering /24 (IPv4) or /48 (IPv6)"),
    "in_asn": ("ip", "asn", "announcing autonomous system (enrichment)"),
    "server_name": ("ip", "domain", "TLS SNI, HTTP Host or flow domain the address reached"),
    "key_from": ("ip", "api_key", "Authorization credential fingerprint seen from this address"),
    "flow": ("ip", "ip", "a flow from source to destination"),
    "relay": ("ip", "*", "an entity named by a relay_host finding about this address"),
}

NODE_ENUM = pl.Enum(list(NODE_TYPES))
EDGE_ENUM = pl.Enum(list(EDGE_TYPES))

# Edge types whose shared endpoint is a strong link between accounts (issue: "shared payment
# fingerprint, shared API key, shared signup IP form components").
STRONG_EDGES: tuple[str, ...] = ("pays_with", "uses_key", "signup")
# Weaker links that refine components through community detection, with their weight: an egress
# address is nearly as telling as a signup address when it is not a supernode; a JA4 or a User-Agent
# alone is shared by every user of the same client, so two of them are needed to equal one address.
WEAK_EDGES: dict[str, float] = {"egress": 1.0, "tls_client": 0.5, "user_agent": 0.5}


@dataclass(frozen=True)
class GraphLimits:
    """Bounds on the persistent graph and the clustering thresholds (ARCHITECTURE.md: state is bounded)."""

    max_nodes: int = 20_000_000
    max_edges: int = 40_000_000
    max_activity_rows: int = 30_000_000
    # A hub (an address, key, card, JA4, …) linked to more accounts than this is a supernode: a
    # carrier-grade NAT, a cloud resolver, a browser's JA4. Public reports describe farms of 20,000
    # accounts behind a few hundred addresses (~100 per address), so 2,000 leaves room for dense farms
    # while a CGNAT (tens of thousands of subscribers) is cut out of the clustering.
    supernode_accounts: int = 2_000
    # JA4s and User-Agents are shared by every user of one client build; past this many accounts
    # they no longer say anything about a farm.
    supernode_client_accounts: int = 200
    min_cluster_accounts: int = 3
    # Constant Potts Model resolution for Leiden on the component graph: merging two groups of n1 and
    # n2 accounts needs more than resolution * n1 * n2 link weight, so a single bridging account never
    # welds two farms of a few hundred accounts, while a farm held together by its egress pool stays whole.
    leiden_resolution: float = 0.002
    seed: int = 0


@dataclass
class Cluster:
    """One candidate reseller cluster: members, the features that describe it and its score."""

    id: str
    accounts: list[str]
    api_keys: list[str]
    payments: list[str]
    egress_ips: list[str]
    asns: list[str]
    features: dict[str, float] = field(default_factory=dict)
    score: float = 0.0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    relay_ips: list[str] = field(default_factory=list)


@dataclass
class GraphStats:
    """Counters for what the bounded store evicted and what it found too large to cluster on."""

    nodes: int = 0
    edges: int = 0
    activity_rows: int = 0
    evicted_nodes: int = 0
    evicted_edges: int = 0
    evicted_activity: int = 0
    supernodes: int = 0
    top_supernodes: list[tuple[str, str, int]] = field(default_factory=list)
