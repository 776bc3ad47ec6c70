"""Flows: orientation, Zeek-style history, end reasons, bounds, and independence from batch size."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from appliance.decode.flows import FlowLimits, FlowTable, flow_frame
from appliance.decode.headers import decode_headers
from appliance.simulate.packets import ACK, FIN, PSH, RST, SYN
from appliance.simulate.packets import Path as Dir
from appliance.testing.packets import batch_from_frames
from appliance.testing.replay import replay

PEER = Path(__file__).resolve().parents[2].parent / "shared" / "pcaps" / "peer"
C2S = Dir("192.0.2.1", "198.51.100.2", 40000, 80)
S2C = Dir("198.51.100.2", "192.0.2.1", 80, 40000)
S = 1_000_000_000


def run_table(frames: list[bytes], ts: list[int], limits: FlowLimits | None = None) -> list[dict]:
    table = FlowTable(limits)
    b = batch_from_frames(frames, ts_ns=ts)
    table.update(decode_headers(b), b.ts)
    table.finish_all()
    cols = flow_frame(table.drain())
    return [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]


def handshake(t0: int, sport: int = 40000) -> tuple[list[bytes], list[int]]:
    c = Dir("192.0.2.1", "198.51.100.2", sport, 80)
    s = Dir("198.51.100.2", "192.0.2.1", 80, sport)
    frames = [
        c.tcp(100, 0, SYN), s.tcp(500, 101, SYN | ACK), c.tcp(101, 501, ACK),
        c.tcp(101, 501, PSH | ACK, b"GET / HTTP/1.1\r\n\r\n"), s.tcp(501, 119, PSH | ACK, b"HTTP/1.1 200 OK\r\n\r\n"),
        c.tcp(119, 520, FIN | ACK), s.tcp(520, 120, FIN | ACK), c.tcp(120, 521, ACK),
    ]
    return frames, [t0 + i * 1000 for i in range(len(frames))]


def test_history_counters_and_fin() -> None:
    frames, ts = handshake(S)
    [f] = run_table(frames, ts)
    assert (f["source.ip"], f["source.port"], f["destination.port"]) == ("192.0.2.1", 40000, 80)
    assert f["flow.history"] == "ShADdFf"  # the server never sends a pure ACK here
    assert (f["source.packets"], f["destination.packets"]) == (5, 3)
    assert f["source.payload_bytes"] == 18 and f["destination.payload_bytes"] == 19
    assert f["flow.end_reason"] == "fin" and f["event.duration"] == 7000


def test_originator_is_the_syn_sender_even_if_seen_second() -> None:
    frames = [S2C.tcp(500, 101, SYN | ACK), C2S.tcp(100, 0, SYN)]
    [f] = run_table(frames, [S, S + 10])
    assert f["source.ip"] == "192.0.2.1" and f["flow.history"] == "hS"


def test_without_syn_the_first_packet_originates() -> None:
    [f] = run_table([S2C.tcp(1, 1, ACK, b"data")], [S])
    assert f["source.ip"] == "198.51.100.2" and f["flow.history"] == "D"


def test_port_reuse_after_close_is_a_new_flow() -> None:
    f1, t1 = handshake(S)
    f2, t2 = handshake(S + 10 * S)
    flows = run_table(f1 + f2, t1 + t2)
    assert len(flows) == 2 and [f["flow.end_reason"] for f in flows] == ["fin", "fin"]
    assert flows[0]["network.community_id"] == flows[1]["network.community_id"]
    assert flows[0]["flow.id"] != flows[1]["flow.id"]


def test_rst_and_idle_timeout() -> None:
    frames = [C2S.tcp(100, 0, SYN), S2C.tcp(0, 101, RST | ACK)]
    [f] = run_table(frames, [S, S + 5])
    assert f["flow.end_reason"] == "rst" and f["flow.history"] == "Sr"
    frames = [C2S.tcp(1, 1, ACK, b"a"), C2S.tcp(2, 1, ACK, b"b")]
    flows = run_table(frames, [S, S + 400 * S], FlowLimits(tcp_idle_s=300))
    assert [f["flow.end_reason"] for f in flows] == ["idle_timeout", "end_of_input"]


def test_table_bound_evicts_and_counts() -> None:
    frames = [Dir("192.0.2.1", "192.0.2.2", 1000 + i, 53, proto=17).udp(b"x") for i in range(50)]
    table = FlowTable(FlowLimits(max_flows=10))
    b = batch_from_frames(frames)
    table.update(decode_headers(b), b.ts)
    assert len(table.flows) <= 10 and table.stats.evicted == 40
    assert sum(1 for _, r in table.drain() if r == "evicted") == 40


def _flows(path: Path, batch: int) -> pl.DataFrame:
    return replay([str(path)], batch_size=batch).events["flow"].sort("flow.id")


@pytest.mark.parametrize("name", ["ndpi/reddit.pcap", "foxio-ja4/tls-handshake.pcapng", "foxio-ja4/http1.pcapng"])
def test_flows_and_events_do_not_depend_on_batch_size(name: str) -> None:
    """Live capture runs the same code in micro-batches: the same packets must give the same events."""
    big = replay([str(PEER / name)])
    for size in (1, 13):
        small = replay([str(PEER / name)], batch_size=size)
        for etype in ("flow", "tls", "http", "dns"):
            a = big.events[etype].sort(["flow.id", "@timestamp"])
            b = small.events[etype].sort(["flow.id", "@timestamp"])
            assert a.equals(b), f"{etype} differs with batch size {size}"
