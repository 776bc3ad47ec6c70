"""Covering network of an address column, vectorised: the `prefix` node of every `in_prefix` edge.

build.py needs the /24 (IPv4) or /48 (IPv6) of every distinct address in a batch — a million of
them in the 1M-account benchmark, where calling `ipaddress` once per address took ~20 s per batch.
Canonical dotted quads and plain hex-colon IPv6 (RFC 4291 §2.2 forms 1 and 2) are parsed with
polars string expressions; anything else (embedded IPv4, zone ids, junk) goes through `ipaddress`,
which stays the reference: both paths give `str(ip_network(f"{addr}/{bits}", strict=False))`
exactly, or null where `ipaddress` rejects the string.
"""

from __future__ import annotations

import ipaddress

import polars as pl

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # no leading zeros: ipaddress rejects them
_V4 = rf"^{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}$"
_G = r"[0-9A-Fa-f]{1,4}"
# Eight groups, or at most seven around one "::" (the group count is checked apart; RFC 4291 §2.2).
_V6 = rf"^(?:{_G}(?::{_G}){{7}}|(?:{_G}(?::{_G}){{0,6}})?::(?:{_G}(?::{_G}){{0,6}})?)$"


def prefix_of(ip: str) -> str | None:
    """The covering /24 (IPv4) or /48 (IPv6): the unit a hosting provider or carrier hands out."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


def _hextet(expr: pl.Expr) -> pl.Expr:
    # Canonical text of one group (RFC 5952 §4.1, §4.3): lower case, no leading zeros.
    s = expr.str.to_lowercase().str.strip_chars_start("0")
    return pl.when(s == "").then(pl.lit("0")).otherwise(s)


def _v6_prefix(frame: pl.DataFrame) -> pl.Series:
    """/48 of plain IPv6 strings matching _V6 (column `ip`): expand "::" into zero groups, take the
    first three groups, then "::" (the zero run of at least five groups is the longest, so RFC 5952
    §4.2.3 compresses there)."""
    parts = pl.col("ip").str.split_exact("::", 1)
    f = frame.select(
        parts.struct.field("field_0").alias("head"), parts.struct.field("field_1").alias("tail"),
        (8 - pl.col("ip").str.count_matches(_G)).alias("missing"))
    full = pl.when(pl.col("tail").is_null()).then(pl.col("head")).otherwise(pl.concat_str(
        pl.when(pl.col("head") != "").then(pl.col("head")),
        pl.lit("0:" * 8).str.slice(0, pl.col("missing") * 2 - 1),
        pl.when(pl.col("tail") != "").then(pl.col("tail")), separator=":", ignore_nulls=True))
    g = f.select(full.str.split_exact(":", 2).alias("g")).unnest("g")
    h0, h1, h2 = (_hextet(pl.col(c)) for c in ("field_0", "field_1", "field_2"))
    g = g.select(h0.alias("h0"), h1.alias("h1"), h2.alias("h2"))
    z0, z1, z2 = (pl.col(c) == "0" for c in ("h0", "h1", "h2"))
    net = (pl.when(z0 & z1 & z2).then(pl.lit("::"))
           .when(z1 & z2).then(pl.concat_str("h0", pl.lit("::")))
           .when(z2).then(pl.concat_str("h0", pl.lit(":"), "h1", pl.lit("::")))
           .otherwise(pl.concat_str("h0", pl.lit(":"), "h1", pl.lit(":"), "h2", pl.lit("::"))))
    return g.select(pl.concat_str(net, pl.lit("/48"))).to_series()


def prefixes(ips: pl.Series) -> pl.Series:
    """Covering network per address (Utf8), null where the string is not an address."""
    ips = ips.cast(pl.Utf8).alias("ip")
    v6 = pl.col("ip").str.contains(_V6) & (
        ~pl.col("ip").str.contains("::", literal=True) | (pl.col("ip").str.count_matches(_G) <= 7))
    frame = ips.to_frame().with_columns(pl.col("ip").str.contains(_V4).fill_null(False).alias("v4"),
                                        v6.fill_null(False).alias("v6"))
    out = frame.select(pl.when(pl.col("v4")).then(pl.col("ip").str.replace(r"\.[0-9]+$", ".0/24"))).to_series()
    six = frame.get_column("v6")
    if six.any():
        idx = six.arg_true()
        out = out.scatter(idx, _v6_prefix(frame.filter(pl.col("v6"))))
    slow = frame.select(~pl.col("v4") & ~pl.col("v6") & pl.col("ip").is_not_null()).to_series()
    if slow.any():
        idx = slow.arg_true()
        vals = pl.Series([prefix_of(ip) for ip in ips.gather(idx).to_list()], dtype=pl.Utf8)
        out = out.scatter(idx, vals)
    return out.alias("prefix")
