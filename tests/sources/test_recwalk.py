"""The compiled record walk and its pure-Python reference must agree on every input."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.sources import recwalk
from appliance.sources.pcap import MAX_BLOCK, MAX_CAPLEN

PEER = Path(__file__).resolve().parents[2].parent / "shared" / "pcaps" / "peer"
CAPTURES = sorted(p for p in PEER.rglob("*") if p.suffix in (".pcap", ".pcapng", ".cap"))


def _both_pcap(buf: bytes, pos: int, big: bool, limit: int) -> tuple[tuple, tuple]:
    compiled = recwalk.pcap_records(buf, pos, big, MAX_CAPLEN, limit)
    python = recwalk.pcap_records_py(buf, pos, big, MAX_CAPLEN, limit)
    return compiled, python


def _both_pcapng(buf: bytes, pos: int, big: bool, limit: int) -> tuple[tuple, tuple]:
    compiled = recwalk.pcapng_packets(buf, pos, big, MAX_BLOCK, limit)
    python = recwalk._pcapng_packets_py(buf, pos, big, MAX_BLOCK, np.empty(limit, np.int64))
    return compiled, python


def _same(a: tuple, b: tuple) -> None:
    arrays = [x for x in a if isinstance(x, np.ndarray)]
    for x, y in zip(a, b, strict=True):
        if isinstance(x, np.ndarray):
            assert np.array_equal(x, y)
        else:
            assert x == y
    assert arrays


def test_the_compiled_walk_is_built_where_a_compiler_exists() -> None:
    if shutil.which("cc") or shutil.which("gcc"):
        assert recwalk.COMPILED, "appliance/sources/_recwalk.c was not built: run pip install -e . again"


def test_the_walks_agree_on_every_peer_capture() -> None:
    assert len(CAPTURES) >= 40
    walked = 0
    for path in CAPTURES:
        buf = path.read_bytes()
        if buf[:4] == b"\x0a\x0d\x0d\x0a":
            big = buf[8:12] == b"\x1a\x2b\x3c\x4d"
            first_blen = struct.unpack_from(">I" if big else "<I", buf, 4)[0]
            pos = first_blen
            while pos + 8 <= len(buf):  # walk block by block; the fast walk covers each EPB run
                c, p = _both_pcapng(buf, pos, big, 1 << 20)
                _same(c, p)
                walked += len(c[0])
                if c[1] == pos:
                    pos += struct.unpack_from(">I" if big else "<I", buf, pos + 4)[0] or len(buf)
                else:
                    pos = c[1]
        elif buf[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
            big = buf[0] == 0xA1
            c, p = _both_pcap(buf, 24, big, 1 << 20)
            _same(c, p)
            walked += len(c[0])
    assert walked > 1000


def test_a_pcap_walk_stops_at_the_limit_and_resumes_where_it_stopped() -> None:
    buf = (PEER / "ndpi" / "reddit.pcap").read_bytes()
    whole, _, end, _ = recwalk.pcap_records(buf, 24, False, MAX_CAPLEN, 1 << 20)
    parts, pos = [], 24
    while True:
        starts, _, pos, _ = recwalk.pcap_records(buf, pos, False, MAX_CAPLEN, 7)
        if not len(starts):
            break
        parts.append(starts)
    assert np.array_equal(np.concatenate(parts), whole) and pos == end == len(buf)


def test_an_absurd_caplen_stops_the_walk_at_that_record() -> None:
    rec = struct.pack("<IIII", 1, 0, 4, 4) + b"abcd"
    bad = struct.pack("<IIII", 1, 0, MAX_CAPLEN + 1, 60)
    buf = b"\0" * 24 + rec + rec + bad + b"x" * 64
    for starts, fields, pos, absurd in _both_pcap(buf, 24, False, 100):
        assert starts.tolist() == [24, 44] and pos == 64 and absurd
        assert fields.tolist() == [[1, 0, 4, 4], [1, 0, 4, 4]]


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=600), st.integers(0, 40), st.booleans(), st.integers(1, 50))
def test_the_walks_agree_on_random_bytes(data: bytes, pos: int, big: bool, limit: int) -> None:
    c, p = _both_pcap(data, pos, big, limit)
    _same(c, p)
    c, p = _both_pcapng(data, pos, big, limit)
    _same(c, p)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 80)), min_size=1, max_size=30), st.booleans())
def test_the_walks_agree_on_chains_of_plausible_blocks(blocks: list[tuple[int, int]], big: bool) -> None:
    """Chains of well-formed blocks (EPBs among others), where a random-bytes test rarely goes."""
    e = ">" if big else "<"
    buf = b""
    for btype, body in blocks:
        blen = 32 + (body & ~3)
        buf += struct.pack(e + "II", 6 if btype < 5 else btype, blen) + b"\x00" * (blen - 12) + struct.pack(e + "I", blen)
    c, p = _both_pcapng(buf, 0, big, 64)
    _same(c, p)
    assert c[1] <= len(buf)


@pytest.mark.parametrize("big", [False, True])
def test_records_are_found_in_both_byte_orders(big: bool) -> None:
    e = ">" if big else "<"
    buf = b"\0" * 24 + b"".join(struct.pack(e + "IIII", 1, 0, n, n) + b"p" * n for n in (0, 1, 60, 3))
    for starts, fields, pos, absurd in _both_pcap(buf, 24, big, 10):
        assert starts.tolist() == [24, 40, 57, 133] and pos == len(buf) and not absurd
        assert fields[:, 2].tolist() == [0, 1, 60, 3] and fields[:, 0].tolist() == [1, 1, 1, 1]
