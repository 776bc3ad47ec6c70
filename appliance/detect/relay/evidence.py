"""Evidence: the measured numbers behind a relay decision, for every candidate at once.

Stage: detect. `measure_all` turns `Candidates` (candidates.py) into one `Measures` per candidate,
plain numbers with no judgement; score.py weighs them and findings.py writes them out with the
sentences from `describe`. Each measure is a group-by over all candidates' rows (or a grouped numpy
search, timing.py), so the cost follows the rows, not the number of candidates (measured one
candidate at a time, ~100 candidates took ~4,000 small polars collects). Only the byte-series
correlation still runs host by host: its bins are the host's own. Each measure is one of issue 5's
"Evidence" items:

- timing: inbound request -> upstream opening lags, upstream openings explained by inbound
  activity (against chance), binned byte-series correlation of the two legs;
- one-to-one mapping of inbound requests to upstream openings;
- byte mirroring: the answer bytes a host sends its clients vs those it receives from the API
  (a relay forwards what it receives; this works even with pooled upstream connections, where
  per-request timing is invisible in flow records);
- TLS termination vs tunnelling (inbound SNI naming an API, client JA4 reused upstream);
- API-shaped plaintext requests; fan-in, client geography, hosting ASN.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from appliance.detect.relay import timing
from appliance.detect.relay.candidates import RESELLER_KEY_RX, SHORT_UPSTREAM_NS, Candidates, api_shaped

# An answer streamed token by token leaves in many small packets (~90-420 B events); page and file
# downloads fill segments (~1 400 B). 700 B per packet separates the two in every simulated level.
STREAM_MAX_BYTES_PER_PACKET = 700
STREAM_MIN_PACKETS = 6
# Fewer upstream openings than this say nothing about what causes them (a pooled relay's idle
# pool connection is one short flow); the "explained" test needs a sample.
MIN_OPENINGS = 3
# Flow records hold only totals, and each TLS connection's total includes the server's handshake
# flight (ServerHello + certificate chain + Finished, typically 2.5-4.5 KB; RFC 8446 §4.4). Counted
# as answer bytes, it would swamp a small relay's few answers over many pooled connections, so it is
# taken off every TLS flow on both legs before bytes are compared.
TLS_SERVER_FLIGHT_BYTES = 3_300
# An upstream flow with less answer than this carried no request (an idle pooled connection).
MIN_ANSWER_BYTES = 1_000


# Responder packets that carry no answer: SYN-ACK and FIN (+ ACK), and for TLS the server flight
# (about 3 segments). Packet counts are the second, independent half of the mirror test: a relay
# forwards each streamed event as it comes, so both legs carry about as many answer packets.
HANDSHAKE_PACKETS = 3
TLS_HANDSHAKE_PACKETS = 6


def _answer_bytes() -> list[pl.Expr]:
    tls = pl.col("sni").is_not_null() | (pl.col("dport") == 443)
    flight = pl.when(tls).then(TLS_SERVER_FLIGHT_BYTES).otherwise(0)
    setup = pl.when(tls).then(TLS_HANDSHAKE_PACKETS).otherwise(HANDSHAKE_PACKETS)
    return [(pl.col("resp_bytes").fill_null(0) - flight).clip(lower_bound=0).alias("answer"),
            (pl.col("resp_pkts").fill_null(0) - setup).clip(lower_bound=0).alias("answer_pkts")]


MAX_LAGS_KEPT = 2000  # a finding carries at most this many measured lags (report histogram)


@dataclass
class Measures:
    """Numbers measured for one candidate (None: not measurable from what was seen)."""

    ip: str
    aliases: dict[str, str] = field(default_factory=dict)
    first_ns: int = 0
    last_ns: int = 0
    upstream_flows: int = 0
    short_upstream: int = 0  # one-request upstream connections (openings)
    upstream_bytes: int = 0
    upstream_packets: int = 0
    upstream_endpoints: list[tuple[str, str]] = field(default_factory=list)  # (ip, name)
    upstream_ja4: list[str] = field(default_factory=list)
    inbound_flows: int = 0
    stream_flows: int = 0
    downstream_bytes: int = 0
    downstream_packets: int = 0
    clients: list[str] = field(default_factory=list)
    restricted_clients: int = 0
    client_countries: dict[str, int] = field(default_factory=dict)
    asn: int | None = None
    as_org: str | None = None
    hosting: bool = False
    # timing
    requests: int = 0  # inbound plaintext requests
    lag_matched: int = 0
    lag_chance: float = 0.0
    lag_median_ms: float | None = None
    lag_p90_ms: float | None = None
    lags_ms: list[float] = field(default_factory=list)  # the matched lags, for the report's histogram
    one_to_one: float | None = None  # distinct upstream openings / matched requests
    explained: int = 0  # openings explained by inbound activity
    explained_excess: float | None = None  # (observed - chance) / (1 - chance), best test
    explained_chance: float | None = None
    xcorr: float | None = None
    xcorr_lag_s: int = 0
    # TLS and HTTP shape
    inbound_hellos: int = 0
    tunnel_hellos: int = 0  # inbound ClientHello / CONNECT naming a model API
    terminated_hellos: int = 0  # inbound ClientHello naming another (its own) name
    own_names: list[str] = field(default_factory=list)
    ja4_reuse: float | None = None  # upstream handshakes whose JA4 a client also sent it
    api_requests: int = 0
    reseller_keys: int = 0
    api_paths: list[str] = field(default_factory=list)

    @property
    def mirror_ratio(self) -> float | None:
        return self.downstream_bytes / self.upstream_bytes if self.upstream_bytes >= 2_000 else None

    @property
    def mirror_packet_ratio(self) -> float | None:
        return self.downstream_packets / self.upstream_packets if self.upstream_packets >= 10 else None

    @property
    def lag_fraction(self) -> float:
        return self.lag_matched / self.requests if self.requests else 0.0


Spans = list[list[tuple[Any, Any]]]  # per candidate: (first, last) ns of each kind of row seen


def _lists(frame: pl.DataFrame, *cols: str) -> Iterator[tuple[Any, ...]]:
    """(cand, [col values], ...) per candidate present, values in frame order."""
    return frame.group_by("cand", maintain_order=True).agg(*cols).iter_rows()


def _mode(frame: pl.DataFrame, col: str) -> Iterator[tuple[Any, ...]]:
    """(cand, value): each candidate's most frequent non-null value, the smallest on ties."""
    counts = frame.filter(pl.col(col).is_not_null()).group_by("cand", col).len()
    top = (counts.sort(["cand", "len", col], descending=[False, True, False])
           .unique("cand", keep="first", maintain_order=True))
    return top.select("cand", col).iter_rows()


def _times(frame: pl.DataFrame | None, *cols: str) -> list[np.ndarray]:
    """cand and the time columns as int64 arrays, rows in frame order. Rows without a time (decoded
    flows always have both) cannot be placed in time and are left out."""
    if frame is None:
        return [np.empty(0, np.int64) for _ in range(len(cols) + 1)]
    f = frame.drop_nulls(list(cols))
    return [f.get_column(c).to_numpy().astype(np.int64) for c in ("cand", *cols)]


def _upstream(up: pl.DataFrame | None, ms: list[Measures], spans: Spans) -> pl.DataFrame | None:
    """Volume, endpoints, ASN and hosting of the upstream legs; returns the short (one-request) flows."""
    if up is None:
        return None
    up = up.with_columns(_answer_bytes())
    agg = up.group_by("cand").agg(pl.len(), pl.col("answer").sum(), pl.col("answer_pkts").sum(),
                                  pl.col("src_hosting").fill_null(False).any(), pl.col("t0").min(), pl.col("t1").max())
    for i, n, answer, pkts, hosting, lo, hi in agg.iter_rows():
        m = ms[i]
        m.upstream_flows, m.upstream_bytes, m.upstream_packets, m.hosting = n, answer, pkts, bool(hosting)
        spans[i].append((lo, hi))
    ends = (up.select("cand", "dst", pl.coalesce("sni", "host", "service").fill_null("").alias("name"))
            .unique().sort("cand", "dst", "name"))
    for i, dsts, names in _lists(ends, "dst", "name"):
        ms[i].upstream_endpoints = [(str(a), str(b)) for a, b in zip(dsts, names, strict=True)]
    for i, asn in _mode(up, "src_asn"):
        ms[i].asn = int(asn)
    for i, org in _mode(up, "src_as_org"):
        ms[i].as_org = str(org)
    short = up.filter(((pl.col("t1") - pl.col("t0")) < SHORT_UPSTREAM_NS) & (pl.col("answer") >= MIN_ANSWER_BYTES))
    for i, n in short.group_by("cand").len().iter_rows():
        ms[i].short_upstream = n
    return short


def _inbound(inbound: pl.DataFrame | None, ms: list[Measures], spans: Spans) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """Inbound flows from other hosts, and the streamed answers among them (the downstream leg)."""
    if inbound is None:
        return None, None
    inbound = inbound.filter(pl.col("src") != pl.col("cand_ip"))
    for i, n, lo, hi in inbound.group_by("cand").agg(pl.len(), pl.col("t0").min(), pl.col("t1").max()).iter_rows():
        ms[i].inbound_flows = n
        spans[i].append((lo, hi))
    stream = inbound.filter(
        (pl.col("resp_pkts").fill_null(0) >= STREAM_MIN_PACKETS)
        & (pl.col("resp_bytes").fill_null(0) <= STREAM_MAX_BYTES_PER_PACKET * pl.col("resp_pkts").fill_null(0))
    ).with_columns(_answer_bytes())
    for i, n, answer, pkts in stream.group_by("cand").agg(pl.len(), pl.col("answer").sum(),
                                                          pl.col("answer_pkts").sum()).iter_rows():
        ms[i].stream_flows, ms[i].downstream_bytes, ms[i].downstream_packets = n, answer, pkts
    return inbound, stream


def _http(http_in: pl.DataFrame | None, ms: list[Measures], spans: Spans) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """API-shaped plaintext requests (issue 5: paths like /v1/chat/completions, reseller keys) and
    CONNECTs; returns the API-shaped requests and all non-CONNECT ones (the timing tests' requests)."""
    if http_in is None:
        return None, None
    connect = pl.col("method").fill_null("").str.to_uppercase() == "CONNECT"
    http = http_in.filter(pl.col("src") != pl.col("cand_ip")).with_columns(connect.alias("connect"))
    for i, n_connect, n_plain in http.group_by("cand").agg(pl.col("connect").sum(),
                                                          (~pl.col("connect")).sum().alias("plain")).iter_rows():
        ms[i].tunnel_hellos += n_connect
        ms[i].requests = n_plain
    plain = http.filter(~pl.col("connect"))
    api = plain.filter(api_shaped())
    reseller = pl.col("key_format").fill_null("").str.contains(RESELLER_KEY_RX).sum()
    for i, n, keys, lo, hi in api.group_by("cand").agg(pl.len(), reseller, pl.col("t").min(),
                                                        pl.col("t").max().alias("hi")).iter_rows():
        ms[i].api_requests, ms[i].reseller_keys = n, keys
        spans[i].append((lo, hi))
    paths = (api.filter(pl.col("path").is_not_null()).select("cand", pl.col("path").str.replace(r"\?.*$", ""))
             .unique().sort("cand", "path").group_by("cand", maintain_order=True).head(5))
    for i, ps in _lists(paths, "path"):
        ms[i].api_paths = ps
    return api, plain


def _clients(stream: pl.DataFrame | None, api: pl.DataFrame | None, ms: list[Measures], restricted: frozenset[str]) -> None:
    """Clients: hosts that received streamed answers or sent API-shaped requests; a client's country
    is the first one seen, streamed answers first."""
    parts = [f.select("cand", "src", "src_country") for f in (stream, api) if f is not None and f.height]
    if not parts:
        return
    cl = (pl.concat(parts).group_by("cand", "src").agg(pl.col("src_country").drop_nulls().first())
          .sort("cand", "src"))
    for i, srcs in _lists(cl, "src"):
        ms[i].clients = srcs
    countries = cl.group_by("cand", pl.col("src_country").fill_null("??")).len().sort("cand", "src_country")
    for i, names, counts in _lists(countries, "src_country", "len"):
        ms[i].client_countries = {str(k): int(n) for k, n in zip(names, counts, strict=True)}
        ms[i].restricted_clients = sum(n for k, n in ms[i].client_countries.items() if k in restricted)


def _timing(ms: list[Measures], short: pl.DataFrame | None, inbound: pl.DataFrame | None,
            stream: pl.DataFrame | None, plain: pl.DataFrame | None, window_ns: int) -> None:
    """The three timing tests (timing.py), grouped by candidate."""
    n = len(ms)
    span = [max(1, m.last_ns - m.first_ns) for m in ms]
    og, ot = _times(short, "t0")  # upstream openings
    rg, rt = _times(plain, "t")  # inbound requests
    n_open = np.bincount(og, minlength=n).tolist()
    n_req = np.bincount(rg, minlength=n).tolist()

    # Timing 1: each inbound request -> next upstream opening.
    lag = timing.match_lag_groups(rg, rt, og, ot, window_ns, n)
    matched, distinct = lag.matched.tolist(), lag.distinct_upstream.tolist()
    bounds = np.searchsorted(lag.lag_groups, np.arange(n + 1)).tolist()
    for i, m in enumerate(ms):
        m.lag_matched, m.lag_chance = matched[i], timing.chance_hit(n_open[i], span[i], window_ns)
        if matched[i]:
            lags = lag.lags_ns[bounds[i]:bounds[i + 1]]
            m.lag_median_ms = float(np.median(lags)) / 1e6
            m.lag_p90_ms = float(np.percentile(lags, 90)) / 1e6
            m.lags_ms = [round(float(x) / 1e6, 3) for x in lags[:MAX_LAGS_KEPT]]
            m.one_to_one = distinct[i] / matched[i]

    # Timing 2: upstream openings explained by inbound activity, against chance. Two tests, the
    # better-powered one counts: a request just before (plaintext), or an open inbound session.
    after_request = np.bincount(og[timing.preceded_groups(og, ot, rg, rt, window_ns)], minlength=n).tolist()
    ig, s, e = _times(inbound, "t0", "t1")
    merged = timing.merge_interval_groups(ig, s, e)
    cov = timing.coverage_groups(merged, [m.first_ns for m in ms], [m.last_ns for m in ms])
    in_session = np.bincount(og[timing.contained_groups(og, ot, merged)], minlength=n).tolist()
    for i, m in enumerate(ms):
        if n_open[i] < MIN_OPENINGS:
            continue
        tests: list[tuple[int, float]] = []
        if n_req[i]:
            tests.append((after_request[i], timing.chance_hit(n_req[i], span[i], window_ns)))
        if m.inbound_flows and cov[i] < 0.9:  # a host never idle explains everything by chance: no test
            tests.append((in_session[i], cov[i]))
        best = None
        for hits, p0 in tests:
            ex = (hits / n_open[i] - p0) / (1 - p0)
            if best is None or ex > best[0]:
                best = (ex, hits, p0)
        if best is not None:
            m.explained_excess, m.explained, m.explained_chance = best[0], best[1], best[2]

    # Timing 3: response alignment, binned byte series (only per-request upstream flows carry it).
    # Each host's series has its own bins, so this one runs host by host, on slices of arrays
    # taken once (rows in table order, as the series sums follow it).
    if stream is None or short is None:
        return
    down = _times(stream.sort("cand", maintain_order=True), "t0", "t1", "answer")
    up = _times(short.sort("cand", maintain_order=True), "t0", "t1", "answer")
    d_at = np.searchsorted(down[0], np.arange(n + 1)).tolist()
    u_at = np.searchsorted(up[0], np.arange(n + 1)).tolist()
    for i, m in enumerate(ms):
        if m.stream_flows and m.short_upstream >= 3:
            d, u = slice(d_at[i], d_at[i + 1]), slice(u_at[i], u_at[i + 1])
            m.xcorr, m.xcorr_lag_s = timing.binned_xcorr((down[1][d], down[2][d], down[3][d]),
                                                         (up[1][u], up[2][u], up[3][u]))


def _tls(tls_in: pl.DataFrame | None, tls_up: pl.DataFrame | None, ms: list[Measures]) -> None:
    """TLS: who terminates. A forward proxy's clients name the API and keep their own fingerprint."""
    client_ja4 = None
    if tls_in is not None:
        hello = tls_in.filter(pl.col("src") != pl.col("cand_ip"))
        own = pl.col("service").is_null() & (pl.col("sni").fill_null("") != "")
        for i, n, tunnel, terminated in hello.group_by("cand").agg(
                pl.len(), pl.col("service").is_not_null().sum(), own.sum().alias("own")).iter_rows():
            ms[i].inbound_hellos, ms[i].terminated_hellos = n, terminated
            ms[i].tunnel_hellos += tunnel
        names = (hello.filter(own).select("cand", "sni").unique().sort("cand", "sni")
                 .group_by("cand", maintain_order=True).head(5))
        for i, sni in _lists(names, "sni"):
            ms[i].own_names = sni
        client_ja4 = hello.filter(pl.col("ja4").is_not_null()).select("cand", "ja4").unique()
    if tls_up is None:
        return
    up = tls_up.filter(pl.col("ja4").is_not_null()).select("cand", "ja4")
    for i, ja4 in _lists(up.unique().sort("cand", "ja4"), "ja4"):
        ms[i].upstream_ja4 = ja4
    if client_ja4 is None or client_ja4.height == 0:
        return
    # Share of upstream handshakes (not distinct JA4s) whose JA4 one of its clients also sent.
    reuse = (up.join(client_ja4.with_columns(pl.lit(True).alias("hit")), on=["cand", "ja4"], how="left")
             .join(client_ja4.select("cand").unique(), on="cand", how="semi")
             .group_by("cand").agg(pl.len(), pl.col("hit").fill_null(False).sum()))
    for i, n, hits in reuse.iter_rows():
        ms[i].ja4_reuse = hits / n


def measure_all(c: Candidates, window_ns: int, restricted: frozenset[str]) -> list[Measures]:
    """Measures of every candidate, in `c.ips` order."""
    ms = [Measures(ip, dict(aliases)) for ip, aliases in zip(c.ips, c.aliases, strict=True)]
    spans: Spans = [[] for _ in ms]
    short = _upstream(c.up, ms, spans)
    inbound, stream = _inbound(c.inbound, ms, spans)
    api, plain = _http(c.http_in, ms, spans)
    _clients(stream, api, ms, restricted)
    # Time span of everything seen for the host: its upstream and inbound flows, API requests to it.
    for m, sp in zip(ms, spans, strict=True):
        lows = [a for a, _ in sp if a is not None]
        highs = [b for _, b in sp if b is not None]
        m.first_ns, m.last_ns = (min(lows), max(highs)) if lows and highs else (0, 0)
    _timing(ms, short, inbound, stream, plain, window_ns)
    _tls(c.tls_in, c.tls_up, ms)
    return ms


def describe(m: Measures) -> list[tuple[str, float, str]]:
    """(rule, value, sentence) per measure that was measurable, in a fixed order."""
    out: list[tuple[str, float, str]] = []
    if m.requests:
        lag = (f", median lag {m.lag_median_ms:.0f} ms, p90 {m.lag_p90_ms:.0f} ms" if m.lag_median_ms is not None
               else "")
        out.append(("relay.request_lag", round(m.lag_fraction, 3),
                    f"{m.lag_matched} of {m.requests} inbound requests were followed by a new upstream API "
                    f"connection{lag} (chance {m.lag_chance:.0%})"))
    if m.one_to_one is not None:
        out.append(("relay.one_to_one", round(m.one_to_one, 3),
                    f"{m.lag_matched} matched inbound requests mapped to {round(m.one_to_one * m.lag_matched)} "
                    f"distinct upstream calls (ratio {m.one_to_one:.2f})"))
    if m.explained_excess is not None:
        out.append(("relay.upstream_explained", round(m.explained_excess, 3),
                    f"{m.explained} of {m.short_upstream} upstream API connections began during or just after "
                    f"inbound client activity (chance {m.explained_chance or 0:.0%}, excess {m.explained_excess:.2f})"))
    if m.xcorr is not None:
        out.append(("relay.byte_xcorr", round(m.xcorr, 3),
                    f"downstream and upstream byte series (1 s bins) correlate at {m.xcorr:.2f}, "
                    f"lag {m.xcorr_lag_s} s"))
    r = m.mirror_ratio
    if r is not None:
        out.append(("relay.byte_mirror", round(r, 3),
                    f"{m.downstream_bytes} answer bytes streamed to clients in {m.stream_flows} flows vs "
                    f"{m.upstream_bytes} received from model APIs in {m.upstream_flows} flows (ratio {r:.2f}; "
                    f"answer packets {m.downstream_packets} vs {m.upstream_packets}, ratio "
                    f"{(m.mirror_packet_ratio or 0):.2f}; TLS handshakes excluded)"))
    if m.tunnel_hellos or m.inbound_hellos:
        tunnel = m.tunnel_hellos / max(1, m.tunnel_hellos + m.terminated_hellos)
        out.append(("relay.tls_tunnel", round(tunnel, 3),
                    f"{m.tunnel_hellos} inbound ClientHellos/CONNECTs name a model API, {m.terminated_hellos} name "
                    f"{', '.join(m.own_names) or 'other hosts'} (terminated here)"))
    if m.ja4_reuse is not None:
        out.append(("relay.ja4_reuse", round(m.ja4_reuse, 3),
                    f"{m.ja4_reuse:.0%} of upstream handshakes reuse a client's JA4; upstream uses "
                    f"{len(m.upstream_ja4)} JA4 ({', '.join(m.upstream_ja4[:2])})"))
    if m.api_requests:
        out.append(("relay.api_plaintext", m.api_requests,
                    f"{m.api_requests} plaintext model-API requests to it ({', '.join(m.api_paths)}), "
                    f"{m.reseller_keys} with reseller-format keys"))
    out.append(("relay.fan_in", len(m.clients),
                f"{len(m.clients)} clients received streamed answers or sent API requests"))
    if m.clients:
        out.append(("relay.client_geo", round(m.restricted_clients / len(m.clients), 3),
                    f"{m.restricted_clients} of {len(m.clients)} clients in restricted regions "
                    f"({', '.join(f'{k}:{n}' for k, n in m.client_countries.items())})"))
    out.append(("relay.hosting_asn", 1.0 if m.hosting else 0.0,
                f"AS{m.asn or '?'} {m.as_org or ''} is {'a hosting provider' if m.hosting else 'not listed as hosting'}"
                .replace("  ", " ")))
    return out
