"""Raw Ethernet/IP/TCP/UDP frame builders and fast pcap / pcapng writers for the simulator.

The simulator feeds the rest of the data flow (sources → decode → …) with labelled captures, and the
benchmark needs a million packets in seconds, so frames are built as bytes with `struct` from
per-direction templates instead of per-packet scapy objects (scapy costs ~100 µs a packet).

Checksums use the fact that a big-endian integer is congruent, modulo 0xFFFF, to the one's-complement
sum of its 16-bit words (2**16 ≡ 1 mod 0xFFFF), so one `int.from_bytes` replaces the RFC 1071 word
loop. Sums of even-length chunks add, which lets the pseudo-header part be computed once per path.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import struct
from collections.abc import Iterable, Sequence
from typing import BinaryIO

# TCP flag bits (RFC 9293 §3.1).
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MSS = 1460  # Ethernet MTU 1500 - 20 IPv4 - 20 TCP; data segments carry no options, so this fills them
MSS6 = 1440  # IPv6 header is 40 bytes

# A record: (timestamp ns, frame bytes) or (timestamp ns, captured bytes, original length).
Record = tuple[int, bytes] | tuple[int, bytes, int]

_H = struct.Struct("!H")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")


def ones_sum(data: bytes) -> int:
    """One's-complement sum of `data` as 16-bit big-endian words, reduced modulo 0xFFFF."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8  # pad the odd byte with zero on the right (RFC 1071)
    return n % 0xFFFF


def finish(total: int) -> int:
    """Checksum from a reduced sum. A sum ≡ 0 of non-zero data is one's-complement 0xFFFF, whose
    complement is 0x0000 (RFC 1624 §3); UDP then sends 0xFFFF instead, as 0 means "no checksum"."""
    s = total % 0xFFFF
    return 0xFFFF - s if s else 0


def mac_for(ip: str) -> bytes:
    """A stable, locally administered MAC address for a host (so flows keep their link addresses)."""
    return b"\x02" + hashlib.blake2s(ip.encode(), digest_size=5).digest()


class Path:
    """One direction (src → dst) of a transport conversation: the header templates for its frames."""

    def __init__(self, src: str, dst: str, sport: int, dport: int, proto: int = 6,
                 vlan: int | None = None, ttl: int = 64) -> None:
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        self.v6 = s.version == 6
        if d.version != s.version:
            raise ValueError(f"address family mismatch: {src} -> {dst}")
        self.src_b, self.dst_b = s.packed, d.packed
        self.sport, self.dport, self.proto, self.ttl = sport, dport, proto, ttl
        ethertype = b"\x86\xdd" if self.v6 else b"\x08\x00"
        tag = b"\x81\x00" + _H.pack(vlan & 0xFFF) if vlan is not None else b""
        self.eth = mac_for(dst) + mac_for(src) + tag + ethertype
        # Pseudo-header sum without the length (RFC 9293 §3.1; RFC 8200 §8.1), which varies per packet.
        self.pseudo = (ones_sum(self.src_b + self.dst_b) + proto) % 0xFFFF
        self.ip_id = int.from_bytes(hashlib.blake2s(f"{src}{sport}{dst}{dport}".encode(),
                                                    digest_size=2).digest(), "big")
        self.mss = MSS6 if self.v6 else MSS

    def _ip(self, l4: bytes) -> bytes:
        if self.v6:
            return _IP6.pack(0x60000000, len(l4), self.proto, self.ttl, self.src_b, self.dst_b) + l4
        self.ip_id = (self.ip_id + 1) & 0xFFFF
        hdr = _IP4.pack(0x45, 0, 20 + len(l4), self.ip_id, 0x4000, self.ttl, self.proto, 0,
                        self.src_b, self.dst_b)
        csum = finish(ones_sum(hdr))
        return hdr[:10] + _H.pack(csum) + hdr[12:] + l4

    def tcp(self, seq: int, ack: int, flags: int, payload: bytes = b"", window: int = 502,
            options: bytes = b"") -> bytes:
        """A complete Ethernet frame carrying one TCP segment with a valid checksum."""
        hlen = 20 + len(options)
        hdr = _TCP.pack(self.sport, self.dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (hlen // 4) << 4,
                        flags, window, 0, 0) + options
        total = self.pseudo + hlen + len(payload) + ones_sum(hdr) + ones_sum(payload)
        seg = hdr[:16] + _H.pack(finish(total)) + hdr[18:] + payload
        return self.eth + self._ip(seg)

    def udp(self, payload: bytes) -> bytes:
        """A complete Ethernet frame carrying one UDP datagram with a valid checksum."""
        length = 8 + len(payload)
        hdr = _UDP.pack(self.sport, self.dport, length, 0)
        total = self.pseudo + length + ones_sum(hdr) + ones_sum(payload)
        return self.eth + self._ip(hdr[:6] + _H.pack(finish(total) or 0xFFFF) + payload)


# SYN options: MSS, NOP, WS 7, NOP, NOP, SACK permitted (12 bytes, keeps the 4-byte alignment).
def _syn_options(mss: int) -> bytes:
    return b"\x02\x04" + _H.pack(mss) + b"\x01\x03\x03\x07\x01\x01\x04\x02"


class TcpConn:
    """A TCP connection as seen from one vantage point, appending timestamped frames to `sink`.

    `near` is the vantage → client → vantage round trip and `far` the vantage → server → vantage
    round trip, in ns: a capture at a relay's uplink sees its inbound clients far away and itself
    near, and so on. Segments are cut at the path MSS; the receiver acknowledges every second one.
    """

    def __init__(self, sink: list[Record], rng: random.Random, client: str, cport: int, server: str,
                 sport: int, near: int, far: int, vlan: int | None = None) -> None:
        self.sink, self.rng = sink, rng
        self.c2s = Path(client, server, cport, sport, vlan=vlan, ttl=64)
        self.s2c = Path(server, client, sport, cport, vlan=vlan, ttl=rng.choice((52, 56, 57, 121)))
        self.cseq = rng.getrandbits(32)
        self.sseq = rng.getrandbits(32)
        self.near, self.far = near, far
        self.last = 0
        self._queue: list[tuple[int, bool, bytes]] = []

    def _emit(self, t: int, frame: bytes) -> None:
        self.sink.append((t, frame))
        if t > self.last:
            self.last = t

    def open(self, t: int) -> int:
        """Three-way handshake starting at t; returns the time the client's ACK passes the vantage."""
        c, s = self.c2s, self.s2c
        self._emit(t, c.tcp(self.cseq, 0, SYN, window=64240, options=_syn_options(c.mss)))
        t1 = t + self.far
        self._emit(t1, s.tcp(self.sseq, self.cseq + 1, SYN | ACK, window=65160, options=_syn_options(s.mss)))
        self.cseq += 1
        self.sseq += 1
        t2 = t1 + self.near
        self._emit(t2, c.tcp(self.cseq, self.sseq, ACK))
        return t2

    def send(self, t: int, from_client: bool, payload: bytes, gap: int = 12_000) -> int:
        """Send `payload` from one side starting at t (segments `gap` ns apart); returns the last time."""
        if from_client:
            path, back, seq, ack, rtt = self.c2s, self.s2c, self.cseq, self.sseq, self.far
        else:
            path, back, seq, ack, rtt = self.s2c, self.c2s, self.sseq, self.cseq, self.near
        mss = path.mss
        n = 0
        for off in range(0, len(payload), mss):
            chunk = payload[off:off + mss]
            last = off + mss >= len(payload)
            self._emit(t, path.tcp(seq, ack, (PSH | ACK) if last else ACK, chunk))
            seq += len(chunk)
            n += 1
            if n % 2 == 0 or last:
                # Delayed ACK from the receiver (RFC 9293 §3.8.6.3: at least every second segment).
                self._emit(t + rtt + 40_000, back.tcp(ack, seq, ACK))
            if not last:
                t += gap
        if from_client:
            self.cseq = seq
        else:
            self.sseq = seq
        return t

    def queue(self, t: int, from_client: bool, payload: bytes) -> None:
        """Defer a send: messages of interleaved requests on one pooled connection are queued and
        flushed in time order, so sequence numbers grow with time as a reassembler expects."""
        self._queue.append((t, from_client, payload))

    def flush(self, gap: int = 12_000) -> int:
        """Send the queued messages in time order (a direction busy segmenting delays the next)."""
        busy = {True: 0, False: 0}
        self._queue.sort(key=lambda q: q[0])
        for t, side, payload in self._queue:
            busy[side] = self.send(max(t, busy[side] + gap), side, payload, gap)
        self._queue.clear()
        return self.last

    def close(self, t: int, by_client: bool = True) -> int:
        """FIN from one side, FIN+ACK back, final ACK; returns the time of the last frame."""
        c, s = self.c2s, self.s2c
        if by_client:
            self._emit(t, c.tcp(self.cseq, self.sseq, FIN | ACK))
            t1 = t + self.far
            self._emit(t1, s.tcp(self.sseq, self.cseq + 1, FIN | ACK))
            t2 = t1 + self.near
            self._emit(t2, c.tcp(self.cseq + 1, self.sseq + 1, ACK))
        else:
            self._emit(t, s.tcp(self.sseq, self.cseq, FIN | ACK))
            t1 = t + self.near
            self._emit(t1, c.tcp(self.cseq, self.sseq + 1, FIN | ACK))
            t2 = t1 + self.far
            self._emit(t2, s.tcp(self.sseq + 1, self.cseq + 1, ACK))
        self.cseq += 1
        self.sseq += 1
        return t2


# --- capture files -----------------------------------------------------------------------------

LINKTYPE_ETHERNET = 1
_PCAP_HDR = struct.Struct("<IHHiIII")
_PCAP_REC = struct.Struct("<IIII")


def sort_records(records: list[Record]) -> None:
    """Order by time; Python's sort is stable, so ties keep creation order (deterministic output)."""
    records.sort(key=lambda r: r[0])


def pcap_header(snaplen: int = 262144) -> bytes:
    """Classic libpcap global header, microsecond timestamps, little-endian, Ethernet."""
    return _PCAP_HDR.pack(0xA1B2C3D4, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET)


def pcap_records(records: Iterable[Record]) -> bytes:
    """The classic pcap records for `records` (timestamps truncated to microseconds)."""
    out: list[bytes] = []
    pack = _PCAP_REC.pack
    for rec in records:
        t, data = rec[0], rec[1]
        orig = rec[2] if len(rec) == 3 else len(data)  # type: ignore[misc]
        us = t // 1000
        out.append(pack(us // 1_000_000, us % 1_000_000, len(data), orig))
        out.append(data)
    return b"".join(out)


def write_pcap(path: str, records: Sequence[Record]) -> int:
    """Write a classic pcap file; returns its size in bytes."""
    blob = pcap_header() + pcap_records(records)
    with open(path, "wb") as fh:
        fh.write(blob)
    return len(blob)


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def write_pcapng(path: str, records: Sequence[Record], comment: str = "") -> int:
    """Write a pcapng file (one SHB, one Ethernet IDB with ns resolution, EPBs); returns its size."""
    shb_opts = b""
    if comment:
        c = comment.encode()
        shb_opts = struct.pack("<HH", 1, len(c)) + c + b"\0" * (-len(c) % 4) + b"\0\0\0\0"
    # if_tsresol option (code 9) = 9: timestamps in nanoseconds (pcapng draft §4.2).
    idb_opts = struct.pack("<HHB3x", 9, 1, 9) + b"\0\0\0\0"
    parts = [
        _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + shb_opts),
        _block(0x00000001, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, 262144) + idb_opts),
    ]
    for rec in records:
        t, data = rec[0], rec[1]
        orig = rec[2] if len(rec) == 3 else len(data)  # type: ignore[misc]
        parts.append(_block(0x00000006, struct.pack("<IIIII", 0, t >> 32, t & 0xFFFFFFFF, len(data), orig) + data))
    blob = b"".join(parts)
    with open(path, "wb") as fh:
        fh.write(blob)
    return len(blob)


def write_capture(path: str, records: Sequence[Record]) -> int:
    """pcapng when the name ends in .pcapng, else classic pcap."""
    return write_pcapng(path, records) if path.endswith(".pcapng") else write_pcap(path, records)


def stream_pcap(fh: BinaryIO, records: Iterable[Record]) -> None:
    """Append classic pcap records to an open file (the header is written by the caller)."""
    fh.write(pcap_records(records))
