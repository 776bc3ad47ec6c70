"""Scenarios: deterministic, valid frames, ground truth consistent with the packets, and the labelled
behaviours (relay lag, two-segment PQ hellos, tunnelled hellos) really present in the capture."""

from __future__ import annotations

import ipaddress
from collections import defaultdict

import dpkt
import pytest

from appliance.simulate import scenario
from appliance.simulate.decoys import PROXY_IP
from appliance.simulate.flows import API_HOSTS

MS = 1_000_000


def _ip(b: bytes) -> str:
    return str(ipaddress.ip_address(b))


def _segments(records):
    """(t, src, sport, dst, dport, tcp) for every TCP frame."""
    out = []
    for rec in records:
        eth = dpkt.ethernet.Ethernet(rec[1])
        ip = eth.data
        if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) and isinstance(ip.data, dpkt.tcp.TCP):
            out.append((rec[0], _ip(ip.src), ip.data.sport, _ip(ip.dst), ip.data.dport, ip.data))
    return out


@pytest.fixture(scope="module")
def worlds():
    runs = (("relay", "easy"), ("relay", "hard"), ("decoys", "easy"), ("ordinary", "hard"))
    return {k: scenario.run(*k, 11) for k in runs}


@pytest.fixture(scope="module")
def segments(worlds):
    return {k: _segments(w.records) for k, w in worlds.items()}


def test_deterministic_for_a_seed() -> None:
    a, b, c = scenario.run("demo", "medium", 5), scenario.run("demo", "medium", 5), scenario.run("demo", "medium", 6)
    assert a.records == b.records and a.truth == b.truth
    assert a.records != c.records


def test_timestamps_sorted_and_sequence_numbers_grow_with_time(worlds, segments) -> None:
    for k, w in worlds.items():
        ts = [r[0] for r in w.records]
        assert ts == sorted(ts)
        nxt: dict[tuple, int] = {}
        for _, src, sp, dst, dp, tcp in segments[k]:
            if not tcp.data:
                continue
            key = (src, sp, dst, dp)
            # Each data segment starts exactly where the previous one of its direction ended.
            assert nxt.get(key, tcp.seq) == tcp.seq, key
            nxt[key] = (tcp.seq + len(tcp.data)) & 0xFFFFFFFF


def test_pq_client_hello_spans_two_segments(worlds, segments) -> None:
    w = worlds[("ordinary", "hard")]
    pq = {c["ip"] for c in w.truth["clients"] if c["profile"].endswith("-pq")}
    assert 0 < len(pq) < len(w.truth["clients"])
    first: dict[tuple, list[int]] = defaultdict(list)
    for _, src, sp, _dst, dp, tcp in segments[("ordinary", "hard")]:
        if dp == 443 and tcp.data:
            first[(src, sp)].append(len(tcp.data))
    for (src, _), sizes in first.items():
        if src in pq:
            assert sizes[0] == 1460 and sizes[1] < 1460  # hello > MSS: two segments
        else:
            assert sizes[0] < 1460


def test_truth_matches_capture(worlds, segments) -> None:
    for (name, diff), w in worlds.items():
        hosts = {s[1] for s in segments[(name, diff)]} | {s[3] for s in segments[(name, diff)]}
        for r in w.truth["relays"]:
            assert r["ip"] in hosts and r["inbound_requests"] > 0
            assert all(c["ip"] in hosts for c in r["clients"])
        for d in w.truth["decoys"]:
            assert d["ip"] in hosts, d
        if name == "relay":
            assert w.truth["relays"][0]["ip"] == scenario.RELAY_IP
        if name == "decoys":
            assert {d["kind"] for d in w.truth["decoys"]} == {"connect_proxy", "nat_gateway",
                                                               "web_server_api_caller", "cdn_edge"}


def test_relay_lag_and_pooling_follow_difficulty(worlds, segments) -> None:
    for diff in ("easy", "hard"):
        main = worlds[("relay", diff)].truth["relays"][0]
        if scenario.DIFFICULTIES[diff].pool:
            assert main["upstream_connections"] < main["inbound_requests"]
        else:
            assert main["upstream_connections"] == main["inbound_requests"]
    # easy: each inbound request (its last, PSH segment) is followed by a fresh upstream SYN within 5-30 ms.
    d, main = scenario.DIFFICULTIES["easy"], worlds[("relay", "easy")].truth["relays"][0]
    segs = segments[("relay", "easy")]
    api = set(API_HOSTS.values())
    ends = sorted(t for t, s, sp, dst, dp, tcp in segs if dst in (main["ip"], main["ip6"]) and dp in (3000, 8080)
                  and tcp.data and tcp.flags & dpkt.tcp.TH_PUSH)
    syns = sorted(t for t, s, sp, dst, dp, tcp in segs if s == main["ip"] and dst in api
                  and tcp.flags == dpkt.tcp.TH_SYN)
    assert len(ends) == len(syns) == main["inbound_requests"]
    lags = [syn - max(x for x in ends if x <= syn) for syn in syns]
    assert d.lag_ms[0] * MS <= min(lags) and max(lags) <= (d.lag_ms[1] + 1) * MS


def test_easy_relay_carries_plaintext_bearer_keys(segments) -> None:
    reqs = [tcp.data for _, s, sp, dst, dp, tcp in segments[("relay", "easy")] if dp in (3000, 8080) and tcp.data]
    posts = [r for r in reqs if r.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")]
    assert posts and all(b"Authorization: Bearer sk-" in p for p in posts)
    key = posts[0].split(b"Authorization: Bearer ")[1].split(b"\r\n")[0]
    assert len(key) == 3 + 48 and key[3:].isalnum()


def test_connect_proxy_tunnels_identical_client_hello(segments) -> None:
    inner, outer = {}, {}
    for _, s, _sp, dst, dp, tcp in segments[("decoys", "easy")]:
        if tcp.data[:1] == b"\x16" and tcp.data[5:6] == b"\x01":
            if dst == PROXY_IP and dp == 3128:
                inner[tcp.data[11:43]] = tcp.data  # keyed by the ClientHello random
            elif s == PROXY_IP:
                outer[tcp.data[11:43]] = tcp.data
    assert inner and inner.keys() == outer.keys()
    assert all(inner[k] == outer[k] for k in inner)
