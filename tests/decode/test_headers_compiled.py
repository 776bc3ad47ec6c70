"""_headers.c must decode exactly what the numpy reference decodes: every column, every packet."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.decode import headers
from appliance.decode.headers import _COLUMNS, decode_headers, decode_headers_numpy
from appliance.sources.batch import PAD, PacketBatch
from appliance.sources.pcap import CaptureReader
from appliance.testing.packets import batch_from_frames

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT.parent / "shared" / "pcaps" / "peer"
LINKTYPES = [1, 113, 276, 0, 108, 101, 12, 14, 228, 229, 147]


def _assert_same(batch: PacketBatch) -> int:
    a, b = decode_headers(batch), decode_headers_numpy(batch)
    for name, dtype in _COLUMNS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == np.dtype(dtype), name
        bad = np.flatnonzero(x != y)
        assert not len(bad), f"{name} differs at packet {bad[0]}: {x[bad[0]]} != {y[bad[0]]}"
    return len(batch)


def test_the_compiled_decoder_is_built_where_a_compiler_exists() -> None:
    if shutil.which("cc") or shutil.which("gcc"):
        assert headers.COMPILED, "appliance/decode/_headers.c was not built: run pip install -e . again"


def test_both_decoders_agree_on_every_peer_and_demo_capture() -> None:
    files = sorted(p for p in [*PEER.rglob("*"), *(ROOT / "pcaps").glob("*")] if p.is_file() and p.suffix in (".pcap", ".pcapng", ".cap", ".gz"))
    assert len(files) >= 45
    packets = 0
    for path in files:
        reader = CaptureReader([str(path)], batch_size=4096)
        for batch in reader.batches():  # batches point into a memory map of the whole file
            packets += _assert_same(batch)
    assert packets > 20_000


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=0, max_size=120), st.sampled_from(LINKTYPES), st.integers(0, 40)),
                min_size=1, max_size=12))
def test_both_decoders_agree_on_random_packets(packets: list[tuple[bytes, int, int]]) -> None:
    frames = [p for p, _, _ in packets]
    batch = batch_from_frames(frames, linktype=[lt for _, lt, _ in packets],
                              wirelen=[len(p) + extra for p, _, extra in packets])
    _assert_same(batch)


ETHERTYPES = [0x0800, 0x0800, 0x86DD, 0x86DD, 0x8100, 0x88A8, 0x8864, 0x8847, 0x0806]
PROTOS = [6, 6, 17, 17, 17, 1, 58, 132, 0, 43, 44, 51, 60, 135, 47]


def _frame(ethertype: int, proto: int, total: int | None, tail: bytes, udp_len: int | None) -> bytes:
    eth = bytes(12) + ethertype.to_bytes(2, "big")
    if udp_len is not None and len(tail) >= 6:
        tail = tail[:4] + (udp_len % 65536).to_bytes(2, "big") + tail[6:]
    if ethertype == 0x86DD:
        size = len(tail) if total is None else total
        ip = bytes([0x60, 0, 0, 0]) + size.to_bytes(2, "big") + bytes([proto, 64]) + bytes(range(32))
    else:
        size = 20 + len(tail) if total is None else total
        ip = bytes([0x45, 0]) + size.to_bytes(2, "big") + bytes([0, 0, 0x40, 0, 64, proto, 0, 0, 192, 0, 2, 1, 198, 51, 100, 2])
    return eth + ip + tail


@settings(max_examples=600, deadline=None)
@given(st.sampled_from(ETHERTYPES), st.sampled_from(PROTOS), st.one_of(st.none(), st.integers(0, 120)),
       st.binary(min_size=0, max_size=80), st.one_of(st.none(), st.integers(0, 100)),
       st.lists(st.tuples(st.integers(0, 100), st.integers(0, 255)), max_size=4), st.integers(0, 30))
def test_both_decoders_agree_on_mutated_ip_packets(ethertype: int, proto: int, total: int | None, tail: bytes,
                                                   udp_len: int | None, flips: list[tuple[int, int]], cut: int) -> None:
    """Plausible packets (every transport, extension headers, right and lying IP and UDP lengths,
    VLAN, PPPoE and MPLS ethertypes) with bytes flipped and tails cut, where random bytes rarely go."""
    frame = bytearray(_frame(ethertype, proto, total, tail, udp_len))
    for pos, value in flips:
        if pos < len(frame):
            frame[pos] = value
    full = bytes(frame)
    cut_frame = full[: max(0, len(full) - cut)]
    _assert_same(batch_from_frames([full, cut_frame], wirelen=[len(full), len(full)]))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([0x0800, 0x86DD]), st.integers(0, 15), st.integers(0, 60), st.one_of(st.none(), st.integers(0, 120)),
       st.integers(0, 40), st.booleans())
def test_both_decoders_agree_on_tcp_header_lengths(ethertype: int, doff: int, payload: int, total: int | None, cut: int,
                                                   snap: bool) -> None:
    """TCP data offsets against captured, IP and snaplen-cut lengths (the bad_TCP_header_len rules)."""
    tcp = bytes([0x9C, 0x40, 0x01, 0xBB, 0, 0, 0, 1, 0, 0, 0, 0, doff << 4, 0x18, 0xFF, 0xFF, 0, 0, 0, 0])
    full = _frame(ethertype, 6, total, tcp + bytes(40) + b"p" * payload, None)
    part = full[: max(0, len(full) - cut)]
    _assert_same(batch_from_frames([full, part], wirelen=[len(full), len(full) if snap else len(part)]))


def test_reads_past_the_buffer_are_clipped_alike() -> None:
    """A short last packet makes both decoders clip their reads at the buffer's end."""
    data = np.zeros(40 + PAD, np.uint8)
    data[:14] = np.frombuffer(bytes.fromhex("0000000000010000000000020800"), np.uint8)
    batch = PacketBatch(data, np.array([0, 20], np.int64), np.array([14, 20], np.int32), np.array([60, 20], np.int32),
                        np.zeros(2, np.int64), np.array([1, 101], np.int32), np.arange(1, 3), np.zeros(2, np.int16))
    _assert_same(batch)
