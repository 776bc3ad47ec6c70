"""Vectorised header decoding: every link type and encapsulation, malformed reasons, and fuzzing."""

from __future__ import annotations

import ipaddress
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.decode.headers import REASONS, decode_headers
from appliance.simulate.packets import Path
from appliance.testing.packets import batch_from_frames


@pytest.fixture(autouse=True, params=["compiled", "numpy"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs against both decoders: _headers.c and the numpy reference."""
    from appliance.decode import headers

    if request.param == "numpy":
        monkeypatch.setattr(headers, "_headers", None)
    return str(request.param)


TCP_SYN = Path("192.0.2.1", "198.51.100.2", 40000, 443).tcp(1000, 0, 0x02)
IP_PACKET = TCP_SYN[14:]  # the IPv4 packet inside the Ethernet frame


def ip4(i: int, h) -> str:  # noqa: ANN001
    return str(ipaddress.ip_address(int(h.src_lo[i])))


def test_ethernet_ipv4_tcp() -> None:
    h = decode_headers(batch_from_frames([TCP_SYN]))
    assert h.reason.tolist() == [0] and h.ipver.tolist() == [4] and h.proto.tolist() == [6]
    assert ip4(0, h) == "192.0.2.1" and (h.sport[0], h.dport[0], h.tcp_flags[0], h.seq[0]) == (40000, 443, 2, 1000)


def test_vlan_qinq_pppoe_mpls() -> None:
    eth = TCP_SYN[:12]
    qinq = eth + b"\x88\xa8\x00\x64" + b"\x81\x00\x00\xc8" + b"\x08\x00" + IP_PACKET
    pppoe = eth + b"\x88\x64" + b"\x11\x00\x00\x01" + struct.pack("!H", len(IP_PACKET) + 2) + b"\x00\x21" + IP_PACKET
    mpls = eth + b"\x88\x47" + b"\x00\x01\x01\x40" + IP_PACKET  # one label, bottom of stack
    h = decode_headers(batch_from_frames([qinq, pppoe, mpls]))
    assert h.reason.tolist() == [0, 0, 0]
    assert h.vlan_outer.tolist() == [100, -1, -1] and h.vlan_inner.tolist() == [200, -1, -1]
    assert h.dport.tolist() == [443, 443, 443]


def test_cooked_raw_and_loopback_link_types() -> None:
    sll = b"\x00\x00\x00\x01\x00\x06" + b"\x00" * 8 + b"\x08\x00" + IP_PACKET
    sll2 = b"\x08\x00\x00\x00" + b"\x00" * 16 + IP_PACKET
    null_le = struct.pack("<I", 2) + IP_PACKET
    loop_be = struct.pack(">I", 2) + IP_PACKET
    frames = [sll, sll2, IP_PACKET, null_le, loop_be]
    h = decode_headers(batch_from_frames(frames, linktype=[113, 276, 101, 0, 108]))
    assert h.reason.tolist() == [0] * 5
    assert h.sport.tolist() == [40000] * 5


def test_ipv6_extension_headers_and_fragments() -> None:
    v6 = Path("2001:db8::1", "2001:db8::2", 5353, 53, proto=17).udp(b"\x00" * 12)
    eth, ip6 = v6[:14], v6[14:]
    # insert a hop-by-hop header (8 bytes) in front of UDP
    hdr = bytearray(ip6[:40])
    hdr[6] = 0  # next header: hop-by-hop
    struct.pack_into("!H", hdr, 4, len(ip6) - 40 + 8)
    hbh = bytes([17, 0]) + b"\x01\x04\x00\x00\x00\x00"
    with_hbh = eth + bytes(hdr) + hbh + ip6[40:]
    frag = bytearray(hdr)
    frag[6] = 44
    with_frag = eth + bytes(frag) + bytes([17, 0, 0, 1, 0, 0, 0, 7]) + ip6[40:]
    h = decode_headers(batch_from_frames([with_hbh, with_frag]))
    assert h.reason.tolist() == [0, 0]
    assert h.proto[0] == 17 and h.dport[0] == 53 and not h.fragment[0]
    assert h.fragment[1] and not h.flowable[1]


def test_ipv4_fragments_are_counted_not_decoded() -> None:
    frag = bytearray(TCP_SYN)
    struct.pack_into("!H", frag, 14 + 6, 0x2000)  # more fragments
    h = decode_headers(batch_from_frames([bytes(frag)]))
    assert h.fragment.tolist() == [True] and h.reason.tolist() == [0] and not h.flowable[0]


def test_malformed_reasons() -> None:
    short_eth = TCP_SYN[:10]
    bad_ihl = bytearray(TCP_SYN)
    bad_ihl[14] = 0x4F  # 60-byte header in a 40-byte packet
    lying_total = bytearray(TCP_SYN)
    struct.pack_into("!H", lying_total, 16, 1500)
    bad_doff = bytearray(TCP_SYN)
    bad_doff[14 + 20 + 12] = 0x20  # 8-byte TCP header
    udp = Path("192.0.2.1", "192.0.2.2", 1, 53, proto=17).udp(b"abc")
    bad_udp = bytearray(udp)
    struct.pack_into("!H", bad_udp, 14 + 20 + 4, 200)
    frames = [short_eth, bytes(bad_ihl), bytes(lying_total), bytes(bad_doff), bytes(bad_udp), b""]
    h = decode_headers(batch_from_frames(frames))
    assert [REASONS[r] for r in h.reason] == [
        "truncated_link_frame", "invalid_IP_header_size", "truncated_IP", "bad_TCP_header_len", "bad_UDP_length", "zero_caplen",
    ]
    assert not h.flowable.any()


def test_snaplen_cut_packets_keep_their_headers() -> None:
    full = Path("192.0.2.1", "192.0.2.2", 1234, 80).tcp(1, 1, 0x18, b"GET / HTTP/1.1\r\n" + b"x" * 500)
    cut = full[:96]
    h = decode_headers(batch_from_frames([cut], wirelen=[len(full)]))
    assert h.reason.tolist() == [0] and h.snap_cut.tolist() == [True]
    assert h.payload_len[0] == len(full) - 54 and h.payload_cap[0] == 96 - 54


def test_ethernet_padding_is_not_payload() -> None:
    padded = TCP_SYN + b"\x00" * 6  # minimum frame size padding
    h = decode_headers(batch_from_frames([padded]))
    assert h.payload_len.tolist() == [0] and h.ip_bytes.tolist() == [40]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=20), st.sampled_from([0, 1, 12, 101, 108, 113, 228, 229, 276, 147]))
def test_random_frames_never_raise(frames: list[bytes], linktype: int) -> None:
    h = decode_headers(batch_from_frames(frames, linktype=linktype))
    assert len(h.reason) == len(frames)
    assert set(np.unique(h.reason).tolist()) <= set(range(len(REASONS)))
    ok = h.flowable
    assert np.all(h.payload_cap[ok] <= h.payload_len[ok])
    assert np.all(h.payload_cap[ok] >= 0)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_real_frames_never_raise(data: st.DataObject) -> None:
    frame = bytearray(TCP_SYN + b"payload")
    for _ in range(data.draw(st.integers(1, 6))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    h = decode_headers(batch_from_frames([bytes(frame[:cut])]))
    assert h.reason.shape == (1,)
