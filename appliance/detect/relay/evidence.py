"""Evidence: the measured numbers behind a relay decision, one candidate at a time.

Stage: detect. `measure` turns a `HostView` (candidates.py) into `Measures`, plain numbers with no
judgement; score.py weighs them and findings.py writes them out with the sentences from
`describe`. Each measure is one of issue 5's "Evidence" items:

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

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from appliance.detect.relay import timing
from appliance.detect.relay.candidates import (
    API_KEY_RX,
    API_PATH_RX,
    RESELLER_KEY_RX,
    SHORT_UPSTREAM_NS,
    HostView,
)

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


def _empty(frame: pl.DataFrame | None) -> bool:
    return frame is None or frame.height == 0


def measure(v: HostView, window_ns: int, restricted: frozenset[str]) -> Measures:
    m = Measures(v.ip, dict(v.aliases))
    up = v.up if v.up is not None else pl.DataFrame()
    inbound = v.inbound.filter(pl.col("src") != v.ip) if v.inbound is not None else None
    if up.height:
        up = up.with_columns(_answer_bytes())
        m.upstream_flows = up.height
        m.upstream_bytes = int(up.get_column("answer").sum())
        m.upstream_packets = int(up.get_column("answer_pkts").sum())
        ends = up.select("dst", pl.coalesce("sni", "host", "service").fill_null("")).unique().sort("dst", "sni")
        m.upstream_endpoints = [(str(a), str(b)) for a, b in ends.iter_rows()]
        asn = up.get_column("src_asn").drop_nulls()
        m.asn = int(asn.mode().sort()[0]) if asn.len() else None
        org = up.get_column("src_as_org").drop_nulls()
        m.as_org = str(org.mode().sort()[0]) if org.len() else None
        m.hosting = bool(up.get_column("src_hosting").fill_null(False).any())
    short = (up.filter(((pl.col("t1") - pl.col("t0")) < SHORT_UPSTREAM_NS) & (pl.col("answer") >= MIN_ANSWER_BYTES))
             if up.height else up)
    m.short_upstream = short.height
    opens = short.get_column("t0").to_numpy() if short.height else np.empty(0, np.int64)

    stream = None
    if not _empty(inbound):
        assert inbound is not None
        m.inbound_flows = inbound.height
        stream = inbound.filter(
            (pl.col("resp_pkts").fill_null(0) >= STREAM_MIN_PACKETS)
            & (pl.col("resp_bytes").fill_null(0) <= STREAM_MAX_BYTES_PER_PACKET * pl.col("resp_pkts").fill_null(0))
        ).with_columns(_answer_bytes())
        m.stream_flows = stream.height
        m.downstream_bytes = int(stream.get_column("answer").sum())
        m.downstream_packets = int(stream.get_column("answer_pkts").sum())

    # API-shaped plaintext requests (issue 5: paths like /v1/chat/completions, reseller keys).
    api_http = None
    req_times = np.empty(0, np.int64)
    if not _empty(v.http_in):
        assert v.http_in is not None
        http = v.http_in.filter(pl.col("src") != v.ip)
        connect = http.filter(pl.col("method").fill_null("").str.to_uppercase() == "CONNECT")
        m.tunnel_hellos += connect.height
        plain = http.filter(pl.col("method").fill_null("").str.to_uppercase() != "CONNECT")
        api_http = plain.filter(pl.col("path").fill_null("").str.contains(API_PATH_RX)
                                | pl.col("key_format").fill_null("").str.contains(API_KEY_RX))
        m.api_requests = api_http.height
        m.reseller_keys = int(api_http.get_column("key_format").fill_null("").str.contains(RESELLER_KEY_RX).sum())
        m.api_paths = sorted(set(api_http.get_column("path").drop_nulls().str.replace(r"\?.*$", "").to_list()))[:5]
        m.requests = plain.height
        req_times = np.sort(plain.get_column("t").drop_nulls().to_numpy())

    # Clients: hosts that received streamed answers or sent API-shaped requests.
    client_rows = []
    if stream is not None and stream.height:
        client_rows.append(stream.select("src", pl.col("src_country")))
    if api_http is not None and api_http.height:
        client_rows.append(api_http.select("src", pl.col("src_country")))
    if client_rows:
        cl = pl.concat(client_rows).group_by("src").agg(pl.col("src_country").drop_nulls().first()).sort("src")
        m.clients = cl.get_column("src").to_list()
        countries = cl.get_column("src_country").fill_null("??").value_counts().sort("src_country")
        m.client_countries = {str(k): int(n) for k, n in countries.iter_rows()}
        m.restricted_clients = sum(n for k, n in m.client_countries.items() if k in restricted)

    # Time span of everything seen for this host.
    times = [f.select(pl.col("t0").min(), pl.col("t1").max()).row(0) for f in (up, inbound) if f is not None and f.height]
    if api_http is not None and api_http.height:
        times.append(tuple(api_http.select(pl.col("t").min().alias("a"), pl.col("t").max().alias("b")).row(0)))
    lows = [a for a, _ in times if a is not None]
    highs = [b for _, b in times if b is not None]
    m.first_ns, m.last_ns = (min(lows), max(highs)) if lows and highs else (0, 0)
    span = max(1, m.last_ns - m.first_ns)

    # Timing 1: each inbound request -> next upstream opening.
    lag = timing.match_lag(req_times, opens, window_ns, span)
    m.lag_matched, m.lag_chance = lag.matched, lag.chance
    if lag.matched:
        m.lag_median_ms = float(np.median(lag.lags_ns)) / 1e6
        m.lag_p90_ms = float(np.percentile(lag.lags_ns, 90)) / 1e6
        m.lags_ms = [round(float(x) / 1e6, 3) for x in np.sort(lag.lags_ns)[:MAX_LAGS_KEPT]]
        m.one_to_one = lag.distinct_upstream / lag.matched
    # Timing 2: upstream openings explained by inbound activity, against chance. Two tests, the
    # better-powered one counts: a request just before (plaintext), or an open inbound session.
    if opens.size >= MIN_OPENINGS:
        tests: list[tuple[int, float]] = []
        if req_times.size:
            hit = timing.preceded(opens, req_times, window_ns)
            tests.append((int(hit.sum()), timing.chance_hit(req_times.size, span, window_ns)))
        if not _empty(inbound):
            assert inbound is not None
            s, e = inbound.get_column("t0").to_numpy(), inbound.get_column("t1").to_numpy()
            cov = timing.coverage(s, e, m.first_ns, m.last_ns)
            if cov < 0.9:  # a host never idle explains everything by chance: no test
                tests.append((int(timing.contained(opens, s, e).sum()), cov))
        best = None
        for hits, p0 in tests:
            ex = (hits / opens.size - p0) / (1 - p0)
            if best is None or ex > best[0]:
                best = (ex, hits, p0)
        if best is not None:
            m.explained_excess, m.explained, m.explained_chance = best[0], best[1], best[2]
    # Timing 3: response alignment, binned byte series (only per-request upstream flows carry it).
    if stream is not None and stream.height and short.height >= 3:
        m.xcorr, m.xcorr_lag_s = timing.binned_xcorr(
            (stream.get_column("t0").to_numpy(), stream.get_column("t1").to_numpy(),
             stream.get_column("answer").to_numpy()),
            (short.get_column("t0").to_numpy(), short.get_column("t1").to_numpy(),
             short.get_column("answer").to_numpy()))

    # TLS: who terminates. A forward proxy's clients name the API and keep their own fingerprint.
    if not _empty(v.tls_in):
        assert v.tls_in is not None
        hello = v.tls_in.filter(pl.col("src") != v.ip)
        m.inbound_hellos = hello.height
        m.tunnel_hellos += int(hello.get_column("service").is_not_null().sum())
        own = hello.filter(pl.col("service").is_null() & (pl.col("sni").fill_null("") != ""))
        m.terminated_hellos = own.height
        m.own_names = sorted(set(own.get_column("sni").to_list()))[:5]
        client_ja4 = set(hello.get_column("ja4").drop_nulls().to_list())
        if not _empty(v.tls_up):
            assert v.tls_up is not None
            ja4s = v.tls_up.get_column("ja4").drop_nulls()
            m.upstream_ja4 = sorted(set(ja4s.to_list()))
            if client_ja4 and ja4s.len():
                m.ja4_reuse = float(ja4s.is_in(list(client_ja4)).cast(pl.Float64).mean() or 0.0)  # type: ignore[arg-type]
    elif not _empty(v.tls_up):
        assert v.tls_up is not None
        m.upstream_ja4 = sorted(set(v.tls_up.get_column("ja4").drop_nulls().to_list()))
    return m


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
