"""`relay_host` findings in the output contract's shape (ARCHITECTURE.md "Output contract").

Stage: detect → sinks. Turns a candidate's `Measures`, its score contributions and score into one
JSON-ready dict: a stable id (hash of kind + subject, so the same relay keeps its id across runs
and modes), the subject IP, related entities (clients, aliases, upstream endpoints, JA4s, ASN) and
each measured number with its sentence.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from appliance.detect.relay.evidence import Measures, describe
from appliance.detect.relay.score import severity

KIND = "relay_host"
MAX_CLIENT_ENTITIES = 100  # a finding stays readable; the count is in the fan-in evidence


def finding_id(kind: str, subject: str) -> str:
    return "f-" + hashlib.sha256(f"{kind}|{subject}".encode()).hexdigest()[:16]


def rfc3339(ns: int) -> str:
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC).replace(microsecond=(ns // 1000) % 1_000_000)
    return dt.isoformat().replace("+00:00", "Z")


def entities(m: Measures) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for alias, why in sorted(m.aliases.items()):
        out.append({"type": "ip", "value": alias, "role": "alias", "note": why})
    out += [{"type": "ip", "value": c, "role": "client"} for c in m.clients[:MAX_CLIENT_ENTITIES]]
    for ip, name in m.upstream_endpoints:
        out.append({"type": "ip", "value": ip, "role": "upstream"})
        if name:
            out.append({"type": "domain", "value": name, "role": "upstream"})
    out += [{"type": "domain", "value": n, "role": "served"} for n in m.own_names]
    out += [{"type": "ja4", "value": j, "role": "upstream"} for j in m.upstream_ja4]
    if m.asn is not None:
        out.append({"type": "asn", "value": str(m.asn), "role": "subject"})
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for e in out:
        k = (e["type"], e["value"], e["role"])
        if k not in seen:
            seen.add(k)
            unique.append(e)
    return unique


def build(m: Measures, s: float) -> dict[str, Any]:
    """One finding. Evidence values are the measured numbers; the order is fixed by `describe`."""
    evidence = [{"rule": rule, "summary": summary, "value": value} for rule, value, summary in describe(m)]
    extra = {"lags_ms": m.lags_ms} if m.lags_ms else {}
    return {
        **extra,
        "id": finding_id(KIND, m.ip),
        "kind": KIND,
        "score": round(s, 4),
        "severity": severity(s, m),
        "subject": {"type": "ip", "value": m.ip},
        "entities": entities(m),
        "evidence": evidence,
        "first_seen": rfc3339(m.first_ns),
        "last_seen": rfc3339(m.last_ns),
    }
