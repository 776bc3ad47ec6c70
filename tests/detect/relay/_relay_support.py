"""Event-frame builders for the relay tests: just the columns the detector reads, times in seconds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

S = 1_000_000_000
T0 = 1_700_000_000 * S
RELAY, WEB, API = "203.0.113.7", "198.51.100.5", "104.18.0.1"
C1, C2, C3 = "192.0.2.21", "192.0.2.22", "192.0.2.23"


def ts(xs: list[float]) -> pl.Series:
    return pl.Series([T0 + round(x * S) for x in xs]).cast(pl.Datetime("ns"))


def flows(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Flow events; each row: src, dst, start, end (s), resp_bytes, resp_pkts and optional fields."""
    return pl.DataFrame({
        "event.start": ts([r["start"] for r in rows]), "event.end": ts([r["end"] for r in rows]),
        "source.ip": [r["src"] for r in rows], "destination.ip": [r["dst"] for r in rows],
        "destination.port": [r.get("dport", 443) for r in rows], "network.transport": ["tcp"] * len(rows),
        "destination.payload_bytes": [r["resp_bytes"] for r in rows],
        "destination.packets": [r["resp_pkts"] for r in rows],
        "tls.client.server_name": [r.get("sni") for r in rows],
        "destination.service": [r.get("service") for r in rows],
        "source.geo.country_iso_code": [r.get("country") for r in rows],
        "source.as.number": [r.get("asn") for r in rows],
        "source.as.organization.name": [r.get("org") for r in rows],
        "source.anonymity.hosting": [r.get("hosting") for r in rows],
    }, schema_overrides={"source.as.number": pl.Int64, "source.anonymity.hosting": pl.Boolean})


def hellos(rows: Sequence[tuple[Any, ...]]) -> pl.DataFrame:
    """TLS events: (t, src, dst, sni, ja4, service)."""
    return pl.DataFrame({"@timestamp": ts([r[0] for r in rows]), "source.ip": [r[1] for r in rows],
                         "destination.ip": [r[2] for r in rows], "destination.port": [443] * len(rows),
                         "tls.client.server_name": [r[3] for r in rows], "tls.client.ja4": [r[4] for r in rows],
                         "destination.service": [r[5] for r in rows]},
                        schema_overrides={"destination.service": pl.Utf8, "tls.client.server_name": pl.Utf8})


def requests(rows: Sequence[tuple[Any, ...]]) -> pl.DataFrame:
    """HTTP events: (t, src, dst, method, path, key_format, src_country)."""
    return pl.DataFrame({"@timestamp": ts([r[0] for r in rows]), "source.ip": [r[1] for r in rows],
                         "destination.ip": [r[2] for r in rows], "destination.port": [80] * len(rows),
                         "http.request.method": [r[3] for r in rows], "url.path": [r[4] for r in rows],
                         "http.request.auth.key_format": [r[5] for r in rows],
                         "destination.service": [None] * len(rows),
                         "source.geo.country_iso_code": [r[6] for r in rows]},
                        schema_overrides={"destination.service": pl.Utf8, "http.request.auth.key_format": pl.Utf8,
                                          "source.geo.country_iso_code": pl.Utf8})
