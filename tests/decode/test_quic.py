"""quic.py: RFC key vectors, every QUIC ClientHello fact of the peer captures, synthetic packets, fuzzing.

Synthetic Initial packets are protected here, in the test, with `cryptography` directly (RFC 9001 §5.3,
§5.4), so the decryption path is checked against an encoder that does not share its code.
"""

from __future__ import annotations

import json
import socket
from collections import defaultdict
from functools import cache
from pathlib import Path

import dpkt
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.decode import quic, tls
from appliance.decode.anomaly import Malformed

PEER = Path("/work/shared/pcaps/peer")
V1, V2, DRAFT29, DRAFT34, DRAFT27 = 0x00000001, 0x6B3343CF, 0xFF00001D, 0xFF000022, 0xFF00001B
FlowKey = tuple[str, int, str, int]


@cache
def _datagrams(path: Path) -> dict[FlowKey, list[tuple[int, bytes]]]:
    """UDP payloads per direction, with their 1-based frame numbers; format detected by magic."""
    out: dict[FlowKey, list[tuple[int, bytes]]] = defaultdict(list)
    with path.open("rb") as f:
        is_pcapng = f.read(4) == b"\x0a\x0d\x0d\x0a"
        f.seek(0)
        reader = dpkt.pcapng.Reader(f) if is_pcapng else dpkt.pcap.Reader(f)
        for frame, (_, buf) in enumerate(reader, 1):
            ip = dpkt.ethernet.Ethernet(buf).data  # every QUIC peer capture is Ethernet
            if isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) and isinstance(ip.data, dpkt.udp.UDP):
                fam = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
                udp = ip.data
                key = (socket.inet_ntop(fam, ip.src), udp.sport, socket.inet_ntop(fam, ip.dst), udp.dport)
                out[key].append((frame, bytes(udp.data)))
    return out


def _quic_facts() -> list[dict]:
    facts = []
    for src in sorted(PEER.iterdir()):
        f = src / "expected.jsonl"
        if f.is_file():
            for line in f.read_text().splitlines():
                fact = json.loads(line)
                if fact["kind"] == "tls_client" and fact.get("quic"):
                    fact["_path"] = src / fact["pcap"]
                    facts.append(fact)
    return facts


QUIC_FACTS = _quic_facts()
# nDPI is the only source for this JA4 and it breaks the JA4 spec twice (peer README caveat 1):
# 'd' although the hello has no SNI extension, and ALPN chars 'h3' although the first ALPN is 'h3-34'.
NDPI_FRAGS = "quic_frags_ch_in_multiple_packets.pcapng"


def _flow(fact: dict) -> list[tuple[int, bytes]]:
    return _datagrams(fact["_path"])[(fact["src"], fact["sport"], fact["dst"], fact["dport"])]


@pytest.mark.parametrize("fact", QUIC_FACTS, ids=lambda f: f"{f['pcap']}:{f['sport']}")
def test_peer_quic_client_hello(fact: dict) -> None:
    asm = quic.InitialAssembler()
    done_at = None
    body = None
    for frame, dgram in _flow(fact):
        got = asm.feed(dgram)
        if got is not None:
            assert body is None, "the ClientHello must be returned once"
            body, done_at = got, frame
    assert body is not None and done_at == fact["frame"]  # completes on the packet tshark names
    fields = tls.client_hello_fields(body, quic=True)
    assert fields["tls.client.server_name"] == fact["sni"]
    assert fields["tls.client.alpn"] == fact["alpn"]
    assert fields["tls.client.ja3_string"] == fact["ja3_string"]
    assert fields["tls.client.ja3"] == fact["ja3"]  # tshark's JA3 of the QUIC hello
    if fact["pcap"] != NDPI_FRAGS:
        if "ja4" in fact:
            assert fields["tls.client.ja4"] == fact["ja4"]
        if "ja4_r" in fact:
            assert fields["tls.client.ja4_r"] == fact["ja4_r"]


def test_fact_coverage() -> None:
    names = [f["pcap"] for f in QUIC_FACTS]
    assert names.count("tls-handshake.pcapng") == 20
    for must in (NDPI_FRAGS, "quicietf.pcap", "quic/curl-8.1.2-dev-http3-www-google-de.pcap",
                 "quic/chromium-115.0.5790.110-api-cirrus-com.pcap"):
        assert must in names


def test_ndpi_frags_ja4_deviation_and_reordering() -> None:
    """ClientHello over two Initial packets. Our JA4 follows the spec where nDPI's does not (caveat 1);
    the hashed parts agree. Fed in reverse order, the CRYPTO frames are still reassembled."""
    fact = next(f for f in QUIC_FACTS if f["pcap"] == NDPI_FRAGS)
    client = [d for _, d in _flow(fact) if quic.is_initial(d)]
    assert len(client) == 2
    fwd = quic.InitialAssembler()
    assert fwd.feed(client[0]) is None
    body = fwd.feed(client[1])
    assert body is not None
    ja4 = tls.client_hello_fields(body, quic=True)["tls.client.ja4"]
    assert fact["ja4"] == "q00d0307h3_55b375c5d22e_af0a630e9e67"
    assert ja4 == "q00i0307h4_55b375c5d22e_af0a630e9e67"
    rev = quic.InitialAssembler()
    assert rev.feed(client[1]) is None
    assert rev.feed(client[0]) == body
    assert rev.feed(client[0]) is None and rev.done  # later datagrams are ignored cheaply


# ---------------------------------------------------------------------------------------------------
# RFC vectors and synthetic packets


def test_rfc_client_initial_key_vectors() -> None:
    dcid = bytes.fromhex("8394c8f03e515708")  # RFC 9001 Appendix A / RFC 9369 Appendix A
    assert [x.hex() for x in quic.derive_client_keys(dcid, V1)] == [
        "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c", "9f50449e04a0e810283a1e9933adedd2"]
    assert [x.hex() for x in quic.derive_client_keys(dcid, V2)] == [
        "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f", "45b95e15235d6f45a6b19cbcb0294ba9"]
    with pytest.raises(Malformed):
        quic.derive_client_keys(dcid, 0x0A0A0A0A)


def _varint(v: int) -> bytes:
    return (0x4000 | v).to_bytes(2, "big") if v < 0x4000 else (0x80000000 | v).to_bytes(4, "big")


def _protect(version: int, dcid: bytes, pn: int, plaintext: bytes, ptype: int | None = None) -> bytes:
    """An Initial (or other long-header type) packet protected per RFC 9001 §5.3-5.4."""
    key, iv, hp = quic.derive_client_keys(dcid, version)
    if ptype is None:
        ptype = 1 if version == V2 else 0
    pn_len = 2
    plaintext += b"\x00" * max(0, 20 - len(plaintext))  # padding so the HP sample exists
    token = _varint(0)[1:] if ptype == (1 if version == V2 else 0) else b""  # 1-byte varint 0
    header = (bytes([0xC0 | (ptype << 4) | (pn_len - 1)]) + version.to_bytes(4, "big") + bytes([len(dcid)])
              + dcid + b"\x03abc" + token + _varint(pn_len + len(plaintext) + 16)
              + pn.to_bytes(pn_len, "big"))
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    ct = AESGCM(key).encrypt(nonce, plaintext, header)
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(ct[4 - pn_len:20 - pn_len])
    pn_off = len(header) - pn_len
    out = bytearray(header + ct)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_off + i] ^= mask[1 + i]
    return bytes(out)


def _crypto(offset: int, data: bytes) -> bytes:
    return b"\x06" + _varint(offset) + _varint(len(data)) + data


@cache
def _real_body() -> bytes:
    fact = next(f for f in QUIC_FACTS if f["pcap"] == "quicietf.pcap")
    body = quic.InitialAssembler().feed(_flow(fact)[0][1])
    assert body is not None
    return body


@pytest.mark.parametrize("version", [V1, V2, DRAFT29, DRAFT34, DRAFT27])
def test_synthetic_versions_coalesced_and_out_of_order(version: int) -> None:
    body = _real_body()
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    dcid = bytes(range(8))
    # Second half first, in a datagram that also coalesces a Handshake packet we must skip.
    handshake_type = 3 if version == V2 else 2
    first_dgram = (_protect(version, dcid, 1, b"\x01" + _crypto(300, msg[300:]))
                   + _protect(version, dcid, 2, b"\x01" * 30, ptype=handshake_type))
    # ACK + PING + the first half + PADDING: every frame type an Initial may carry.
    second = b"\x02\x00\x00\x00\x00" + b"\x01" + _crypto(0, msg[:300]) + b"\x00" * 40
    asm = quic.InitialAssembler()
    assert quic.is_initial(first_dgram)
    assert asm.feed(first_dgram) is None
    assert asm.feed(_protect(version, dcid, 0, second)) == body
    fields = tls.client_hello_fields(body, quic=True)
    assert fields["tls.client.server_name"] == "ssl.gstatic.com"


def test_connection_close_and_short_header_are_harmless() -> None:
    dcid = b"\x11" * 8
    asm = quic.InitialAssembler()
    assert asm.feed(_protect(V1, dcid, 0, b"\x1c\x0a\x00\x03bye")) is None
    assert asm.feed(b"\x40" + b"\x00" * 50) is None  # 1-RTT short header: not ours to read
    assert asm.feed(b"\xc0\x00\x00\x00\x00" + b"\x00" * 30) is None  # version negotiation


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: p[:-1] + bytes([p[-1] ^ 1]), "QUIC_decrypt_failed"),
    (lambda p: p[:60], "QUIC_truncated"),
    (lambda p: p[:5] + b"\x40" + p[6:], "QUIC_bad_header"),  # DCID length 64 > 20
])
def test_malformed_packets(make, reason: str) -> None:  # type: ignore[no-untyped-def]
    good = _protect(V1, b"\x22" * 8, 0, _crypto(0, b"\x01\x00\x00\x05hello") + b"\x00" * 1100)
    with pytest.raises(Malformed) as e:
        quic.InitialAssembler().feed(make(good))
    assert e.value.reason == reason


@pytest.mark.parametrize(("plaintext", "reason"), [
    (b"\x08\x00\x00", "QUIC_bad_frame"),  # STREAM is not allowed in Initial packets
    (_crypto(70_000, b"x" * 10), "QUIC_crypto_too_large"),
    (_crypto(0, b"\x02\x00\x00\x05hello"), "QUIC_not_client_hello"),
    (b"\x06\x00\x40\xff" + b"\x00" * 20, "QUIC_bad_frame"),
])
def test_malformed_frames(plaintext: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as e:
        quic.InitialAssembler().feed(_protect(V1, b"\x33" * 8, 0, plaintext))
    assert e.value.reason == reason


def test_is_initial() -> None:
    pkt = _protect(V1, b"\x44" * 8, 0, b"\x01")
    assert quic.is_initial(pkt)
    assert not quic.is_initial(pkt[:6])
    assert not quic.is_initial(b"\x40" + pkt[1:])  # short header
    assert not quic.is_initial(pkt[:1] + b"\x0a\x0a\x0a\x0a" + pkt[5:])  # unknown version
    assert not quic.is_initial(_protect(V1, b"\x44" * 8, 0, b"\x01", ptype=2))  # Handshake


# ---------------------------------------------------------------------------------------------------
# Fuzzing: only Malformed may escape


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1300))
def test_fuzz_random_datagram(data: bytes) -> None:
    try:
        quic.InitialAssembler().feed(data)
        quic.is_initial(data)
    except Malformed:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_decrypted_frames(plaintext: bytes) -> None:
    """Random frame bytes behind a valid AEAD, so the frame parser itself is fuzzed."""
    try:
        body = quic.InitialAssembler().feed(_protect(V1, b"\x55" * 8, 0, plaintext))
        if body is not None:
            tls.client_hello_fields(body, quic=True)
    except Malformed:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1400), st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzz_mutated_real_datagram(mutations: list[tuple[int, int]]) -> None:
    fact = next(f for f in QUIC_FACTS if f["pcap"] == "quicietf.pcap")
    data = bytearray(_flow(fact)[0][1])
    for pos, val in mutations:
        data[pos % len(data)] = val
    try:
        quic.InitialAssembler().feed(bytes(data))
    except Malformed:
        pass
