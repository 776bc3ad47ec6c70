"""tls.py against the peer captures' facts (FoxIO, Arkime, Zeek, nDPI, tshark) plus edge cases and fuzzing.

The captures are read here with dpkt and each TCP direction is reassembled naively (segments sorted by
sequence number, overlaps dropped): that is enough for these clean captures and keeps the test
independent of the pipeline's own reassembly.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.decode import tls
from appliance.decode.anomaly import Malformed, NeedMore

PEER = Path("/work/shared/pcaps/peer")
ARKIME_TESTS = PEER / "arkime/upstream/tests/pcap"

FlowKey = tuple[str, int, str, int]


def _packets(path: Path) -> Iterator[tuple[str, FlowKey, int, bytes]]:
    """(transport, (src, sport, dst, dport), tcp seq or 0, payload); format detected by magic."""
    with path.open("rb") as f:
        is_pcapng = f.read(4) == b"\x0a\x0d\x0d\x0a"
        f.seek(0)
        reader = dpkt.pcapng.Reader(f) if is_pcapng else dpkt.pcap.Reader(f)
        link = reader.datalink()
        for _, buf in reader:
            if link == dpkt.pcap.DLT_NULL:
                fam = struct.unpack("<I", buf[:4])[0]
                ip = dpkt.ip.IP(buf[4:]) if fam == 2 else dpkt.ip6.IP6(buf[4:])
            else:
                ip = dpkt.ethernet.Ethernet(buf).data  # dpkt unwraps VLAN and PPPoE/PPP
                while not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)) and hasattr(ip, "data"):
                    ip = ip.data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            fam = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
            l4 = ip.data
            if isinstance(l4, (dpkt.tcp.TCP, dpkt.udp.UDP)) and l4.data:
                key = (socket.inet_ntop(fam, ip.src), l4.sport, socket.inet_ntop(fam, ip.dst), l4.dport)
                yield ("tcp" if isinstance(l4, dpkt.tcp.TCP) else "udp"), key, getattr(l4, "seq", 0), bytes(
                    l4.data)


@cache
def _flows(path: Path) -> tuple[dict[FlowKey, bytes], dict[FlowKey, list[bytes]]]:
    """Per-direction TCP byte streams and UDP datagram lists of one capture."""
    segs: dict[FlowKey, list[tuple[int, bytes]]] = defaultdict(list)
    udp: dict[FlowKey, list[bytes]] = defaultdict(list)
    for transport, key, seq, data in _packets(path):
        (segs[key].append((seq, data)) if transport == "tcp" else udp[key].append(data))
    streams = {}
    for key, parts in segs.items():
        out = bytearray()
        base = min(s for s, _ in parts)
        for seq, data in sorted(parts):
            off = seq - base
            if off > len(out):
                break  # a hole: the rest is beyond what the hello needs
            out += data[len(out) - off:]
        streams[key] = bytes(out)
    return streams, udp


def _tls_stream(stream: bytes) -> bytes:
    """Skip an HTTP CONNECT request/response in front of the TLS bytes (https-connect.pcap)."""
    if stream.startswith((b"CONNECT ", b"HTTP/1.")):
        return stream[stream.index(b"\r\n\r\n") + 4:]
    return stream


def _facts(kind: str) -> list[dict]:
    out = []
    for src in sorted(PEER.iterdir()):
        f = src / "expected.jsonl"
        if f.is_file():
            for line in f.read_text().splitlines():
                fact = json.loads(line)
                if fact["kind"] == kind:
                    fact["_path"] = src / fact["pcap"]
                    out.append(fact)
    return out


# The SSLv2-format hello has its own test; every other TCP ClientHello fact is checked field by field.
TCP_FACTS = [f for f in _facts("tls_client")
             if f["transport"] == "tcp" and f.get("client_hello_format") != "sslv2-record"]


def _fact_id(f: dict) -> str:
    return f"{f['_path'].relative_to(PEER)}:{f['sport']}#{f.get('ch_index', 1)}"


def _client_hello(fact: dict) -> tuple[int, bytes]:
    streams, _ = _flows(fact["_path"])
    stream = _tls_stream(streams[(fact["src"], fact["sport"], fact["dst"], fact["dport"])])
    hellos = [m for m in tls.parse_records(stream, 16) if m[0] in (tls.CLIENT_HELLO, tls.SSLV2_CLIENT_HELLO)]
    return hellos[fact.get("ch_index", 1) - 1]


# Facts we deliberately do not reproduce, with the reason.
NON_ASCII_ALPN = "tls-non-ascii-alpn.pcapng"


@pytest.mark.parametrize("fact", TCP_FACTS, ids=_fact_id)
def test_tcp_client_hello_matches_peer_facts(fact: dict) -> None:
    htype, body = _client_hello(fact)
    assert htype == tls.CLIENT_HELLO
    got = tls.client_hello_fields(body)
    assert got["tls.client.server_name"] == fact["sni"]
    assert got["tls.client.alpn"] == fact["alpn"]
    assert got["tls.next_protocol"] == (fact["alpn"][0] if fact["alpn"] else None)
    if "ja3" in fact:
        assert got["tls.client.ja3_string"] == fact["ja3_string"]
        assert got["tls.client.ja3"] == fact["ja3"]
    if fact["pcap"] == NON_ASCII_ALPN:
        return  # see test_non_ascii_alpn_follows_spec_not_snapshot_tools
    if "ja4" in fact:
        assert got["tls.client.ja4"] == fact["ja4"]
    if "ja4_r" in fact:
        assert got["tls.client.ja4_r"] == fact["ja4_r"]


def test_every_tcp_fact_file_is_covered() -> None:
    """The parametrised test above really covers the captures the brief names."""
    names = {str(f["_path"].relative_to(PEER)) for f in TCP_FACTS}
    for must in ("foxio-ja4/tls-handshake.pcapng", "foxio-ja4/tls12.pcap",
                 "foxio-ja4/tls-non-ascii-alpn.pcapng", "ndpi/tls_2_reasms.pcapng",
                 "zeek/tls/chrome-1250-tls-x25519-kyber.pcap", "arkime/tls13.pcap",
                 "zeek/tls/hrr.pcap", "ndpi/ja3_lots_of_cipher_suites.pcap", "arkime/openssl-ssl3.pcap"):
        assert must in names
    assert sum(f["pcap"] == "tls-handshake.pcapng" for f in TCP_FACTS) == 64


def test_non_ascii_alpn_follows_spec_not_snapshot_tools() -> None:
    """First ALPN value is 0xba 0xad. FoxIO's Rust/Python tools at the snapshot print "99" (FoxIO issue
    #178), but the JA4 spec (technical_details/JA4.md "ALPN Extension Value", confirmed by FoxIO in #178)
    says: not alphanumeric → first and last character of the value's hex, i.e. "bd". Everything else in
    the fingerprint must still agree with FoxIO."""
    fact = next(f for f in TCP_FACTS if f["pcap"] == NON_ASCII_ALPN)
    got = tls.client_hello_fields(_client_hello(fact)[1])
    assert got["tls.client.alpn"] == ["\ufffd\ufffd", "http/1.1"] == fact["alpn"]
    assert fact["ja4"][8:10] == "99"
    assert got["tls.client.ja4"] == fact["ja4"][:8] + "bd" + fact["ja4"][10:]
    assert got["tls.client.ja4_r"] == fact["ja4_r"][:8] + "bd" + fact["ja4_r"][10:]


def test_sslv2_client_hello() -> None:
    """arkime/pppoe.pcap (README caveat 2): SSLv2 record format; no SNI/ALPN and no JA3/JA4."""
    fact = next(f for f in _facts("tls_client") if f.get("client_hello_format") == "sslv2-record")
    htype, body = _client_hello(fact)
    assert htype == tls.SSLV2_CLIENT_HELLO
    assert body[:2] == b"\x03\x00"  # SSL 3.0 inside the SSLv2 record
    got = tls.client_hello_fields(body, sslv2=True)
    assert got["tls.client.server_name"] == fact["sni"] == ""
    assert got["tls.client.alpn"] == fact["alpn"] == []
    assert got["tls.client.ja3"] is None and got["tls.client.ja4"] is None
    suites = got["tls.client.cipher_suites"]
    assert isinstance(suites, list) and "0004" in suites  # TLS_RSA_WITH_RC4_128_MD5, the server's choice


ARKIME_SERVER = ["curl-enabled-tls13", "https-connect", "tls-split-client-hello", "openssl-tls1", "tls13",
                 "openssl-ssl3", "pppoe", "tls-alpn-h2"]
ARKIME_VERSION = {"TLSv1.3": "1.3", "TLSv1.2": "1.2", "TLSv1": "1.0", "SSLv3": "ssl3",
                  "TLSv1.3-draft-18": "1.3-draft-18"}


@pytest.mark.parametrize("name", ARKIME_SERVER)
def test_server_hello_ja3s_matches_arkime(name: str) -> None:
    """JA3S and version against Arkime's own session JSON (upstream tests/pcap/<name>.test)."""
    sessions = json.loads((ARKIME_TESTS / f"{name}.test").read_text())["sessions3"]
    session = next(s["body"] for s in sessions if "tls" in s["body"])
    path = next(p for p in (PEER / "arkime" / f"{name}.pcap", PEER / "foxio-ja4" / f"{name}.pcap")
                if p.exists())
    streams, _ = _flows(path)
    server = (session["destination"]["ip"], session["destination"]["port"], session["source"]["ip"],
              session["source"]["port"])
    msgs = tls.parse_records(_tls_stream(streams[server]))
    assert msgs[0][0] == tls.SERVER_HELLO
    got = tls.server_hello_fields(msgs[0][1])
    assert got["tls.server.ja3s"] == session["tls"]["ja3s"][0]
    assert got["tls.version"] == ARKIME_VERSION[session["tls"]["version"][0]]
    assert len(got["tls.cipher"]) == 4  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# Record layer behaviour on a real hello (Chrome 125, > 1 MSS) re-framed in several ways


@cache
def _kyber() -> bytes:
    fact = next(f for f in TCP_FACTS if "kyber" in f["pcap"])
    streams, _ = _flows(fact["_path"])
    return streams[(fact["src"], fact["sport"], fact["dst"], fact["dport"])]


def _hello_msg() -> bytes:
    """The handshake message (header + body) of the first record of the Kyber stream."""
    s = _kyber()
    rlen = int.from_bytes(s[3:5], "big")
    return s[5:5 + rlen]


def _records(msg: bytes, size: int, ct: int = 22) -> bytes:
    return b"".join(bytes([ct, 3, 1]) + len(msg[i:i + size]).to_bytes(2, "big") + msg[i:i + size]
                    for i in range(0, len(msg), size))


def test_need_more_for_every_prefix_then_complete() -> None:
    stream = _kyber()
    msg = _hello_msg()
    end = 5 + len(msg)
    for cut in list(range(0, 40)) + list(range(40, end, 97)) + [end - 1]:
        with pytest.raises(NeedMore):
            tls.parse_records(stream[:cut])
    [(htype, body)] = tls.parse_records(stream[:end])
    assert htype == tls.CLIENT_HELLO and body == msg[4:]


@pytest.mark.parametrize("size", [1, 7, 100, 1000])
def test_hello_fragmented_over_records(size: int) -> None:
    msg = _hello_msg()
    [(htype, body)] = tls.parse_records(_records(msg, size))
    assert htype == tls.CLIENT_HELLO and body == msg[4:]
    assert tls.client_hello_fields(body)["tls.client.server_name"] == tls.client_hello_fields(
        _hello_msg()[4:])["tls.client.server_name"]


def test_stops_at_application_data_and_limit() -> None:
    msg = _hello_msg()
    two = _records(msg, 5000) + _records(b"\x0b\x00\x00\x02ab", 100) + _records(b"xx", 10, ct=23)
    assert [t for t, _ in tls.parse_records(two)] == [1, 11]
    assert [t for t, _ in tls.parse_records(two, limit_messages=1)] == [1]
    # After ChangeCipherSpec, an encrypted (non-hello) handshake record ends parsing quietly.
    tail = _records(b"\x01", 1, ct=20) + _records(b"\x9f\x12\x34\x56garbage", 100)
    assert [t for t, _ in tls.parse_records(_records(msg, 5000) + tail)] == [1]


@pytest.mark.parametrize(("data", "reason"), [
    (b"GET / HTTP/1.1\r\n\r\n", "TLS_not_handshake"),
    (b"\x17\x03\x03\x00\x02ab", "TLS_not_handshake"),
    (b"\x16\x03\x01\xff\xff" + b"\x00" * 10, "TLS_record_len_lies"),
    (b"\x16\x03\x01\x00\x00", "TLS_record_len_lies"),
    (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "TLS_handshake_len_lies"),
    (b"\x16\x03\x01\x00\x04\x01\x00\x00\x09" + b"\x17\x03\x03\x00\x01a", "TLS_handshake_len_lies"),
    (b"\x16\x07", "TLS_not_handshake"),
    (b"\x80\x10\x04", "TLS_not_handshake"),
    (b"\x80\x0b\x01\x03\x00\x00\x03\x00\x00\x00\x09\x00\x00", "TLS_handshake_len_lies"),
])
def test_malformed_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as e:
        tls.parse_records(data)
    assert e.value.reason == reason


def test_client_hello_length_lies() -> None:
    body = _hello_msg()[4:]
    with pytest.raises(Malformed) as e:
        tls.client_hello_fields(body[:-1])
    assert e.value.reason == "TLS_client_hello_len_lies"
    with pytest.raises(Malformed):
        tls.client_hello_fields(body[:20])


def test_ja4_counts_capped_and_grease_removed() -> None:
    """Synthetic hello: 120 ciphers (JA4 caps the count at 99), GREASE everywhere, no extensions."""
    ciphers = b"\x0a\x0a" + b"".join(i.to_bytes(2, "big") for i in range(1, 121))
    body = b"\x03\x03" + b"\x00" * 32 + b"\x00" + len(ciphers).to_bytes(2, "big") + ciphers + b"\x01\x00"
    got = tls.client_hello_fields(body)
    ja4 = str(got["tls.client.ja4"])
    ja3_string = str(got["tls.client.ja3_string"])
    assert ja4.startswith("t12i990000_") and ja4.endswith("_000000000000")
    assert len(got["tls.client.cipher_suites"]) == 120  # type: ignore[arg-type]
    assert ja3_string.startswith("771,1-2-3-") and ja3_string.endswith(",,,")
    assert got["tls.client.ja3"] == hashlib.md5(ja3_string.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Fuzzing: only NeedMore / Malformed may escape


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    for fn in (tls.parse_records, tls.client_hello_fields, tls.server_hello_fields):
        try:
            fn(data)
        except (NeedMore, Malformed):
            pass
    try:
        tls.client_hello_fields(data, sslv2=True)
    except Malformed:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, 2000))
def test_fuzz_mutated_hello(mutations: list[tuple[int, int]], cut: int) -> None:
    stream = bytearray(_records(_hello_msg(), 700))
    for pos, val in mutations:
        stream[pos % len(stream)] = val
    data = bytes(stream[: len(stream) - cut])
    try:
        for htype, body in tls.parse_records(data):
            if htype == tls.CLIENT_HELLO:
                tls.client_hello_fields(body)
                tls.client_hello_fields(body, quic=True)
    except (NeedMore, Malformed):
        pass
