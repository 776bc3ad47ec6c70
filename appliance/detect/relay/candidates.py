"""Relay candidates: hosts that call a catalogued model API and also accept flows from other hosts.

Stage: detect. Input is the detector's bounded tables (state.py); output is `Candidates`: the
candidate addresses and each table's rows of all candidates at once, every row labelled with the
candidate it belongs to, so evidence.py measures them all with whole-frame group-bys. Issue 5
"Candidates": outbound flows to catalogued AI endpoints (enrichment's `destination.service`: SNI,
HTTP Host, DNS-learned address or published range) plus inbound flows from other hosts.

A dual-stack relay answers clients on an IPv6 address and calls the API from its IPv4 one, so the
IPv6 address never has an upstream leg of its own. Such inbound-only addresses are folded into a
candidate as aliases when (a) their inbound TLS names the same non-API server name as the
candidate's, or (b) their plaintext API requests are each followed, within the lag window, by an
upstream opening of that one candidate (one sorted pass over all openings, not pairs of hosts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from appliance.detect.relay.state import Store
from appliance.detect.relay.timing import chance_hit

# Request paths of the model APIs and the relays that imitate them (OpenAI, Anthropic, Gemini).
API_PATH_RX = r"/v1/(?:chat/completions|completions|messages|responses|embeddings)|:(?:stream)?[Gg]enerateContent"
# Credential shapes of API keys (appliance/secrets.py key_format): provider and reseller formats.
API_KEY_RX = r"^(?:sk-|cr_|AIza|gsk_|xai-)"
# Formats reseller front-ends issue (one-api sk-48alnum, sub2api sk-64hex, claude-relay cr_64hex).
RESELLER_KEY_RX = r"^(?:sk-\d+(?:alnum|hex)|cr_\d+hex)$"
# An upstream flow shorter than this is one request (a pooled connection lives for minutes).
SHORT_UPSTREAM_NS = 30_000_000_000


@dataclass
class Candidates:
    """Every candidate's rows, aliases folded in. Each frame has `cand` (UInt32 index into `ips`) and
    `cand_ip` (the candidate's own address) on every row, rows in the store's (time) order; None when
    the table is empty or no row belongs to a candidate."""

    ips: list[str]  # address order
    aliases: list[dict[str, str]]  # per candidate: alias address -> why it was folded in
    up: pl.DataFrame | None = None  # their flows to model APIs
    inbound: pl.DataFrame | None = None  # flows other hosts opened to them (or an alias)
    tls_in: pl.DataFrame | None = None  # ClientHellos sent to them
    tls_up: pl.DataFrame | None = None  # their ClientHellos to model APIs
    http_in: pl.DataFrame | None = None  # plaintext requests sent to them


def api_shaped() -> pl.Expr:
    """True for requests with a model-API path or an API-key credential (issue 5 "API-shaped")."""
    return (pl.col("path").fill_null("").str.contains(API_PATH_RX)
            | pl.col("key_format").fill_null("").str.contains(API_KEY_RX))


def _alias_by_sni(tls_in: pl.DataFrame | None, cands: set[str], up_hosts: set[str]) -> dict[str, tuple[str, str]]:
    if tls_in is None:
        return {}
    named = tls_in.filter(pl.col("service").is_null() & (pl.col("sni").fill_null("") != ""))
    cand_names = (named.filter(pl.col("dst").is_in(list(cands))).group_by("sni", "dst").agg(pl.len().alias("n"))
                  .sort(["sni", "n", "dst"], descending=[False, True, False]).unique("sni", keep="first"))
    if cand_names.height == 0:
        return {}
    others = named.filter(~pl.col("dst").is_in(list(up_hosts))).select("dst", "sni").unique()
    # sni breaks the last ties, so an alias's note names the same server name on every run.
    pairs = others.join(cand_names.rename({"dst": "cand"}), on="sni").sort(["dst", "n", "cand", "sni"],
                                                                         descending=[False, True, False, False])
    out: dict[str, tuple[str, str]] = {}
    for dst, cand, sni in pairs.select("dst", "cand", "sni").iter_rows():
        out.setdefault(dst, (cand, f"inbound TLS names {sni}, as {cand}'s does"))
    return out


def _alias_by_timing(http_in: pl.DataFrame | None, up: pl.DataFrame, cands: list[str], up_hosts: set[str],
                     window_ns: int) -> dict[str, tuple[str, str]]:
    if http_in is None or not cands:
        return {}
    reqs = http_in.filter(~pl.col("dst").is_in(list(up_hosts)) & api_shaped()).select("dst", "t")
    short = up.filter(pl.col("src").is_in(cands) & ((pl.col("t1") - pl.col("t0")) < SHORT_UPSTREAM_NS))
    if reqs.height == 0 or short.height == 0:
        return {}
    short = short.sort("t0")
    opens = short.get_column("t0").to_numpy()
    owner = short.get_column("src").to_numpy()
    t = reqs.get_column("t").to_numpy()
    idx = np.searchsorted(opens, t, side="left")
    ok = idx < opens.size
    ok[ok] = opens[idx[ok]] - t[ok] <= window_ns
    voted = owner[np.minimum(idx, opens.size - 1)].astype(object)
    voted[~ok] = None
    votes = reqs.with_columns(pl.Series("cand", voted.tolist(), dtype=pl.Utf8))
    span = int(opens.max() - opens.min()) or 1
    chance = chance_hit(opens.size, span, window_ns)
    tally = (votes.group_by("dst").agg(pl.len().alias("n"), pl.col("cand").drop_nulls().mode().first().alias("top"),
                                       (pl.col("cand") == pl.col("cand").drop_nulls().mode().first()).sum().alias("k"))
             .sort("dst"))
    out: dict[str, tuple[str, str]] = {}
    for dst, n, top, k in tally.iter_rows():
        # Two or more requests, 80 % of them followed by the same host's upstream opening, and
        # chance alone would match under half: a coincidence that unlikely is the same machine.
        if top is not None and n >= 2 and k >= 0.8 * n and chance < 0.5:
            out[dst] = (top, f"{k} of {n} API requests to it were followed within {window_ns // 1_000_000} ms "
                             f"by an upstream call from {top}")
    return out


def _rows(frame: pl.DataFrame | None, key: str, owner: dict[str, str], index: dict[str, int]) -> pl.DataFrame | None:
    """The rows whose `key` address belongs to a candidate, labelled with it, in table order (the
    order a client's first-seen country and the byte-series sums follow)."""
    if frame is None or frame.height == 0:
        return None
    mapping = pl.DataFrame({key: list(owner), "cand": [index[c] for c in owner.values()], "cand_ip": list(owner.values())},
                           schema={key: pl.Utf8, "cand": pl.UInt32, "cand_ip": pl.Utf8})
    sub = frame.join(mapping, on=key, how="inner", maintain_order="left")
    return sub if sub.height else None


def build(store: Store, window_ns: int) -> Candidates:
    """Candidates in address order, with their rows and aliases."""
    up = store.table("flow_up")
    flow_in = store.table("flow_in")
    if up is None or flow_in is None or up.height == 0:
        return Candidates([], [])
    flow_in = flow_in.filter(pl.col("src") != pl.col("dst"))
    up_hosts = set(up.get_column("src").drop_nulls().to_list())
    in_hosts = set(flow_in.get_column("dst").drop_nulls().to_list())
    cands = sorted(up_hosts & in_hosts)
    if not cands:
        return Candidates([], [])
    tls_in, http_in = store.table("tls_in"), store.table("http_in")
    aliases = _alias_by_sni(tls_in, set(cands), up_hosts)
    for dst, why in _alias_by_timing(http_in, up, cands, up_hosts, window_ns).items():
        aliases.setdefault(dst, why)
    index = {c: i for i, c in enumerate(cands)}
    own = {c: c for c in cands}
    owner = own | {a: c for a, (c, _) in sorted(aliases.items())}
    per_cand: list[dict[str, str]] = [{} for _ in cands]
    for a, (c, note) in sorted(aliases.items()):
        per_cand[index[c]][a] = note
    return Candidates(cands, per_cand, up=_rows(up, "src", own, index), inbound=_rows(flow_in, "dst", owner, index),
                      tls_in=_rows(tls_in, "dst", owner, index), tls_up=_rows(store.table("tls_up"), "src", own, index),
                      http_in=_rows(http_in, "dst", owner, index))
