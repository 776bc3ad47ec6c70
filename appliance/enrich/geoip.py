"""IP intelligence for event frames: ASN, AS organisation, country and anonymity flags per side.

Sits between decode and detect: every event type that carries `<side>.ip` gets `<side>.as.number`,
`<side>.as.organization.name`, `<side>.geo.country_iso_code` and `<side>.anonymity.{hosting,vpn,proxy,
tor}` (schema.ENRICHMENT). Enrichment observes, never judges (STYLE.md 3): a flag is the database's
word, and rules decide what it means.

Databases are MaxMind DB files of any of the common layouts, told apart by their metadata
`database_type` and, for unknown types, by the fields of a sample record:
GeoLite2/GeoIP2 ASN, Country, City, Anonymous IP; DB-IP Lite ASN/Country/City (GeoLite2-compatible
records); IPinfo Lite (flat `asn` "AS123", `as_name`, `country_code`); and the project's demo DB (all
of ASN + country + anonymity in one record, built by mmdb_writer). Several databases combine: the
first one that knows a field wins.

Speed: lookups happen once per unique IP per batch (a batch of 1M events typically has a few
thousand addresses), through a bounded LRU cache shared across batches, and the results are joined
back with polars, so there is no per-row Python.
"""

from __future__ import annotations

import ipaddress
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb
import polars as pl

from appliance import schema
from appliance.errors import InputError

# Output columns per side, in schema order; the names are built from schema.ENRICHMENT so a
# schema change shows up here.
_SUFFIXES: tuple[str, ...] = tuple(
    f.name[len("source."):] for f in schema.ENRICHMENT if f.name.startswith("source.")
)
_DTYPES: dict[str, pl.DataType] = {
    f.name[len("source."):]: f.dtype for f in schema.ENRICHMENT if f.name.startswith("source.")
}
Values = tuple[Any, ...]  # one value per _SUFFIXES entry
_EMPTY: Values = (None,) * len(_SUFFIXES)
_IDX = {name: i for i, name in enumerate(_SUFFIXES)}


def _asn_geolite(rec: dict[str, Any]) -> dict[str, Any]:
    return {"as.number": rec.get("autonomous_system_number"),
            "as.organization.name": rec.get("autonomous_system_organization")}


def _country_geolite(rec: dict[str, Any]) -> dict[str, Any]:
    # Country/City: `country` is where the address is used; `registered_country` is a fallback
    # (GeoIP2 binary database docs: country may be absent for some networks).
    country = rec.get("country") or rec.get("registered_country") or {}
    out = {"geo.country_iso_code": country.get("iso_code") if isinstance(country, dict) else None}
    traits = rec.get("traits")
    if isinstance(traits, dict):  # Enterprise/City-ISP records carry ASN and flags in traits
        out["as.number"] = traits.get("autonomous_system_number")
        out["as.organization.name"] = traits.get("autonomous_system_organization")
        out.update(_anonymous(traits, present_means_false=False))
    return out


def _anonymous(rec: dict[str, Any], present_means_false: bool = True) -> dict[str, Any]:
    # In the Anonymous IP database a flag key "is only present when the value is true" (MaxMind
    # GeoIP Anonymous IP binary fields), so a missing key there means False, not unknown.
    def flag(*keys: str) -> bool | None:
        values = [rec.get(k) for k in keys]
        if any(values):
            return True
        if present_means_false or any(v is not None for v in values):
            return False
        return None

    return {
        "anonymity.hosting": flag("is_hosting_provider"),
        "anonymity.vpn": flag("is_anonymous_vpn"),
        "anonymity.proxy": flag("is_public_proxy", "is_residential_proxy"),
        "anonymity.tor": flag("is_tor_exit_node"),
    }


def _ipinfo(rec: dict[str, Any]) -> dict[str, Any]:
    asn = rec.get("asn")
    number = None
    if isinstance(asn, str) and asn.upper().startswith("AS") and asn[2:].isdigit():
        number = int(asn[2:])
    elif isinstance(asn, int):
        number = asn
    country = rec.get("country_code")
    if country is None and isinstance(rec.get("country"), str) and len(rec["country"]) == 2:
        country = rec["country"]  # the older IPinfo "country_asn" layout: country is the code
    return {"as.number": number, "as.organization.name": rec.get("as_name"), "geo.country_iso_code": country}


def _demo(rec: dict[str, Any]) -> dict[str, Any]:
    return {**_asn_geolite(rec), **_country_geolite(rec), **_anonymous(rec)}


Extractor = Callable[[dict[str, Any]], dict[str, Any]]
# Kind name → how to read its records (a plain registry, STYLE.md 6).
KINDS: dict[str, Extractor] = {
    "asn": _asn_geolite,
    "country": _country_geolite,
    "city": _country_geolite,
    "anonymous-ip": _anonymous,
    "dbip-asn": _asn_geolite,
    "dbip-country": _country_geolite,
    "dbip-city": _country_geolite,
    "ipinfo-lite": _ipinfo,
    "demo": _demo,
}


def detect_kind(database_type: str, sample: dict[str, Any] | None) -> str | None:
    """The kind of a database from its metadata type, falling back to the fields of a record."""
    t = database_type.lower()
    if "appliance-demo" in t:
        return "demo"
    if t.startswith("dbip") or "db-ip" in t:
        for word, kind in (("asn", "dbip-asn"), ("city", "dbip-city"), ("country", "dbip-country")):
            if word in t:
                return kind
    if "ipinfo" in t:
        return "ipinfo-lite"
    if "anonymous" in t:
        return "anonymous-ip"
    if t.endswith("-asn") or t.endswith("-isp") or t == "asn":
        return "asn"
    if "city" in t or "enterprise" in t:
        return "city"
    if "country" in t:
        return "country"
    if not sample:
        return None
    keys = set(sample)
    if "autonomous_system_number" in keys and ("country" in keys or "is_hosting_provider" in keys):
        return "demo"
    if "autonomous_system_number" in keys:
        return "asn"
    if {"as_name", "country_code"} & keys or isinstance(sample.get("asn"), str):
        return "ipinfo-lite"
    if any(k.startswith("is_") for k in keys):
        return "anonymous-ip"
    if "city" in keys:
        return "city"
    if "country" in keys or "registered_country" in keys:
        return "country"
    return None


@dataclass
class Database:
    path: str
    kind: str
    reader: Any
    ip_version: int


def _cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "appliance-geoip"


def _open_one(path: str, cache_dir: str | Path | None) -> Database:
    p = Path(path)
    if not p.exists():
        raise InputError(path, "GeoIP database not found")
    if p.suffix.lower() == ".csv":
        # A readable demo source: build (or reuse) its MaxMind DB in a cache directory.
        from appliance.enrich.mmdb_writer import demo_db

        try:
            p = demo_db(p, cache_dir or _cache_dir())
        except (ValueError, KeyError, OSError) as exc:
            raise InputError(path, f"cannot build a GeoIP database from this CSV: {exc}") from exc
    try:
        reader = maxminddb.open_database(str(p))
    except (maxminddb.InvalidDatabaseError, ValueError, OSError) as exc:
        raise InputError(path, f"not a valid MaxMind DB: {exc}") from exc
    meta = reader.metadata()
    sample: dict[str, Any] | None = None
    try:
        for _net, rec in reader:  # the first stored record tells unknown layouts apart
            sample = rec if isinstance(rec, dict) else None
            break
    except (maxminddb.InvalidDatabaseError, ValueError) as exc:
        raise InputError(path, f"corrupt MaxMind DB: {exc}") from exc
    kind = detect_kind(str(meta.database_type), sample)
    if kind is None:
        raise InputError(path, f"unsupported GeoIP database type {meta.database_type!r}")
    return Database(path, kind, reader, int(meta.ip_version))


class GeoIP:
    """Open databases plus the lookup cache; `enrich` adds the enrichment columns to a frame."""

    def __init__(self, databases: list[Database], cache_size: int = 200_000) -> None:
        self.databases = databases
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Values] = OrderedDict()
        self.stats = {"lookups": 0, "cache_hits": 0, "evicted": 0}

    @classmethod
    def open(cls, paths: list[str], cache_dir: str | Path | None = None, cache_size: int = 200_000) -> GeoIP:
        """Open each database (a .csv is built into a demo DB under cache_dir first)."""
        return cls([_open_one(p, cache_dir) for p in paths], cache_size)

    @property
    def kinds(self) -> dict[str, str]:
        return {db.path: db.kind for db in self.databases}

    def close(self) -> None:
        for db in self.databases:
            db.reader.close()

    def lookup(self, ip: str) -> Values:
        """Enrichment values for one address, in _SUFFIXES order (all None when unknown)."""
        hit = self._cache.get(ip)
        if hit is not None:
            self._cache.move_to_end(ip)
            self.stats["cache_hits"] += 1
            return hit
        values = self._lookup(ip)
        self._cache[ip] = values
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
            self.stats["evicted"] += 1
        return values

    def _lookup(self, ip: str) -> Values:
        self.stats["lookups"] += 1
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return _EMPTY
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # ::ffff:a.b.c.d is the IPv4 host (RFC 4291 2.5.5.2)
        out: list[Any] = list(_EMPTY)
        for db in self.databases:
            if addr.version == 6 and db.ip_version == 4:
                continue
            try:
                rec = db.reader.get(addr)
            except (ValueError, maxminddb.InvalidDatabaseError):
                continue
            if not isinstance(rec, dict):
                continue
            for key, value in KINDS[db.kind](rec).items():
                i = _IDX[key]
                if out[i] is None and value is not None:
                    out[i] = value
        return tuple(out)

    def enrich(self, frame: pl.DataFrame, sides: tuple[str, ...] = ("source", "destination")) -> pl.DataFrame:
        """Add the enrichment columns for each side whose `<side>.ip` column exists."""
        for side in sides:
            ip_col = f"{side}.ip"
            if ip_col not in frame.columns:
                continue
            names = [f"{side}.{s}" for s in _SUFFIXES]
            base = frame.drop([n for n in names if n in frame.columns])
            if not self.databases or frame.height == 0:
                frame = base.with_columns(
                    pl.lit(None, dtype=_DTYPES[s]).alias(n) for s, n in zip(_SUFFIXES, names, strict=True)
                )
                continue
            uniques = frame.get_column(ip_col).drop_nulls().unique().to_list()
            rows = [self.lookup(ip) for ip in uniques]
            columns: dict[str, Any] = {ip_col: pl.Series(ip_col, uniques, dtype=pl.Utf8)}
            for i, (suffix, name) in enumerate(zip(_SUFFIXES, names, strict=True)):
                columns[name] = pl.Series(name, [r[i] for r in rows], dtype=_DTYPES[suffix])
            table = pl.DataFrame(columns)
            frame = base.join(table, on=ip_col, how="left", maintain_order="left", nulls_equal=False)
        return frame


def empty() -> GeoIP:
    """No databases: enrich() adds the columns, all null (`--geoip` is optional)."""
    return GeoIP([])
