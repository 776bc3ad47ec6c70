"""Bounded per-host state of the relay detector: the few columns of each event it needs, by role.

Stage: detect. `RelayDetector.add` hands every enriched batch here. Rows are projected to short
column names and split by role (a flow from H to a model API is H's upstream leg; any flow to H is
one of H's inbound legs), because a relay's pooled upstream flows often end (and so arrive) after
all of its inbound ones: nothing can be decided per batch, so the rows are kept until
`findings()`. State is explicit and bounded (ARCHITECTURE.md "State is explicit and bounded"):
each table keeps at most `max_rows_per_host` rows per host and `max_rows` in all, and at most
`max_hosts` hosts; what is dropped is counted in `stats`, oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

# Reseller front-ends and provider SDKs; used only when frames arrive without `destination.service`
# (not enriched), so tests and tools can run the detector on raw replay output.
FALLBACK_AI_NAMES = ("api.openai.com", "api.anthropic.com", "generativelanguage.googleapis.com",
                     "api.mistral.ai", "api.cohere.com", "api.x.ai", "api.groq.com", "api.deepseek.com",
                     "openrouter.ai", "api.together.xyz", "api.fireworks.ai", "api.perplexity.ai")


@dataclass(frozen=True)
class RelayLimits:
    """Bounds of the detector's state (live mode runs for days)."""

    max_rows: int = 2_000_000  # per table
    max_rows_per_host: int = 50_000  # per table and host key
    max_hosts: int = 200_000  # distinct host keys per table
    compact_every: int = 200_000  # rows buffered before a compaction pass


def _col(frame: pl.DataFrame, name: str, dtype: pl.DataType | type[pl.DataType], alias: str) -> pl.Expr:
    if name in frame.columns:
        return pl.col(name).cast(dtype, strict=False).alias(alias)
    return pl.lit(None, dtype=dtype).alias(alias)


def _ns(frame: pl.DataFrame, name: str, alias: str) -> pl.Expr:
    if name in frame.columns:
        return pl.col(name).dt.cast_time_unit("ns").dt.epoch("ns").cast(pl.Int64).alias(alias)
    return pl.lit(None, dtype=pl.Int64).alias(alias)


def _service(frame: pl.DataFrame, *name_cols: str) -> pl.Expr:
    """destination.service, or a match of the named columns against the fallback list."""
    if "destination.service" in frame.columns:
        return pl.col("destination.service").cast(pl.Utf8).alias("service")
    hits = [pl.when(pl.col(c).is_in(FALLBACK_AI_NAMES)).then(pl.col(c)) for c in name_cols if c in frame.columns]
    return (pl.coalesce(hits) if hits else pl.lit(None, dtype=pl.Utf8)).alias("service")


def project(event_type: str, frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The rows and columns of one event frame each table keeps, keyed by table name."""
    if frame.height == 0:
        return {}
    if event_type == "flow":
        f = frame.select(
            _ns(frame, "event.start", "t0"), _ns(frame, "event.end", "t1"),
            _col(frame, "source.ip", pl.Utf8, "src"), _col(frame, "destination.ip", pl.Utf8, "dst"),
            _col(frame, "destination.port", pl.Int32, "dport"),
            _col(frame, "network.transport", pl.Utf8, "proto"),
            _col(frame, "destination.payload_bytes", pl.Int64, "resp_bytes"),
            _col(frame, "destination.packets", pl.Int64, "resp_pkts"),
            _col(frame, "source.payload_bytes", pl.Int64, "req_bytes"),
            _col(frame, "tls.client.server_name", pl.Utf8, "sni"), _col(frame, "url.domain", pl.Utf8, "host"),
            _service(frame, "tls.client.server_name", "url.domain"),
            _col(frame, "source.geo.country_iso_code", pl.Utf8, "src_country"),
            _col(frame, "source.as.number", pl.Int64, "src_asn"),
            _col(frame, "source.as.organization.name", pl.Utf8, "src_as_org"),
            _col(frame, "source.anonymity.hosting", pl.Boolean, "src_hosting"),
        ).filter((pl.col("proto") == "tcp") | ((pl.col("proto") == "udp") & (pl.col("dport") == 443)))
        return {"flow_up": f.filter(pl.col("service").is_not_null()), "flow_in": f}
    if event_type == "tls":
        f = frame.select(
            _ns(frame, "@timestamp", "t"), _col(frame, "source.ip", pl.Utf8, "src"),
            _col(frame, "destination.ip", pl.Utf8, "dst"), _col(frame, "destination.port", pl.Int32, "dport"),
            _col(frame, "tls.client.server_name", pl.Utf8, "sni"), _col(frame, "tls.client.ja4", pl.Utf8, "ja4"),
            _service(frame, "tls.client.server_name"),
        )
        return {"tls_up": f.filter(pl.col("service").is_not_null()), "tls_in": f}
    if event_type == "http":
        f = frame.select(
            _ns(frame, "@timestamp", "t"), _col(frame, "source.ip", pl.Utf8, "src"),
            _col(frame, "destination.ip", pl.Utf8, "dst"), _col(frame, "destination.port", pl.Int32, "dport"),
            _col(frame, "http.request.method", pl.Utf8, "method"), _col(frame, "url.path", pl.Utf8, "path"),
            _col(frame, "url.domain", pl.Utf8, "host"),
            _col(frame, "http.request.auth.key_format", pl.Utf8, "key_format"),
            _service(frame, "url.domain"),
            _col(frame, "source.geo.country_iso_code", pl.Utf8, "src_country"),
        )
        return {"http_in": f}
    return {}


# Host key and time column of each table: a flow from H to an API is H's (keyed by source); the
# rest are keyed by the host they reach.
TABLES: dict[str, tuple[str, str]] = {
    "flow_up": ("src", "t1"), "flow_in": ("dst", "t1"), "tls_up": ("src", "t"),
    "tls_in": ("dst", "t"), "http_in": ("dst", "t"),
}


@dataclass
class Store:
    """Buffered frames per table, compacted to the limits when the buffer grows."""

    limits: RelayLimits = field(default_factory=RelayLimits)
    parts: dict[str, list[pl.DataFrame]] = field(default_factory=lambda: {t: [] for t in TABLES})
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    evicted_rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    evicted_hosts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    compactions: int = 0
    _since: int = 0

    def add(self, tables: dict[str, pl.DataFrame]) -> None:
        for name, frame in tables.items():
            if frame.height:
                self.parts[name].append(frame)
                self.rows[name] += frame.height
                self._since += frame.height
        if self._since >= self.limits.compact_every or any(n > self.limits.max_rows for n in self.rows.values()):
            self.compact()

    def compact(self) -> None:
        """Enforce the limits: newest rows per host, newest hosts, newest rows overall."""
        lim = self.limits
        self.compactions += 1
        self._since = 0
        for name, (key, tcol) in TABLES.items():
            if not self.parts[name]:
                continue
            f = pl.concat(self.parts[name], how="vertical_relaxed") if len(self.parts[name]) > 1 else self.parts[name][0]
            before = f.height
            f = f.sort(tcol, nulls_last=False, maintain_order=True)
            # Rows per host: keep the newest (rank from the end within the host).
            f = f.filter(pl.int_range(pl.len()).reverse().over(key) < lim.max_rows_per_host)
            hosts = f.group_by(key).agg(pl.col(tcol).max().alias("_last"))
            if hosts.height > lim.max_hosts:
                keep = hosts.sort(["_last", key], descending=[True, False], nulls_last=True).head(lim.max_hosts)
                self.evicted_hosts[name] += hosts.height - keep.height
                f = f.join(keep.select(key), on=key, how="semi")
            if f.height > lim.max_rows:
                f = f.tail(lim.max_rows)
            self.evicted_rows[name] += before - f.height
            self.parts[name] = [f]
            self.rows[name] = f.height

    def table(self, name: str) -> pl.DataFrame | None:
        """The table's rows (compacted first), or None when it never received any."""
        if len(self.parts[name]) > 1:
            self.compact()
        return self.parts[name][0] if self.parts[name] else None
