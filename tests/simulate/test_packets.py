"""Frame builders and capture writers: frames parse back with dpkt with valid checksums; files are
readable by dpkt (pcap) and scapy (pcapng)."""

from __future__ import annotations

import random

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.utils import rdpcap

from appliance.simulate.packets import (
    ACK,
    MSS,
    PSH,
    SYN,
    Path,
    TcpConn,
    finish,
    ones_sum,
    sort_records,
    write_pcap,
    write_pcapng,
)


def rfc1071(data: bytes) -> int:
    """The textbook word loop, to check the modular shortcut against."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


@given(st.binary(min_size=1, max_size=300))
@settings(max_examples=300, deadline=None)
def test_checksum_matches_rfc1071(data: bytes) -> None:
    ours, ref = finish(ones_sum(data)), rfc1071(data)
    # One's complement has two zeros; both verify. Non-zero data never sums to +0 in RFC 1071.
    assert ours == ref or (ours, ref) == (0, 0xFFFF) and not any(data)


def _verify_tcp(frame: bytes) -> dpkt.tcp.TCP:
    eth = dpkt.ethernet.Ethernet(frame)
    ip = eth.data
    tcp = ip.data
    assert isinstance(tcp, dpkt.tcp.TCP)
    if isinstance(ip, dpkt.ip.IP):
        raw_ip = bytes(ip)[: ip.hl * 4]
        assert finish(ones_sum(raw_ip)) in (0, 0xFFFF) or rfc1071(raw_ip) == 0
        assert ip.len == len(frame) - 14
        pseudo = ip.src + ip.dst + bytes([0, 6]) + len(bytes(tcp)).to_bytes(2, "big")
    else:
        assert ip.plen == len(frame) - 14 - 40
        pseudo = ip.src + ip.dst + len(bytes(tcp)).to_bytes(4, "big") + bytes([0, 0, 0, 6])
    assert rfc1071(pseudo + frame[len(frame) - len(bytes(tcp)):]) == 0
    return tcp


@pytest.mark.parametrize("src,dst", [("192.0.2.40", "162.159.140.245"), ("2001:db8:200::5", "2001:db8:100::7")])
def test_tcp_frames_have_valid_checksums(src: str, dst: str) -> None:
    p = Path(src, dst, 40000, 443)
    for payload in (b"", b"x", b"hello world!", bytes(range(256)) * 5):
        tcp = _verify_tcp(p.tcp(123456, 654321, PSH | ACK, payload))
        assert tcp.data == payload and tcp.sport == 40000 and tcp.dport == 443
        assert tcp.seq == 123456 and tcp.flags == PSH | ACK


def test_udp_checksum_and_vlan() -> None:
    p = Path("10.20.1.5", "192.0.2.53", 5353, 53, proto=17, vlan=120)
    frame = p.udp(b"\x12\x34abc")
    assert frame[12:14] == b"\x81\x00" and int.from_bytes(frame[14:16], "big") & 0xFFF == 120
    ip = dpkt.ip.IP(frame[18:])
    udp = ip.data
    assert isinstance(udp, dpkt.udp.UDP) and udp.data == b"\x12\x34abc"
    pseudo = ip.src + ip.dst + bytes([0, 17]) + udp.ulen.to_bytes(2, "big")
    assert udp.sum != 0 and rfc1071(pseudo + bytes(udp)) == 0


def test_conn_segments_at_mss_and_sequence_numbers_are_contiguous() -> None:
    sink: list = []
    c = TcpConn(sink, random.Random(1), "192.0.2.40", 40000, "162.159.140.245", 443, 1_000_000, 20_000_000)
    t = c.open(0)
    c.send(t, True, bytes(3000))
    c.close(t + 10**9)
    sort_records(sink)
    client = [dpkt.ethernet.Ethernet(f).data.data for _, f in sink if dpkt.ethernet.Ethernet(f).data.data.sport == 40000]
    assert client[0].flags == SYN and client[0].opts[:4] == b"\x02\x04\x05\xb4"  # MSS 1460 option
    data = [s for s in client if s.data]
    assert [len(s.data) for s in data] == [MSS, MSS, 3000 - 2 * MSS]
    assert [s.seq - data[0].seq for s in data] == [0, MSS, 2 * MSS]
    assert data[-1].flags & PSH and not data[0].flags & PSH


def test_pcap_and_pcapng_round_trip(tmp_path) -> None:
    p = Path("192.0.2.40", "93.184.215.14", 40000, 80)
    recs = [(1_741_597_200_123_456_789, p.tcp(1, 1, ACK, b"GET / HTTP/1.1\r\n\r\n")),
            (1_741_597_201_000_000_000, p.tcp(19, 1, ACK, b"y" * 200)[:80], 254)]
    write_pcap(str(tmp_path / "a.pcap"), recs)
    with open(tmp_path / "a.pcap", "rb") as fh:
        got = list(dpkt.pcap.Reader(fh))
    assert got[0][1] == recs[0][1] and abs(got[0][0] - 1_741_597_200.123456) < 1e-6
    assert len(got[1][1]) == 80
    write_pcapng(str(tmp_path / "a.pcapng"), recs)
    pk = rdpcap(str(tmp_path / "a.pcapng"))
    assert bytes(pk[0]) == recs[0][1] and pk[1].wirelen == 254 and len(bytes(pk[1])) == 80
    assert int(pk[0].time * 10**9) // 1000 == 1_741_597_200_123_456
