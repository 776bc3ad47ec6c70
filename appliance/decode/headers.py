"""Link, IP and transport headers for a whole batch at once (numpy gathers, no per-packet Python).

Every field is read with one fancy-indexing gather over the batch's byte buffer, at an offset array
that the previous layer computed. A packet whose headers cannot be trusted gets a malformed reason
code (Zeek `weird` names where Zeek has one) and is left out of flows and deep parsing; nothing
raises. Supported: Ethernet (802.1Q/802.1ad/QinQ tags, PPPoE session, MPLS), Linux SLL and SLL2,
raw IPv4/IPv6, BSD NULL/LOOP; IPv4 (options, fragments counted), IPv6 (extension headers, fragment
header counted); TCP, UDP, ICMP, ICMPv6, SCTP ports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from appliance.sources.batch import PacketBatch

# Malformed reasons, by code (0 = fine). Names follow Zeek's weird.log where Zeek has one.
REASONS = (
    "",
    "truncated_link_frame",  # Zeek: truncated_ethernet_frame (used for every link type)
    "truncated_IP",
    "invalid_IP_header_size",
    "bad_IP_version",
    "bad_IP_total_length",
    "truncated_TCP_header",
    "bad_TCP_header_len",
    "truncated_UDP_header",
    "bad_UDP_length",
    "zero_caplen",
    "truncated_IPv6_ext_header",
)
R = {name: i for i, name in enumerate(REASONS)}
R["truncated_ethernet_frame"] = R["truncated_link_frame"]

TCP, UDP, ICMP, ICMP6, SCTP = 6, 17, 1, 58, 132
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

# Community ID v1 §"ICMP": a request type maps to its reply type as the "destination port", so a
# request and its reply land in one flow.
ICMP4_PAIRS = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17, 10: 9, 9: 10}
ICMP6_PAIRS = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130, 139: 140, 140: 139, 144: 145, 145: 144}


@dataclass
class Headers:
    """Decoded header columns for every packet of a batch (index-aligned with the batch)."""

    reason: np.ndarray  # uint8 malformed reason code, 0 = fine
    ipver: np.ndarray  # uint8: 4, 6 or 0 (not IP)
    fragment: np.ndarray  # bool: IP fragment (counted, not reassembled)
    snap_cut: np.ndarray  # bool: caplen < the IP packet (snaplen): headers usable, payload not
    vlan_outer: np.ndarray  # int32, -1 = none
    vlan_inner: np.ndarray  # int32, -1 = none
    proto: np.ndarray  # uint8 IP protocol
    ip_bytes: np.ndarray  # int32 IP total length
    src_hi: np.ndarray  # uint64 (IPv4: 0)
    src_lo: np.ndarray  # uint64 (IPv4: the address)
    dst_hi: np.ndarray
    dst_lo: np.ndarray
    sport: np.ndarray  # int32 (ICMP: type)
    dport: np.ndarray  # int32 (ICMP: paired type or code)
    icmp_oneway: np.ndarray  # bool: ICMP type without a pair (Community ID one-way flag)
    tcp_flags: np.ndarray  # uint8
    seq: np.ndarray  # uint32
    payload_off: np.ndarray  # int64 absolute offset in batch.data
    payload_len: np.ndarray  # int32 (from IP lengths, not caplen: Ethernet padding excluded)
    payload_cap: np.ndarray  # int32 captured payload bytes (<= payload_len)

    @property
    def flowable(self) -> np.ndarray:
        """Packets that belong to a flow: well-formed IP, not a fragment."""
        return (self.reason == 0) & (self.ipver > 0) & ~self.fragment


class _Gather:
    """Big-endian integer reads at per-packet offsets, clipped so no gather leaves the buffer."""

    def __init__(self, data: np.ndarray) -> None:
        self.d = data
        self.maxoff = len(data) - 17

    def _o(self, off: np.ndarray) -> np.ndarray:
        return np.clip(off, 0, self.maxoff)

    def u8(self, off: np.ndarray) -> np.ndarray:
        return self.d[self._o(off)]

    def u16(self, off: np.ndarray) -> np.ndarray:
        o = self._o(off)
        return (self.d[o].astype(np.uint16) << 8) | self.d[o + 1]

    def u32(self, off: np.ndarray) -> np.ndarray:
        o = self._o(off)
        b = self.d[o[:, None] + np.arange(4)]
        return b.copy().view(">u4").reshape(-1).astype(np.uint32)

    def u64(self, off: np.ndarray) -> np.ndarray:
        o = self._o(off)
        b = self.d[o[:, None] + np.arange(8)]
        return b.copy().view(">u8").reshape(-1).astype(np.uint64)


def _link_layer(b: PacketBatch, g: _Gather) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Offset of the network header, ethertype (or 4/6 for raw), VLAN tags, and link truncation."""
    n = len(b)
    base = b.offsets
    lt = b.linktype
    l3 = np.zeros(n, np.int64)
    etype = np.zeros(n, np.int64)
    short = np.zeros(n, bool)
    eth = (lt == 1) | (lt == 113) | (lt == 276)

    m = lt == 1
    l3[m] = 14
    etype[m] = g.u16(base[m] + 12)
    m = lt == 113  # Linux cooked v1: protocol at 14
    l3[m] = 16
    etype[m] = g.u16(base[m] + 14)
    m = lt == 276  # Linux cooked v2: protocol at 0
    l3[m] = 20
    etype[m] = g.u16(base[m])
    m = (lt == 0) | (lt == 108)  # BSD loopback: address family, host order for NULL, network for LOOP
    if m.any():
        fam_le = g.u8(base[m]).astype(np.int64) | (g.u8(base[m] + 1).astype(np.int64) << 8)
        fam_be = g.u8(base[m] + 3).astype(np.int64) | (g.u8(base[m] + 2).astype(np.int64) << 8)
        fam = np.where((lt[m] == 108) | (fam_le == 0), fam_be, fam_le)
        etype[m] = np.where(fam == 2, 0x0800, np.where(np.isin(fam, (10, 23, 24, 28, 30)), 0x86DD, 0))
        l3[m] = 4
    m = np.isin(lt, (101, 12, 14, 228, 229))  # raw IP: version from the first nibble
    if m.any():
        nib = g.u8(base[m]) >> 4
        etype[m] = np.where(nib == 4, 0x0800, np.where(nib == 6, 0x86DD, 0))
        l3[m] = 0
    short |= b.caplen < l3

    vlan_outer = np.full(n, -1, np.int32)
    vlan_inner = np.full(n, -1, np.int32)
    for depth in range(3):  # 802.1Q, 802.1ad and QinQ stacks
        m = eth & np.isin(etype, (0x8100, 0x88A8, 0x9100))
        if not m.any():
            break
        tag = (g.u16(base[m] + l3[m]) & 0x0FFF).astype(np.int32)
        if depth == 0:
            vlan_outer[m] = tag
        elif depth == 1:
            vlan_inner[m] = tag
        etype[m] = g.u16(base[m] + l3[m] + 2)
        l3[m] += 4
        short |= m & (b.caplen < l3)
    m = eth & (etype == 0x8864)  # PPPoE session: 6-byte header then the PPP protocol
    if m.any():
        ppp = g.u16(base[m] + l3[m] + 6)
        etype[m] = np.where(ppp == 0x0021, 0x0800, np.where(ppp == 0x0057, 0x86DD, 0))
        l3[m] += 8
        short |= m & (b.caplen < l3)
    for _ in range(4):  # MPLS label stack: pop to the bottom label, then guess IP by nibble
        m = eth & ((etype == 0x8847) | (etype == 0x8848))
        if not m.any():
            break
        bos = (g.u8(base[m] + l3[m] + 2) & 1).astype(bool)
        l3[m] += 4
        nib = g.u8(base[m] + l3[m]) >> 4
        guess = np.where(nib == 4, 0x0800, np.where(nib == 6, 0x86DD, 0))
        etype[m] = np.where(bos, guess, etype[m])
    return l3, etype, vlan_outer, vlan_inner, short


_COLUMNS = (  # Headers' fields in _headers.c's argument order, with their dtypes
    ("reason", np.uint8), ("ipver", np.uint8), ("fragment", np.bool_), ("snap_cut", np.bool_),
    ("vlan_outer", np.int32), ("vlan_inner", np.int32), ("proto", np.uint8), ("ip_bytes", np.int32),
    ("src_hi", np.uint64), ("src_lo", np.uint64), ("dst_hi", np.uint64), ("dst_lo", np.uint64),
    ("sport", np.int32), ("dport", np.int32), ("icmp_oneway", np.bool_), ("tcp_flags", np.uint8),
    ("seq", np.uint32), ("payload_off", np.int64), ("payload_len", np.int32), ("payload_cap", np.int32),
)

try:
    from appliance.decode import _headers  # type: ignore[attr-defined]

    assert _headers.out_names() == tuple(name for name, _ in _COLUMNS)
except ImportError:  # built without a C compiler: the numpy decoder below does the same work
    _headers = None
COMPILED = _headers is not None  # built (the tests check that it is, where a compiler exists)
if os.environ.get("APPLIANCE_NO_COMPILED"):  # operators can rule the compiled kernels out
    _headers = None
IN_USE = _headers is not None  # what summary.json reports as compiled_kernels


def decode_headers(b: PacketBatch) -> Headers:
    """Headers of every packet in the batch: by _headers.c (one pass per packet, ~15x faster)
    when it was built, else by the numpy decoder below, which defines the rules."""
    if _headers is None or len(b.data) < 17:
        return decode_headers_numpy(b)
    n = len(b)
    cols = {name: np.empty(n, dtype) for name, dtype in _COLUMNS}
    _headers.decode(b.data, np.ascontiguousarray(b.offsets, np.int64), np.ascontiguousarray(b.caplen, np.int32),
                    np.ascontiguousarray(b.wirelen, np.int32), np.ascontiguousarray(b.linktype, np.int32), *cols.values())
    return Headers(**cols)


def decode_headers_numpy(b: PacketBatch) -> Headers:
    n = len(b)
    g = _Gather(b.data)
    base = b.offsets
    caplen = b.caplen.astype(np.int64)
    reason = np.zeros(n, np.uint8)
    reason[caplen == 0] = R["zero_caplen"]

    l3, etype, vlan_outer, vlan_inner, short = _link_layer(b, g)
    reason[(reason == 0) & short] = R["truncated_link_frame"]
    ipver = np.where(etype == 0x0800, 4, np.where(etype == 0x86DD, 6, 0)).astype(np.uint8)
    ipver[reason != 0] = 0
    avail = caplen - l3  # captured bytes from the IP header on
    v4 = ipver == 4
    v6 = ipver == 6

    b0 = g.u8(base + l3)
    ihl = (b0 & 0x0F).astype(np.int64) * 4
    total = g.u16(base + l3 + 2).astype(np.int64)
    flags_frag = g.u16(base + l3 + 6)
    p4 = g.u8(base + l3 + 9)
    plen6 = g.u16(base + l3 + 4).astype(np.int64)
    nh6 = g.u8(base + l3 + 6)

    bad = np.zeros(n, np.uint8)
    bad = np.where(v4 & (avail < 20), R["truncated_IP"], bad)
    bad = np.where(v4 & (bad == 0) & ((b0 >> 4) != 4), R["bad_IP_version"], bad)
    bad = np.where(v4 & (bad == 0) & ((ihl < 20) | (ihl > avail)), R["invalid_IP_header_size"], bad)
    bad = np.where(v4 & (bad == 0) & (total < ihl), R["bad_IP_total_length"], bad)
    bad = np.where(v6 & (avail < 40), R["truncated_IP"], bad)
    bad = np.where(v6 & (bad == 0) & ((b0 >> 4) != 6), R["bad_IP_version"], bad)
    ip_bytes = np.where(v4, total, np.where(v6, plen6 + 40, 0))
    # A packet longer than what was captured is a snaplen cut when the capture says so (caplen <
    # wirelen); when it claims to be whole, its IP length lies.
    too_long = (ipver > 0) & (bad == 0) & (ip_bytes > avail)
    snap = b.caplen < b.wirelen
    bad = np.where(too_long & ~snap, R["truncated_IP"], bad)
    snap_cut = too_long & snap
    reason = np.where(reason == 0, bad, reason).astype(np.uint8)
    ipver[reason != 0] = 0
    v4 = ipver == 4
    v6 = ipver == 6

    # IPv4 addresses and fragments
    src_hi = np.zeros(n, np.uint64)
    dst_hi = np.zeros(n, np.uint64)
    src_lo = np.where(v4, g.u32(base + l3 + 12), 0).astype(np.uint64)
    dst_lo = np.where(v4, g.u32(base + l3 + 16), 0).astype(np.uint64)
    fragment = v4 & (((flags_frag & 0x2000) != 0) | ((flags_frag & 0x1FFF) != 0))
    proto = np.where(v4, p4, 0).astype(np.uint8)
    l4 = np.where(v4, l3 + ihl, l3 + 40)

    # IPv6 addresses and extension headers (hop-by-hop 0, routing 43, fragment 44, AH 51, dest 60,
    # mobility 135): walk up to four of them.
    if v6.any():
        idx = np.nonzero(v6)[0]
        o = base[idx] + l3[idx]
        src_hi[idx] = g.u64(o + 8)
        src_lo[idx] = g.u64(o + 16)
        dst_hi[idx] = g.u64(o + 24)
        dst_lo[idx] = g.u64(o + 32)
        nh = nh6[idx].astype(np.int64)
        pos = l3[idx] + 40
        end = np.minimum(l3[idx] + ip_bytes[idx], caplen[idx])
        frag6 = np.zeros(len(idx), bool)
        trunc = np.zeros(len(idx), bool)
        for _ in range(4):
            ext = np.isin(nh, (0, 43, 44, 51, 60, 135))
            if not ext.any():
                break
            trunc |= ext & (pos + 8 > end)
            nxt = g.u8(base[idx] + pos).astype(np.int64)
            hlen = g.u8(base[idx] + pos + 1).astype(np.int64)
            size = np.where(nh == 44, 8, np.where(nh == 51, (hlen + 2) * 4, (hlen + 1) * 8))
            frag6 |= ext & (nh == 44)
            nh = np.where(ext, nxt, nh)
            pos = np.where(ext, pos + size, pos)
        proto[idx] = nh.astype(np.uint8)
        l4[idx] = pos
        fragment[idx] = frag6
        bad6 = trunc & ~snap_cut[idx]
        reason[idx[bad6]] = R["truncated_IPv6_ext_header"]

    ip_end = l3 + ip_bytes
    cap_end = np.minimum(ip_end, caplen)
    l4_avail = cap_end - l4
    ok = (reason == 0) & (ipver > 0) & ~fragment

    sport = np.zeros(n, np.int32)
    dport = np.zeros(n, np.int32)
    tcp_flags = np.zeros(n, np.uint8)
    seq = np.zeros(n, np.uint32)
    payload_start = l4.copy()

    is_tcp = ok & (proto == TCP)
    if is_tcp.any():
        idx = np.nonzero(is_tcp)[0]
        o = base[idx] + l4[idx]
        sport[idx] = g.u16(o)
        dport[idx] = g.u16(o + 2)
        seq[idx] = g.u32(o + 4)
        doff = (g.u8(o + 12) >> 4).astype(np.int64) * 4
        tcp_flags[idx] = g.u8(o + 13)
        payload_start[idx] = l4[idx] + doff
        la = l4_avail[idx]
        r = np.where(la < 20, R["truncated_TCP_header"], 0)
        r = np.where((r == 0) & ((doff < 20) | (doff > la)), R["bad_TCP_header_len"], r)
        r = np.where((r == 0) & (l4[idx] + doff > ip_end[idx]), R["bad_TCP_header_len"], r)
        # a snaplen-cut packet may lose its TCP options: only the fixed header must be there
        r = np.where(snap_cut[idx] & (r == R["bad_TCP_header_len"]) & (la >= 20) & (doff >= 20), 0, r)
        reason[idx] = np.where(reason[idx] == 0, r, reason[idx])

    is_udp = ok & ((proto == UDP) | (proto == SCTP))
    if is_udp.any():
        idx = np.nonzero(is_udp)[0]
        o = base[idx] + l4[idx]
        sport[idx] = g.u16(o)
        dport[idx] = g.u16(o + 2)
        udp = proto[idx] == UDP
        hlen = np.where(udp, 8, 12)
        payload_start[idx] = l4[idx] + hlen
        ulen = g.u16(o + 4).astype(np.int64)
        la = l4_avail[idx]
        r = np.where(la < hlen, np.where(udp, R["truncated_UDP_header"], R["truncated_IP"]), 0)
        room = ip_end[idx] - l4[idx]
        r = np.where((r == 0) & udp & ((ulen < 8) | (ulen > room)), R["bad_UDP_length"], r)
        reason[idx] = np.where(reason[idx] == 0, r, reason[idx])
        # UDP payload ends at the UDP length (it may be shorter than the IP payload)
        ip_end[idx] = np.where(udp & (r == 0), l4[idx] + ulen, ip_end[idx])

    icmp_oneway = np.zeros(n, bool)
    is_icmp = ok & ((proto == ICMP) | (proto == ICMP6)) & (l4_avail >= 2)
    if is_icmp.any():
        idx = np.nonzero(is_icmp)[0]
        o = base[idx] + l4[idx]
        typ = g.u8(o).astype(np.int32)
        code = g.u8(o + 1).astype(np.int32)
        pair4 = np.full(256, -1, np.int32)
        pair6 = np.full(256, -1, np.int32)
        for k, v in ICMP4_PAIRS.items():
            pair4[k] = v
        for k, v in ICMP6_PAIRS.items():
            pair6[k] = v
        peer = np.where(proto[idx] == ICMP, pair4[typ], pair6[typ])
        sport[idx] = typ
        dport[idx] = np.where(peer >= 0, peer, code)
        icmp_oneway[idx] = peer < 0
        payload_start[idx] = l4[idx] + 8

    ipver[reason != 0] = 0
    payload_len = np.clip(ip_end - payload_start, 0, None).astype(np.int32)
    payload_cap = np.clip(np.minimum(ip_end, caplen) - payload_start, 0, None).astype(np.int32)
    return Headers(
        reason=reason,
        ipver=ipver,
        fragment=fragment & (reason == 0),
        snap_cut=snap_cut,
        vlan_outer=vlan_outer,
        vlan_inner=vlan_inner,
        proto=proto,
        ip_bytes=ip_bytes.astype(np.int32),
        src_hi=src_hi,
        src_lo=src_lo,
        dst_hi=dst_hi,
        dst_lo=dst_lo,
        sport=sport,
        dport=dport,
        icmp_oneway=icmp_oneway,
        tcp_flags=tcp_flags,
        seq=seq,
        payload_off=(base + payload_start).astype(np.int64),
        payload_len=payload_len,
        payload_cap=payload_cap,
    )
