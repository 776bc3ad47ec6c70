"""Which fields a rule may name, per logsource, and the Sigma mapping onto them.

Event types come from appliance.schema (the single source of truth, with enrichment fields). Two
more logsources exist only for rules: `alert` (rules over our own alerts, e.g. to escalate) and
`finding` (over findings), with the fields of ARCHITECTURE.md's output contract, flattened.

Plain Sigma rules name log sources by category/product/service and fields by their web-server and
proxy log names (W3C extended log format: c-ip, cs-host, …) or Zeek's. The tables below map those
onto our ECS-style names; anything not in them is rejected with its location.
"""

from __future__ import annotations

import polars as pl

from appliance import schema

_S: pl.DataType = pl.Utf8()
_L: pl.DataType = pl.List(pl.Utf8)

# Output contract (ARCHITECTURE.md "Output contract"): alerts.jsonl, flattened to dotted names.
ALERT_FIELDS: dict[str, pl.DataType] = {
    "@timestamp": schema.TIMESTAMP,
    "rule.id": _S,
    "rule.name": _S,
    "rule.level": _S,
    "source.ip": _S,
    "source.port": pl.Int32(),
    "destination.ip": _S,
    "destination.port": pl.Int32(),
    "network.community_id": _S,
    "event.type": _S,
    "related.ip": _L,
    "related.hosts": _L,
    "related.user": _L,
    "related.hash": _L,
    "evidence.field": _L,
    "evidence.value": _L,
}

# findings.jsonl: one suspected relay host or reseller cluster.
FINDING_FIELDS: dict[str, pl.DataType] = {
    "@timestamp": schema.TIMESTAMP,
    "id": _S,
    "kind": _S,
    "score": pl.Float64(),
    "severity": _S,
    "subject.type": _S,
    "subject.value": _S,
    "entities.type": _L,
    "entities.value": _L,
    "evidence.rule": _L,
    "first_seen": schema.TIMESTAMP,
    "last_seen": schema.TIMESTAMP,
}

LOGSOURCES: tuple[str, ...] = (*schema.EVENT_TYPES, "alert", "finding")


def field_types(logsource: str) -> dict[str, pl.DataType]:
    """Every field a rule over this logsource may name, with its dtype."""
    if logsource == "alert":
        return dict(ALERT_FIELDS)
    if logsource == "finding":
        return dict(FINDING_FIELDS)
    return schema.polars_schema(logsource, enriched=True)


def kind_of(dtype: pl.DataType) -> str:
    """string, number, bool, time or list (of strings): what decides the allowed modifiers."""
    if dtype == pl.Utf8:
        return "string"
    if isinstance(dtype, pl.List):
        return "list"
    if dtype == pl.Boolean:
        return "bool"
    if isinstance(dtype, pl.Datetime):
        return "time"
    return "number"


# Sigma logsource (category, product, service) → our event type. None matches anything.
SIGMA_LOGSOURCES: list[tuple[str | None, str | None, str | None, str]] = [
    ("proxy", None, None, "http"),
    ("webserver", None, None, "http"),
    ("dns", None, None, "dns"),
    ("firewall", None, None, "flow"),
    ("network_connection", None, None, "flow"),
    (None, "zeek", "http", "http"),
    (None, "zeek", "dns", "dns"),
    (None, "zeek", "conn", "flow"),
    (None, "zeek", "ssl", "tls"),
]

# Sigma / W3C / Zeek field names → ours, per event type.
SIGMA_FIELDS: dict[str, dict[str, str]] = {
    "http": {
        "c-ip": "source.ip",
        "src_ip": "source.ip",
        "dst_ip": "destination.ip",
        "r-dnsip": "destination.ip",
        "dst_port": "destination.port",
        "cs-host": "url.domain",
        "c-useragent": "user_agent.original",
        "cs-method": "http.request.method",
        "c-uri": "url.path",
        "cs-uri": "url.path",
        "c-uri-stem": "url.path",
        "cs-uri-stem": "url.path",
        "sc-status": "http.response.status_code",
        "cs-bytes": "http.request.body.bytes",
        "cs-version": "http.version",
        "x-forwarded-for": "http.request.forwarded_for",
        "id.orig_h": "source.ip",
        "id.orig_p": "source.port",
        "id.resp_h": "destination.ip",
        "id.resp_p": "destination.port",
        "host": "url.domain",
        "uri": "url.path",
        "method": "http.request.method",
        "user_agent": "user_agent.original",
        "status_code": "http.response.status_code",
    },
    "dns": {
        "query": "dns.question.name",
        "answer": "dns.answers.data",
        "answers": "dns.answers.data",
        "record_type": "dns.question.type",
        "qtype_name": "dns.question.type",
        "rcode_name": "dns.response_code",
        "src_ip": "source.ip",
        "dst_ip": "destination.ip",
        "id.orig_h": "source.ip",
        "id.resp_h": "destination.ip",
    },
    "flow": {
        "src_ip": "source.ip",
        "dst_ip": "destination.ip",
        "src_port": "source.port",
        "dst_port": "destination.port",
        "DestinationIp": "destination.ip",
        "DestinationPort": "destination.port",
        "SourceIp": "source.ip",
        "SourcePort": "source.port",
        "id.orig_h": "source.ip",
        "id.orig_p": "source.port",
        "id.resp_h": "destination.ip",
        "id.resp_p": "destination.port",
        "proto": "network.transport",
        "history": "flow.history",
        "orig_bytes": "source.payload_bytes",
        "resp_bytes": "destination.payload_bytes",
    },
    "tls": {
        "server_name": "tls.client.server_name",
        "ja3": "tls.client.ja3",
        "ja3s": "tls.server.ja3s",
        "ja4": "tls.client.ja4",
        "version": "tls.version",
        "cipher": "tls.cipher",
        "id.orig_h": "source.ip",
        "id.orig_p": "source.port",
        "id.resp_h": "destination.ip",
        "id.resp_p": "destination.port",
    },
}


def sigma_logsource(category: str | None, product: str | None, service: str | None) -> str | None:
    """Our event type for a Sigma logsource, or None when it does not map onto our events."""
    for cat, prod, svc, ours in SIGMA_LOGSOURCES:
        if cat is not None and cat != category:
            continue
        if prod is not None and prod != product:
            continue
        if svc is not None and svc != service:
            continue
        if cat is None and prod is None and svc is None:
            continue
        return ours
    return None
