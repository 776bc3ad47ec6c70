"""Community ID v1 flow hashes (corelight/community-id-spec), one per flow, seeded from config.

sha1(seed:u16 BE, lower endpoint address, higher endpoint address, proto:u8, 0:u8, ports) in
base64 with the "1:" prefix. Endpoints are ordered by (address, port) unless the flow is one-way
ICMP; protocols without ports (e.g. RSVP) hash no ports.
"""

from __future__ import annotations

import base64
import hashlib
import struct

PORTED = {6, 17, 132, 1, 58}  # TCP, UDP, SCTP, and ICMP/ICMPv6 (type/code as ports)


def community_id(
    proto: int, saddr: bytes, daddr: bytes, sport: int, dport: int, seed: int = 0, one_way: bool = False
) -> str:
    """The v1 hash of one flow. For ICMP, sport is the type and dport the paired type or the code."""
    if not one_way and (saddr > daddr or (saddr == daddr and sport > dport)):
        saddr, daddr, sport, dport = daddr, saddr, dport, sport
    h = hashlib.sha1(struct.pack("!H", seed & 0xFFFF) + saddr + daddr + struct.pack("!BB", proto, 0))
    if proto in PORTED:
        h.update(struct.pack("!HH", sport & 0xFFFF, dport & 0xFFFF))
    return "1:" + base64.b64encode(h.digest()).decode()
