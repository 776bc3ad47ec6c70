#!/usr/bin/env python3
"""Write the mixed benchmark capture (default ~1M packets) that bench/replay_bench.py replays.

The mix is what a network tap at a hosting provider sees: TLS sessions to model APIs (a third of
the ClientHellos carry a post-quantum key share and span two TCP segments), plain HTTP, DNS, IPv6,
802.1Q-tagged traffic, and damaged packets (snaplen-truncated records with caplen < len, and a few
with impossible IPv4 header lengths) so the benchmark also exercises the malformed-input paths.

Frames come from appliance.simulate (struct templates, not scapy): about 1M packets in ~10-15 s.
Flows are generated one second of start times at a time and merged so output timestamps never go
backwards: every packet of a flow is later than its start, so all packets before the end of the
current window are final once the window's flows exist.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from appliance.simulate import tls_hello as th  # noqa: E402
from appliance.simulate.flows import API_HOSTS, MS, World  # noqa: E402
from appliance.simulate.packets import Record, pcap_header, pcap_records  # noqa: E402

S = 1000 * MS
START = 1_741_597_200 * S


def _client(rng: random.Random) -> tuple[str, int | None]:
    """A client address and its VLAN tag: broadband, restricted-region v4/v6, or tagged corporate."""
    r = rng.random()
    if r < 0.12:
        return f"10.20.{rng.randrange(1, 40)}.{rng.randrange(2, 250)}", rng.choice((120, 130))
    if r < 0.30:
        return f"2001:db8:200::{rng.randrange(1, 0xFFFF):x}", None
    if r < 0.55:
        return f"198.51.100.{rng.randrange(2, 250)}", None
    return f"192.0.2.{rng.randrange(30, 127)}", None


def _flow(w: World, t: int) -> None:
    rng = w.rng
    client, vlan = _client(rng)
    kind = rng.random()
    if ":" in client:
        # IPv6: TLS to the v6 relay / hosting range (no v6 API endpoints in the address plan).
        c = w.conn(client, "2001:db8:100::7", 443, MS // 2, rng.randint(20, 80) * MS)
        _, t = w.tls_open(c, t, "api.cheap-gpt.example", rng.choice(th.BROWSER_PQ + th.SDK))
        t = c.send(t + 50 * MS, True, th.app_data(rng, rng.randint(600, 3000)))
        times, sizes = w.token_stream(t, rng.randint(8, 30), fast=True)
        c.close(w.stream(c, times, sizes) + 20 * MS)
    elif kind < 0.55:
        profile = rng.choice(th.BROWSER_PQ) if rng.random() < 1 / 3 else rng.choice(th.BROWSER_CLASSIC + th.SDK)
        host = rng.choices(list(API_HOSTS), weights=(6, 3, 1))[0]
        w.api_session(t, client, host, profile, rng.randint(1, 2), "bench", vlan=vlan)
    elif kind < 0.80:
        w.http_get_page(t, client, f"93.184.215.{rng.randrange(1, 60)}", "www.example.com",
                        th.PROFILES["firefox"].user_agent, n=rng.randint(1, 4))
    else:
        for i in range(rng.randint(1, 4)):
            w.dns(t + i * 3 * MS, client, f"host{rng.randrange(500)}.example.com", f"93.184.215.{rng.randrange(1, 250)}",
                  vlan)


def _damage(rng: random.Random, recs: list[Record], truncate: float, bogus: float) -> list[Record]:
    """Snaplen-truncate a share of records (caplen < len) and corrupt a few IPv4 header lengths."""
    out: list[Record] = []
    for rec in recs:
        t, data = rec[0], rec[1]
        r = rng.random()
        if r < truncate and len(data) > 96:
            out.append((t, data[:rng.choice((64, 68, 96))], len(data)))
        elif r < truncate + bogus and data[12:14] == b"\x08\x00":
            ihl = rng.choice((0x42, 0x4F, 0x41))  # IHL 2 or 1 (< 5) or 15 (past the TCP header)
            out.append((t, data[:14] + bytes([ihl]) + data[15:]))
        else:
            out.append(rec)
    return out


def make(path: str, packets: int, seed: int = 1, flows_per_s: int = 60, truncate: float = 0.01,
         bogus: float = 0.0005) -> dict[str, float]:
    """Write `packets` packets to `path`; returns counts and timing."""
    t_wall = time.perf_counter()
    w = World(seed=seed, start=START)
    damage_rng = random.Random(seed + 1)
    written = 0
    pending: list[Record] = []
    window = START
    tmp = path + ".part"
    with open(tmp, "wb") as fh:
        fh.write(pcap_header())
        while written < packets:
            for _ in range(flows_per_s):
                _flow(w, window + w.rng.randrange(S))
            window += S
            pending += w.records
            w.records = []
            pending.sort(key=lambda r: r[0])
            cut = next((i for i, r in enumerate(pending) if r[0] >= window), len(pending))
            ready, pending = pending[:cut], pending[cut:]
            ready = ready[:packets - written]
            fh.write(pcap_records(_damage(damage_rng, ready, truncate, bogus)))
            written += len(ready)
    os.replace(tmp, path)
    return {"packets": written, "bytes": os.path.getsize(path), "seconds": time.perf_counter() - t_wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "mixed-1m.pcap"))
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    info = make(args.out, args.packets, args.seed)
    print(f"{args.out}: {info['packets']:,} packets, {info['bytes'] / 1e6:.1f} MB in {info['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
