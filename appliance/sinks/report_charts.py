"""Chart figures for the HTML report (sinks stage): one plotly figure dict per picture, no drawing here.

A figure is plain JSON (`{"data": [...], "layout": {...}}`) that the report hands to the inlined
plotly.js, so this module needs no plotly Python API and no browser. Every function prefers what the
finding carries (`series`, `lags_ms`, `members`, `edges`: extra keys detectors may add beyond the
ARCHITECTURE.md contract) and otherwise derives the picture from DIR/events/*.parquet; it returns
None when neither is available, and the report says so instead of drawing an empty chart.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

Figure = dict[str, Any]

# Colours per entity type, shared by the graph legend and the entity lists (colour-blind safe palette).
ENTITY_COLORS: dict[str, str] = {
    "account": "#4477aa", "api_key": "#66ccee", "payment": "#ee6677", "ip": "#228833",
    "asn": "#ccbb44", "email_domain": "#aa3377", "organization": "#bbbbbb", "domain": "#999933",
    "ja4": "#882255", "cluster": "#333333",
}
_SYMBOLS = {"account": "circle", "api_key": "diamond", "payment": "square", "ip": "triangle-up",
            "asn": "hexagon", "cluster": "star"}
GRAPH_TYPES = ("account", "api_key", "payment", "ip", "asn", "email_domain", "organization")
MAX_GRAPH_NODES = 300  # O(n^2) layout; beyond this a picture is a hairball anyway
MAX_TIMELINE_ACCOUNTS = 80
MAX_GRAPH_KEYS = 60  # beyond this, keys are drawn as one bundle per account
_NICE_BINS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
_BASE_LAYOUT: dict[str, Any] = {
    "margin": {"l": 60, "r": 20, "t": 30, "b": 40}, "height": 320, "paper_bgcolor": "rgba(0,0,0,0)",
    "plot_bgcolor": "#fafafa", "font": {"family": "system-ui, sans-serif", "size": 12},
    "legend": {"orientation": "h", "y": 1.12},
}


def scan_events(out_dir: str, name: str) -> pl.LazyFrame | None:
    """DIR/events/<name>.parquet, or a partitioned DIR/events/<name>/ folder (output contract)."""
    path = os.path.join(out_dir, "events", f"{name}.parquet")
    if os.path.isfile(path):
        return pl.scan_parquet(path)
    folder = os.path.join(out_dir, "events", name)
    if os.path.isdir(folder):
        return pl.scan_parquet(os.path.join(folder, "**", "*.parquet"))
    return None


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def nice_bin(span_s: float, target_bins: int = 120) -> float:
    """The smallest round bin width giving at most ~target_bins bins over span_s."""
    for b in _NICE_BINS_S:
        if span_s / b <= target_bins:
            return float(b)
    return float(math.ceil(span_s / target_bins / 86400) * 86400)


def _layout(**extra: Any) -> dict[str, Any]:
    return {**_BASE_LAYOUT, **extra}


# --- relay host -----------------------------------------------------------------------------------

def _spread(start: np.ndarray, end: np.ndarray, nbytes: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bytes per bin, each flow's bytes spread evenly over its lifetime.

    Pooled upstream connections live for minutes; charging their bytes to the first packet would
    draw one spike and a flat line. The integral of the summed constant rates up to edge e is
    e*sum(r, s<e) - sum(r*s, s<e) - (e*sum(r, end<e) - sum(r*end, end<e)), computed with sorted
    prefix sums in O((flows + bins) log flows) rather than a flows x bins matrix.
    """
    dur = end - start
    # Flows much shorter than a bin are points: their rate would be huge and the prefix sums would
    # lose it to cancellation (a 1e-139 s flow has rate 1e139).
    point = dur <= 1e-3 * float(edges[1] - edges[0]) if edges.size > 1 else dur <= 0
    out = np.histogram(start[point], bins=edges, weights=nbytes[point])[0].astype(float)
    s, e, r = start[~point], end[~point], nbytes[~point] / dur[~point]
    if s.size:
        cum = np.zeros(edges.size)
        for t, sign in ((s, 1.0), (e, -1.0)):
            order = np.argsort(t)
            ts, rs = t[order], r[order]
            c_r = np.concatenate(([0.0], np.cumsum(rs)))
            c_rt = np.concatenate(([0.0], np.cumsum(rs * ts)))
            k = np.searchsorted(ts, edges, side="left")
            cum += sign * (edges * c_r[k] - c_rt[k])
        out += np.diff(cum)
    return out


def relay_series(finding: dict[str, Any], flows: pl.LazyFrame | None) -> dict[str, Any] | None:
    """{"start", "bin_s", "inbound", "upstream", "derived"}: the finding's own series, else from flows."""
    given = finding.get("series")
    if isinstance(given, dict) and given.get("inbound_bytes") is not None:
        start = parse_time(given.get("start")) or parse_time(finding.get("first_seen"))
        if start is not None:
            return {"start": start, "bin_s": float(given.get("bin_s") or 1.0), "derived": False,
                    "inbound": [float(x or 0) for x in given.get("inbound_bytes") or []],
                    "upstream": [float(x or 0) for x in given.get("upstream_bytes") or []]}
    ip = str((finding.get("subject") or {}).get("value", ""))
    if flows is None or not ip:
        return None
    cols = flows.collect_schema().names()
    if not {"source.ip", "destination.ip", "event.start", "event.end"} <= set(cols):
        return None
    total = pl.col("source.bytes").fill_null(0) + pl.col("destination.bytes").fill_null(0)
    frame = (flows.filter((pl.col("source.ip") == ip) | (pl.col("destination.ip") == ip))
             .select((pl.col("destination.ip") == ip).alias("inbound"), total.alias("bytes"),
                     pl.col("event.start").dt.epoch("ns").alias("s"), pl.col("event.end").dt.epoch("ns").alias("e"),
                     *([pl.col("destination.service")] if "destination.service" in cols else []))
             .collect())
    if frame.is_empty():
        return None
    up = frame.filter(~pl.col("inbound"))
    # Upstream means towards the model APIs: keep only catalogued services when enrichment named any.
    if "destination.service" in frame.columns and up["destination.service"].is_not_null().any():
        up = up.filter(pl.col("destination.service").is_not_null())
    t0 = int(frame["s"].min())  # type: ignore[arg-type]
    span = max((int(frame["e"].max()) - t0) / 1e9, 1.0)  # type: ignore[arg-type]
    bin_s = nice_bin(span)
    edges = np.arange(0.0, span + bin_s, bin_s)
    parts = []
    for part in (frame.filter(pl.col("inbound")), up):
        s = (part["s"].to_numpy() - t0) / 1e9
        e = (part["e"].fill_null(part["s"]).to_numpy() - t0) / 1e9
        parts.append(_spread(s, e, part["bytes"].to_numpy().astype(float), edges).tolist())
    start = datetime.fromtimestamp(t0 // 10**9, UTC) + timedelta(microseconds=(t0 % 10**9) // 1000)
    return {"start": start, "bin_s": bin_s, "inbound": parts[0], "upstream": parts[1], "derived": True}


def correlation(a: list[float], b: list[float]) -> float | None:
    n = min(len(a), len(b))
    if n < 3:
        return None
    x, y = np.asarray(a[:n]), np.asarray(b[:n])
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def relay_timeline(series: dict[str, Any]) -> Figure:
    start, bin_s = series["start"], series["bin_s"]
    n = max(len(series["inbound"]), len(series["upstream"]))
    xs = [_iso(start + timedelta(seconds=i * bin_s)) for i in range(n)]
    data = [
        {"type": "scatter", "mode": "lines", "name": "inbound (clients ↔ relay)", "x": xs, "y": series["inbound"],
         "line": {"color": "#4477aa", "shape": "hv"}, "fill": "tozeroy", "fillcolor": "rgba(68,119,170,0.15)"},
        {"type": "scatter", "mode": "lines", "name": "upstream (relay ↔ model API)", "x": xs, "y": series["upstream"],
         "line": {"color": "#ee6677", "shape": "hv"}},
    ]
    return {"data": data, "layout": _layout(yaxis={"title": f"bytes per {bin_s:g} s"}, hovermode="x unified")}


def relay_lags(finding: dict[str, Any], flows: pl.LazyFrame | None) -> tuple[list[float], bool]:
    """(lags in ms, derived?): the finding's lags_ms, else the gap from each inbound flow's start to
    the next upstream connection the relay opens within 5 s. The estimate only sees new connections,
    so pooled upstream connections hide most lags; the report labels it as an estimate."""
    given = finding.get("lags_ms")
    if isinstance(given, list) and given:
        return [float(x) for x in given if isinstance(x, int | float)], False
    ip = str((finding.get("subject") or {}).get("value", ""))
    if flows is None or not ip or "event.start" not in flows.collect_schema().names():
        return [], True
    starts = flows.select("source.ip", "destination.ip", pl.col("event.start").dt.epoch("ns").alias("t"))
    inbound = starts.filter(pl.col("destination.ip") == ip).select("t").sort("t")
    upstream = starts.filter(pl.col("source.ip") == ip).select(pl.col("t").alias("up")).sort("up")
    joined = (inbound.join_asof(upstream, left_on="t", right_on="up", strategy="forward", tolerance=5 * 10**9)
              .drop_nulls().collect())
    return ((joined["up"] - joined["t"]) / 1e6).to_list(), True


def lag_histogram(lags: list[float]) -> Figure:
    sample = lags if len(lags) <= 20000 else np.random.default_rng(0).choice(lags, 20000, replace=False).tolist()
    data = [{"type": "histogram", "x": sample, "nbinsx": 40, "name": "lag", "marker": {"color": "#aa3377"}}]
    return {"data": data, "layout": _layout(xaxis={"title": "inbound → upstream lag (ms)"},
                                            yaxis={"title": "requests"}, showlegend=False, height=260)}


# --- reseller cluster -----------------------------------------------------------------------------

def _value(etype: Any, value: Any) -> str:
    """Entity value as drawn; ASNs appear as 64500 in events and as AS64500 in some findings."""
    text = str(value)
    return text[2:] if etype == "asn" and text[:2].upper() == "AS" else text


def _node_key(v: Any) -> str | None:
    if isinstance(v, dict) and "value" in v:
        return f"{v.get('type', 'entity')}:{_value(v.get('type'), v['value'])}"
    if isinstance(v, str | int):
        return str(v)
    return None


def cluster_edges(finding: dict[str, Any], requests: pl.LazyFrame | None,
                  accounts: pl.LazyFrame | None) -> tuple[list[str], set[tuple[str, str]], list[str]]:
    """Nodes ("type:value"), undirected edges, and notes on what was simplified to keep it readable."""
    ents = [e for e in finding.get("entities") or [] if isinstance(e, dict) and e.get("type") in GRAPH_TYPES]
    for m in finding.get("members") or []:
        if isinstance(m, dict) and m.get("type") in GRAPH_TYPES:
            ents.append(m)
        elif isinstance(m, str):
            ents.append({"type": "account", "value": m})
    order = {t: i for i, t in enumerate(("account", "payment", "asn", "ip", "api_key", "email_domain", "organization"))}
    nodes = list(dict.fromkeys(f"{e['type']}:{_value(e['type'], e['value'])}"
                               for e in sorted(ents, key=lambda e: order[e["type"]])))
    known = set(nodes)
    by_value = {n.split(":", 1)[1]: n for n in nodes}
    edges: set[tuple[str, str]] = set()

    def add(a: str | None, b: str | None) -> None:
        a, b = by_value.get(a or "", a), by_value.get(b or "", b)
        if a in known and b in known and a != b:
            edges.add((min(a, b), max(a, b)))  # type: ignore[type-var]

    for e in finding.get("edges") or []:
        if isinstance(e, dict):
            add(_node_key(e.get("source", e.get("a"))), _node_key(e.get("target", e.get("b"))))
        elif isinstance(e, list | tuple) and len(e) >= 2:
            add(_node_key(e[0]), _node_key(e[1]))
    accts = [n.split(":", 1)[1] for n in nodes if n.startswith("account:")]
    links = (("requests", requests, (("account.id", "api.key_id"), ("account.id", "source.ip"),
                                     ("source.ip", "source.as.number"))),
             ("accounts", accounts, (("account.id", "payment.fingerprint"), ("account.id", "signup.ip"),
                                     ("signup.ip", "signup.as.number"), ("account.id", "email.domain"),
                                     ("account.id", "organization.id"))))
    prefix = {"account.id": "account", "api.key_id": "api_key", "source.ip": "ip", "signup.ip": "ip",
              "source.as.number": "asn", "signup.as.number": "asn", "payment.fingerprint": "payment",
              "email.domain": "email_domain", "organization.id": "organization"}
    for _name, lf, pairs in links:
        if lf is None or not accts:
            continue
        cols = set(lf.collect_schema().names())
        wanted = sorted({c for p in pairs for c in p if c in cols})
        if "account.id" not in cols:
            continue
        rows = lf.filter(pl.col("account.id").is_in(accts)).select(wanted).unique().collect()
        for a, b in pairs:
            if a in cols and b in cols:
                for x, y in rows.select(a, b).unique().drop_nulls().iter_rows():
                    add(f"{prefix[a]}:{x}", f"{prefix[b]}:{y}")
    notes = []
    n_keys = sum(n.startswith("api_key:") for n in nodes)
    nodes, edges = _bundle_keys(nodes, edges)
    if n_keys > MAX_GRAPH_KEYS:
        notes.append(f"{n_keys:,} API keys drawn as one node per account")
    if len(nodes) > MAX_GRAPH_NODES:
        notes.append(f"{len(nodes) - MAX_GRAPH_NODES:,} entities left out (at most {MAX_GRAPH_NODES} drawn)")
        nodes = nodes[:MAX_GRAPH_NODES]
    kept = set(nodes)
    return nodes, {(a, b) for a, b in edges if a in kept and b in kept}, notes


def _bundle_keys(nodes: list[str], edges: set[tuple[str, str]]) -> tuple[list[str], set[tuple[str, str]]]:
    """Farms rotate keys (hundreds per cluster): past MAX_GRAPH_KEYS, one node per account stands for
    that account's keys, so the picture shows accounts, cards and addresses rather than a key cloud."""
    keys = {n for n in nodes if n.startswith("api_key:")}
    if len(keys) <= MAX_GRAPH_KEYS:
        return nodes, edges
    owned: dict[str, set[str]] = {}
    for a, b in edges:
        for k, other in ((a, b), (b, a)):
            if k in keys and other.startswith("account:"):
                owned.setdefault(other, set()).add(k)
    bundles = [(f"api_key:{len(ks)} keys of {acct.split(':', 1)[1]}", acct) for acct, ks in sorted(owned.items())]
    loose = len(keys - set().union(*owned.values())) if owned else len(keys)
    new_nodes = [n for n in nodes if n not in keys] + [b for b, _ in bundles]
    if loose:
        new_nodes.append(f"api_key:{loose} keys with no account link")
    new_edges = {(a, b) for a, b in edges if a not in keys and b not in keys}
    new_edges |= {(min(b, acct), max(b, acct)) for b, acct in bundles}
    return new_nodes, new_edges


def spring_layout(n: int, edges: list[tuple[int, int]], iterations: int = 150) -> np.ndarray:
    """Fruchterman-Reingold positions in [-1, 1]^2, seeded so the same cluster draws the same way."""
    rng = np.random.default_rng(7)
    pos = rng.uniform(-1, 1, (n, 2))
    if n <= 1:
        return np.zeros((n, 2))
    k = 1.0 / math.sqrt(n)
    e = np.asarray(edges, dtype=int).reshape(-1, 2)
    temp = 0.1
    for _ in range(iterations):
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.maximum(np.linalg.norm(delta, axis=2), 1e-3)
        disp = ((k * k / dist**2)[:, :, None] * delta).sum(axis=1)
        if e.size:
            d = pos[e[:, 0]] - pos[e[:, 1]]
            f = (np.linalg.norm(d, axis=1, keepdims=True) / k) * d
            np.add.at(disp, e[:, 0], -f)
            np.add.at(disp, e[:, 1], f)
        disp -= 0.05 * pos  # weak gravity keeps unconnected parts on screen
        length = np.maximum(np.linalg.norm(disp, axis=1, keepdims=True), 1e-9)
        pos += disp / length * np.minimum(length, temp)
        temp *= 0.97
    span = np.abs(pos).max() or 1.0
    return pos / span


def cluster_graph(nodes: list[str], edges: set[tuple[str, str]]) -> Figure | None:
    if not nodes:
        return None
    index = {n: i for i, n in enumerate(nodes)}
    pairs = sorted((index[a], index[b]) for a, b in edges)
    if not pairs and len(nodes) > 1:
        # No link data at all: hang every entity off one hub so the picture still shows the parts.
        nodes = [*nodes, "cluster:this cluster"]
        pairs = [(i, len(nodes) - 1) for i in range(len(nodes) - 1)]
    pos = spring_layout(len(nodes), pairs)
    degree = np.bincount(np.asarray(pairs, dtype=int).ravel(), minlength=len(nodes)) if pairs else np.zeros(len(nodes))
    ex: list[float | None] = []
    ey: list[float | None] = []
    for a, b in pairs:
        ex += [float(pos[a, 0]), float(pos[b, 0]), None]
        ey += [float(pos[a, 1]), float(pos[b, 1]), None]
    data: list[dict[str, Any]] = [{"type": "scatter", "mode": "lines", "x": ex, "y": ey, "hoverinfo": "skip",
                                   "line": {"color": "#c8c8c8", "width": 1}, "showlegend": False}]
    for etype in (*GRAPH_TYPES, "cluster"):
        idx = [i for i, n in enumerate(nodes) if n.split(":", 1)[0] == etype]
        if not idx:
            continue
        labels = [nodes[i].split(":", 1)[1] for i in idx]
        show_text = etype in ("payment", "asn", "ip", "cluster") and len(idx) <= 12
        data.append({
            "type": "scatter", "mode": "markers+text" if show_text else "markers", "name": f"{etype} ({len(idx)})",
            "x": [float(pos[i, 0]) for i in idx], "y": [float(pos[i, 1]) for i in idx],
            "text": [_short(v) for v in labels] if show_text else None, "textposition": "top center",
            "hovertext": [f"{etype}: {v}<br>{int(degree[i])} links" for v, i in zip(labels, idx, strict=True)],
            "hoverinfo": "text",
            "marker": {"size": [min(8 + 2 * math.sqrt(float(degree[i])), 26) for i in idx],
                       "color": ENTITY_COLORS.get(etype, "#777"), "symbol": _SYMBOLS.get(etype, "circle"),
                       "line": {"color": "#fff", "width": 1}},
        })
    axis = {"visible": False, "zeroline": False, "showgrid": False}
    return {"data": data, "layout": _layout(xaxis=axis, yaxis=axis, height=460, hovermode="closest",
                                            dragmode="pan", margin={"l": 10, "r": 10, "t": 30, "b": 10})}


def _short(v: str, n: int = 18) -> str:
    return v if len(v) <= n else v[: n - 1] + "…"


def cluster_timeline(finding: dict[str, Any], requests: pl.LazyFrame | None,
                     accounts: pl.LazyFrame | None) -> tuple[Figure | None, int]:
    """Swimlanes, one per account: its creation (diamond) and its requests per time bin (dots sized by
    count). Returns the figure and how many accounts the cap left out."""
    accts = sorted({str(e["value"]) for e in finding.get("entities") or []
                    if isinstance(e, dict) and e.get("type") == "account"}
                   | {m for m in finding.get("members") or [] if isinstance(m, str)})
    if not accts:
        return None, 0
    created = pl.DataFrame(schema={"account.id": pl.Utf8, "created": pl.Datetime("ns", "UTC")})
    if accounts is not None and {"account.id", "account.created"} <= set(accounts.collect_schema().names()):
        created = (accounts.filter(pl.col("account.id").is_in(accts))
                   .group_by("account.id").agg(pl.col("account.created").min().alias("created")).collect())
    activity = pl.DataFrame()
    if requests is not None and {"account.id", "@timestamp"} <= set(requests.collect_schema().names()):
        activity = requests.filter(pl.col("account.id").is_in(accts)).select("account.id", "@timestamp").collect()
    if created.is_empty() and activity.is_empty():
        return None, 0
    first = dict(created.iter_rows())
    lanes = sorted(accts, key=lambda a: (first.get(a) is None, first.get(a) or datetime.max.replace(tzinfo=UTC), a))
    dropped = max(0, len(lanes) - MAX_TIMELINE_ACCOUNTS)
    lanes = lanes[:MAX_TIMELINE_ACCOUNTS]
    data: list[dict[str, Any]] = []
    if not activity.is_empty():
        ns = activity["@timestamp"].dt.epoch("ns")
        span = (int(ns.max()) - int(ns.min())) / 1e9  # type: ignore[arg-type]
        bin_s = nice_bin(max(span, 1.0), 200)
        counts = (activity.filter(pl.col("account.id").is_in(lanes))
                  .group_by("account.id", pl.col("@timestamp").dt.truncate(f"{int(bin_s)}s").alias("t"))
                  .len().sort("t"))
        data.append({"type": "scatter", "mode": "markers", "name": f"requests per {_dur(bin_s)}",
                     "x": [_iso(t) for t in counts["t"]], "y": counts["account.id"].to_list(),
                     "text": [f"{c} requests" for c in counts["len"]], "hoverinfo": "x+y+text",
                     "marker": {"color": "#4477aa", "opacity": 0.6,
                                "size": [min(4 + 2 * math.sqrt(c), 18) for c in counts["len"]]}})
    made = [(a, first[a]) for a in lanes if first.get(a) is not None]
    if made:
        data.append({"type": "scatter", "mode": "markers", "name": "account created",
                     "x": [_iso(t) for _, t in made], "y": [a for a, _ in made],
                     "marker": {"symbol": "diamond", "size": 10, "color": "#ee6677", "line": {"color": "#fff", "width": 1}}})
    layout = _layout(height=max(260, 18 * len(lanes) + 90), hovermode="closest",
                     yaxis={"categoryorder": "array", "categoryarray": lanes[::-1], "automargin": True, "tickfont": {"size": 10}})
    return {"data": data, "layout": layout}, dropped


def _dur(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{int(seconds // n)} {unit}"
    return f"{seconds:g} s"
