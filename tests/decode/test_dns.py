"""Tests for appliance/decode/dns.py: peer facts, compression and its abuse, salvage, fuzzing."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.decode.anomaly import Malformed
from appliance.decode.dns import parse_message, questions, split_tcp_messages

PEER = Path("/work/shared/pcaps/peer")
DNS_PORTS = {53, 5353, 5355}  # DNS, mDNS (RFC 6762), LLMNR (RFC 4795)


def _dns_payloads(path: Path) -> dict[int, list[bytes]]:
    """frame → DNS messages it completes (UDP payloads; TCP cut with split_tcp_messages per direction)."""
    out: dict[int, list[bytes]] = {}
    pending: dict[tuple[str, int, str, int], bytes] = {}
    with path.open("rb") as fh:
        magic = fh.read(4)
        fh.seek(0)
        reader = dpkt.pcapng.Reader(fh) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(fh)
        for frame, (_, buf) in enumerate(reader, 1):
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                continue
            l4 = ip.data
            if isinstance(l4, dpkt.udp.UDP) and DNS_PORTS & {l4.sport, l4.dport}:
                out[frame] = [bytes(l4.data)]
            elif isinstance(l4, dpkt.tcp.TCP) and l4.data and DNS_PORTS & {l4.sport, l4.dport}:
                fam = socket.AF_INET if isinstance(ip, dpkt.ip.IP) else socket.AF_INET6
                key = (socket.inet_ntop(fam, ip.src), l4.sport, socket.inet_ntop(fam, ip.dst), l4.dport)
                stream = pending.get(key, b"") + bytes(l4.data)
                msgs, used = split_tcp_messages(stream)
                pending[key] = stream[used:]
                if msgs:
                    out[frame] = msgs
    return out


def _facts() -> dict[Path, list[dict[str, object]]]:
    by_pcap: dict[Path, list[dict[str, object]]] = {}
    for exp in sorted(PEER.glob("*/expected.jsonl")):
        for line in exp.read_text().splitlines():
            fact = json.loads(line)
            if fact["kind"] == "dns_query":
                by_pcap.setdefault(exp.parent / str(fact["pcap"]), []).append(fact)
    return by_pcap


DNS_FACTS = _facts()
V6_HTTP = PEER / "arkime/v6-http.pcap"


def test_every_dns_fact_is_covered() -> None:
    assert sum(len(v) for v in DNS_FACTS.values()) == 36


@pytest.mark.parametrize("pcap", sorted(DNS_FACTS), ids=lambda p: p.name)
def test_peer_dns_queries(pcap: Path) -> None:
    frames = _dns_payloads(pcap)
    for fact in DNS_FACTS[pcap]:
        if "frame" not in fact:
            # Arkime's `<root>` in v6-http.pcap is its placeholder for mDNS *responses* that carry no
            # question (QDCOUNT=0); tshark decodes no such query either (the fact's disagreement).
            # test_mdns_responses_without_question checks what we report for those messages.
            assert pcap == V6_HTTP and fact["qname"] == "<root>"
            continue
        where = f"{pcap.name} frame {fact['frame']}"
        msgs = frames[int(str(fact["frame"]))]
        fields = [parse_message(m) for m in msgs]
        assert int(str(fact["dns_id"]), 16) in [f["dns.id"] for f in fields], where
        assert all(f["dns.type"] == "query" and f["dns.response_code"] is None for f in fields), where
        # Facts list every question; the event holds the first, questions() all of them.
        asked = [q for m in msgs for q in questions(m)]
        assert (fact["qname"], fact["qtype"]) in asked, where
        assert (fields[0]["dns.question.name"], fields[0]["dns.question.type_code"]) == asked[0], where


def test_mdns_responses_without_question() -> None:
    frames = _dns_payloads(V6_HTTP)
    responses = [parse_message(m) for msgs in frames.values() for m in msgs]
    empty = [f for f in responses if f["dns.type"] == "answer" and f["dns.question.name"] is None]
    assert len(empty) == 5
    # Arkime's answers for this flow: AAAA records of linux.local.
    arkime_ips = {"2001:6f8:102d:0:a9d2:1782:1995:b63b", "2001:6f8:102d:0:2d0:9ff:fee3:e8de",
                  "2001:6f8:102d:0:1033:c4c:7e57:b19e", "2001:6f8:102d:0:999:39d7:ce98:6e1"}
    seen = {d for f in empty for d in f["dns.answers.data"]}  # type: ignore[attr-defined]
    assert arkime_ips <= seen
    assert all(f["_malformed"] is None and f["dns.response_code"] == "NOERROR" for f in empty)


def test_malformed_dns_keeps_the_question() -> None:
    """ndpi/malformed_dns.pcap: responses whose 2nd question and answers have over-long names."""
    frames = _dns_payloads(PEER / "ndpi/malformed_dns.pcap")
    responses = [parse_message(m) for i in (2, 3, 5, 6) for m in frames[i]]
    for f in responses:
        assert f["dns.question.name"] == "www.xt.com" and f["dns.question.type"] == "A"
        assert f["dns.id"] == 0x84B4 and f["dns.type"] == "answer"
        assert f["_malformed"] == "DNS_name_too_long"
    # The module docstring's claim: dpkt gives up on the whole message, question included.
    with pytest.raises(dpkt.UnpackError):
        dpkt.dns.DNS(frames[2][0])


def test_tcp_dns_answers() -> None:
    frames = _dns_payloads(PEER / "arkime/dns-tcp.pcap")
    answers = [parse_message(m) for msgs in frames.values() for m in msgs]
    answers = [f for f in answers if f["dns.type"] == "answer"]
    assert {f["dns.question.name"] for f in answers} == {"google.com", "aol.com"}
    assert all(f["dns.answers.data"] and f["_malformed"] is None for f in answers)


# ---------------------------------------------------------------------------------------------------
# Hand-built messages


def _name(text: str) -> bytes:
    return b"".join(bytes([len(x)]) + x.encode() for x in text.split(".") if x) + b"\0"


def _msg(flags: int, qd: bytes, an: list[bytes], ident: int = 0x1234, qdcount: int = 1) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qdcount, len(an), 0, 0) + qd + b"".join(an)


def _rr(owner: bytes, rtype: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata


Q = _name("api.openai.com") + b"\x00\x01\x00\x01"
PTR_Q = b"\xc0\x0c"  # pointer to the question name at offset 12


def test_answer_chain_with_compression() -> None:
    target = b"\x03cdn\x0acloudflare\x03net\x00"
    cname_off = 12 + len(Q) + 12  # the CNAME rdata starts after the first RR's fixed part
    msg = _msg(0x8180, Q, [
        _rr(PTR_Q, 5, target),
        _rr(bytes([0xC0, cname_off]), 1, bytes([104, 18, 7, 192])),
        _rr(bytes([0xC0, cname_off]), 28, socket.inet_pton(socket.AF_INET6, "2606:4700::6812:7c0")),
        _rr(PTR_Q, 16, b"\x05hello"),  # TXT: not rendered, does not shift the lists
        _rr(PTR_Q, 12, b"\x03ptr" + PTR_Q),
    ])
    f = parse_message(msg)
    assert f["dns.id"] == 0x1234 and f["dns.type"] == "answer" and f["dns.response_code"] == "NOERROR"
    assert f["dns.question.name"] == "api.openai.com" and f["dns.question.type"] == "A"
    assert f["dns.answers.data"] == ["cdn.cloudflare.net", "104.18.7.192", "2606:4700::6812:7c0",
                                     "ptr.api.openai.com"]
    assert f["dns.answers.name"] == ["api.openai.com", "cdn.cloudflare.net", "cdn.cloudflare.net",
                                     "api.openai.com"]
    assert f["_malformed"] is None


def test_messages_differing_only_in_id_parse_alike_and_keep_their_own_id() -> None:
    """The parse cache keys on everything after the ID: the ID itself must come from each message,
    and a caller changing its result must not change the next one."""
    msg = _msg(0x8180, Q, [_rr(PTR_Q, 1, bytes([104, 18, 7, 192]))])
    first = parse_message(msg)
    first["dns.question.name"] = "changed.example"
    second = parse_message(b"\xbe\xef" + msg[2:])
    assert second["dns.id"] == 0xBEEF and first["dns.id"] == 0x1234
    assert second["dns.question.name"] == "api.openai.com" and second["dns.answers.data"] == ["104.18.7.192"]
    other = parse_message(msg[:2] + bytes([0x81, 0x83]) + msg[4:])  # one header bit apart: NXDOMAIN
    assert other["dns.response_code"] == "NXDOMAIN" and second["dns.response_code"] == "NOERROR"


@pytest.mark.parametrize("rcode, name", [(0, "NOERROR"), (3, "NXDOMAIN"), (2, "SERVFAIL"), (5, "REFUSED"),
                                         (14, "RCODE14")])
def test_response_codes(rcode: int, name: str) -> None:
    assert parse_message(_msg(0x8180 | rcode, Q, []))["dns.response_code"] == name


@pytest.mark.parametrize("qtype, name", [(1, "A"), (28, "AAAA"), (65, "HTTPS"), (255, "ANY"), (12, "PTR"),
                                         (4660, "TYPE4660")])
def test_question_type_names(qtype: int, name: str) -> None:
    f = parse_message(_msg(0x0100, _name("x.example") + struct.pack("!HH", qtype, 1), []))
    assert f["dns.question.type"] == name and f["dns.question.type_code"] == qtype
    assert f["dns.type"] == "query" and f["dns.response_code"] is None


def test_root_and_escaped_names() -> None:
    assert parse_message(_msg(0, b"\x00\x00\x02\x00\x01", []))["dns.question.name"] == "<root>"
    odd = b"\x03a.b\x02\x00\xff\x00" + b"\x00\x01\x00\x01"
    assert parse_message(_msg(0, odd, []))["dns.question.name"] == "a\\046b.\\000\\255"


def test_mdns_class_bit_and_several_questions() -> None:
    qd = _name("linux.local") + b"\x00\xff\x80\x01" + b"\xc0\x0c\x00\x1c\x80\x01"
    msg = _msg(0, qd, [], ident=0, qdcount=2)
    assert questions(msg) == [("linux.local", 255), ("linux.local", 28)]
    assert parse_message(msg)["dns.question.name"] == "linux.local"


@pytest.mark.parametrize("msg, reason", [
    (b"\x12\x34\x01\x00\x00\x01", "DNS_truncated_len_lt_hdr_len"),
    (_msg(0, b"\xc0\x0c\x00\x01\x00\x01", []), "DNS_label_loop"),  # the question points at itself
    (_msg(0, b"\x01a\xc0\x14\x00\x01\x00\x01" + b"\x01b\xc0\x0c", []), "DNS_label_loop"),  # 12 -> 20 -> 12
    (_msg(0, b"\x3f" + b"a" * 63 + b"\xc0\x0c", []), "DNS_label_loop"),  # a label, then back to itself
    (_msg(0, (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", []), "DNS_name_too_long"),
    (_msg(0, b"\x05abc", []), "DNS_truncated_question"),  # qdcount needs >= 5 bytes
    (_msg(0, b"\x07abc\x00\x00\x01\x00\x01", []), "DNS_truncated_name"),
    (_msg(0, _name("a.b") + b"\x00\x01", []), "DNS_truncated_question"),
    (_msg(0, b"\x41abc\x00\x00\x01\x00\x01", []), "DNS_bad_label_type"),
    (_msg(0, b"\xcf\xff\x00\x01\x00\x01", []), "DNS_bad_pointer"),
])
def test_bad_header_or_first_question_raises(msg: bytes, reason: str) -> None:
    with pytest.raises(Malformed) as err:
        parse_message(msg)
    assert err.value.reason == reason


@pytest.mark.parametrize("answer, reason", [
    (PTR_Q + b"\x00\x01\x00\x01\x00\x00", "DNS_truncated_RR"),
    (_rr(PTR_Q, 1, b"\x01\x02\x03\x04")[:-1], "DNS_truncated_RR"),
    (_rr(PTR_Q, 1, b"\x01\x02\x03"), "DNS_bad_A_len"),
    (_rr(PTR_Q, 28, b"\x00" * 4), "DNS_bad_AAAA_len"),
    (_rr(PTR_Q, 5, b"\x03abc\x00\x00"), "DNS_RR_len_lies"),
    (_rr(PTR_Q, 5, b"\x03abc"), "DNS_truncated_name"),  # a CNAME target may not run past its rdata
    (_rr(b"\xc0\x60", 1, b"\x01\x02\x03\x04"), "DNS_bad_pointer"),
])
def test_bad_answer_is_salvaged(answer: bytes, reason: str) -> None:
    good = _rr(PTR_Q, 1, bytes([192, 0, 2, 1]))
    f = parse_message(_msg(0x8180, Q, [good, answer]))
    assert f["_malformed"] == reason
    assert f["dns.question.name"] == "api.openai.com" and f["dns.answers.data"] == ["192.0.2.1"]


def test_split_tcp_messages() -> None:
    a = _msg(0x0100, Q, [])
    b = _msg(0x8180, Q, [_rr(PTR_Q, 1, b"\x01\x02\x03\x04")])
    stream = struct.pack("!H", len(a)) + a + struct.pack("!H", len(b)) + b
    assert split_tcp_messages(stream) == ([a, b], len(stream))
    assert split_tcp_messages(stream[:-1]) == ([a], len(a) + 2)
    assert split_tcp_messages(b"\x00") == ([], 0)
    msgs, used = split_tcp_messages(b"\x00\x00" + stream)
    assert msgs == [b"", a, b] and used == len(stream) + 2
    with pytest.raises(Malformed):
        parse_message(msgs[0])


# ---------------------------------------------------------------------------------------------------
# Fuzzing: only Malformed may escape; a returned message has the declared shapes.

_SEED = _msg(0x8180, Q, [_rr(PTR_Q, 5, b"\x03cdn" + PTR_Q), _rr(b"\xc0\x2c", 1, b"\x01\x02\x03\x04"),
                         _rr(PTR_Q, 28, b"\x00" * 16)])


def _check(msg: bytes) -> None:
    try:
        f = parse_message(msg)
    except Malformed:
        return
    data, names = f["dns.answers.data"], f["dns.answers.name"]
    assert isinstance(data, list) and isinstance(names, list) and len(data) == len(names)
    assert f["dns.type"] in ("query", "answer") and isinstance(f["dns.id"], int)
    assert f["_malformed"] is None or isinstance(f["_malformed"], str)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random(msg: bytes) -> None:
    _check(msg)
    _check(_SEED[:12] + msg)
    split_tcp_messages(msg)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_SEED) - 1), st.integers(0, 255)), max_size=6),
       st.integers(0, len(_SEED)))
def test_fuzz_mutated(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(_SEED)
    for pos, value in edits:
        data[pos] = value
    _check(bytes(data[:cut]))
    _check(bytes(data))


def test_seed_is_clean() -> None:
    """The fuzz seed itself parses completely, so mutations start from a valid message."""
    f = parse_message(_SEED)
    assert f["dns.answers.name"] == ["api.openai.com", "cdn.api.openai.com", "api.openai.com"]
    assert f["dns.answers.data"] == ["cdn.api.openai.com", "1.2.3.4", "::"] and f["_malformed"] is None
