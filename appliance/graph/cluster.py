"""Accounts -> candidate clusters: strong-link components refined by weighted community detection.

Issue 6 ("Reseller clusters"): shared payment fingerprints, API keys and sign-up addresses are strong
links — two accounts that share one are run by the same hand — so they form connected components.
Shared egress addresses and a shared (JA4, User-Agent) client are weaker: they join components into
groups, and Leiden (igraph, Traag et al. 2019) with modularity then cuts each group where it is only
held together by a thin bridge (a person on the same VPN exit as a farm, two farms sharing one
address). Leiden also cuts random-looking structure that is really one farm, so communities that
share two or more hubs carrying at least `CONDUCTANCE` of the smaller one's link weight are glued
back: a bridge is one hub, a farm's arbitrary halves share many.

Supernodes — hubs linked to more accounts than GraphLimits allows (a carrier NAT, a browser's JA4) —
take no part, so they cannot merge everything; below the limit a hub's link weight falls with the
log of its degree (down-weighting). igraph is used because its components and Leiden are C code:
on the 1M-account benchmark the graph has millions of edges, far past what per-node Python can do.
"""

from __future__ import annotations

import math
import random

import igraph as ig
import numpy as np
import polars as pl

from appliance.graph.model import STRONG_EDGES, GraphStats
from appliance.graph.store import GraphStore

CONDUCTANCE = 0.1
# Below this many accounts a hub keeps its full weight; past it the weight falls as 1/log2(deg/64).
SOFT_DEGREE = 128


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    g = ig.Graph(n=n, edges=pairs, directed=False)
    return np.asarray(g.connected_components().membership, dtype=np.int64)


def _supernodes(store: GraphStore, deg: pl.DataFrame, limit: int, stats: GraphStats) -> pl.DataFrame:
    big = deg.filter(pl.col("deg") > limit)
    if big.height:
        stats.supernodes += big.height
        top = store.values(big.sort("deg", descending=True).head(10), "hub")
        stats.top_supernodes.extend(
            (str(r["hub_type"]), str(r["hub_value"]), int(r["deg"])) for r in top.iter_rows(named=True))
    return deg.filter((pl.col("deg") >= 2) & (pl.col("deg") <= limit))


def strong_components(store: GraphStore, accounts: pl.Series, stats: GraphStats) -> pl.DataFrame:
    """account id -> strong component label (the smallest account id in it)."""
    edges = store.tables["edges"]
    strong = (edges.filter(pl.col("etype").cast(pl.Utf8).is_in(list(STRONG_EDGES)))
              .select(pl.col("src").alias("a"), pl.col("dst").alias("hub")).unique())
    deg = strong.group_by("hub").agg(pl.col("a").n_unique().alias("deg"))
    ok = _supernodes(store, deg, store.limits.supernode_accounts, stats)
    strong = strong.join(ok.select("hub"), on="hub", how="semi")
    acc = pl.DataFrame({"a": accounts})
    if strong.height == 0:
        return acc.with_columns(pl.col("a").alias("comp"))
    n = int(max(store.next_id, 1))
    memb = _components(n, strong.select("a", "hub").to_numpy())
    lab = acc.with_columns(pl.Series("m", memb[acc.get_column("a").to_numpy()]))
    # Label each component by its smallest account id: stable across runs and independent of igraph.
    return lab.with_columns(pl.col("a").min().over("m").alias("comp")).select("a", "comp")


def _weak_links(store: GraphStore, comps: pl.DataFrame, stats: GraphStats) -> pl.DataFrame:
    """(comp, hub, weight): components joined to shared egress addresses and (JA4, UA) clients."""
    edges = store.tables["edges"].select(pl.col("etype").cast(pl.Utf8), "src", "dst")
    acc = comps.select("a")
    egress = (edges.filter(pl.col("etype") == "egress").select(pl.col("src").alias("a"), pl.col("dst").alias("hub"))
              .join(acc, on="a", how="semi").with_columns(pl.lit(1.0).alias("w")))
    ja4 = edges.filter(pl.col("etype") == "tls_client").select(pl.col("src").alias("a"), pl.col("dst").alias("j"))
    ua = edges.filter(pl.col("etype") == "user_agent").select(pl.col("src").alias("a"), pl.col("dst").alias("u"))
    # A (JA4, UA) pair as one hub: either alone is shared by every user of a client build, the pair
    # (an unusual library claiming a browser's name, say) much less so. Hub id: negative, unique per pair.
    client = (ja4.join(acc, on="a", how="semi").join(ua, on="a")
              .with_columns((-(pl.col("j") * (store.next_id + 1) + pl.col("u")) - 1).alias("hub"))
              .select("a", "hub").with_columns(pl.lit(1.0).alias("w")))
    out: list[pl.DataFrame] = []
    for links, limit in ((egress, store.limits.supernode_accounts),
                         (client, store.limits.supernode_client_accounts)):
        deg = links.group_by("hub").agg(pl.col("a").n_unique().alias("deg"))
        if links is client:
            # Pair hubs are synthetic; report their supernodes by JA4 only through the JA4's own degree.
            ok = deg.filter((pl.col("deg") >= 2) & (pl.col("deg") <= limit))
            stats.supernodes += deg.filter(pl.col("deg") > limit).height
        else:
            ok = _supernodes(store, deg, limit, stats)
        ok = ok.with_columns((1.0 / (pl.col("deg") / 64).log(2).clip(lower_bound=1.0)).alias("down"))
        links = links.join(ok, on="hub").join(comps, on="a")
        out.append(links.group_by("comp", "hub").agg((pl.col("w") * pl.col("down")).sum().alias("w")))
    return _confine_clients(out[0], out[1])


def _confine_clients(egress: pl.DataFrame, client: pl.DataFrame) -> pl.DataFrame:
    """Keep a (JA4, UA) hub only where its components share one egress group (or have none).

    Two farms running the same relay software share a client fingerprint but not infrastructure;
    a shared client must not weld them. Within one egress group, or for accounts whose addresses are
    all supernodes, the shared client is the link that is left."""
    if client.height == 0 or egress.height == 0:
        return pl.concat([egress, client])
    cidx = egress.select("comp").unique().with_row_index("ci")
    hidx = egress.select("hub").unique().with_row_index("hi")
    e = egress.join(cidx, on="comp").join(hidx, on="hub")
    pairs = np.stack([e.get_column("ci").to_numpy().astype(np.int64),
                      e.get_column("hi").to_numpy().astype(np.int64) + cidx.height], axis=1)
    memb = _components(cidx.height + hidx.height, pairs)
    grp = cidx.with_columns(pl.Series("eg", memb[: cidx.height])).select("comp", "eg")
    c = client.join(grp, on="comp", how="left")
    span = c.group_by("hub").agg(pl.col("eg").drop_nulls().n_unique().alias("groups"))
    c = c.join(span.filter(pl.col("groups") <= 1).select("hub"), on="hub", how="semi")
    return pl.concat([egress, c.select(client.columns)])


def _leiden(n: int, pairs: np.ndarray, weights: np.ndarray, seed: int) -> np.ndarray:
    g = ig.Graph(n=n, edges=pairs, directed=False)
    rng = random.Random(seed)
    ig.set_random_number_generator(rng)  # determinism: same graph, same partition
    try:
        part = g.community_leiden(objective_function="modularity", weights=weights.tolist(), n_iterations=-1)
    finally:
        ig.set_random_number_generator(random)
    return np.asarray(part.membership, dtype=np.int64)


def cluster_accounts(store: GraphStore, stats: GraphStats) -> pl.DataFrame:
    """Return (account id `a`, cluster label `cluster`) for every account node."""
    stats.supernodes = 0
    stats.top_supernodes = []
    nodes = store.tables["nodes"]
    accounts = nodes.filter(pl.col("type") == "account").get_column("id")
    comps = strong_components(store, accounts, stats)
    links = _weak_links(store, comps, stats)
    if links.height == 0:
        return comps.rename({"comp": "cluster"})
    # Vertex index: components first, then hubs.
    cidx = links.select("comp").unique().sort("comp").with_row_index("ci")
    hidx = links.select("hub").unique().sort("hub").with_row_index("hi")
    nc = cidx.height
    links = links.join(cidx, on="comp").join(hidx, on="hub").with_columns((pl.col("hi") + nc).alias("hv"))
    pairs = links.select(pl.col("ci").cast(pl.Int64), pl.col("hv").cast(pl.Int64)).to_numpy()
    n = nc + hidx.height
    group = _components(n, pairs)
    # Leiden only where a group joins two or more components; a lone component needs no refinement.
    lk = links.with_columns(pl.Series("g", group[pairs[:, 0]]))
    multi = lk.group_by("g").agg(pl.col("ci").n_unique().alias("k")).filter(pl.col("k") > 1)
    lk = lk.join(multi.select("g"), on="g", how="semi")
    label = group.copy()
    if lk.height:
        verts = np.unique(np.concatenate([lk.get_column("ci").to_numpy(), lk.get_column("hv").to_numpy()]))
        remap = np.full(n, -1, dtype=np.int64)
        remap[verts] = np.arange(len(verts))
        sub = np.stack([remap[lk.get_column("ci").to_numpy()], remap[lk.get_column("hv").to_numpy()]], axis=1)
        w = lk.get_column("w").to_numpy()
        comm = _leiden(len(verts), sub, w, store.limits.seed)
        comm = _glue(comm, sub, w)
        # Community labels live in a range of their own, above every group label.
        label[verts] = comm + n
    ci_label = pl.DataFrame({"ci": np.arange(nc, dtype=np.uint32), "cl": label[:nc]})
    comp_label = cidx.join(ci_label, on="ci").select("comp", "cl")
    out = comps.join(comp_label, on="comp", how="left")
    # Components with no weak link keep their own label; others take the smallest comp of their community.
    out = out.with_columns(pl.when(pl.col("cl").is_null()).then(-pl.col("comp") - 1).otherwise(pl.col("cl"))
                           .alias("key"))
    return out.with_columns(pl.col("a").min().over("key").alias("cluster")).select("a", "cluster")


def _glue(comm: np.ndarray, pairs: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Merge Leiden communities that share at least two hubs carrying >= CONDUCTANCE of the smaller
    one's volume. `pairs` rows are (component vertex, hub vertex). One shared hub — a relay address
    or a client build two farms both use, a VPN exit — is a bridge; an arbitrary cut through one
    farm runs through many of its hubs."""
    ca, cb = comm[pairs[:, 0]], comm[pairs[:, 1]]
    k = int(comm.max()) + 1 if len(comm) else 0
    vol = np.bincount(ca, weights=w, minlength=k) + np.bincount(cb, weights=w, minlength=k)
    cross = pl.DataFrame({"x": np.minimum(ca, cb), "y": np.maximum(ca, cb), "w": w, "hub": pairs[:, 1]})
    cut = cross.filter(pl.col("x") != pl.col("y")).group_by("x", "y").agg(
        pl.col("w").sum(), pl.col("hub").n_unique().alias("hubs"))
    if cut.height == 0:
        return comm
    x, y, cw, hubs = (cut.get_column(c).to_numpy() for c in ("x", "y", "w", "hubs"))
    keep = (cw >= CONDUCTANCE * np.minimum(vol[x], vol[y])) & (hubs >= 2)
    if not keep.any():
        return comm
    memb = _components(k, np.stack([x[keep], y[keep]], axis=1))
    return memb[comm]


def hub_degree_factor(deg: int) -> float:
    """The down-weighting applied to a hub of `deg` accounts (docs/graph.md), for explanations."""
    return 1.0 / max(1.0, math.log2(max(deg, 1) / 64))
