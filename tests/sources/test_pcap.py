"""The capture reader: formats by magic, byte orders, resolutions, merging, and faults with offsets."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.errors import InputError
from appliance.sources.pcap import CaptureReader, expand_paths, sniff_format

PEER = Path(__file__).resolve().parents[2].parent / "shared" / "pcaps" / "peer"


def pcap_bytes(packets: list[tuple[int, int, bytes]], endian: str = "<", nanos: bool = False, linktype: int = 1) -> bytes:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)
    for sec, frac, data in packets:
        out += struct.pack(endian + "IIII", sec, frac, len(data), len(data)) + data
    return out


def read_all(path: Path, batch_size: int = 65536) -> tuple[list[int], list[bytes], CaptureReader]:
    r = CaptureReader([str(path)], batch_size=batch_size)
    ts: list[int] = []
    data: list[bytes] = []
    for b in r.batches():
        ts += b.ts.tolist()
        data += [b.packet(i) for i in range(len(b))]
    return ts, data, r


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True])
def test_byte_orders_and_resolutions(tmp_path: Path, endian: str, nanos: bool) -> None:
    pkts = [(1_700_000_000, 123, b"\x01" * 60), (1_700_000_001, 999, b"\x02" * 61)]
    f = tmp_path / "x.pcap"
    f.write_bytes(pcap_bytes(pkts, endian, nanos))
    ts, data, r = read_all(f)
    mult = 1 if nanos else 1000
    assert ts == [1_700_000_000 * 10**9 + 123 * mult, 1_700_000_001 * 10**9 + 999 * mult]
    assert data == [b"\x01" * 60, b"\x02" * 61]
    assert r.stats.errors == []


def test_small_batches_give_the_same_packets(tmp_path: Path) -> None:
    ts1, d1, _ = read_all(PEER / "ndpi" / "reddit.pcap")
    ts2, d2, _ = read_all(PEER / "ndpi" / "reddit.pcap", batch_size=7)
    assert ts1 == ts2 and d1 == d2 and len(d1) == 1942


def test_pcapng_two_interfaces_and_skipped_blocks() -> None:
    ts, data, r = read_all(PEER / "zeek" / "pcapng-multi-interface.pcapng")
    assert len(data) == 6 and r.stats.formats[str(PEER / "zeek" / "pcapng-multi-interface.pcapng")] == "pcapng"
    # the Decryption Secrets Block in this one is skipped, not read as a packet
    ts, data, _ = read_all(PEER / "foxio-ja4" / "chrome-cloudflare-quic-with-secrets.pcapng")
    assert len(data) == 83


def test_gzip_by_magic_not_name(tmp_path: Path) -> None:
    f = tmp_path / "capture.bin"
    f.write_bytes(gzip.compress((PEER / "arkime" / "dns-udp.pcap").read_bytes()))
    assert sniff_format(str(f)) == "pcap+gzip"
    assert len(read_all(f)[1]) == 5


def test_expand_paths_finds_captures_only(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.cap").write_bytes((PEER / "arkime" / "dns-udp.pcap").read_bytes())
    assert expand_paths([str(tmp_path)]) == [str(tmp_path / "sub" / "b.cap")]
    with pytest.raises(InputError, match="no such file"):
        expand_paths([str(tmp_path / "missing.pcap")])


def test_merge_orders_packets_across_files(tmp_path: Path) -> None:
    a = tmp_path / "a.pcap"
    b = tmp_path / "b.pcap"
    a.write_bytes(pcap_bytes([(10, 0, b"a1"), (30, 0, b"a2"), (50, 0, b"a3")]))
    b.write_bytes(pcap_bytes([(20, 0, b"b1"), (40, 0, b"b2")]))
    r = CaptureReader([str(a), str(b)], batch_size=2)
    got = [(int(t), bt.packet(i)) for bt in r.batches() for i, t in enumerate(bt.ts)]
    assert [d for _, d in got] == [b"a1", b"b1", b"a2", b"b2", b"a3"]
    assert [t for t, _ in got] == sorted(t for t, _ in got)


def test_truncated_header_and_record_report_offsets(tmp_path: Path) -> None:
    f = tmp_path / "short.pcap"
    f.write_bytes(pcap_bytes([])[:10])
    _, _, r = read_all(f)
    assert r.stats.errors == [f"{f} at byte 10: truncated file header (need 24 bytes)"]
    g = tmp_path / "cut.pcap"
    whole = pcap_bytes([(1, 0, b"x" * 40), (2, 0, b"y" * 40)])
    g.write_bytes(whole[:-5])
    _, data, r = read_all(g)
    assert data == [b"x" * 40]
    assert r.stats.errors == [f"{g} at byte {24 + 16 + 40}: truncated packet record (51 trailing bytes)"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=600))
def test_mutated_files_never_raise_anything_but_input_errors(tmp_path: Path, noise: bytes, cut: int) -> None:
    base = (PEER / "arkime" / "dns-udp.pcap").read_bytes()
    for i, blob in enumerate((base[:cut] + noise, base[:24] + noise, noise)):
        f = tmp_path / f"m{i}.pcap"
        f.write_bytes(blob)
        try:
            r = CaptureReader([str(f)], batch_size=3)
        except InputError:
            continue
        for b in r.batches():
            assert np.all(b.caplen >= 0)
        for err in r.stats.errors:
            assert err.startswith(str(f))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=300))
def test_mutated_pcapng_never_crashes(tmp_path: Path, noise: bytes) -> None:
    base = (PEER / "zeek" / "pcapng-multi-interface.pcapng").read_bytes()
    f = tmp_path / "m.pcapng"
    pos = len(noise) % len(base)
    f.write_bytes(base[:pos] + noise + base[pos + len(noise):])
    r = CaptureReader([str(f)])
    list(r.batches())
    assert all(e.startswith(str(f)) for e in r.stats.errors)
