"""_tls.c must walk every ClientHello as tls.py does: the same fields, or the same Malformed.

The hellos are the ones the pipeline itself hands to `client_hello_fields` when it replays every peer
and demo capture (TCP, QUIC and the SSLv2-format one), so the compiled walk is checked on exactly
what production feeds it; then on thousands of truncated, flipped and length-lying variants of them,
and on hypothesis-built hellos whose extension bodies are random or nearly right.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.decode import tls
from appliance.decode.anomaly import Malformed
from appliance.testing.replay import replay

ROOT = Path(__file__).resolve().parents[2]
PEER = ROOT.parent / "shared" / "pcaps" / "peer"

Hello = tuple[bytes, bool, bool]  # body, quic, sslv2


@cache
def _hellos() -> tuple[Hello, ...]:
    """Every ClientHello body the pipeline parses while replaying the peer and demo captures."""
    files = sorted(p for p in [*PEER.rglob("*"), *(ROOT / "pcaps").glob("*")]
                   if p.is_file() and p.suffix in (".pcap", ".pcapng", ".cap", ".gz"))
    assert len(files) >= 45
    seen: list[Hello] = []
    original = tls.client_hello_fields

    def record(body: bytes, quic: bool = False, sslv2: bool = False) -> dict[str, object]:
        seen.append((body, quic, sslv2))
        return original(body, quic, sslv2)

    tls.client_hello_fields = record  # type: ignore[assignment]
    try:
        for path in files:
            with tempfile.TemporaryDirectory() as out:
                replay([str(path)], out)
    finally:
        tls.client_hello_fields = original  # type: ignore[assignment]
    return tuple(seen)


def _compiled(body: bytes, quic: bool) -> dict[str, object]:
    from appliance.decode import _tls  # type: ignore[attr-defined]  # imported here so one test reports "not built"

    return tls._client_hello_dict(_tls.client_hello(body), quic)


def _outcome(fn: object, body: bytes, quic: bool) -> str:
    """Fields or the Malformed, as text: repr also tells 1 from True, tuple from list, b"" from ""."""
    try:
        return repr(fn(body, quic))  # type: ignore[operator]
    except Malformed as exc:
        return repr(("Malformed", exc.reason, str(exc), exc.args))


def _assert_same(body: bytes, quic: bool = False) -> str:
    python = _outcome(tls.client_hello_fields_python, body, quic)
    assert _outcome(_compiled, body, quic) == python, body.hex()
    return python


def test_the_compiled_walk_is_built_where_a_compiler_exists() -> None:
    if shutil.which("cc") or shutil.which("gcc"):
        assert tls.COMPILED, "appliance/decode/_tls.c was not built: run pip install -e . again"


def test_client_hello_fields_uses_the_compiled_walk_except_for_sslv2(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    raw = (0x0303, (0x1301,), (0,), True, "stub.example", [b"h2"], (29,), b"\x00", (0x0403,), (0x0304,))

    class Stub:
        @staticmethod
        def client_hello(body: bytes) -> tuple[object, ...]:
            calls.append(body)
            return raw

    monkeypatch.setattr(tls, "_tls", Stub)
    got = tls.client_hello_fields(b"x", quic=True)
    assert calls == [b"x"]
    assert got["tls.client.server_name"] == "stub.example" and str(got["tls.client.ja4"]).startswith("q13d0101h2_")
    sslv2 = b"\x03\x00\x00\x03\x00\x00\x00\x10\x00\x00\x04" + bytes(16)
    assert tls.client_hello_fields(sslv2, sslv2=True)["tls.client.cipher_suites"] == ["0004"]
    assert calls == [b"x"]


def test_both_walks_agree_on_every_hello_of_the_peer_and_demo_captures() -> None:
    hellos = _hellos()
    assert len(hellos) >= 350 and sum(q for _, q, _ in hellos) >= 20
    fine = 0
    for body, quic, sslv2 in hellos:
        if not sslv2:  # the SSLv2-format hello stays in Python (no JA3/JA4, no extensions)
            fine += not _assert_same(body, quic).startswith("('Malformed'")
            _assert_same(body, not quic)
    assert fine >= 350


def _length_fields(body: bytes) -> list[tuple[int, int]]:
    """(offset, width) of the length fields of a well-formed hello, down into the extensions we read."""
    out = [(34, 1)]
    pos = 35 + body[34]
    out.append((pos, 2))
    pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
    out.append((pos, 1))
    pos += 1 + body[pos]
    if pos + 2 <= len(body):
        out.append((pos, 2))
        pos += 2
        while pos + 4 <= len(body):
            etype = int.from_bytes(body[pos:pos + 2], "big")
            dlen = int.from_bytes(body[pos + 2:pos + 4], "big")
            d0 = pos + 4
            out.append((pos + 2, 2))
            if dlen >= 2 and etype in (0x0000, 0x000A, 0x000D, 0x0010):
                out.append((d0, 2))
            if dlen >= 1 and etype in (0x000B, 0x002B):
                out.append((d0, 1))
            if dlen >= 5 and etype == 0x0000:
                out += [(d0 + 2, 1), (d0 + 3, 2)]  # first name: type and length
            if dlen >= 3 and etype == 0x0010:
                out.append((d0 + 2, 1))  # first protocol name's length
            pos = d0 + dlen
    return out


def _well_formed() -> list[tuple[bytes, bool]]:
    return [(b, q) for b, q, v in _hellos() if not v and not _assert_same(b, q).startswith("('Malformed'")]


def test_both_walks_agree_on_truncated_flipped_and_lying_hellos() -> None:
    """~20,000 variants of the captured hellos; every kind must reach both outcomes many times."""
    rng = random.Random(20_261_130)
    outcomes: dict[str, int] = {}
    for body, quic in _well_formed():
        fields = _length_fields(body)
        variants = [body[:rng.randrange(len(body))] for _ in range(12)]
        for _ in range(12):
            flipped = bytearray(body)
            for _ in range(rng.choice((1, 1, 2, 4))):
                flipped[rng.randrange(len(body))] = rng.randrange(256)
            variants.append(bytes(flipped))
        for _ in range(24):
            off, width = rng.choice(fields)
            value = int.from_bytes(body[off:off + width], "big")
            value = rng.choice((value + rng.choice((-2, -1, 1, 2)), 0, 1, rng.randrange(1 << (8 * width))))
            lie = bytearray(body)
            lie[off:off + width] = (value % (1 << (8 * width))).to_bytes(width, "big")
            variants.append(bytes(lie))
        for variant in variants:
            got = _assert_same(variant, quic)
            key = got.split("'")[3] if got.startswith("('Malformed'") else "fields"
            outcomes[key] = outcomes.get(key, 0) + 1
    assert sum(outcomes.values()) >= 15_000
    assert outcomes["fields"] >= 1_000
    assert outcomes["TLS_client_hello_truncated"] >= 100 and outcomes["TLS_client_hello_len_lies"] >= 5_000


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_both_walks_agree_on_random_bytes(body: bytes, quic: bool) -> None:
    _assert_same(body, quic)


EXT_TYPES = [0x0000, 0x0010, 0x000A, 0x000B, 0x000D, 0x002B, 0x0A0A, 0xFAFA, 0x0033, 0xFF01]


def _u8(data: bytes) -> bytes:
    return bytes([len(data) % 256]) + data


def _u16(data: bytes) -> bytes:
    return (len(data) % 65536).to_bytes(2, "big") + data


# Extension bodies that are well formed for their type, nearly so, or random.
_names = st.lists(st.tuples(st.sampled_from([0, 0, 1, 255]), st.binary(max_size=12)), max_size=3)
_u16s = st.lists(st.sampled_from([0x001D, 0x0017, 0x0A0A, 0x3A3A, 0x0304, 0x0303, 0x0403, 0x7F17]), max_size=6)
_ext_body = st.one_of(
    st.binary(max_size=24),
    _names.map(lambda ns: _u16(b"".join(bytes([t]) + _u16(n) for t, n in ns))),  # server_name list
    st.lists(st.binary(max_size=8), max_size=3).map(lambda ps: _u16(b"".join(_u8(p) for p in ps))),  # ALPN
    _u16s.map(lambda vs: _u16(b"".join(v.to_bytes(2, "big") for v in vs))),  # groups, signature algorithms
    _u16s.map(lambda vs: _u8(b"".join(v.to_bytes(2, "big") for v in vs))),  # supported_versions
    st.binary(max_size=4).map(_u8),  # ec_point_formats
)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(EXT_TYPES), _ext_body), max_size=8), st.binary(max_size=8),
       st.lists(st.sampled_from([0x1301, 0x0A0A, 0xC02B, 0x00FF]), max_size=5), st.booleans(),
       st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=2), st.sampled_from([0, 0, 0, 0, 1, 3]))
def test_both_walks_agree_on_built_hellos(exts: list[tuple[int, bytes]], sid: bytes, ciphers: list[int], quic: bool,
                                          flips: list[tuple[int, int]], cut: int) -> None:
    """Hellos whose lengths are right or nearly right, so the extension parsers themselves are reached."""
    block = b"".join(t.to_bytes(2, "big") + _u16(d) for t, d in exts)
    suites = b"".join(c.to_bytes(2, "big") for c in ciphers)
    hello = bytearray(b"\x03\x03" + bytes(32) + _u8(sid) + _u16(suites) + b"\x01\x00" + _u16(block))
    for pos, value in flips:
        if pos < len(hello):
            hello[pos] = value
    _assert_same(bytes(hello[:len(hello) - cut]), quic)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 0, 3]), st.binary(max_size=20)), min_size=1, max_size=3))
def test_server_names_decode_alike(names: list[tuple[int, bytes]]) -> None:
    """Invalid UTF-8 (lone continuation bytes, surrogates, overlong forms) is replaced the same way."""
    raw = _u16(b"".join(bytes([t]) + _u16(n) for t, n in names))
    block = b"\x00\x00" + _u16(raw)
    got = _assert_same(b"\x03\x03" + bytes(33) + b"\x00\x02\x13\x01\x01\x00" + _u16(block))
    assert "server_name" in got
