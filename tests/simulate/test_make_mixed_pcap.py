"""bench/make_mixed_pcap.py: the benchmark capture has the promised mix and monotonic time."""

from __future__ import annotations

import importlib.util
import os

import dpkt

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "bench", "make_mixed_pcap.py")
_spec = importlib.util.spec_from_file_location("make_mixed_pcap", _PATH)
assert _spec and _spec.loader
mm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mm)


def test_mix(tmp_path) -> None:
    out = str(tmp_path / "m.pcap")
    info = mm.make(out, 20_000, seed=3, truncate=0.02, bogus=0.005)
    assert info["packets"] == 20_000
    seen = {"vlan": 0, "v6": 0, "bogus_ihl": 0, "dns": 0, "http": 0, "pq_first_segment": 0}
    last = 0.0
    with open(out, "rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        n = 0
        for ts, buf in reader:
            n += 1
            assert ts >= last
            last = ts
            if buf[12:14] == b"\x81\x00":
                seen["vlan"] += 1
                buf = buf[:12] + buf[16:]
            if buf[12:14] == b"\x86\xdd":
                seen["v6"] += 1
            elif buf[12:14] == b"\x08\x00":
                if buf[14] & 0xF < 5 or buf[14] & 0xF == 15:
                    seen["bogus_ihl"] += 1
                    continue
                if len(buf) >= 34 and buf[23] == 17 and b"\x00\x35" in (buf[34:36], buf[36:38]):
                    seen["dns"] += 1
                if buf[54:58] in (b"GET ", b"HTTP"):
                    seen["http"] += 1
                if len(buf) == 1514 and buf[54:55] == b"\x16" and buf[59:60] == b"\x01":
                    seen["pq_first_segment"] += 1
    assert n == 20_000
    with open(out, "rb") as fh:
        raw = fh.read()
    off, trunc = 24, 0
    while off < len(raw):
        incl, orig = int.from_bytes(raw[off + 8:off + 12], "little"), int.from_bytes(raw[off + 12:off + 16], "little")
        trunc += incl < orig
        off += 16 + incl
    assert trunc > 100
    assert all(v > 0 for v in seen.values()), seen
