"""Relay evidence measured for all candidates at once: hand-computed values, and each candidate's
measures equal to those measured with no other candidate present."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from _relay_support import API, C1, C2, C3, RELAY, T0, WEB, S, flows, hellos, requests
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.detect.relay import RelayDetector, candidates, evidence, timing
from appliance.testing.replay import replay

ROOT = Path(__file__).resolve().parents[3]


def relay_events() -> dict[str, pl.DataFrame]:
    """RELAY: four API calls, each 100 ms after a plaintext API request to it; two streamed answers."""
    up = [dict(src=RELAY, dst=API, start=t, end=t + 2, resp_bytes=13_300, resp_pkts=26, sni="api.openai.com",
               service="api.openai.com", asn=64500, org="Hoster", hosting=True) for t in (1, 3, 5, 7)]
    down = [dict(src=C1, dst=RELAY, start=0.9, end=3.0, resp_bytes=13_300, resp_pkts=26, country="CN"),
            dict(src=C2, dst=RELAY, start=4.9, end=5.5, resp_bytes=9_000, resp_pkts=20, country="US"),
            dict(src=C3, dst=RELAY, start=6.0, end=6.5, resp_bytes=50_000, resp_pkts=40)]  # a download, not streamed
    http = [(t - 0.1, C1 if t < 4 else C2, RELAY, "POST", "/v1/chat/completions?stream=1", "sk-48alnum", None)
            for t in (1, 3, 5, 7)] + [(2.0, C3, RELAY, "connect", "api.openai.com:443", None, "DE")]
    tls = [(0.9, C1, RELAY, "relay.example", "t13d_client", None)] + [
        (t, RELAY, API, "api.openai.com", ja4, "api.openai.com")
        for t, ja4 in ((1, "t13d_client"), (3, "t13d_py"), (5, "t13d_py"), (7, "t13d_py"))]
    return {"flow": flows(up + down), "tls": hellos(tls), "http": requests(http)}


def web_events() -> dict[str, pl.DataFrame]:
    """WEB: a web server with its own API use, active at the same instants as RELAY."""
    up = [dict(src=WEB, dst=API, start=t, end=t + 1, resp_bytes=5_000, resp_pkts=12, service="api.openai.com",
               asn=64501, org="ISP") for t in (1.05, 3.05, 8)]
    down = [dict(src=C1, dst=WEB, start=0.5, end=9, resp_bytes=2_000, resp_pkts=8, dport=80)]
    http = [(0.95, C2, WEB, "GET", "/index.html", None, "RU"), (2.95, C1, WEB, "POST", "/v1/messages", None, "CN")]
    return {"flow": flows(up + down), "http": requests(http)}


def measure(events: list[dict[str, pl.DataFrame]]) -> dict[str, evidence.Measures]:
    det = RelayDetector()
    for ev in events:
        for etype, frame in ev.items():
            det.add(etype, frame)
    return {m.ip: m for m in det.measures()}


def test_measures_of_a_small_relay_by_hand() -> None:
    m = measure([relay_events(), web_events()])[RELAY]
    assert (m.upstream_flows, m.short_upstream) == (4, 4)
    # TLS on both legs: the server flight (3,300 B, 6 packets) is not answer.
    assert (m.upstream_bytes, m.upstream_packets) == (4 * 10_000, 4 * 20)
    assert (m.inbound_flows, m.stream_flows, m.downstream_bytes, m.downstream_packets) == (3, 2, 10_000 + 5_700, 20 + 14)
    assert m.upstream_endpoints == [(API, "api.openai.com")]
    assert (m.asn, m.as_org, m.hosting) == (64500, "Hoster", True)
    assert (m.first_ns, m.last_ns) == (T0 + S * 9 // 10, T0 + 9 * S)
    # Clients: streamed-answer receivers and API requesters; the downloader and the CONNECT client are not.
    assert m.clients == [C1, C2] and m.client_countries == {"CN": 1, "US": 1} and m.restricted_clients == 1
    assert (m.requests, m.api_requests, m.reseller_keys, m.api_paths) == (4, 4, 4, ["/v1/chat/completions"])
    assert (m.lag_matched, m.lag_median_ms, m.lag_p90_ms, m.one_to_one) == (4, 100.0, 100.0, 1.0)
    assert m.lags_ms == [100.0] * 4
    span = 9 * S - S * 9 // 10
    assert m.lag_chance == timing.chance_hit(4, span, 1000 * 1_000_000)
    # Every opening follows a request: the request test (excess exactly 1) beats the session one.
    assert (m.explained, m.explained_excess) == (4, 1.0)
    assert m.xcorr is not None and -1.0 <= m.xcorr <= 1.0
    assert (m.inbound_hellos, m.terminated_hellos, m.own_names, m.tunnel_hellos) == (1, 1, ["relay.example"], 1)
    assert m.upstream_ja4 == ["t13d_client", "t13d_py"] and m.ja4_reuse == 0.25


def test_other_candidates_do_not_change_a_candidates_measures() -> None:
    both = measure([relay_events(), web_events()])
    assert set(both) == {RELAY, WEB}
    assert both[RELAY] == measure([relay_events()])[RELAY]
    assert both[WEB] == measure([web_events()])[WEB]
    web = both[WEB]
    assert (web.upstream_flows, web.short_upstream, web.api_requests, web.requests) == (3, 3, 1, 2)
    assert web.clients == [C1] and web.client_countries == {"CN": 1} and web.ja4_reuse is None


def only(c: candidates.Candidates, i: int) -> candidates.Candidates:
    """The same rows with candidate i alone."""
    def rows(f: pl.DataFrame | None) -> pl.DataFrame | None:
        if f is None:
            return None
        sub = f.filter(pl.col("cand") == i).with_columns(pl.lit(0, dtype=pl.UInt32).alias("cand"))
        return sub if sub.height else None
    return candidates.Candidates([c.ips[i]], [c.aliases[i]], rows(c.up), rows(c.inbound), rows(c.tls_in),
                                 rows(c.tls_up), rows(c.http_in))


def assert_alone_equals_together(det: RelayDetector) -> int:
    c = candidates.build(det.store, det.window_ns)
    together = evidence.measure_all(c, det.window_ns, det.restricted)
    assert [m.ip for m in together] == c.ips
    for i, m in enumerate(together):
        assert evidence.measure_all(only(c, i), det.window_ns, det.restricted) == [m]
    return len(together)


def test_demo_capture_each_candidate_alone_equals_together() -> None:
    det = RelayDetector()
    for etype, frame in replay([str(ROOT / "pcaps" / "demo.pcap")]).events.items():
        det.add(etype, frame)
    assert assert_alone_equals_together(det) >= 3


def random_events(seed: int) -> dict[str, pl.DataFrame]:
    """Hosts that call the API and serve each other, with ties, nulls, self-traffic and CONNECTs."""
    rng = np.random.default_rng(seed)
    hosts = [f"10.0.0.{i}" for i in range(1, 7)] + ["2001:db8::5"]
    n, k = int(rng.integers(20, 150)), int(rng.integers(5, 80))

    def pick(pool: list[Any], size: int) -> list[Any]:
        return [pool[i] for i in rng.integers(0, len(pool), size)]

    starts = rng.integers(0, 60_000, n) / 1000
    to_api = rng.random(n) < 0.4
    rows = [dict(src=s, dst=API if u else d, start=float(t), end=float(t) + float(rng.choice([0, 0.2, 3, 45])),
                 resp_bytes=int(rng.integers(0, 40_000)), resp_pkts=int(rng.integers(0, 60)),
                 sni=pick(["api.openai.com", "relay.example", None], 1)[0], service="api.openai.com" if u else None,
                 country=pick(["CN", "US", None], 1)[0], asn=pick([64500, 64501, None], 1)[0],
                 org=pick(["Hoster", "ISP", None], 1)[0], hosting=pick([True, False, None], 1)[0])
            for s, d, t, u in zip(pick(hosts, n), pick(hosts, n), starts, to_api, strict=True)]
    tls = [(float(t), s, API if u else d, "api.openai.com" if u else pick(["relay.example", "", None], 1)[0],
            pick(["ja_a", "ja_b", "ja_c"], 1)[0], "api.openai.com" if u else None)
           for s, d, t, u in zip(pick(hosts, k), pick(hosts, k), rng.integers(0, 60_000, k) / 1000,
                                 rng.random(k) < 0.4, strict=True)]
    http = [(float(t), s, d, m, p, kf, cc) for s, d, t, m, p, kf, cc in zip(
        pick(hosts, k), pick(hosts, k), rng.integers(0, 60_000, k) / 1000, pick(["POST", "GET", "CONNECT"], k),
        pick(["/v1/chat/completions", "/v1/messages?x=1", "/", "/v1/embeddings", "/v1/responses", "/v1/completions",
              "/m:generateContent"], k), pick(["sk-48alnum", "cr_64hex", None], k), pick(["CN", "IR", None], k),
        strict=True)]
    return {"flow": flows(rows), "tls": hellos(tls), "http": requests(http)}


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31))
def test_random_traffic_each_candidate_alone_equals_together(seed: int) -> None:
    det = RelayDetector()
    for etype, frame in random_events(seed).items():
        det.add(etype, frame)
    assert_alone_equals_together(det)


def test_no_candidates_measure_nothing() -> None:
    det = RelayDetector()
    det.add("flow", flows([dict(src=C1, dst=API, start=1, end=2, resp_bytes=10, resp_pkts=3, service="x")]))
    assert det.measures() == [] and det.findings() == [] and det.stats["candidates"] == 0
