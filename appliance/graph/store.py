"""The graph's persistent, bounded state: interned nodes, merged edges and activity tables.

A replay adds a `Delta` (build.py) to the store; `--state DIR` keeps the store between runs so a
second replay adds to the first. Tables are polars frames with integer node ids (strings are kept
once, in the node table), which keeps 1M accounts and a few million edges in a few hundred MB.

Durability (ARCHITECTURE.md "persistent state is written atomically"): `save` writes a complete new
snapshot directory (every file fsynced), then atomically swaps the one-line `CURRENT` pointer with
os.replace and fsyncs the directory. A crash at any point before the swap leaves `CURRENT` naming
the previous snapshot, so nothing committed earlier is lost; older snapshots are removed only after.

Bounds: past `max_edges` the edges seen longest ago are evicted, then nodes no edge refers to, and
past `max_activity_rows` the oldest minutes of activity; every eviction is counted in `stats`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import polars as pl
from polars._typing import PolarsDataType

from appliance.atomic import fsync_path
from appliance.graph.build import ACCOUNT_ATTRS, IP_ATTRS, Delta
from appliance.graph.model import EDGE_ENUM, NODE_ENUM, NODE_TYPES, GraphLimits, GraphStats
from appliance.schema import TIMESTAMP

FORMAT = 1
_TABLES = ("nodes", "edges", "activity", "keys", "accounts", "ips")

NODE_SCHEMA: dict[str, PolarsDataType] = {"id": pl.Int64, "type": NODE_ENUM, "value": pl.Utf8}
EDGE_SCHEMA: dict[str, PolarsDataType] = {"etype": EDGE_ENUM, "src": pl.Int64, "dst": pl.Int64, "count": pl.Int64,
                                        "first": TIMESTAMP, "last": TIMESTAMP}
ACTIVITY_SCHEMA: dict[str, PolarsDataType] = {"account": pl.Int64, "minute": pl.Int32, "n": pl.Int32,
                                            "n429": pl.Int32, "nban": pl.Int32, "nmis": pl.Int32}
KEY_SCHEMA: dict[str, PolarsDataType] = {"key": pl.Int64, "account": pl.Int64, "first": TIMESTAMP, "last": TIMESTAMP,
                                       "last429": TIMESTAMP, "n": pl.Int64}
ACCOUNT_SCHEMA: dict[str, PolarsDataType] = {"id": pl.Int64, **ACCOUNT_ATTRS}
IP_SCHEMA: dict[str, PolarsDataType] = {"id": pl.Int64, **IP_ATTRS}
SCHEMAS = {"nodes": NODE_SCHEMA, "edges": EDGE_SCHEMA, "activity": ACTIVITY_SCHEMA, "keys": KEY_SCHEMA,
           "accounts": ACCOUNT_SCHEMA, "ips": IP_SCHEMA}


def _empty(name: str) -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMAS[name])


class GraphStore:
    """Tables of the entity graph with interning, merging, eviction and atomic snapshots."""

    def __init__(self, state_dir: str | None, limits: GraphLimits) -> None:
        self.state_dir = Path(state_dir) if state_dir else None
        self.limits = limits
        self.tables: dict[str, pl.DataFrame] = {name: _empty(name) for name in _TABLES}
        self.relays: list[str] = []
        self.next_id = 0
        self.stats = GraphStats()
        self.generation = 0

    # --- persistence -------------------------------------------------------------------------
    @classmethod
    def open(cls, state_dir: str | None, limits: GraphLimits) -> GraphStore:
        store = cls(state_dir, limits)
        if store.state_dir is None:
            return store
        current = store.state_dir / "CURRENT"
        if not current.exists():
            return store
        snap = store.state_dir / current.read_text().strip()
        meta = json.loads((snap / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{snap}: graph state format {meta.get('format')} (expected {FORMAT})")
        for name in _TABLES:
            store.tables[name] = pl.read_parquet(snap / f"{name}.parquet").cast(SCHEMAS[name])  # type: ignore[arg-type]
        store.next_id = int(meta["next_id"])
        store.generation = int(meta["generation"])
        store.relays = list(meta.get("relays", []))
        stats = meta.get("stats", {})
        store.stats = GraphStats(**{k: v for k, v in stats.items() if k != "top_supernodes"})
        store.stats.top_supernodes = [tuple(x) for x in stats.get("top_supernodes", [])]  # type: ignore[misc]
        return store

    def save(self) -> Path | None:
        """Write a new snapshot and atomically point CURRENT at it; return the snapshot directory."""
        if self.state_dir is None:
            return None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        gen = self.generation + 1
        snap = self.state_dir / f"snap-{gen:08d}"
        if snap.exists():  # a leftover of a crashed save: never referenced by CURRENT
            shutil.rmtree(snap)
        snap.mkdir()
        self._refresh_counts()
        for name in _TABLES:
            path = snap / f"{name}.parquet"
            self.tables[name].write_parquet(path, compression="zstd", statistics=False)
            fsync_path(path)
        meta = {"format": FORMAT, "next_id": self.next_id, "generation": gen, "relays": self.relays,
                "stats": asdict(self.stats)}
        (snap / "meta.json").write_text(json.dumps(meta, sort_keys=True))
        fsync_path(snap / "meta.json")
        fsync_path(snap)
        tmp = self.state_dir / "CURRENT.tmp"
        with open(tmp, "w") as fh:
            fh.write(snap.name + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._commit(tmp, self.state_dir / "CURRENT")
        fsync_path(self.state_dir)
        self.generation = gen
        for old in self.state_dir.glob("snap-*"):
            if old.name != snap.name:
                shutil.rmtree(old, ignore_errors=True)
        return snap

    @staticmethod
    def _commit(tmp: Path, target: Path) -> None:
        # The one atomic step (POSIX rename); kept separate so tests can simulate a crash right before it.
        os.replace(tmp, target)

    # --- merging -----------------------------------------------------------------------------
    def intern(self, keys: pl.DataFrame) -> pl.DataFrame:
        """Map (type, value) rows to node ids, creating new nodes in a deterministic (sorted) order."""
        keys = keys.select(pl.col("type").cast(NODE_ENUM), pl.col("value").cast(pl.Utf8)).unique()
        nodes = self.tables["nodes"]
        new = keys.join(nodes, on=["type", "value"], how="anti").sort("type", "value")
        if new.height:
            new = new.with_columns(pl.int_range(self.next_id, self.next_id + new.height, dtype=pl.Int64).alias("id"))
            self.next_id += new.height
            self.tables["nodes"] = pl.concat([nodes, new.select(NODE_SCHEMA.keys())])
        return self.tables["nodes"]

    def _intern_codes(self, delta: Delta) -> dict[str, pl.Series]:
        """Intern the values the delta's frames use; per node type, a code -> node id lookup.

        Only values some edge or table refers to become nodes (as before codes: a key seen only on
        rows without an account is not a node). New nodes get ids in (type, value) order, so a batch
        interns the same ids whatever the row order or the dictionaries' order."""
        used: dict[str, list[pl.Series]] = {}
        for b in delta.edges:
            used.setdefault(b.src_type, []).append(b.frame.get_column("src"))
            used.setdefault(b.dst_type, []).append(b.frame.get_column("dst"))
        for frame, col, typ in ((delta.activity, "account", "account"), (delta.keys, "account", "account"),
                                (delta.keys, "key", "api_key"), (delta.accounts, "account", "account"),
                                (delta.ips, "ip", "ip")):
            if frame is not None and frame.height:
                used.setdefault(typ, []).append(frame.get_column(col))
        nodes = self.tables["nodes"]
        new_nodes: list[pl.DataFrame] = []
        lookup: dict[str, pl.Series] = {}
        for typ in NODE_TYPES:  # NODE_ENUM order, as the nodes table sorts types
            if typ not in used:
                continue
            codes = pl.concat(used.pop(typ)).unique().alias("code")
            values = delta.codes.values[typ]
            f = pl.DataFrame([codes, values.gather(codes).alias("value")])
            f = f.join(nodes.filter(pl.col("type") == typ).select("id", "value"), on="value", how="left")
            new = f.filter(pl.col("id").is_null()).sort("value")
            if new.height:
                new = new.with_columns(pl.int_range(self.next_id, self.next_id + new.height, dtype=pl.Int64).alias("id"))
                self.next_id += new.height
                new_nodes.append(new.select("id", pl.lit(typ, dtype=NODE_ENUM).alias("type"), "value"))
                f = pl.concat([f.filter(pl.col("id").is_not_null()), new])
            # code -> id as a dense array: mapping a column is one gather.
            lut = pl.Series("id", [None], dtype=pl.Int64).extend_constant(None, values.len() - 1)
            lookup[typ] = lut.scatter(f.get_column("code"), f.get_column("id"))
        if new_nodes:
            self.tables["nodes"] = pl.concat([nodes, *new_nodes])
        return lookup

    def add(self, delta: Delta) -> None:
        ids = self._intern_codes(delta)

        def gather(typ: str, col: str) -> pl.Expr:
            return pl.lit(ids[typ]).gather(pl.col(col)).alias(col)

        if delta.edges:
            new = pl.concat([b.frame.select(pl.lit(b.etype, dtype=EDGE_ENUM).alias("etype"), gather(b.src_type, "src"),
                                            gather(b.dst_type, "dst"), "count", "first", "last")
                             for b in delta.edges])
            delta.edges.clear()  # the code frames are no longer needed; free them before the merge
            self.tables["edges"] = self._add_edges(self.tables["edges"], new)
            del new
        # A delta's activity and key rows are unique per key already: with nothing stored there is
        # nothing to merge, and the group-by (the ingest's largest) is skipped.
        if delta.activity is not None and delta.activity.height:
            act = delta.activity.select(gather("account", "account"), *list(ACTIVITY_SCHEMA)[1:])
            act = act.cast(ACTIVITY_SCHEMA)  # type: ignore[arg-type]
            if self.tables["activity"].height:
                act = pl.concat([self.tables["activity"], act]).group_by("account", "minute").agg(
                    pl.col(c).sum() for c in ("n", "n429", "nban", "nmis"))
            self.tables["activity"] = act.cast(ACTIVITY_SCHEMA)  # type: ignore[arg-type]
        if delta.keys is not None and delta.keys.height:
            k = delta.keys.select(gather("api_key", "key"), gather("account", "account"), *list(KEY_SCHEMA)[2:])
            if self.tables["keys"].height:
                k = pl.concat([self.tables["keys"], k]).group_by("key", "account").agg(
                    pl.col("first").min(), pl.col("last").max(), pl.col("last429").max(), pl.col("n").sum())
            self.tables["keys"] = k.select(KEY_SCHEMA.keys())
        if delta.accounts is not None and delta.accounts.height:
            names = delta.codes.values["account"]
            a = delta.accounts.with_columns(gather("account", "account").alias("id"),
                                            pl.lit(names).gather(pl.col("account")).alias("account"))
            merged = pl.concat([self.tables["accounts"], a.select(ACCOUNT_SCHEMA.keys())]).group_by(
                "id", maintain_order=True).agg(pl.all().drop_nulls().last())
            self.tables["accounts"] = merged.cast(ACCOUNT_SCHEMA)  # type: ignore[arg-type]
        if delta.ips is not None and delta.ips.height:
            addrs = delta.codes.values["ip"]
            i = delta.ips.with_columns(gather("ip", "ip").alias("id"), pl.lit(addrs).gather(pl.col("ip")).alias("ip"))
            merged = pl.concat([self.tables["ips"], i.select(IP_SCHEMA.keys())]).group_by("id").agg(
                pl.col("ip").first(), pl.col("asn").drop_nulls().last(),
                *[pl.col(f).any() for f in ("hosting", "vpn", "proxy", "tor")])
            self.tables["ips"] = merged.select(IP_SCHEMA.keys())
        self._bound()

    @classmethod
    def _add_edges(cls, old: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
        """Merge a delta's edges (unique per etype, src, dst) into the table.

        Only edge types present on both sides can repeat a key, so only they are grouped; the rest
        is appended. On the first request batch (egress, keys, clients: most of the graph) that
        saves the largest group-by of the ingest and its memory."""
        shared = set(old.get_column("etype").unique().to_list()) & set(new.get_column("etype").unique().to_list())
        if not shared:
            out = pl.concat([old, new])
        else:
            both = pl.col("etype").is_in(sorted(shared))
            merged = cls._merge_edges(pl.concat([old.filter(both), new.filter(both)]))
            out = pl.concat([old.filter(~both), new.filter(~both), merged])
        return out.rechunk() if out.n_chunks() > 16 else out

    @staticmethod
    def _merge_edges(edges: pl.DataFrame) -> pl.DataFrame:
        # Structural edges (ip->prefix, ip->asn, relay) carry no time and state a fact once: a second
        # batch repeating the fact must not double its count. Observed edges add up.
        count = (pl.when(pl.col("first").is_null().all()).then(pl.col("count").max())
                 .otherwise(pl.col("count").sum()))
        return edges.group_by("etype", "src", "dst").agg(
            count.alias("count"), pl.col("first").min(), pl.col("last").max()).select(EDGE_SCHEMA.keys())

    def add_relays(self, ips: list[str]) -> None:
        self.relays = sorted(set(self.relays) | set(ips))
        if ips:
            self.intern(pl.DataFrame({"type": ["ip"] * len(ips), "value": ips}))

    # --- bounds ------------------------------------------------------------------------------
    def _bound(self) -> None:
        lim = self.limits
        edges = self.tables["edges"]
        if edges.height > lim.max_edges:
            # Structural edges (ip->prefix/asn) carry no time: keep them, evict what was seen longest ago.
            # Ties broken by key, so the same state always evicts the same edges.
            keep = edges.sort(["last", "etype", "src", "dst"], descending=[True, False, False, False],
                              nulls_last=False).head(lim.max_edges)
            self.stats.evicted_edges += edges.height - keep.height
            self.tables["edges"] = keep
        nodes = self.tables["nodes"]
        if nodes.height > lim.max_nodes:
            e, t = self.tables["edges"], self.tables
            # A node stays while any table refers to it; only orphans left by edge eviction go.
            used = pl.concat([e.select(pl.col("src").alias("id")), e.select(pl.col("dst").alias("id")),
                              t["activity"].select(pl.col("account").alias("id")),
                              t["keys"].select(pl.col("key").alias("id")),
                              t["keys"].select(pl.col("account").alias("id")),
                              t["accounts"].select("id"), t["ips"].select("id")]).unique()
            kept = nodes.join(used, on="id", how="semi")
            self.stats.evicted_nodes += nodes.height - kept.height
            self.tables["nodes"] = kept
        act = self.tables["activity"]
        if act.height > lim.max_activity_rows:
            keep = act.sort(["minute", "account"], descending=[True, False]).head(lim.max_activity_rows)
            self.stats.evicted_activity += act.height - keep.height
            self.tables["activity"] = keep

    def _refresh_counts(self) -> None:
        self.stats.nodes = self.tables["nodes"].height
        self.stats.edges = self.tables["edges"].height
        self.stats.activity_rows = self.tables["activity"].height

    # --- lookups -----------------------------------------------------------------------------
    def values(self, ids: pl.DataFrame, col: str) -> pl.DataFrame:
        """Attach node type and value for an id column (as `<col>_type`, `<col>_value`)."""
        nodes = self.tables["nodes"].rename({"id": col, "type": f"{col}_type", "value": f"{col}_value"})
        return ids.join(nodes, on=col, how="left")

    def node_id(self, node_type: str | None, value: str) -> list[int]:
        nodes = self.tables["nodes"]
        sel = nodes.filter(pl.col("value") == value)
        if node_type:
            sel = sel.filter(pl.col("type") == node_type)
        return sel.get_column("id").to_list()
