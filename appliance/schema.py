"""Event types, their field names, dtypes and one-line docs: the single source of truth.

The same declarations drive the Parquet columns, the JSONL keys, rule validation (an unknown field
is an error) and docs/schema.md. Names follow the Elastic Common Schema where ECS has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

# polars accepts both dtype classes (pl.Utf8) and instances (pl.List(pl.Utf8)); its own alias for
# that union is private, so we name it here.
DType = Any

TIMESTAMP = pl.Datetime("ns", "UTC")
STR_LIST = pl.List(pl.Utf8)
INT_LIST = pl.List(pl.Int64)


@dataclass(frozen=True)
class Field:
    name: str
    dtype: DType
    doc: str


def _f(name: str, dtype: DType, doc: str) -> Field:
    return Field(name, dtype, doc)


# Every packet event carries these (ARCHITECTURE.md "Event schema").
PACKET_COMMON: tuple[Field, ...] = (
    _f("@timestamp", TIMESTAMP, "Packet time of the event (for flows: the first packet)."),
    _f("source.ip", pl.Utf8, "Originator address (the SYN sender, else the first packet's sender)."),
    _f("source.port", pl.Int32, "Originator port; ICMP type for ICMP."),
    _f("destination.ip", pl.Utf8, "Responder address."),
    _f("destination.port", pl.Int32, "Responder port; ICMP code for ICMP."),
    _f("network.transport", pl.Utf8, "tcp, udp, icmp, ipv6-icmp, sctp or the IP protocol number."),
    _f("network.community_id", pl.Utf8, "Community ID v1 flow hash (seed from config, default 0)."),
    _f("network.vlan.id", INT_LIST, "802.1Q/802.1ad tags carried by the flow's first packet, outer first."),
    _f("flow.id", pl.Utf8, "Flow identifier: a hash of the Community ID and start time, the same in replay and live; joins events to their flow."),
)


def _geo(side: str) -> tuple[Field, ...]:
    return (
        _f(f"{side}.as.number", pl.Int64, f"Autonomous system of {side}.ip (enrichment)."),
        _f(f"{side}.as.organization.name", pl.Utf8, f"AS organisation of {side}.ip (enrichment)."),
        _f(f"{side}.geo.country_iso_code", pl.Utf8, f"ISO 3166 country of {side}.ip (enrichment)."),
        _f(f"{side}.anonymity.hosting", pl.Boolean, f"{side}.ip is a hosting/VPS provider (enrichment)."),
        _f(f"{side}.anonymity.vpn", pl.Boolean, f"{side}.ip is an anonymous VPN exit (enrichment)."),
        _f(f"{side}.anonymity.proxy", pl.Boolean, f"{side}.ip is a public or residential proxy (enrichment)."),
        _f(f"{side}.anonymity.tor", pl.Boolean, f"{side}.ip is a Tor exit node (enrichment)."),
    )


ENRICHMENT: tuple[Field, ...] = (
    *_geo("source"),
    *_geo("destination"),
    _f("destination.service", pl.Utf8, "Catalogued service reached, e.g. openai-api (enrichment)."),
)

FLOW: tuple[Field, ...] = (
    *PACKET_COMMON,
    _f("event.start", TIMESTAMP, "First packet of the flow."),
    _f("event.end", TIMESTAMP, "Last packet of the flow."),
    _f("event.duration", pl.Int64, "event.end - event.start in nanoseconds."),
    _f("source.packets", pl.Int64, "Packets sent by the originator."),
    _f("source.bytes", pl.Int64, "IP bytes sent by the originator."),
    _f("source.payload_bytes", pl.Int64, "Transport payload bytes sent by the originator."),
    _f("destination.packets", pl.Int64, "Packets sent by the responder."),
    _f("destination.bytes", pl.Int64, "IP bytes sent by the responder."),
    _f("destination.payload_bytes", pl.Int64, "Transport payload bytes sent by the responder."),
    _f("flow.history", pl.Utf8, "Zeek conn.log-style TCP history (upper case: originator)."),
    _f("flow.end_reason", pl.Utf8, "fin, rst, idle_timeout, active_timeout, evicted or end_of_input."),
    _f("network.protocol", pl.Utf8, "Application protocol seen in the flow: tls, quic, http, dns."),
    _f("tls.client.server_name", pl.Utf8, "SNI of the flow's first ClientHello, if any."),
    _f("url.domain", pl.Utf8, "Host header of the flow's first HTTP request, if any."),
)

TLS: tuple[Field, ...] = (
    *PACKET_COMMON,
    _f("tls.client.server_name", pl.Utf8, "SNI host name (empty string: no SNI extension)."),
    _f("tls.client.ja3", pl.Utf8, "JA3 MD5 of the ClientHello (QUIC too, as tshark does; null for SSLv2 format)."),
    _f("tls.client.ja3_string", pl.Utf8, "JA3 string before hashing."),
    _f("tls.client.ja4", pl.Utf8, "JA4 (FoxIO, BSD-3): t/q, version, SNI, counts, ALPN, hashes."),
    _f("tls.client.ja4_r", pl.Utf8, "JA4 raw (sorted lists, unhashed)."),
    _f("tls.next_protocol", pl.Utf8, "First ALPN value the client offered."),
    _f("tls.client.alpn", STR_LIST, "Every ALPN value the client offered, in order."),
    _f("tls.client.supported_versions", STR_LIST, "supported_versions extension values (hex, GREASE removed)."),
    _f("tls.client.cipher_suites", STR_LIST, "Offered cipher suites (hex, GREASE removed)."),
    _f("tls.client.extensions", STR_LIST, "Extension types in wire order (hex, GREASE removed)."),
    _f("tls.client.signature_algorithms", STR_LIST, "signature_algorithms values in wire order (hex)."),
    _f("tls.server.ja3s", pl.Utf8, "JA3S MD5 of the ServerHello."),
    _f("tls.version", pl.Utf8, "Negotiated version from the ServerHello, e.g. 1.3."),
    _f("tls.cipher", pl.Utf8, "Negotiated cipher suite (hex) from the ServerHello."),
    _f("network.protocol", pl.Utf8, "tls (over TCP) or quic."),
)

HTTP: tuple[Field, ...] = (
    *PACKET_COMMON,
    _f("http.request.method", pl.Utf8, "Request method."),
    _f("http.version", pl.Utf8, "HTTP version of the request line, e.g. 1.1."),
    _f("url.domain", pl.Utf8, "Host header without port (empty: no Host header)."),
    _f("url.path", pl.Utf8, "Request target as sent (path and query)."),
    _f("user_agent.original", pl.Utf8, "User-Agent header."),
    _f("http.request.forwarded_for", pl.Utf8, "X-Forwarded-For, Forwarded or X-Real-IP value."),
    _f("http.request.via", pl.Utf8, "Via header."),
    _f("http.request.auth.scheme", pl.Utf8, "Authorization scheme (bearer, basic, x-api-key, …)."),
    _f("http.request.auth.key_format", pl.Utf8, "Shape of the credential, e.g. sk-48alnum; never the value."),
    _f("http.request.auth.fingerprint", pl.Utf8, "Keyed HMAC-SHA256 fingerprint of the credential."),
    _f("http.request.header_order", pl.Utf8, "Header names in wire order, lower-cased, comma-joined."),
    _f("http.request.header_order_hash", pl.Utf8, "Our HTTP client fingerprint (header order; docs/http-fingerprint.md). Not JA4H."),
    _f("http.request.body.bytes", pl.Int64, "Content-Length of the request, if given."),
    _f("http.response.status_code", pl.Int32, "Status of the matching response, if seen."),
)

DNS: tuple[Field, ...] = (
    *PACKET_COMMON,
    _f("dns.id", pl.Int32, "Transaction id."),
    _f("dns.type", pl.Utf8, "query or answer."),
    _f("dns.question.name", pl.Utf8, "First question name (wire form, dot separated)."),
    _f("dns.question.type", pl.Utf8, "First question type name (A, AAAA, …) or TYPEnn."),
    _f("dns.question.type_code", pl.Int32, "First question type number."),
    _f("dns.questions.name", STR_LIST, "Every question name, in order (mDNS packs several)."),
    _f("dns.questions.type_code", INT_LIST, "Every question type number, in order."),
    _f("dns.answers.data", STR_LIST, "A, AAAA and CNAME answer data, in order."),
    _f("dns.answers.name", STR_LIST, "Owner names of the answers, in order."),
    _f("dns.response_code", pl.Utf8, "NOERROR, NXDOMAIN, … (answers only)."),
)

REQUEST: tuple[Field, ...] = (
    _f("@timestamp", TIMESTAMP, "Time the gateway received the request."),
    _f("source.ip", pl.Utf8, "Client address as seen by the gateway."),
    _f("user_agent.original", pl.Utf8, "User-Agent header."),
    _f("api.key_id", pl.Utf8, "API key fingerprint or provider key id (never the raw key)."),
    _f("account.id", pl.Utf8, "Provider account."),
    _f("organization.id", pl.Utf8, "Provider organization."),
    _f("url.path", pl.Utf8, "Request path."),
    _f("model", pl.Utf8, "Model requested."),
    _f("tokens.input", pl.Int64, "Prompt tokens."),
    _f("tokens.output", pl.Int64, "Completion tokens."),
    _f("http.response.status_code", pl.Int32, "Response status."),
    _f("event.duration", pl.Int64, "Request duration in nanoseconds."),
    _f("tls.client.ja4", pl.Utf8, "Client JA4 where the gateway records it."),
    _f("http.request.header_order", pl.Utf8, "Header names in wire order where the gateway records them."),
)

ACCOUNT: tuple[Field, ...] = (
    _f("@timestamp", TIMESTAMP, "Record time (account.created when nothing else is given)."),
    _f("account.id", pl.Utf8, "Provider account."),
    _f("organization.id", pl.Utf8, "Provider organization."),
    _f("account.created", TIMESTAMP, "Account creation time."),
    _f("email.domain", pl.Utf8, "Domain part of the sign-up email (the local part is never kept)."),
    _f("email.fingerprint", pl.Utf8, "Keyed fingerprint of the full email address."),
    _f("payment.fingerprint", pl.Utf8, "Keyed fingerprint of the payment instrument."),
    _f("payment.card.bin", pl.Utf8, "First six digits of the card (issuer identification)."),
    _f("billing.country", pl.Utf8, "Billing country (ISO 3166)."),
    _f("signup.ip", pl.Utf8, "Address the account was created from."),
)

EVENT_TYPES: dict[str, tuple[Field, ...]] = {
    "flow": FLOW,
    "tls": TLS,
    "http": HTTP,
    "dns": DNS,
    "request": REQUEST,
    "account": ACCOUNT,
}

# Parquet file names under DIR/events/ (ARCHITECTURE.md output contract).
EVENT_FILES: dict[str, str] = {
    "flow": "flows",
    "tls": "tls",
    "http": "http",
    "dns": "dns",
    "request": "requests",
    "account": "accounts",
}


def fields(event_type: str, enriched: bool = True) -> tuple[Field, ...]:
    """The declared fields of an event type, with the enrichment fields where they apply."""
    base = EVENT_TYPES[event_type]
    if not enriched:
        return base
    names = {f.name for f in base}
    if event_type == "account":
        extra = tuple(
            Field(f.name.replace("source.", "signup."), f.dtype, f.doc.replace("source.ip", "signup.ip"))
            for f in ENRICHMENT
            if f.name.startswith("source.")
        )
    elif event_type == "request":
        extra = tuple(f for f in ENRICHMENT if f.name.startswith("source."))
    else:
        extra = ENRICHMENT
    return base + tuple(f for f in extra if f.name not in names)


def polars_schema(event_type: str, enriched: bool = True) -> dict[str, DType]:
    return {f.name: f.dtype for f in fields(event_type, enriched)}


def field_names(event_type: str, enriched: bool = True) -> list[str]:
    return [f.name for f in fields(event_type, enriched)]


def empty_frame(event_type: str, enriched: bool = False) -> pl.DataFrame:
    return pl.DataFrame(schema=polars_schema(event_type, enriched))


def conform(frame: pl.DataFrame, event_type: str, enriched: bool = False) -> pl.DataFrame:
    """Cast a frame to the declared schema: missing columns become nulls, unknown ones are an error."""
    schema = polars_schema(event_type, enriched)
    unknown = [c for c in frame.columns if c not in schema]
    if unknown:
        raise ValueError(f"{event_type} frame has undeclared columns: {unknown}")
    cols = []
    for name, dtype in schema.items():
        if name in frame.columns:
            cols.append(pl.col(name).cast(dtype, strict=False))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    return frame.lazy().select(cols).collect() if frame.height else pl.DataFrame(schema=schema)


def markdown() -> str:
    """docs/schema.md, generated from the declarations above (a test keeps the file in sync)."""
    lines = [
        "# Event schema",
        "",
        "Generated from `appliance/schema.py` by `appliance schema` — edit the declarations, not this file.",
        "Field names follow the Elastic Common Schema where ECS has one. Enrichment fields are added to",
        "every event type that carries the address they describe (`signup.` for accounts).",
        "",
    ]
    for etype in EVENT_TYPES:
        lines += [f"## {etype} (`events/{EVENT_FILES[etype]}.parquet`)", "", "| field | type | meaning |", "|---|---|---|"]
        for f in fields(etype, enriched=True):
            lines.append(f"| `{f.name}` | {_type_name(f.dtype)} | {f.doc} |")
        lines.append("")
    return "\n".join(lines)


def _type_name(dtype: DType) -> str:
    text = str(dtype)
    return text.replace("String", "string").replace("Datetime(time_unit='ns', time_zone='UTC')", "timestamp (ns, UTC)")
