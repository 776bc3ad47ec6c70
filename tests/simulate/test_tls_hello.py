"""ClientHello/ServerHello builders: dpkt parses them; the declared fingerprints match the bytes."""

from __future__ import annotations

import hashlib
import random

import dpkt
import pytest

from appliance.simulate import tls_hello as th


def _parse(record: bytes) -> dpkt.ssl.TLSClientHello:
    rec = dpkt.ssl.TLSRecord(record)
    assert rec.type == 22 and rec.length == len(record) - 5
    hs = dpkt.ssl.TLSHandshake(rec.data)
    assert hs.type == 1
    return hs.data


@pytest.mark.parametrize("name", list(th.PROFILES))
def test_client_hello_parses_and_ja3_matches_bytes(name: str) -> None:
    h = th.client_hello(name, "api.openai.com", random.Random(3))
    ch = _parse(h.record)
    gset = set(th.GREASE)
    exts = [t for t, _ in ch.extensions if t not in gset]
    ciphers = [c.code for c in ch.ciphersuites if c.code not in gset]
    assert h.ja3_string.split(",")[1] == "-".join(map(str, ciphers))
    assert h.ja3_string.split(",")[2] == "-".join(map(str, exts))
    assert h.ja3 == hashlib.md5(h.ja3_string.encode()).hexdigest()
    sni = dict(ch.extensions)[0]
    assert sni.endswith(b"api.openai.com")
    # JA4 part a: TLS 1.3, SNI present, counts of non-GREASE ciphers and extensions.
    assert h.ja4.startswith(f"t13d{len(ciphers):02d}{len(exts):02d}")
    has_grease = any(c.code in gset for c in ch.ciphersuites)
    assert has_grease == name.startswith("chrome")


def test_known_chrome_ja4() -> None:
    # Chrome 131's published JA4 (FoxIO ja4db); extension order is shuffled, JA4 sorts it away.
    hellos = [th.client_hello("chrome-pq", "x.example", random.Random(i)) for i in range(5)]
    assert {h.ja4 for h in hellos} == {"t13d1516h2_8daaf6152771_02713d6af862"}
    assert len({h.ja3 for h in hellos}) > 1


def test_pq_share_makes_hello_exceed_one_segment() -> None:
    for name in th.BROWSER_PQ:
        ch = _parse(th.client_hello(name, "api.openai.com", random.Random(1)).record)
        ks = dict(ch.extensions)[51]
        assert int.from_bytes(ks[2:4], "big") in (th.X25519MLKEM768, *th.GREASE)
        assert th.X25519MLKEM768.to_bytes(2, "big") + (1216).to_bytes(2, "big") in ks
    assert len(th.client_hello("chrome-pq", "api.openai.com", random.Random(1)).record) > 1460
    assert len(th.client_hello("go", "api.openai.com", random.Random(1)).record) < 1460


def test_chrome_classic_padded_to_512() -> None:
    rec = th.client_hello("chrome", "a.example", random.Random(9)).record
    ch = _parse(rec)
    assert 21 in dict(ch.extensions)
    assert len(rec) - 5 >= 512


def test_server_hello_echoes_session_id() -> None:
    rng = random.Random(2)
    h = th.client_hello("firefox-pq", "api.anthropic.com", rng)
    flight = th.server_hello(h, rng)
    rec = dpkt.ssl.TLSRecord(flight)
    sh = dpkt.ssl.TLSHandshake(rec.data).data
    assert isinstance(sh, dpkt.ssl.TLSServerHello)
    assert sh.session_id == _parse(h.record).session_id
    assert flight[5 + len(rec.data):][:6] == b"\x14\x03\x03\x00\x01\x01"
