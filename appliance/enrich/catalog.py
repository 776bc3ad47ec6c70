"""Data catalogs (rules/data/*.yaml) and the `destination.service` enrichment they drive.

A catalog is a named list with a cited source per entry: AI API endpoints, hosting ASNs, VPN/proxy
ASNs, restricted regions, disposable email domains. Rules read them as named lists; this module
also uses `ai_api_endpoints` to label events that reach a catalogued endpoint, by (in order of
strength) TLS SNI, HTTP Host, DNS question name, or the destination address (a published range, or
an address a catalogued name resolved to earlier in the capture: `learn_dns`).

File format (shared with the rule engine; keep it exactly):
    name: <catalog name>      description: <text>
    entries: [{value: str, source: URL or citation, service?: str,
               kind?: domain|cidr|asn|country|email_domain, note?: str}, ...]

Matching is per unique value per batch (a few hundred names, a few thousand addresses), and the
answers are mapped back with polars; no per-row Python.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from appliance import schema
from appliance.config import YAML_LOADER
from appliance.errors import ConfigError

KINDS = ("domain", "cidr", "asn", "country", "email_domain")
ENDPOINTS = "ai_api_endpoints"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Entry:
    value: str
    source: str
    service: str | None = None
    kind: str | None = None
    note: str | None = None


@dataclass
class Catalog:
    name: str
    description: str
    entries: list[Entry]
    path: str = ""

    def values(self) -> list[str]:
        return [e.value for e in self.entries]


def _load_file(path: Path) -> Catalog:
    where = str(path)
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=YAML_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"{path}:{mark.line + 1}:{mark.column + 1}"
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), list):
        raise ConfigError(f"{where}: a catalog needs top-level 'name', 'description' and an 'entries' list")
    name = doc.get("name") or path.stem
    if name != path.stem:
        raise ConfigError(f"{where}: name {name!r} differs from the file name {path.stem!r}")
    entries = []
    for i, raw in enumerate(doc["entries"]):
        if not isinstance(raw, dict) or not isinstance(raw.get("value"), str) or not raw.get("source"):
            raise ConfigError(f"{where}: entry {i + 1} needs a string 'value' and a 'source'")
        kind = raw.get("kind")
        if kind is not None and kind not in KINDS:
            raise ConfigError(f"{where}: entry {i + 1} ({raw['value']}): unknown kind {kind!r}, expected {KINDS}")
        unknown = set(raw) - {"value", "source", "service", "kind", "note"}
        if unknown:
            raise ConfigError(f"{where}: entry {i + 1} ({raw['value']}): unknown keys {sorted(unknown)}")
        entries.append(Entry(raw["value"], str(raw["source"]), raw.get("service"), kind, raw.get("note")))
    return Catalog(str(name), str(doc.get("description") or ""), entries, str(path))


def _norm_domain(name: str) -> str:
    return name.strip().rstrip(".").lower()


@dataclass
class _Index:
    exact: dict[str, str] = field(default_factory=dict)  # name → service (and its subdomains)
    below: dict[str, str] = field(default_factory=dict)  # "*.x" entries: subdomains of x only
    networks: list[tuple[Network, str]] = field(default_factory=list)


class Catalogs:
    """All catalogs of a data directory, plus the DNS-learned address → service map."""

    def __init__(self, catalogs: dict[str, Catalog], dns_limit: int = 100_000) -> None:
        self.catalogs = catalogs
        self.dns_limit = dns_limit
        self._learned: OrderedDict[str, str] = OrderedDict()
        self.stats = {"dns_learned": 0, "dns_evicted": 0}
        self._index = _Index()
        for entry in catalogs[ENDPOINTS].entries if ENDPOINTS in catalogs else []:
            if not entry.service:
                continue
            kind = entry.kind or ("cidr" if "/" in entry.value else "domain")
            if kind == "cidr":
                self._index.networks.append((ipaddress.ip_network(entry.value, strict=False), entry.service))
            elif entry.value.startswith("*."):
                self._index.below[_norm_domain(entry.value[2:])] = entry.service
            else:
                self._index.exact[_norm_domain(entry.value)] = entry.service

    @classmethod
    def load(cls, data_dir: str | Path = "rules/data", dns_limit: int = 100_000) -> Catalogs:
        root = Path(data_dir)
        if not root.is_dir():
            raise ConfigError(f"{root}: catalog directory not found")
        catalogs = {}
        for path in sorted(root.glob("*.yaml")):
            cat = _load_file(path)
            catalogs[cat.name] = cat
        return cls(catalogs, dns_limit)

    def __getitem__(self, name: str) -> Catalog:
        return self.catalogs[name]

    def names(self) -> list[str]:
        return sorted(self.catalogs)

    def asns(self, name: str) -> set[int]:
        return {int(e.value.upper().removeprefix("AS")) for e in self.catalogs[name].entries}

    # -- matching -------------------------------------------------------------------------------

    def domain_service(self, name: str | None) -> str | None:
        """Service of a host name: exact entry, or a subdomain of an entry (or of a `*.` entry)."""
        if not name:
            return None
        labels = _norm_domain(name).split(".")
        for i in range(len(labels)):
            suffix = ".".join(labels[i:])
            svc = self._index.exact.get(suffix)
            if svc is not None:
                return svc
            if i > 0:
                svc = self._index.below.get(suffix)
                if svc is not None:
                    return svc
        return None

    def ip_service(self, ip: str | None) -> str | None:
        """Service of an address: learned from DNS answers, else a published range."""
        if not ip:
            return None
        svc = self._learned.get(ip)
        if svc is not None:
            return svc
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return None
        for net, service in self._index.networks:
            if addr.version == net.version and addr in net:
                return service
        return None

    def _map(self, frame: pl.DataFrame, column: str, fn: Any) -> pl.Expr:
        """Per-unique-value lookup turned into an expression over the column."""
        if column not in frame.columns:
            return pl.lit(None, dtype=pl.Utf8)
        uniques = frame.get_column(column).drop_nulls().unique().to_list()
        table = {u: s for u in uniques if (s := fn(u)) is not None}
        if not table:
            return pl.lit(None, dtype=pl.Utf8)
        return pl.col(column).replace_strict(table, default=None, return_dtype=pl.Utf8)

    def service(self, frame: pl.DataFrame, event_type: str) -> pl.DataFrame:
        """Add `destination.service` where the event reaches a catalogued AI endpoint."""
        if "destination.service" not in schema.field_names(event_type):
            return frame
        exprs = [
            self._map(frame, "tls.client.server_name", self.domain_service),
            self._map(frame, "url.domain", self.domain_service),
        ]
        if event_type == "dns":
            # For DNS the destination is the resolver: the question names the service.
            exprs.append(self._map(frame, "dns.question.name", self.domain_service))
        else:
            exprs.append(self._map(frame, "destination.ip", self.ip_service))
        if "destination.service" in frame.columns:
            exprs.insert(0, pl.col("destination.service"))
        return frame.with_columns(pl.coalesce(exprs).alias("destination.service"))

    def learn_dns(self, dns_frame: pl.DataFrame) -> int:
        """Remember the addresses catalogued names resolved to; returns how many were learned.

        Bounded: beyond dns_limit addresses the oldest are forgotten (counted in stats).
        """
        needed = {"dns.question.name", "dns.answers.data"}
        if dns_frame.height == 0 or not needed <= set(dns_frame.columns):
            return 0
        svc = self._map(dns_frame, "dns.question.name", self.domain_service)
        pairs = (
            dns_frame.lazy()
            .select(svc.alias("svc"), pl.col("dns.answers.data").alias("ip"))
            .filter(pl.col("svc").is_not_null())
            .explode("ip")
            # A/AAAA data only; CNAME targets are names (no digit-dot or colon form).
            .filter(pl.col("ip").str.contains(r"^(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$"))
            .unique(subset="ip", keep="last", maintain_order=True)
            .collect()
        )
        learned = 0
        for ip, service in zip(pairs.get_column("ip").to_list(), pairs.get_column("svc").to_list(), strict=True):
            if ip in self._learned:
                self._learned.move_to_end(ip)
            else:
                learned += 1
            self._learned[ip] = service
            if len(self._learned) > self.dns_limit:
                self._learned.popitem(last=False)
                self.stats["dns_evicted"] += 1
        self.stats["dns_learned"] += learned
        return learned
