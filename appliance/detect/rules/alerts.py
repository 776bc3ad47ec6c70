"""Alert records per the output contract (ARCHITECTURE.md, `alerts.jsonl`).

An alert names its rule (`rule.id`, `rule.name`, `rule.level`), the event's endpoints
(`source.ip`/`port`, `destination.ip`/`port`), `network.community_id`, the `related` entities the
graph stage links (ECS `related.ip`/`related.hosts`, plus typed keys using the finding entity
types: account, api_key, payment, ja4, email_domain, organization, asn) and `evidence`.
Only values already present in events are copied: events carry fingerprints, never raw secrets.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# Event field → related entity type. Order matters only for readability of the output.
RELATED_FIELDS: dict[str, str] = {
    "source.ip": "ip",
    "destination.ip": "ip",
    "signup.ip": "ip",
    "tls.client.server_name": "hosts",
    "url.domain": "hosts",
    "dns.question.name": "hosts",
    "account.id": "account",
    "organization.id": "organization",
    "api.key_id": "api_key",
    "http.request.auth.fingerprint": "api_key",
    "payment.fingerprint": "payment",
    "tls.client.ja4": "ja4",
    "email.domain": "email_domain",
    "source.as.number": "asn",
    "destination.as.number": "asn",
    "signup.as.number": "asn",
}

ENDPOINT_FIELDS = ("source.ip", "source.port", "destination.ip", "destination.port", "network.community_id")


def iso(ns: int | None) -> str | None:
    """RFC 3339 UTC with microseconds, e.g. 2024-05-01T12:00:00.123456Z."""
    if ns is None:
        return None
    secs, rem = divmod(int(ns), 10**9)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rem // 1000:06d}Z"


def related(record: dict[str, Any]) -> dict[str, list[Any]]:
    """Typed entities of one event (or correlation group), each list sorted and without repeats."""
    out: dict[str, set[Any]] = {}
    for fld, kind in RELATED_FIELDS.items():
        v = record.get(fld)
        if v is None or v == "":
            continue
        for item in v if isinstance(v, list) else [v]:
            if item is not None and item != "":
                out.setdefault(kind, set()).add(item)
    return {k: sorted(v, key=str) for k, v in sorted(out.items())}


def alert(ts_ns: int | None, rule_id: str, title: str, level: str, event_type: str,
          record: dict[str, Any], evidence: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "@timestamp": iso(ts_ns),
        "rule.id": rule_id,
        "rule.name": title,
        "rule.level": level,
        "event.type": event_type,
    }
    for fld in ENDPOINT_FIELDS:
        out[fld] = record.get(fld)
    if out["source.ip"] is None and record.get("signup.ip") is not None:
        out["source.ip"] = record["signup.ip"]
    out["related"] = related(record)
    out["evidence"] = evidence
    return out
