"""The labelled scenarios: ordinary API clients, a reseller relay, look-alike decoys, and the demo mix.

Each scenario is a function of (seed, difficulty) returning a `World`: frames in event time, the
model-API calls they imply (for the request log) and ground truth (which IPs are relays, decoys,
clients). Later stages are scored against that truth, so every labelled behaviour here is one a
detector must find (the relay's inbound→upstream lag and mirrored response sizes) or must not
mistake for a relay (decoys.py).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from appliance.simulate import tls_hello as th
from appliance.simulate.decoys import add_decoys
from appliance.simulate.flows import API_HOSTS, API_MODELS, MS, ApiCall, World, rand_key
from appliance.simulate.packets import TcpConn, sort_records

S = 1_000 * MS
# Each scenario gets its own day, so captures replayed together never overlap in time.
_EPOCH = 1_741_597_200 * S  # 2025-03-10T09:00:00Z
SCENARIO_DAY = {"demo": 0, "ordinary": 1, "relay": 2, "decoys": 3}
DAY = 86_400 * S


@dataclass(frozen=True)
class Difficulty:
    """How hard the relay is to see: inbound TLS, lag jitter, upstream pooling, decoys, relay size."""

    name: str
    inbound_tls: bool
    lag_ms: tuple[int, int]  # inbound request → upstream request
    down_lag_us: tuple[int, int]  # upstream response chunk → the same chunk downstream
    pool: int  # 0: one upstream connection per request; k: k persistent connections per API host
    size_jitter: float  # downstream chunk size = upstream size × (1 ± jitter)
    relay_clients: int
    decoys: int  # how many of each decoy kind
    small_relays: int
    web_traffic: bool  # the relay also serves unrelated web pages
    ordinary_clients: int


DIFFICULTIES: dict[str, Difficulty] = {
    "easy": Difficulty("easy", False, (5, 30), (200, 2_000), 0, 0.02, 12, 1, 0, False, 12),
    "medium": Difficulty("medium", True, (10, 80), (300, 4_000), 4, 0.04, 10, 2, 1, False, 20),
    "hard": Difficulty("hard", True, (20, 200), (500, 8_000), 2, 0.08, 8, 3, 2, True, 30),
}

RELAY_IP, RELAY_IP6, RELAY_DOMAIN = "203.0.113.7", "2001:db8:100::7", "api.cheap-gpt.example"
SMALL_RELAYS = (("203.0.113.45", None, "gpt.fast-relay.example"),
                ("203.0.113.25", "2001:db8:100::25", "claude.mirror.example"))
WEB_DEST = "93.184.215.14"


def ordinary_ip(i: int) -> str:
    """Ordinary clients: 192.0.2.30-.126 (.10/.20/.53 and the rest of the low range are infrastructure)."""
    return f"192.0.2.{30 + i % 97}"


def _pick_profile(w: World, pq_share: float = 1 / 3) -> str:
    if w.rng.random() < pq_share:
        return w.rng.choice(th.BROWSER_PQ)
    return w.rng.choice(th.BROWSER_CLASSIC + th.SDK)


def add_ordinary(w: World, n: int, t0: int, span: int, truth: list[dict[str, str]]) -> None:
    """n ordinary clients calling model APIs directly, about a third with a post-quantum key share."""
    for i in range(n):
        ip = ordinary_ip(i)
        profile = _pick_profile(w)
        host = w.rng.choices(list(API_HOSTS), weights=(6, 3, 1))[0]
        truth.append({"ip": ip, "role": "ordinary", "profile": profile, "api": host})
        t = t0 + w.rng.randrange(span)
        for _ in range(w.rng.randint(1, 2)):
            t = w.api_session(t, ip, host, profile, w.rng.randint(1, 3), f"ordinary:{ip}") + w.rng.randint(5, 60) * S
        if w.rng.random() < 0.3:
            w.http_get_page(t0 + w.rng.randrange(span), ip, WEB_DEST, "www.example.com",
                            th.PROFILES[profile].user_agent or "Mozilla/5.0")


class _Relay:
    """One reseller relay: inbound client requests, each re-issued upstream and streamed back."""

    def __init__(self, w: World, d: Difficulty, ip: str, ip6: str | None, domain: str, t0: int) -> None:
        self.w, self.d, self.ip, self.ip6, self.domain = w, d, ip, ip6, domain
        self.pools: dict[str, list[tuple[TcpConn, th.Hello]]] = {}
        self.upstream_conns = 0
        self.inbound_requests = 0
        # The relay resolves its upstreams once and caches them (Go's resolver honours the TTL).
        for i, host in enumerate(("api.openai.com", "api.anthropic.com")):
            w.dns(t0 - 2 * S + i * 3 * MS, ip, host, API_HOSTS[host])
            if d.pool:
                # Persistent upstream connections, opened before the first request (HTTP/2 pooling).
                for k in range(d.pool):
                    self.pools.setdefault(host, []).append(self._open(t0 - S + (2 * i + k) * 7 * MS, host)[:2])

    def _open(self, t: int, host: str) -> tuple[TcpConn, th.Hello, int]:
        # The capture sits at the relay's uplink: the relay is near, the API far away.
        c = self.w.conn(self.ip, API_HOSTS[host], 443, 100_000, self.w.rng.randint(8, 30) * MS)
        h, ready = self.w.tls_open(c, t, host, "go")
        self.upstream_conns += 1
        return c, h, ready

    def upstream(self, t: int, host: str) -> tuple[TcpConn, th.Hello, int, bool]:
        """An upstream TLS connection ready at the returned time; pooled ones are shared."""
        if self.d.pool:
            c, h = self.w.rng.choice(self.pools[host])
            return c, h, t, True
        c, h, ready = self._open(t, host)
        return c, h, ready, False

    def client_session(self, t: int, client: str, profile: str, key: str, n_req: int, plaintext: bool) -> int:
        w = self.w
        server = self.ip6 if ":" in client else self.ip
        assert server is not None
        far = w.rng.randint(30, 90) * MS  # clients are far away in the restricted region
        if plaintext:
            c = w.conn(client, server, w.rng.choice((3000, 8080)), far, 100_000)
            t = c.open(t)
            hello = None
        else:
            c = w.conn(client, server, 443, far, 100_000)
            hello, t = w.tls_open(c, t, self.domain, profile)
        ua = th.PROFILES[profile].user_agent
        for _ in range(n_req):
            t += w.rng.randint(100, 4000) * MS
            host = w.rng.choices(("api.openai.com", "api.anthropic.com"), weights=(7, 3))[0]
            model = w.rng.choice(API_MODELS[host])
            if plaintext:
                t_in = c.send(t, True, _http_request(w, server, c.c2s.dport, ua, key, model))
            else:
                t_in = c.send(t, True, th.app_data(w.rng, w.rng.randint(700, 3600)))
            self.inbound_requests += 1
            t = self.relay_one(c, t_in, host, plaintext, client)
        return c.close(t + w.rng.randint(200, 3000) * MS)

    def relay_one(self, down: TcpConn, t_in: int, host: str, plaintext: bool, client: str) -> int:
        """Re-issue one inbound request upstream after a lag and mirror the streamed answer back."""
        w, d = self.w, self.d
        t_up = t_in + w.rng.randint(*d.lag_ms) * MS + w.rng.randrange(MS)
        up, hello, ready, pooled = self.upstream(t_up, host)
        req = w.rng.randint(900, 4200)
        t_req = max(ready, t_up) + 150_000
        times, sizes = w.token_stream(t_req, w.rng.randint(10, 45))
        down_times = [x + w.rng.randint(*d.down_lag_us) * 1000 for x in times]
        jit = d.size_jitter
        down_sizes = [max(40, int(s * (1 + w.rng.uniform(-jit, jit)))) for s in sizes]
        if pooled:
            up.queue(t_req, True, th.app_data(w.rng, req))
            for x, n in zip(times, sizes, strict=True):
                up.queue(x, False, th.app_data(w.rng, n))
            end = times[-1]
        else:
            up.send(t_req, True, th.app_data(w.rng, req))
            end = w.stream(up, times, sizes)
            up.close(end + w.rng.randint(1, 50) * MS)
        if plaintext:
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            payloads = [_sse_chunk(w, n) for n in down_sizes]
            payloads[0] = head + payloads[0]
            payloads[-1] += b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
            last = 0
            for x, p in zip(down_times, payloads, strict=True):
                last = down.send(x, False, p)
        else:
            last = w.stream(down, down_times, down_sizes)
        w.calls.append(ApiCall(t_req, self.ip, host, end - t_req, req, sum(sizes), hello.ja4,
                               th.PROFILES["go"].user_agent, f"relay:{self.ip}:{client}"))
        return last

    def finish(self) -> None:
        for pool in self.pools.values():
            for c, _ in pool:
                c.close(c.flush() + self.w.rng.randint(1, 5) * S, by_client=False)


def _http_request(w: World, server: str, port: int, ua: str, key: str, model: str) -> bytes:
    """A one-api style plaintext request; the raw key is on the wire, as a real capture would hold it."""
    prompt = " ".join(w.rng.choices(("explain", "the", "code", "write", "a", "poem", "about", "tcp", "summarise",
                                     "this", "text", "translate", "to", "english"), k=w.rng.randint(20, 300)))
    body = json.dumps({"model": model, "stream": True,
                       "messages": [{"role": "user", "content": prompt}]}, separators=(",", ":")).encode()
    hostport = f"[{server}]:{port}" if ":" in server else f"{server}:{port}"
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {hostport}\r\nUser-Agent: {ua}\r\n"
            f"Accept: application/json\r\nContent-Type: application/json\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _sse_chunk(w: World, n: int) -> bytes:
    """One chunked-encoding chunk carrying a server-sent event of about n bytes."""
    text = "".join(w.rng.choices("abcdefghijklmnopqrstuvwxyz ", k=max(1, n - 60)))
    data = ('data: {"choices":[{"delta":{"content":"' + text + '"}}]}\n\n').encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def add_relay(w: World, d: Difficulty, t0: int, span: int, mixed: bool = False) -> dict[str, object]:
    """The main relay plus (medium/hard) small relays; returns their ground truth."""
    relays = []
    specs: list[tuple[str, str | None, str, int]] = [(RELAY_IP, RELAY_IP6, RELAY_DOMAIN, d.relay_clients)]
    specs += [(ip, ip6, dom, 2 + i) for i, (ip, ip6, dom) in enumerate(SMALL_RELAYS[:d.small_relays])]
    for k, (ip, ip6, domain, n_clients) in enumerate(specs):
        r = _Relay(w, d, ip, ip6, domain, t0)
        clients = []
        for i in range(n_clients):
            v6 = ip6 is not None and i % 4 == 3
            client = f"2001:db8:200::{100 * k + i + 16:x}" if v6 else f"198.51.100.{20 + 40 * k + i}"
            profile = w.rng.choice(("python-openai", "python-openai", "node-openai", "chrome-pq", "curl"))
            plaintext = (not d.inbound_tls) or (mixed and i % 2 == 0)
            key = rand_key(w.rng)
            clients.append({"ip": client, "profile": profile, "transport": "http" if plaintext else "tls"})
            t = t0 + w.rng.randrange(span // 2)
            for _ in range(w.rng.randint(1, 3)):
                t = r.client_session(t, client, profile, key, w.rng.randint(1, 3), plaintext)
                t += w.rng.randint(5, 90) * S
        if d.web_traffic and k == 0:
            _relay_web(w, ip, t0, span)
        r.finish()
        relays.append({"ip": ip, "ip6": ip6, "label": "relay", "domain": domain, "clients": clients,
                       "inbound_requests": r.inbound_requests, "upstream_connections": r.upstream_conns,
                       "upstream_ja4": th.client_hello("go", "api.openai.com", random.Random(0)).ja4})
    return {"relays": relays}


def _relay_web(w: World, ip: str, t0: int, span: int) -> None:
    """Unrelated traffic the relay also serves: its landing page over HTTPS and HTTP."""
    for i in range(12):
        client = ordinary_ip(60 + i) if i % 2 else f"198.51.100.{150 + i}"
        t = t0 + w.rng.randrange(span)
        if i % 3 == 0:
            w.http_get_page(t, client, ip, "www.cheap-gpt.example", th.PROFILES["chrome"].user_agent,
                            near=w.rng.randint(20, 80) * MS, far=100_000)
            continue
        c = w.conn(client, ip, 443, w.rng.randint(20, 80) * MS, 100_000)
        _, t = w.tls_open(c, t, "www.cheap-gpt.example", w.rng.choice(th.BROWSER_PQ + th.BROWSER_CLASSIC))
        for _ in range(w.rng.randint(2, 6)):
            t = c.send(t + c.near + w.rng.randint(5, 400) * MS, True, th.app_data(w.rng, w.rng.randint(300, 700)))
            t = w.stream(c, [t + MS], [w.rng.randint(2000, 30000)])
        c.close(t + S)


# --- the scenarios --------------------------------------------------------------------------------

def _base(name: str, seed: int) -> World:
    return World(seed=seed * 1000 + SCENARIO_DAY[name], start=_EPOCH + SCENARIO_DAY[name] * DAY)


def ordinary(seed: int, d: Difficulty) -> World:
    w = _base("ordinary", seed)
    clients: list[dict[str, str]] = []
    add_ordinary(w, d.ordinary_clients, w.start, 300 * S, clients)
    w.truth = {"relays": [], "decoys": [], "clients": clients}
    return w


def relay(seed: int, d: Difficulty) -> World:
    w = _base("relay", seed)
    truth = add_relay(w, d, w.start, 600 * S)
    clients: list[dict[str, str]] = []
    add_ordinary(w, max(4, d.ordinary_clients // 3), w.start, 600 * S, clients)
    w.truth = {**truth, "decoys": [], "clients": clients}
    return w


def decoys(seed: int, d: Difficulty) -> World:
    w = _base("decoys", seed)
    found = add_decoys(w, d.decoys, w.start, 600 * S)
    w.truth = {"relays": [], "decoys": found, "clients": []}
    return w


def demo(seed: int, d: Difficulty) -> World:
    w = _base("demo", seed)
    truth = add_relay(w, d, w.start, 600 * S, mixed=True)
    clients: list[dict[str, str]] = []
    add_ordinary(w, 8, w.start, 600 * S, clients)
    found = add_decoys(w, 1, w.start, 600 * S)
    w.truth = {**truth, "decoys": found, "clients": clients}
    return w


SCENARIOS: dict[str, Callable[[int, Difficulty], World]] = {
    "ordinary": ordinary, "relay": relay, "decoys": decoys, "demo": demo,
}


def run(name: str, difficulty: str, seed: int) -> World:
    """Build one scenario, frames sorted by time, ground truth filled in."""
    w = SCENARIOS[name](seed, DIFFICULTIES[difficulty])
    sort_records(w.records)
    w.calls.sort(key=lambda c: c.ts)
    return w
