"""Decoys: hosts whose traffic resembles a relay's but is not one, so detectors can be scored on
false positives as well as hits.

- connect_proxy: a corporate CONNECT proxy tunnels (does not terminate) its clients' TLS, so the
  outbound ClientHello is byte-identical to the inbound one, which a relay's never is.
- nat_gateway: many internal clients appear from one address, each with its own browser/SDK hello.
- web_server_api_caller: a busy web server at a hosting address that calls a model API on a timer,
  uncorrelated with its inbound traffic.
- cdn_edge: inbound requests correlated with outbound origin fetches, but never to AI endpoints.
"""

from __future__ import annotations

from appliance.simulate import tls_hello as th
from appliance.simulate.flows import API_HOSTS, MS, ApiCall, World
from appliance.simulate.packets import TcpConn

S = 1_000 * MS
PROXY_IP, NAT_IP = "192.0.2.10", "192.0.2.20"
WEB_SERVERS = ("203.0.113.50", "203.0.113.51", "203.0.113.52")
CDN_EDGES = (("192.0.2.70", "93.184.215.14"), ("2001:db8:300::10", "2001:db8:300:1::100"),
             ("192.0.2.71", "93.184.215.34"))
_HOST_WEIGHTS = (6, 3, 1)


def _host(w: World) -> str:
    return w.rng.choices(list(API_HOSTS), weights=_HOST_WEIGHTS)[0]


def _tunnel(inner: TcpConn, outer: TcpConn, msgs: list[tuple[int, bool, bytes]], lag: int) -> int:
    """Mirror one TLS conversation through a tunnel: client bytes reach the outer leg `lag` later,
    server bytes the inner leg `lag` later. `msgs` are (time on the outer leg, from client, bytes)."""
    last = 0
    for t, from_client, data in msgs:
        if from_client:
            inner.send(t - lag, True, data)
            last = outer.send(t, True, data)
        else:
            outer.send(t, False, data)
            last = inner.send(t + lag, False, data)
    return last


def connect_proxy(w: World, n_clients: int, t0: int, span: int) -> None:
    for i in range(n_clients):
        client = f"10.20.{1 + i // 200}.{10 + i % 200}"
        profile = w.rng.choice(th.BROWSER_PQ + th.BROWSER_CLASSIC + ("python-openai",))
        host = _host(w)
        t = t0 + w.rng.randrange(span)
        # The capture sits at the proxy: internal clients are a LAN hop away, the API far.
        inner = w.conn(client, PROXY_IP, 3128, 400_000, 50_000)
        t = inner.open(t)
        ua = th.PROFILES[profile].user_agent
        connect = (f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Connection: keep-alive\r\n"
                   f"User-Agent: {ua}\r\n\r\n").encode()
        t = inner.send(t + MS, True, connect)
        t = w.dns(t + 100_000, PROXY_IP, host, API_HOSTS[host])
        far = w.rng.randint(8, 40) * MS
        outer = w.conn(PROXY_IP, API_HOSTS[host], 443, 50_000, far)
        t = outer.open(t + 100_000)
        t = inner.send(t + 200_000, False, b"HTTP/1.1 200 Connection established\r\n\r\n")
        hello = th.client_hello(profile, host, w.rng)
        lag = w.rng.randint(80, 400) * 1000
        t_ch = t + 400_000 + lag
        msgs = [(t_ch, True, hello.record), (t_ch + far + 2 * MS, False, th.server_hello(hello, w.rng)),
                (t_ch + far + 3 * MS + 2 * lag + 400_000, True, th.client_finished(w.rng))]
        t = msgs[-1][0]
        for _ in range(w.rng.randint(1, 3)):
            t_req = t + w.rng.randint(100, 3000) * MS
            req = w.rng.randint(600, 3000)
            msgs.append((t_req, True, th.app_data(w.rng, req)))
            times, sizes = w.token_stream(t_req, w.rng.randint(10, 40))
            msgs += [(x, False, th.app_data(w.rng, n)) for x, n in zip(times, sizes, strict=True)]
            w.calls.append(ApiCall(t_req, PROXY_IP, host, times[-1] - t_req, req, sum(sizes), hello.ja4,
                                   ua, f"enterprise:{PROXY_IP}:{client}"))
            t = times[-1]
        t = _tunnel(inner, outer, msgs, lag)
        outer.close(t + S)
        inner.close(t + S + lag)


def nat_gateway(w: World, n_clients: int, t0: int, span: int) -> None:
    for i in range(n_clients):
        profile = w.rng.choice(th.BROWSER_PQ + th.BROWSER_CLASSIC + th.SDK)
        host = _host(w)
        t = t0 + w.rng.randrange(span)
        w.api_session(t, NAT_IP, host, profile, w.rng.randint(1, 3), f"university:{NAT_IP}:{i}")
        if i % 3 == 0:
            w.http_get_page(t + w.rng.randrange(60 * S), NAT_IP, "93.184.215.14", "www.example.com",
                            th.PROFILES[profile].user_agent)


def web_server(w: World, ip: str, n_visitors: int, t0: int, span: int) -> None:
    """Inbound HTTPS page loads, plus a model-API call every 60 s on a timer (a cron summariser)."""
    for i in range(n_visitors):
        client = f"192.0.2.{30 + (i * 7) % 97}" if i % 3 else f"198.51.100.{100 + i % 50}"
        t = t0 + w.rng.randrange(span)
        c = w.conn(client, ip, 443, w.rng.randint(10, 80) * MS, 100_000)
        _, t = w.tls_open(c, t, "www.shop-demo.example", w.rng.choice(th.BROWSER_PQ + th.BROWSER_CLASSIC))
        for _ in range(w.rng.randint(1, 4)):
            t = c.send(t + c.near + w.rng.randint(20, 900) * MS, True, th.app_data(w.rng, w.rng.randint(300, 800)))
            t = w.stream(c, [t + w.rng.randint(2, 30) * MS], [w.rng.randint(1500, 16000)])
        c.close(t + 2 * S)
    tick = t0 + w.rng.randrange(60 * S)
    while tick < t0 + span:
        w.api_session(tick + w.rng.randrange(500 * MS), ip, "api.openai.com", "python-openai", 1,
                      f"webserver:{ip}", near=100_000, resolve=False)
        tick += 60 * S


def cdn_edge(w: World, edge: str, origin: str, n_requests: int, t0: int, span: int) -> None:
    """Inbound TLS for a static-asset domain; cache misses fetched from origin over a kept-alive
    connection and relayed, so inbound and outbound correlate, but never towards an AI endpoint."""
    o = w.conn(edge, origin, 443, 100_000, w.rng.randint(5, 25) * MS)
    _, ready = w.tls_open(o, t0 - S, "origin.example.com", "go")
    for i in range(n_requests):
        v6 = ":" in edge
        client = f"2001:db8:200::{0x500 + i:x}" if v6 else f"192.0.2.{30 + (i * 11) % 97}"
        t = max(ready, t0 + w.rng.randrange(span))
        c = w.conn(client, edge, 443, w.rng.randint(5, 60) * MS, 100_000)
        _, t = w.tls_open(c, t, "static.cdn-demo.example", w.rng.choice(th.BROWSER_PQ + th.BROWSER_CLASSIC))
        for _ in range(w.rng.randint(1, 5)):
            t = c.send(t + c.near + w.rng.randint(10, 500) * MS, True, th.app_data(w.rng, w.rng.randint(250, 600)))
            size = w.rng.randint(2000, 24000)
            if w.rng.random() < 0.4:  # cache miss: fetch from origin first
                o.queue(t + 300_000, True, th.app_data(w.rng, w.rng.randint(300, 700)))
                t_back = t + 300_000 + o.far + w.rng.randint(2, 20) * MS
                o.queue(t_back, False, th.app_data(w.rng, size))
                t = t_back + w.rng.randint(200, 900) * 1000
            t = w.stream(c, [t + 500_000], [size])
        c.close(t + S)
    o.close(o.flush() + 5 * S)


def add_decoys(w: World, count: int, t0: int, span: int) -> list[dict[str, str]]:
    """`count` scales every decoy kind; returns the decoys' ground truth."""
    connect_proxy(w, 3 * count, t0, span)
    nat_gateway(w, 4 * count, t0, span)
    found = [{"ip": PROXY_IP, "kind": "connect_proxy"}, {"ip": NAT_IP, "kind": "nat_gateway"}]
    for ip in WEB_SERVERS[:count]:
        web_server(w, ip, 8, t0, span)
        found.append({"ip": ip, "kind": "web_server_api_caller"})
    for edge, origin in CDN_EDGES[:max(1, count)]:
        cdn_edge(w, edge, origin, 8, t0, span)
        found.append({"ip": edge, "kind": "cdn_edge"})
    return found
