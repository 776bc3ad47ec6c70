"""Event frames -> aggregated graph edges and per-entity facts (graph stage, first step).

The pipeline hands the graph one polars frame per event type (appliance/schema.py names). This
module turns a frame into a `Delta`: typed edges keyed by the entities' string values, already
aggregated (count, first and last seen) with polars group-bys, plus the per-account minute activity,
per-key timelines, account attributes and address attributes that the cluster features need. No
per-row Python: 10M request rows reduce to a few million edge rows in a handful of group-bys.
The store (store.py) interns the strings into integer node ids and merges the delta into its tables.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

import polars as pl
from polars._typing import PolarsDataType

from appliance.schema import TIMESTAMP

EDGE_COLS = ("etype", "src_type", "src", "dst_type", "dst", "count", "first", "last")

# HTTP status codes the features read (RFC 9110 §15.5.2/§15.5.4, RFC 6585 §4).
RATE_LIMITED = 429
BANNED = (401, 403)
NS_PER_MINUTE = 60_000_000_000


@dataclass
class Delta:
    """What one batch adds to the graph; every frame may be empty."""

    edges: list[pl.DataFrame] = field(default_factory=list)
    activity: pl.DataFrame | None = None  # account, minute, n, n429, nban, nmis
    keys: pl.DataFrame | None = None  # key, account, first, last, last429, n
    accounts: pl.DataFrame | None = None  # account attributes (see ACCOUNT_ATTRS)
    ips: pl.DataFrame | None = None  # ip, asn, hosting, vpn, proxy, tor


ACCOUNT_ATTRS: dict[str, PolarsDataType] = {
    "account": pl.Utf8, "organization": pl.Utf8, "created": TIMESTAMP, "email_domain": pl.Utf8,
    "payment": pl.Utf8, "card_bin": pl.Utf8, "billing_country": pl.Utf8, "signup_ip": pl.Utf8,
}
IP_ATTRS: dict[str, PolarsDataType] = {
    "ip": pl.Utf8, "asn": pl.Int64, "hosting": pl.Boolean, "vpn": pl.Boolean, "proxy": pl.Boolean,
    "tor": pl.Boolean,
}


def _col(frame: pl.DataFrame, name: str, dtype: PolarsDataType) -> pl.Expr:
    """A column of the frame, or typed nulls when the event source did not provide it."""
    if name in frame.columns:
        return pl.col(name).cast(dtype, strict=False)
    return pl.lit(None, dtype=dtype)


def _edges(frame: pl.DataFrame, etype: str, src_type: str, src: str, dst_type: str, dst: str,
           ts: str = "@timestamp") -> pl.DataFrame | None:
    """Group rows by (src, dst) into one edge row each; rows where either end is missing are skipped."""
    if src not in frame.columns or dst not in frame.columns:
        return None
    tcol = _col(frame, ts, TIMESTAMP)
    out = (
        frame.lazy()
        .select(pl.col(src).cast(pl.Utf8).alias("src"), pl.col(dst).cast(pl.Utf8).alias("dst"), tcol.alias("t"))
        .filter(pl.col("src").is_not_null() & pl.col("dst").is_not_null() & (pl.col("dst") != "")
                & (pl.col("src") != ""))
        .group_by("src", "dst")
        .agg(pl.len().cast(pl.Int64).alias("count"), pl.col("t").min().alias("first"),
             pl.col("t").max().alias("last"))
        .with_columns(pl.lit(etype).alias("etype"), pl.lit(src_type).alias("src_type"),
                      pl.lit(dst_type).alias("dst_type"))
        .select(EDGE_COLS)
        .collect()
    )
    return out if out.height else None


def _prefix(ip: str) -> str | None:
    """The covering /24 (IPv4) or /48 (IPv6): the unit a hosting provider or carrier hands out."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


def _ip_edges(ips: Iterable[str | None], attrs: pl.DataFrame | None) -> list[pl.DataFrame]:
    """ip->prefix and ip->asn edges for the batch's unique addresses (a few thousand per batch)."""
    uniq = sorted({ip for ip in ips if ip})
    out: list[pl.DataFrame] = []
    if not uniq:
        return out
    pre = pl.DataFrame({"src": uniq, "dst": [_prefix(ip) for ip in uniq]}, schema={"src": pl.Utf8, "dst": pl.Utf8})
    frames = [pre.with_columns(pl.lit("in_prefix").alias("etype"), pl.lit("prefix").alias("dst_type"))]
    if attrs is not None and attrs.height:
        asn = attrs.select(pl.col("ip").alias("src"), pl.col("asn").cast(pl.Utf8).alias("dst"))
        frames.append(asn.with_columns(pl.lit("in_asn").alias("etype"), pl.lit("asn").alias("dst_type")))
    for f in frames:
        f = f.filter(pl.col("dst").is_not_null()).unique(["src", "dst"]).with_columns(
            pl.lit("ip").alias("src_type"), pl.lit(1, dtype=pl.Int64).alias("count"),
            pl.lit(None, dtype=TIMESTAMP).alias("first"), pl.lit(None, dtype=TIMESTAMP).alias("last"))
        if f.height:
            out.append(f.select(EDGE_COLS))
    return out


def _ip_attrs(frame: pl.DataFrame, ip: str, side: str) -> pl.DataFrame | None:
    """Address enrichment (ASN, anonymity flags) kept per address: any true flag wins."""
    if ip not in frame.columns:
        return None
    flags = ("hosting", "vpn", "proxy", "tor")
    out = (
        frame.lazy()
        .select(pl.col(ip).cast(pl.Utf8).alias("ip"), _col(frame, f"{side}.as.number", pl.Int64).alias("asn"),
                *[_col(frame, f"{side}.anonymity.{f}", pl.Boolean).alias(f) for f in flags])
        .filter(pl.col("ip").is_not_null())
        .group_by("ip")
        .agg(pl.col("asn").drop_nulls().first(), *[pl.col(f).any() for f in flags])
        .collect()
    )
    return out if out.height else None


def ja4_ua_mismatch(ja4: pl.Expr, ua: pl.Expr) -> pl.Expr:
    """True where a TLS fingerprint contradicts the claimed User-Agent.

    JA4 (FoxIO) section a is `t13d1516h2`: protocol, version, SNI, cipher count, extension count and
    the first and last characters of the first ALPN value. Every current browser offers h2 and sends
    15+ extensions, so a `Mozilla/` User-Agent over a hello without h2 or with fewer than 10
    extensions is a script wearing a browser's name: the relay's HTTP client, not the person's.
    """
    browser = ua.str.contains("Mozilla/")
    alpn = ja4.str.slice(8, 2)
    ext = ja4.str.slice(6, 2).cast(pl.Int32, strict=False)
    return (browser & ((alpn != "h2") | (ext < 10))).fill_null(False)


def from_request(frame: pl.DataFrame) -> Delta:
    """Gateway request log: account egress, keys, organizations, clients; minute activity; key timelines."""
    d = Delta()
    for spec in (("egress", "account", "account.id", "ip", "source.ip"),
                 ("uses_key", "account", "account.id", "api_key", "api.key_id"),
                 ("member_of", "account", "account.id", "organization", "organization.id"),
                 ("tls_client", "account", "account.id", "ja4", "tls.client.ja4"),
                 ("user_agent", "account", "account.id", "user_agent", "user_agent.original")):
        e = _edges(frame, *spec)
        if e is not None:
            d.edges.append(e)
    d.ips = _ip_attrs(frame, "source.ip", "source")
    if "source.ip" in frame.columns:
        d.edges.extend(_ip_edges(frame.get_column("source.ip").unique().to_list(), d.ips))
    if "account.id" not in frame.columns or "@timestamp" not in frame.columns:
        return d
    status = _col(frame, "http.response.status_code", pl.Int32)
    base = frame.lazy().select(
        pl.col("account.id").cast(pl.Utf8).alias("account"),
        _col(frame, "api.key_id", pl.Utf8).alias("key"),
        pl.col("@timestamp").cast(TIMESTAMP).alias("t"),
        (status == RATE_LIMITED).fill_null(False).alias("rl"),
        status.is_in(list(BANNED)).fill_null(False).alias("ban"),
        ja4_ua_mismatch(_col(frame, "tls.client.ja4", pl.Utf8), _col(frame, "user_agent.original", pl.Utf8))
        .alias("mis"),
    ).filter(pl.col("account").is_not_null() & pl.col("t").is_not_null())
    d.activity = (
        base.with_columns((pl.col("t").dt.epoch("ns") // NS_PER_MINUTE).cast(pl.Int32).alias("minute"))
        .group_by("account", "minute")
        .agg(pl.len().cast(pl.Int32).alias("n"), pl.col("rl").sum().cast(pl.Int32).alias("n429"),
             pl.col("ban").sum().cast(pl.Int32).alias("nban"), pl.col("mis").sum().cast(pl.Int32).alias("nmis"))
        .collect()
    )
    d.keys = (
        base.filter(pl.col("key").is_not_null())
        .group_by("key", "account")
        .agg(pl.col("t").min().alias("first"), pl.col("t").max().alias("last"),
             pl.col("t").filter(pl.col("rl")).max().alias("last429"), pl.len().cast(pl.Int64).alias("n"))
        .collect()
    )
    return d


def from_account(frame: pl.DataFrame) -> Delta:
    """Account log: sign-up address, payment, card BIN, email domain, organization; account attributes."""
    ts = "account.created" if "account.created" in frame.columns else "@timestamp"
    d = Delta()
    for spec in (("signup", "account", "account.id", "ip", "signup.ip"),
                 ("pays_with", "account", "account.id", "payment", "payment.fingerprint"),
                 ("member_of", "account", "account.id", "organization", "organization.id"),
                 ("email_domain", "account", "account.id", "email_domain", "email.domain"),
                 ("card_bin", "payment", "payment.fingerprint", "card_bin", "payment.card.bin")):
        e = _edges(frame, *spec, ts=ts)
        if e is not None:
            d.edges.append(e)
    d.ips = _ip_attrs(frame, "signup.ip", "signup")
    if "signup.ip" in frame.columns:
        d.edges.extend(_ip_edges(frame.get_column("signup.ip").unique().to_list(), d.ips))
    if "account.id" in frame.columns:
        names = {"account": "account.id", "organization": "organization.id", "created": "account.created",
                 "email_domain": "email.domain", "payment": "payment.fingerprint",
                 "card_bin": "payment.card.bin", "billing_country": "billing.country", "signup_ip": "signup.ip"}
        d.accounts = (
            frame.select([_col(frame, src, ACCOUNT_ATTRS[dst]).alias(dst) for dst, src in names.items()])
            .filter(pl.col("account").is_not_null())
            .unique("account", keep="last", maintain_order=True)
        )
    return d


def from_network(frame: pl.DataFrame, event_type: str) -> Delta:
    """tls/http/flow events: the address side of the graph (clients, names reached, credentials seen)."""
    d = Delta()
    specs: list[tuple[str, str, str, str, str]] = []
    if event_type == "tls":
        specs = [("tls_client", "ip", "source.ip", "ja4", "tls.client.ja4"),
                 ("server_name", "ip", "source.ip", "domain", "tls.client.server_name")]
    elif event_type == "http":
        specs = [("user_agent", "ip", "source.ip", "user_agent", "user_agent.original"),
                 ("server_name", "ip", "source.ip", "domain", "url.domain"),
                 ("key_from", "ip", "source.ip", "api_key", "http.request.auth.fingerprint")]
    elif event_type == "flow":
        specs = [("flow", "ip", "source.ip", "ip", "destination.ip"),
                 ("server_name", "ip", "source.ip", "domain", "tls.client.server_name")]
    for spec in specs:
        e = _edges(frame, *spec)
        if e is not None:
            d.edges.append(e)
    attrs = [a for a in (_ip_attrs(frame, "source.ip", "source"), _ip_attrs(frame, "destination.ip", "destination"))
             if a is not None]
    if attrs:
        d.ips = pl.concat(attrs)
        d.edges.extend(_ip_edges(d.ips.get_column("ip").to_list(), d.ips))
    return d


def from_findings(findings: list[dict]) -> tuple[Delta, list[str]]:
    """relay_host findings: edges from the relay's address to the entities the finding names."""
    rows: list[dict[str, object]] = []
    relays: list[str] = []
    for f in findings:
        subject = f.get("subject") or {}
        if f.get("kind") != "relay_host" or subject.get("type") != "ip" or not subject.get("value"):
            continue
        ip = str(subject["value"])
        relays.append(ip)
        for ent in f.get("entities") or []:
            etype, value = ent.get("type"), ent.get("value")
            if etype in ("ip", "asn", "domain", "ja4", "api_key", "account", "organization") and value \
                    and str(value) != ip:
                rows.append({"src": ip, "dst": str(value), "dst_type": etype})
    d = Delta()
    if rows:
        e = pl.DataFrame(rows, schema={"src": pl.Utf8, "dst": pl.Utf8, "dst_type": pl.Utf8}).unique()
        d.edges.append(e.with_columns(
            pl.lit("relay").alias("etype"), pl.lit("ip").alias("src_type"), pl.lit(1, dtype=pl.Int64).alias("count"),
            pl.lit(None, dtype=TIMESTAMP).alias("first"), pl.lit(None, dtype=TIMESTAMP).alias("last"),
        ).select(EDGE_COLS))
    return d, sorted(set(relays))


def from_frame(event_type: str, frame: pl.DataFrame) -> Delta:
    """Dispatch by event type (appliance.schema.EVENT_TYPES names); dns events carry no graph entities."""
    if frame.height == 0:
        return Delta()
    if event_type == "request":
        return from_request(frame)
    if event_type == "account":
        return from_account(frame)
    if event_type in ("tls", "http", "flow"):
        return from_network(frame, event_type)
    return Delta()
