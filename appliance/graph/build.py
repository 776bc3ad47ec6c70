"""Event frames -> aggregated graph edges and per-entity facts (graph stage, first step).

The pipeline hands the graph one polars frame per event type (appliance/schema.py names). This
module turns a frame into a `Delta`: typed edges already aggregated (count, first and last seen)
with polars group-bys, plus the per-account minute activity, per-key timelines, account attributes
and address attributes that the cluster features need. No per-row Python.

Entity strings are encoded first (`Codebook`): every entity column becomes UInt32 positions in a
per-batch dictionary of its distinct values, so the group-bys hash and copy 4-byte codes instead of
strings. On the 1M-account benchmark (10M request rows) the string-keyed edge frames were most of
the graph's memory. The store (store.py) interns the dictionaries' used values into node ids and
maps the codes with one gather.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl
from polars._typing import PolarsDataType

from appliance.graph.prefix import prefixes
from appliance.schema import TIMESTAMP

CODE = pl.UInt32
EDGE_COLS = ("src", "dst", "count", "first", "last")

# HTTP status codes the features read (RFC 9110 §15.5.2/§15.5.4, RFC 6585 §4).
RATE_LIMITED = 429
BANNED = (401, 403)
NS_PER_MINUTE = 60_000_000_000


class Codebook:
    """Per node type, the batch's distinct values; an entity column becomes UInt32 positions in it."""

    def __init__(self) -> None:
        self.values: dict[str, pl.Series] = {}

    def encode(self, node_type: str, column: pl.Series) -> pl.Series:
        """Codes of a column's values (null stays null); new values extend the type's dictionary."""
        column = column.cast(pl.Utf8).alias("v")
        uniq = column.drop_nulls().unique()
        known = self.values.get(node_type)
        if known is not None:
            uniq = pl.concat([known, uniq.filter(~uniq.is_in(known.implode()))])
        self.values[node_type] = uniq
        if uniq.len() <= 1:  # one value (or none): no hash join needed
            return pl.select(pl.when(column.is_not_null()).then(pl.lit(0, dtype=CODE))).to_series().alias("code")
        lut = uniq.to_frame().with_row_index("code")
        return column.to_frame().join(lut, on="v", how="left", maintain_order="left").get_column("code")

    def empty(self, node_type: str) -> int | None:
        """The code of "" (no edge may end there), if the batch has one."""
        vals = self.values.get(node_type)
        idx = (vals == "").arg_true() if vals is not None else None
        return int(idx[0]) if idx is not None and idx.len() else None


@dataclass
class EdgeBatch:
    """Aggregated edges of one type between two node types; src/dst are Codebook codes."""

    etype: str
    src_type: str
    dst_type: str
    frame: pl.DataFrame  # EDGE_COLS; structural edges (prefix, ASN, relay) have null first/last


@dataclass
class Delta:
    """What one batch adds to the graph; every frame may be empty. Entity columns hold codes."""

    codes: Codebook = field(default_factory=Codebook)
    edges: list[EdgeBatch] = field(default_factory=list)
    activity: pl.DataFrame | None = None  # account, minute, n, n429, nban, nmis
    keys: pl.DataFrame | None = None  # key, account, first, last, last429, n
    accounts: pl.DataFrame | None = None  # account attributes (see ACCOUNT_ATTRS)
    ips: pl.DataFrame | None = None  # ip (code), asn, hosting, vpn, proxy, tor


ACCOUNT_ATTRS: dict[str, PolarsDataType] = {
    "account": pl.Utf8, "organization": pl.Utf8, "created": TIMESTAMP, "email_domain": pl.Utf8,
    "payment": pl.Utf8, "card_bin": pl.Utf8, "billing_country": pl.Utf8, "signup_ip": pl.Utf8,
}
IP_ATTRS: dict[str, PolarsDataType] = {
    "ip": pl.Utf8, "asn": pl.Int64, "hosting": pl.Boolean, "vpn": pl.Boolean, "proxy": pl.Boolean,
    "tor": pl.Boolean,
}


def _series(frame: pl.DataFrame, name: str, dtype: PolarsDataType) -> pl.Series:
    """A column as a Series of the frame's length (typed nulls when absent)."""
    if name in frame.columns:
        return frame.get_column(name).cast(dtype, strict=False)
    return pl.repeat(None, frame.height, dtype=dtype, eager=True).alias(name)


def _encode(d: Delta, frame: pl.DataFrame, columns: dict[str, str]) -> pl.DataFrame:
    """Frame of codes, one column per entity field present (named after the field)."""
    return pl.DataFrame([d.codes.encode(typ, frame.get_column(name)).alias(name)
                         for name, typ in columns.items() if name in frame.columns])


def _edges(d: Delta, codes: pl.DataFrame, times: pl.Series, etype: str, src_type: str, src: str,
           dst_type: str, dst: str) -> None:
    """Group rows by (src, dst) into one edge row each; rows where either end is missing or "" are skipped."""
    if src not in codes.columns or dst not in codes.columns:
        return
    keep = pl.col("src").is_not_null() & pl.col("dst").is_not_null()
    for col, typ in (("src", src_type), ("dst", dst_type)):
        empty = d.codes.empty(typ)
        if empty is not None:
            keep = keep & (pl.col(col) != empty)
    out = (
        pl.DataFrame([codes.get_column(src).alias("src"), codes.get_column(dst).alias("dst"), times.alias("t")]).lazy()
        .filter(keep)
        .group_by("src", "dst")
        .agg(pl.len().cast(pl.Int64).alias("count"), pl.col("t").min().alias("first"),
             pl.col("t").max().alias("last"))
        .select(EDGE_COLS)
        .collect()
    )
    if out.height:
        d.edges.append(EdgeBatch(etype, src_type, dst_type, out))


def _ip_edges(d: Delta, ip_codes: pl.Series, attrs: pl.DataFrame | None) -> None:
    """ip->prefix and ip->asn edges for the batch's unique addresses."""
    uniq = ip_codes.drop_nulls().unique()
    empty = d.codes.empty("ip")
    if empty is not None:
        uniq = uniq.filter(uniq != empty)
    if not uniq.len():
        return
    pre = prefixes(d.codes.values["ip"].gather(uniq))
    pairs = [("in_prefix", "prefix", pl.DataFrame([uniq.alias("src"), pre.alias("v")]))]
    if attrs is not None and attrs.height:
        pairs.append(("in_asn", "asn", attrs.select(pl.col("ip").alias("src"), pl.col("asn").cast(pl.Utf8).alias("v"))))
    for etype, dst_type, f in pairs:
        f = f.filter(pl.col("v").is_not_null())
        if not f.height:
            continue
        f = f.with_columns(d.codes.encode(dst_type, f.get_column("v")).alias("dst")).unique(["src", "dst"])
        d.edges.append(EdgeBatch(etype, "ip", dst_type, f.select(
            "src", "dst", pl.lit(1, dtype=pl.Int64).alias("count"), pl.lit(None, dtype=TIMESTAMP).alias("first"),
            pl.lit(None, dtype=TIMESTAMP).alias("last"))))


def _ip_attrs(frame: pl.DataFrame, codes: pl.DataFrame, ip: str, side: str) -> pl.DataFrame | None:
    """Address enrichment (ASN, anonymity flags) kept per address: any true flag wins."""
    if ip not in codes.columns:
        return None
    flags = ("hosting", "vpn", "proxy", "tor")
    attrs = pl.DataFrame([codes.get_column(ip).alias("ip"), _series(frame, f"{side}.as.number", pl.Int64).alias("asn"),
                          *[_series(frame, f"{side}.anonymity.{f}", pl.Boolean).alias(f) for f in flags]])
    out = (
        attrs.lazy()
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
    return (_browser(ua) & _scripted(ja4)).fill_null(False)


def _browser(ua: pl.Expr) -> pl.Expr:
    return ua.str.contains("Mozilla/")


def _scripted(ja4: pl.Expr) -> pl.Expr:
    alpn = ja4.str.slice(8, 2)
    ext = ja4.str.slice(6, 2).cast(pl.Int32, strict=False)
    return (alpn != "h2") | (ext < 10)


def _mismatch(d: Delta, codes: pl.DataFrame) -> pl.Series:
    """ja4_ua_mismatch per row, evaluated once per distinct JA4 and User-Agent (a handful) and gathered:
    a null operand of the AND makes the row False either way, so each side may be filled alone."""
    n = codes.height
    if "tls.client.ja4" not in codes.columns or "user_agent.original" not in codes.columns:
        return pl.repeat(False, n, eager=True)
    ua = pl.select(_browser(pl.lit(d.codes.values["user_agent"])).fill_null(False)).to_series()
    ja4 = pl.select(_scripted(pl.lit(d.codes.values["ja4"])).fill_null(False)).to_series()
    if not ua.len() or not ja4.len():
        return pl.repeat(False, n, eager=True)
    b = ua.gather(codes.get_column("user_agent.original")).fill_null(False)
    s = ja4.gather(codes.get_column("tls.client.ja4")).fill_null(False)
    return b & s


def from_request(frame: pl.DataFrame) -> Delta:
    """Gateway request log: account egress, keys, organizations, clients; minute activity; key timelines."""
    d = Delta()
    codes = _encode(d, frame, {"account.id": "account", "source.ip": "ip", "api.key_id": "api_key",
                               "organization.id": "organization", "tls.client.ja4": "ja4",
                               "user_agent.original": "user_agent"})
    ts = _series(frame, "@timestamp", TIMESTAMP)
    for spec in (("egress", "account", "account.id", "ip", "source.ip"),
                 ("uses_key", "account", "account.id", "api_key", "api.key_id"),
                 ("member_of", "account", "account.id", "organization", "organization.id"),
                 ("tls_client", "account", "account.id", "ja4", "tls.client.ja4"),
                 ("user_agent", "account", "account.id", "user_agent", "user_agent.original")):
        _edges(d, codes, ts, *spec)
    d.ips = _ip_attrs(frame, codes, "source.ip", "source")
    if "source.ip" in codes.columns:
        _ip_edges(d, codes.get_column("source.ip"), d.ips)
    if "account.id" not in frame.columns or "@timestamp" not in frame.columns:
        return d
    status = _series(frame, "http.response.status_code", pl.Int32)
    base = pl.DataFrame([
        codes.get_column("account.id").alias("account"),
        (codes.get_column("api.key_id") if "api.key_id" in codes.columns
         else pl.repeat(None, frame.height, dtype=CODE, eager=True)).alias("key"),
        ts.alias("t"), (status == RATE_LIMITED).fill_null(False).alias("rl"),
        status.is_in(list(BANNED)).fill_null(False).alias("ban"), _mismatch(d, codes).alias("mis"),
    ]).lazy().filter(pl.col("account").is_not_null() & pl.col("t").is_not_null())
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
    d = Delta()
    codes = _encode(d, frame, {"account.id": "account", "signup.ip": "ip", "payment.fingerprint": "payment",
                               "organization.id": "organization", "email.domain": "email_domain",
                               "payment.card.bin": "card_bin"})
    ts_name = "account.created" if "account.created" in frame.columns else "@timestamp"
    ts = _series(frame, ts_name, TIMESTAMP)
    for spec in (("signup", "account", "account.id", "ip", "signup.ip"),
                 ("pays_with", "account", "account.id", "payment", "payment.fingerprint"),
                 ("member_of", "account", "account.id", "organization", "organization.id"),
                 ("email_domain", "account", "account.id", "email_domain", "email.domain"),
                 ("card_bin", "payment", "payment.fingerprint", "card_bin", "payment.card.bin")):
        _edges(d, codes, ts, *spec)
    d.ips = _ip_attrs(frame, codes, "signup.ip", "signup")
    if "signup.ip" in codes.columns:
        _ip_edges(d, codes.get_column("signup.ip"), d.ips)
    if "account.id" in frame.columns:
        names = {"organization": "organization.id", "created": "account.created",
                 "email_domain": "email.domain", "payment": "payment.fingerprint",
                 "card_bin": "payment.card.bin", "billing_country": "billing.country", "signup_ip": "signup.ip"}
        d.accounts = (
            pl.DataFrame([codes.get_column("account.id").alias("account"),
                          *[_series(frame, src, ACCOUNT_ATTRS[dst]).alias(dst) for dst, src in names.items()]])
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
    columns = {"source.ip": "ip", "destination.ip": "ip"}
    columns.update({dst: typ for _e, _s, _c, typ, dst in specs})
    codes = _encode(d, frame, columns)
    ts = _series(frame, "@timestamp", TIMESTAMP)
    for spec in specs:
        _edges(d, codes, ts, *spec)
    attrs = [a for a in (_ip_attrs(frame, codes, "source.ip", "source"),
                         _ip_attrs(frame, codes, "destination.ip", "destination")) if a is not None]
    if attrs:
        d.ips = pl.concat(attrs)
        _ip_edges(d, d.ips.get_column("ip"), d.ips)
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
        for (dst_type,), part in e.group_by("dst_type", maintain_order=True):
            src = d.codes.encode("ip", part.get_column("src"))
            dst = d.codes.encode(str(dst_type), part.get_column("dst"))
            d.edges.append(EdgeBatch("relay", "ip", str(dst_type), pl.DataFrame([src.alias("src"), dst.alias("dst")])
                                     .select("src", "dst", pl.lit(1, dtype=pl.Int64).alias("count"),
                                             pl.lit(None, dtype=TIMESTAMP).alias("first"),
                                             pl.lit(None, dtype=TIMESTAMP).alias("last"))))
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
