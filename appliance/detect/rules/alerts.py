"""Alert records per the output contract (ARCHITECTURE.md, `alerts.jsonl`).

An alert names its rule (`rule.id`, `rule.name`, `rule.level`), the event's endpoints
(`source.ip`/`port`, `destination.ip`/`port`), `network.community_id`, the `related` entities the
graph stage links (ECS `related.ip`/`related.hosts`, plus typed keys using the finding entity
types: account, api_key, payment, ja4, email_domain, organization, asn) and `evidence`.
Only values already present in events are copied: events carry fingerprints, never raw secrets.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

import polars as pl

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


def iso_many(ns: pl.Series) -> list[str | None]:
    """iso() of many epoch-nanosecond values (Int64, nulls kept) in one polars pass: the same strings.

    Python's datetime and polars' formatter agree from 1970 on (the Int64 nanosecond range ends in
    2262); earlier instants, never seen in capture, take the per-value path. Measured: ~0.3 µs per
    value where iso() takes ~4 µs.
    """
    if ns.len() == 0 or (ns.min() or 0) < 0:  # type: ignore[operator]
        return [iso(v) for v in ns.to_list()]
    secs = pl.from_epoch(ns // 10**9, time_unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S")
    micros = (ns % 10**9 // 1000).cast(pl.Utf8).str.zfill(6)
    return (secs + "." + micros + "Z").to_list()


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


def related_many(columns: dict[str, list[Any]], n: int, strings: Collection[str] = ()) -> list[dict[str, list[Any]]]:
    """related() of n records given as columns (field → n values): the same dicts, built kind by kind.

    `strings` names the columns known to hold only str or None (String dtype): their entities sort
    without `key=str` and one or two of them need no set, the common case (source and destination
    address, the domain). 10,000 alerts: ~15 ms per record → ~4 ms column-wise."""
    by_kind: dict[str, list[str]] = {}
    for fld, kind in RELATED_FIELDS.items():
        if fld in columns:
            by_kind.setdefault(kind, []).append(fld)
    kinds = sorted(by_kind)
    if not kinds:
        return [{} for _ in range(n)]
    per_kind = [_kind([columns[f] for f in by_kind[k]], all(f in strings for f in by_kind[k])) for k in kinds]
    return [{k: v for k, v in zip(kinds, vals, strict=True) if v is not None} for vals in zip(*per_kind, strict=True)]


def _kind(cols: list[list[Any]], strings: bool) -> list[list[Any] | None]:
    """One kind's entity list per record (None: none), from the columns of its fields."""
    if strings:  # str or None only: falsy means absent, and the natural order is related()'s
        if len(cols) == 1:
            return [[v] if v else None for v in cols[0]]
        if len(cols) == 2:
            return [([a] if not b or a == b else [a, b] if a < b else [b, a]) if a else [b] if b else None
                    for a, b in zip(cols[0], cols[1], strict=True)]
        return [sorted(found) if (found := {v for v in vals if v}) else None for vals in zip(*cols, strict=True)]
    if len(cols) == 1:
        return [None if v is None or v == "" else _entities((v,)) if isinstance(v, list) else [v] for v in cols[0]]
    return [_entities(vals) for vals in zip(*cols, strict=True)]


def _entities(values: tuple[Any, ...]) -> list[Any] | None:
    """One kind's entities of one record, as related() lists them; None when it has none."""
    out: set[Any] = set()
    for v in values:
        if v is None or v == "":
            continue
        for item in v if isinstance(v, list) else (v,):
            if item is not None and item != "":
                out.add(item)
    return sorted(out, key=str) if out else None


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
