"""Field-mapping YAML: read other log shapes (nginx, Envoy, AWS ALB, …) as request/account events.

The canonical metadata form (ARCHITECTURE.md) needs no configuration; everything else goes
through a mapping (`--mapping FILE`) that says how the file is laid out and how each event field
is computed from its columns. Every operation is a polars expression, so a mapped read is as
vectorised as a native one.

    name: nginx-json
    format: jsonl            # jsonl | csv | parquet | delimited (space-separated, quoted fields)
    separator: " "           # delimited only
    columns: [type, time, …] # delimited only: the column names in order
    fields:
      "@timestamp": {from: time_local, time: nginx}
      source.ip:    {from: downstream_remote_address, host_port: host}
      api.key_id:   {from: request_headers, header: authorization}
      event.duration: {from: request_time, scale: 1e9}
      organization.id: {const: org-demo}

Operations, applied in this order: `from` (a column; a dotted path walks nested objects) or
`const`; `header` (a header out of a headers object or an "Name: value" text block, case-insensitive);
`regex` (the first capture group); `host_port` (host or port of "host:port" / "[v6]:port");
`time` (rfc3339, epoch_s/ms/us/ns, epoch (magnitude decides), nginx, or a strftime format);
`scale` (multiply a number, e.g. seconds → ns; negative inputs, ALB's "-1", become null).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from appliance import schema
from appliance.config import YAML_LOADER
from appliance.errors import ConfigError

FORMATS = ("jsonl", "csv", "parquet", "delimited")

# Input-only fields that never reach an event as such: the ingester turns them into fingerprints
# (email → email.domain + email.fingerprint; card number → payment.fingerprint + payment.card.bin).
EMAIL_INPUTS = ("email", "email.address", "user.email")
CARD_INPUTS = ("payment.card.number", "card.number", "card_number")
DERIVED_INPUTS = frozenset(EMAIL_INPUTS + CARD_INPUTS)
RAW_PREFIX = "_raw:"  # mapped timestamp columns keep their input text under this prefix

# RFC 3339 §5.6 date-time; `%#z` accepts both "Z" and "+hh:mm". The space form is allowed by the
# RFC's note in §5.6. Values without an offset are read as UTC (common in real logs).
_RFC3339_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
)
_NAMED_TIME = {
    "nginx": "%d/%b/%Y:%H:%M:%S %z",  # nginx $time_local, e.g. 10/Oct/2000:13:55:36 -0700
    "apache": "%d/%b/%Y:%H:%M:%S %z",
}
_EPOCH_UNITS = {"epoch_s": 1_000_000_000, "epoch_ms": 1_000_000, "epoch_us": 1_000, "epoch_ns": 1}


def _from_epoch(expr: pl.Expr, unit: str) -> pl.Expr:
    """Epoch numbers (or numeric strings) to UTC ns timestamps; `epoch` guesses the unit per value."""
    num = expr.cast(pl.Float64, strict=False)
    if unit == "epoch":
        # Magnitude decides: seconds until ~5138, ms until ~5138, µs…; the same cut-offs as
        # Elasticsearch's epoch guessing, good for any date after 1973.
        mag = num.abs()
        ns = (
            pl.when(mag < 1e11).then(num * 1e9)
            .when(mag < 1e14).then(num * 1e6)
            .when(mag < 1e17).then(num * 1e3)
            .otherwise(num)
        )
    else:
        ns = num * _EPOCH_UNITS[unit]
    return ns.round(0).cast(pl.Int64, strict=False).cast(pl.Datetime("ns", "UTC"))


def _from_text(expr: pl.Expr, formats: tuple[str, ...]) -> pl.Expr:
    tries = []
    for fmt in formats:
        parsed = expr.str.to_datetime(fmt, time_unit="ns", strict=False, exact=True)
        if "%z" not in fmt and "%#z" not in fmt:
            parsed = parsed.dt.replace_time_zone("UTC")
        tries.append(parsed.dt.convert_time_zone("UTC"))
    return pl.coalesce(tries)


def parse_time(expr: pl.Expr, dtype: pl.DataType, how: str = "auto", fast: bool = False) -> pl.Expr:
    """An input column of any type as schema.TIMESTAMP (UTC ns); unparseable values become null.

    fast=True tries only the common RFC 3339 form ("…T…" with Z or an offset); callers retry the
    values that failed without it.
    """
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            expr = expr.dt.replace_time_zone("UTC")  # naive Parquet timestamps are taken as UTC
        return expr.dt.convert_time_zone("UTC").dt.cast_time_unit("ns")
    if isinstance(dtype, pl.Date):
        return expr.cast(pl.Datetime("ns")).dt.replace_time_zone("UTC")
    if how in _EPOCH_UNITS or how == "epoch":
        return _from_epoch(expr, how)
    if dtype.is_numeric():
        return _from_epoch(expr, "epoch")
    text = expr.cast(pl.Utf8)
    if fast and how in ("auto", "rfc3339", "iso8601"):
        return _from_text(text, _RFC3339_FORMATS[:1])
    text = text.str.strip_chars()
    if how in ("auto", "rfc3339", "iso8601"):
        parsed = _from_text(text, _RFC3339_FORMATS)
        if how == "auto":
            # Numeric strings (CSV epochs) are epochs.
            parsed = pl.coalesce(parsed, pl.when(text.str.contains(r"^\s*-?\d+(\.\d+)?\s*$"))
                                 .then(_from_epoch(text, "epoch")))
        return parsed
    return _from_text(text, (_NAMED_TIME.get(how, how),))


def _header(expr: pl.Expr, dtype: pl.DataType | None, name: str) -> pl.Expr:
    """A header value from a headers object (struct) or an HTTP header text block."""
    if isinstance(dtype, pl.Struct):
        names = [f.name for f in dtype.fields if f.name.lower() == name.lower()]
        if not names:
            return pl.lit(None, dtype=pl.Utf8)
        return expr.struct.field(names[0]).cast(pl.Utf8)
    pattern = rf"(?im)(?:^|[\r\n]){re.escape(name)}\s*:\s*([^\r\n]*)"
    return expr.cast(pl.Utf8).str.extract(pattern, 1).str.strip_chars()


def _host_port(expr: pl.Expr, part: str) -> pl.Expr:
    text = expr.cast(pl.Utf8).str.strip_chars()
    # "[2001:db8::1]:443", "192.0.2.1:443", "host:443"; a bare IPv6 address has no port.
    bracket = text.str.extract(r"^\[([^\]]+)\](?::(\d+))?$", 1 if part == "host" else 2)
    single = text.str.extract(r"^([^:]+)(?::(\d+))?$", 1 if part == "host" else 2)
    if part == "host":
        return pl.coalesce(bracket, single, pl.when(text.str.count_matches(":") > 1).then(text))
    return pl.coalesce(bracket, single)


@dataclass(frozen=True)
class FieldSpec:
    target: str
    source: str | None = None
    const: Any = None
    ops: tuple[tuple[str, Any], ...] = ()


_OPS = ("header", "regex", "host_port", "time", "scale")


@dataclass
class Mapping:
    name: str
    path: str
    format: str = "jsonl"
    separator: str = ","
    quote: str = '"'
    columns: list[str] | None = None
    has_header: bool = True
    fields: list[FieldSpec] = field(default_factory=list)

    def sources(self) -> set[str]:
        return {f.source for f in self.fields if f.source}

    def apply(self, frame: pl.DataFrame, event_type: str) -> pl.DataFrame:
        """The mapped frame: one column per mapped field plus canonical columns passed through."""
        exprs: list[pl.Expr] = []
        produced = set()
        declared = schema.polars_schema(event_type, enriched=False)
        for spec in self.fields:
            expr, dtype = _resolve(frame, spec)
            for op, arg in spec.ops:
                expr, dtype = _APPLY[op](expr, dtype, arg)
            if spec.target in declared and declared[spec.target] == schema.TIMESTAMP:
                # Keep the raw text so an unparseable time is reported as bad_type, not missing.
                raw, _ = _resolve(frame, spec)
                exprs.append(raw.cast(pl.Utf8).alias(RAW_PREFIX + spec.target))
                if not any(op == "time" for op, _ in spec.ops):
                    expr = parse_time(expr, dtype or pl.Utf8())
            exprs.append(expr.alias(spec.target))
            produced.add(spec.target)
        passthrough = [c for c in frame.columns if c in declared and c not in produced]
        return frame.select(*exprs, *[pl.col(c) for c in passthrough])


def _resolve(frame: pl.DataFrame, spec: FieldSpec) -> tuple[pl.Expr, pl.DataType | None]:
    if spec.source is None:
        return pl.lit(spec.const), None
    if spec.source in frame.columns:
        return pl.col(spec.source), frame.schema[spec.source]
    parts = spec.source.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest column-name prefix, then struct fields
        head = ".".join(parts[:cut])
        if head in frame.columns:
            expr, dtype = pl.col(head), frame.schema[head]
            for name in parts[cut:]:
                if not isinstance(dtype, pl.Struct):
                    break
                match = next((f for f in dtype.fields if f.name == name), None)
                if match is None:
                    break
                expr, dtype = expr.struct.field(name), match.dtype  # type: ignore[assignment]
            else:
                return expr, dtype
    return pl.lit(None, dtype=pl.Utf8), pl.Utf8()  # absent in this file: the field is null


def _op_time(expr: pl.Expr, dtype: pl.DataType | None, arg: Any) -> tuple[pl.Expr, pl.DataType]:
    return parse_time(expr, dtype or pl.Utf8(), str(arg)), schema.TIMESTAMP


def _op_scale(expr: pl.Expr, dtype: pl.DataType | None, arg: Any) -> tuple[pl.Expr, pl.DataType]:
    num = expr.cast(pl.Float64, strict=False)
    return pl.when(num >= 0).then((num * float(arg)).round(0)), pl.Float64()


_APPLY: dict[str, Callable[[pl.Expr, pl.DataType | None, Any], tuple[pl.Expr, pl.DataType | None]]] = {
    "header": lambda e, t, a: (_header(e, t, str(a)), pl.Utf8()),
    "regex": lambda e, t, a: (e.cast(pl.Utf8).str.extract(str(a), 1), pl.Utf8()),
    "host_port": lambda e, t, a: (_host_port(e, str(a)), pl.Utf8()),
    "time": _op_time,
    "scale": _op_scale,
}


def load_mapping(path: str | Path, event_type: str) -> Mapping:
    """Parse and check a mapping file; errors name the file and the offending field."""
    p = Path(path)
    try:
        doc = yaml.load(p.read_text(encoding="utf-8"), Loader=YAML_LOADER)
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read mapping: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(p)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("fields"), dict):
        raise ConfigError(f"{p}: a mapping needs a 'fields' map (event field → how to compute it)")
    fmt = str(doc.get("format", "jsonl"))
    if fmt not in FORMATS:
        raise ConfigError(f"{p}: unknown format {fmt!r}, expected one of {FORMATS}")
    columns = doc.get("columns")
    if fmt == "delimited" and not (isinstance(columns, list) and columns):
        raise ConfigError(f"{p}: format 'delimited' needs a 'columns' list")
    declared = schema.polars_schema(event_type, enriched=False)
    specs = []
    for target, raw in doc["fields"].items():
        if target not in declared and target not in DERIVED_INPUTS:
            raise ConfigError(f"{p}: fields.{target}: not a field of {event_type} events")
        if isinstance(raw, str):
            raw = {"from": raw}
        if not isinstance(raw, dict) or (("from" in raw) == ("const" in raw)):
            raise ConfigError(f"{p}: fields.{target}: give exactly one of 'from' or 'const'")
        unknown = set(raw) - {"from", "const", *_OPS}
        if unknown:
            raise ConfigError(f"{p}: fields.{target}: unknown operation {sorted(unknown)[0]!r}, expected {_OPS}")
        if raw.get("host_port") not in (None, "host", "port"):
            raise ConfigError(f"{p}: fields.{target}: host_port must be 'host' or 'port'")
        ops = tuple((op, raw[op]) for op in _OPS if op in raw)
        specs.append(FieldSpec(str(target), raw.get("from"), raw.get("const"), ops))
    return Mapping(
        name=str(doc.get("name") or p.stem),
        path=str(p),
        format=fmt,
        separator=str(doc.get("separator", " " if fmt == "delimited" else ",")),
        quote=str(doc.get("quote", '"')),
        columns=[str(c) for c in columns] if isinstance(columns, list) else None,
        has_header=bool(doc.get("header", fmt != "delimited")),
        fields=specs,
    )
