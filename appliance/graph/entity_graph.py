"""The graph stage's one entry point: `EntityGraph` (sources -> … -> detect -> **graph** -> sinks).

The pipeline opens the graph (optionally from `--state DIR`), feeds it every event frame and the
relay_host findings of the detect stage, asks for `reseller_findings`, and saves. Everything here
only wires build.py (frames -> deltas), store.py (bounded, atomic state), cluster.py (components and
Leiden), features.py + score.py (explainable score) and findings.py (output contract) together.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from appliance.graph import build, cluster, features, findings
from appliance.graph.model import Cluster, GraphLimits, GraphStats
from appliance.graph.score import score_expr
from appliance.graph.store import GraphStore

_FALLBACK_DISPOSABLE = frozenset({"mailinator.com", "guerrillamail.com", "yopmail.com", "10minutemail.com"})


def load_disposable_domains() -> frozenset[str]:
    """The disposable_email_domains catalog (rules/data), or a minimal built-in list without it."""
    path = Path(__file__).resolve().parents[2] / "rules" / "data"
    try:
        from appliance.enrich.catalog import Catalogs

        return frozenset(v.lower() for v in Catalogs.load(path)["disposable_email_domains"].values())
    except Exception:  # a missing or broken catalog must not stop clustering
        return _FALLBACK_DISPOSABLE


class EntityGraph:
    """Accounts, addresses, keys, payments and clients joined into one persistent, bounded graph."""

    def __init__(self, store: GraphStore, disposable: frozenset[str] | None = None) -> None:
        self.store = store
        self.disposable = disposable if disposable is not None else load_disposable_domains()
        self._cache: list[Cluster] | None = None
        self._cache_relays: tuple[str, ...] = ()

    @classmethod
    def open(cls, state_dir: str | None, limits: GraphLimits | None = None,
             disposable: frozenset[str] | None = None) -> EntityGraph:
        return cls(GraphStore.open(state_dir, limits or GraphLimits()), disposable)

    @property
    def limits(self) -> GraphLimits:
        return self.store.limits

    @property
    def stats(self) -> GraphStats:
        self.store._refresh_counts()
        return self.store.stats

    def add_events(self, event_type: str, frame: pl.DataFrame) -> None:
        self.store.add(build.from_frame(event_type, frame))
        self._cache = None

    def add_findings(self, items: list[dict]) -> None:
        delta, relays = build.from_findings(items)
        self.store.add(delta)
        self.store.add_relays(relays)
        self._cache = None

    def save(self) -> None:
        self.store.save()

    # --- clusters ----------------------------------------------------------------------------
    def membership(self) -> pl.DataFrame:
        """(account node id `a`, `cluster` label) for clusters of at least min_cluster_accounts."""
        memb = cluster.cluster_accounts(self.store, self.store.stats)
        big = memb.group_by("cluster").agg(pl.len().alias("k")).filter(pl.col("k") >= self.limits.min_cluster_accounts)
        return memb.join(big.select("cluster"), on="cluster", how="semi")

    def clusters(self, extra_relays: list[str] | None = None) -> list[Cluster]:
        """Candidate clusters, best score first; deterministic for the same state."""
        relays = tuple(sorted(set(self.store.relays) | set(extra_relays or [])))
        if self._cache is not None and self._cache_relays == relays:
            return self._cache
        memb = self.membership()
        if memb.height == 0:
            self._cache, self._cache_relays = [], relays
            return []
        feats = features.compute(self.store, memb, self.disposable, relays).with_columns(score_expr())
        members = self._members(memb, relays)
        rows = feats.join(members, on="cluster", how="left")
        out: list[Cluster] = []
        for r in rows.iter_rows(named=True):
            accounts = sorted(r["accounts"] or [])
            feat = {k: float(v) for k, v in r.items()
                    if k in features.FEATURES or (k.endswith("_raw") and v is not None)}
            out.append(Cluster(
                id=findings.cluster_id(accounts), accounts=accounts, api_keys=sorted(r["api_keys"] or []),
                payments=sorted(r["payments"] or []), egress_ips=sorted(r["egress_ips"] or []),
                asns=sorted(r["asns"] or []), features=feat, score=float(r["score"]),
                first_seen=r["first_seen"], last_seen=r["last_seen"], relay_ips=sorted(r["relay_ips"] or [])))
        out.sort(key=lambda c: (-c.score, c.id))
        self._cache, self._cache_relays = out, relays
        return out

    def _members(self, memb: pl.DataFrame, relays: tuple[str, ...]) -> pl.DataFrame:
        """Per cluster: member values of each entity type, and first/last seen over members' edges."""
        st = self.store
        edges = st.tables["edges"].rename({"src": "a"}).join(memb, on="a")
        base = st.values(memb, "a").group_by("cluster").agg(pl.col("a_value").alias("accounts"))
        parts = [base]
        for etype, name in (("uses_key", "api_keys"), ("pays_with", "payments"), ("egress", "egress_ips")):
            e = edges.filter(pl.col("etype") == etype).select("cluster", "dst").unique()
            parts.append(st.values(e, "dst").group_by("cluster").agg(pl.col("dst_value").alias(name)))
        eg = edges.filter(pl.col("etype") == "egress").select("cluster", pl.col("dst").alias("id")).unique()
        asn = eg.join(st.tables["ips"].select("id", "asn"), on="id").filter(pl.col("asn").is_not_null())
        parts.append(asn.group_by("cluster").agg(pl.col("asn").cast(pl.Utf8).unique().alias("asns")))
        rel = st.values(eg.rename({"id": "ip"}), "ip").filter(pl.col("ip_value").is_in(list(relays)))
        parts.append(rel.group_by("cluster").agg(pl.col("ip_value").unique().alias("relay_ips")))
        parts.append(edges.group_by("cluster").agg(pl.col("first").min().alias("first_seen"),
                                                   pl.col("last").max().alias("last_seen")))
        out = parts[0]
        for p in parts[1:]:
            out = out.join(p, on="cluster", how="left")
        return out

    def reseller_findings(self, relay_findings: list[dict] | None = None) -> list[dict]:
        """findings.jsonl lines: reseller_cluster findings scoring >= 0.5, then every relay finding given,
        updated (raised, with the cluster as evidence) where one of them egresses through its address."""
        relay_findings = relay_findings or []
        ips = [str(f["subject"]["value"]) for f in relay_findings
               if f.get("kind") == "relay_host" and isinstance(f.get("subject"), dict) and f["subject"].get("value")]
        cl = self.clusters(extra_relays=ips)
        flagged = [c for c in cl if c.score >= 0.5]
        return [findings.cluster_finding(c) for c in flagged] + findings.link_relays(flagged, relay_findings)

    # --- investigation -----------------------------------------------------------------------
    def neighbourhood(self, value: str, node_type: str | None = None, limit: int = 200) -> pl.DataFrame:
        """Edges touching an entity, with their evidence (type, count, first/last seen), busiest first."""
        ids = self.store.node_id(node_type, value)
        e = self.store.tables["edges"]
        hit = e.filter(pl.col("src").is_in(ids) | pl.col("dst").is_in(ids))
        hit = self.store.values(self.store.values(hit, "src"), "dst")
        return hit.select(pl.col("etype").cast(pl.Utf8), pl.col("src_type").cast(pl.Utf8), "src_value",
                          pl.col("dst_type").cast(pl.Utf8), "dst_value", "count", "first", "last"
                          ).sort(["count", "etype", "dst_value"], descending=[True, False, False]).head(limit)
