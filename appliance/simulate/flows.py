"""Conversation building blocks for the scenarios: DNS lookups, TLS sessions, HTTP/1.1 exchanges,
token-streamed responses, and the log of model-API calls each capture implies.

A scenario (scenario.py) decides who talks to whom and when; this module turns one conversation
into timestamped frames in a `World`, so every scenario shares the same, realistic wire behaviour.
"""

from __future__ import annotations

import ipaddress
import random
import string
import struct
from dataclasses import dataclass, field

from appliance.simulate import tls_hello as th
from appliance.simulate.packets import Path, Record, TcpConn

MS = 1_000_000  # ns per millisecond
RESOLVER = "192.0.2.53"

# Real published endpoint addresses (address plan).
API_HOSTS: dict[str, str] = {
    "api.openai.com": "162.159.140.245",
    "api.anthropic.com": "160.79.104.10",
    "generativelanguage.googleapis.com": "142.250.74.106",
}
API_PATHS: dict[str, str] = {
    "api.openai.com": "/v1/chat/completions",
    "api.anthropic.com": "/v1/messages",
    "generativelanguage.googleapis.com": "/v1beta/models/gemini-1.5-flash:streamGenerateContent",
}
API_MODELS: dict[str, tuple[str, ...]] = {
    "api.openai.com": ("gpt-4o", "gpt-4o-mini", "o1-mini"),
    "api.anthropic.com": ("claude-3-5-sonnet-20241022", "claude-3-5-haiku-20241022"),
    "generativelanguage.googleapis.com": ("gemini-1.5-flash", "gemini-1.5-pro"),
}
_ALNUM = string.ascii_letters + string.digits


def rand_key(rng: random.Random, prefix: str = "sk-", n: int = 48) -> str:
    """A credential of the given shape (one-api issues `sk-` + 48 letters/digits)."""
    return prefix + "".join(rng.choices(_ALNUM, k=n))


@dataclass
class ApiCall:
    """One request a host made to a model API, as the provider's gateway would log it."""

    ts: int
    source_ip: str
    host: str
    duration: int
    request_bytes: int
    response_bytes: int
    ja4: str
    user_agent: str
    actor: str  # who the call belongs to: "ordinary:<ip>", "relay:<ip>", "enterprise:<ip>", …


@dataclass
class World:
    """Frames, ground truth and API calls of one capture under construction."""

    seed: int
    start: int  # capture start, ns since the epoch
    records: list[Record] = field(default_factory=list)
    calls: list[ApiCall] = field(default_factory=list)
    truth: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._ports: dict[str, int] = {}
        self._dns_id = self.rng.getrandbits(16)

    def port(self, host: str) -> int:
        """Next ephemeral port of `host` (Linux range 32768-60999), so 5-tuples never repeat."""
        p = self._ports.get(host, 32768 + self.rng.randrange(20000))
        p = 32768 + (p + 1 + self.rng.randrange(7) - 32768) % 28231
        self._ports[host] = p
        return p

    # --- DNS ------------------------------------------------------------------------------------
    def dns(self, t: int, client: str, name: str, answer: str, vlan: int | None = None) -> int:
        """A query for `name` (A or AAAA by the answer's family) and the resolver's answer."""
        self._dns_id = (self._dns_id + 1) & 0xFFFF
        qtype = 28 if ":" in answer else 1
        resolver = RESOLVER if ":" not in client else "2001:db8:200::53"
        sport = self.port(client)
        q = _dns_question(name, qtype)
        query = struct.pack("!HHHHHH", self._dns_id, 0x0100, 1, 0, 0, 0) + q
        rdata = _packed(answer)
        ans = struct.pack("!HHHIH", 0xC00C, qtype, 1, 300, len(rdata)) + rdata
        resp = struct.pack("!HHHHHH", self._dns_id, 0x8180, 1, 1, 0, 0) + q + ans
        self.records.append((t, Path(client, resolver, sport, 53, proto=17, vlan=vlan).udp(query)))
        t2 = t + self.rng.randint(1, 25) * MS // 2
        self.records.append((t2, Path(resolver, client, 53, sport, proto=17, vlan=vlan).udp(resp)))
        return t2

    # --- TCP / TLS ------------------------------------------------------------------------------
    def conn(self, client: str, server: str, sport: int, near: int, far: int,
             vlan: int | None = None, cport: int | None = None) -> TcpConn:
        return TcpConn(self.records, self.rng, client, cport or self.port(client), server, sport, near, far, vlan)

    def tls_open(self, c: TcpConn, t: int, sni: str, profile: str,
                 hello: th.Hello | None = None) -> tuple[th.Hello, int]:
        """TCP handshake, ClientHello, server flight, client Finished; returns (hello, time ready)."""
        t = c.open(t)
        h = hello or th.client_hello(profile, sni, self.rng)
        t = c.send(t + 200_000, True, h.record)
        t = c.send(t + c.far + self.rng.randint(1, 4) * MS, False, th.server_hello(h, self.rng))
        t = c.send(t + c.near + 300_000, True, th.client_finished(self.rng))
        return h, t

    def stream(self, c: TcpConn, times: list[int], sizes: list[int], tls: bool = True,
               from_client: bool = False) -> int:
        """Send one message per (time, size): TLS records of that many ciphertext bytes, or raw bytes."""
        last = times[-1] if times else 0
        for t, n in zip(times, sizes, strict=True):
            last = c.send(t, from_client, th.app_data(self.rng, n) if tls else self.rng.randbytes(n))
        return last

    def token_stream(self, t0: int, n_chunks: int, fast: bool = False) -> tuple[list[int], list[int]]:
        """Times and sizes of a streamed completion: a first-token wait, then small events 15-60 ms apart."""
        ttfb = self.rng.randint(150, 900) * MS
        times, sizes, t = [], [], t0 + ttfb
        for _ in range(n_chunks):
            times.append(t)
            sizes.append(self.rng.randint(90, 420))
            t += self.rng.randint(4, 18) * MS if fast else self.rng.randint(15, 60) * MS
        return times, sizes

    def api_session(self, t: int, client: str, host: str, profile: str, n_requests: int, actor: str,
                    near: int = MS // 2, vlan: int | None = None, resolve: bool = True) -> int:
        """A direct client → model API TLS session: DNS, handshake, requests with streamed answers."""
        if resolve:
            t = self.dns(t, client, host, API_HOSTS[host], vlan) + MS
        c = self.conn(client, API_HOSTS[host], 443, near, self.rng.randint(8, 40) * MS, vlan)
        h, t = self.tls_open(c, t, host, profile)
        for _ in range(n_requests):
            t = self.api_exchange(c, t + self.rng.randint(50, 3000) * MS, h, client, host, actor)
        return c.close(t + self.rng.randint(100, 2000) * MS)

    def api_exchange(self, c: TcpConn, t: int, h: th.Hello, source: str, host: str, actor: str) -> int:
        """One request (small) and its streamed response on an open TLS connection; logs the call."""
        req = self.rng.randint(600, 3800)
        t_req = c.send(t, True, th.app_data(self.rng, req))
        times, sizes = self.token_stream(t_req, self.rng.randint(12, 60))
        end = self.stream(c, times, sizes)
        self.calls.append(ApiCall(t, source, host, end - t, req, sum(sizes), h.ja4,
                                  th.PROFILES[h.profile].user_agent, actor))
        return end

    # --- plaintext HTTP -------------------------------------------------------------------------
    def http_get_page(self, t: int, client: str, server: str, host: str, ua: str, n: int = 3,
                      near: int = MS // 2, far: int = 20 * MS) -> int:
        """A plain HTTP/1.1 keep-alive connection fetching n small pages or assets."""
        c = self.conn(client, server, 80, near, far)
        t = c.open(t)
        for i in range(n):
            path = "/" if i == 0 else f"/static/{self.rng.choice(('app', 'site', 'main'))}.{i}.js"
            req = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {ua}\r\nAccept: */*\r\n"
                   "Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\r\n").encode()
            t = c.send(t + (near + MS if i else MS), True, req)
            body = self.rng.randbytes(self.rng.randint(300, 9000))
            resp = (f"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            t = c.send(t + far + 2 * MS, False, resp)
        return c.close(t + near + 5 * MS)


def _dns_question(name: str, qtype: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return labels + b"\0" + struct.pack("!HH", qtype, 1)


def _packed(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed
