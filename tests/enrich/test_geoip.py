"""GeoIP: kind detection for every supported layout, enrichment values, errors, no-DB nulls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from appliance import schema
from appliance.enrich.geoip import GeoIP, detect_kind
from appliance.enrich.mmdb_writer import UInt32, write_mmdb
from appliance.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
DEMO_CSV = ROOT / "pcaps/geo/demo-geo.csv"
NET = "203.0.113.0/24"
IP = "203.0.113.7"

GEOLITE_ASN = {"autonomous_system_number": UInt32(64500), "autonomous_system_organization": "Example Hosting VPS"}
GEOLITE_COUNTRY = {"country": {"iso_code": "NL", "names": {"en": "Netherlands"}}, "continent": {"code": "EU"}}
GEOLITE_CITY = {**GEOLITE_COUNTRY, "city": {"names": {"en": "Amsterdam"}}, "location": {"latitude": 52.37}}
ANON = {"is_anonymous": True, "is_anonymous_vpn": True, "is_hosting_provider": True}
IPINFO = {"asn": "AS64500", "as_name": "Example Hosting VPS", "as_domain": "example.net",
          "country_code": "NL", "country": "Netherlands", "continent_code": "EU"}

# (database_type, record, expected kind, expected values for the IP)
LAYOUTS: list[tuple[str, dict[str, Any], str, dict[str, Any]]] = [
    ("GeoLite2-ASN", GEOLITE_ASN, "asn", {"as.number": 64500, "as.organization.name": "Example Hosting VPS"}),
    ("GeoIP2-ISP", {**GEOLITE_ASN, "isp": "x"}, "asn", {"as.number": 64500}),
    ("GeoLite2-Country", GEOLITE_COUNTRY, "country", {"geo.country_iso_code": "NL"}),
    ("GeoIP2-City", GEOLITE_CITY, "city", {"geo.country_iso_code": "NL"}),
    ("GeoIP2-Anonymous-IP", ANON, "anonymous-ip",
     {"anonymity.vpn": True, "anonymity.hosting": True, "anonymity.tor": False, "anonymity.proxy": False}),
    ("DBIP-ASN-Lite (compat=GeoLite2-ASN)", GEOLITE_ASN, "dbip-asn", {"as.number": 64500}),
    ("DBIP-Country-Lite", GEOLITE_COUNTRY, "dbip-country", {"geo.country_iso_code": "NL"}),
    ("DBIP-City-Lite", GEOLITE_CITY, "dbip-city", {"geo.country_iso_code": "NL"}),
    ("ipinfo lite.mmdb", IPINFO, "ipinfo-lite",
     {"as.number": 64500, "as.organization.name": "Example Hosting VPS", "geo.country_iso_code": "NL"}),
    # Unknown database_type: the record's fields decide.
    ("Some-Vendor-Export", IPINFO, "ipinfo-lite", {"geo.country_iso_code": "NL"}),
    ("Some-Vendor-Export", GEOLITE_ASN, "asn", {"as.number": 64500}),
]


def _db(tmp_path: Path, dbtype: str, record: dict[str, Any], name: str = "t.mmdb") -> str:
    path = tmp_path / name
    write_mmdb(path, [(NET, record), ("2001:db8:100::/48", record)], dbtype)
    return str(path)


@pytest.mark.parametrize(("dbtype", "record", "kind", "expected"), LAYOUTS)
def test_kind_detection_and_values(tmp_path: Path, dbtype: str, record: dict[str, Any], kind: str,
                                   expected: dict[str, Any]) -> None:
    geo = GeoIP.open([_db(tmp_path, dbtype, record)])
    assert list(geo.kinds.values()) == [kind]
    out = geo.enrich(pl.DataFrame({"source.ip": [IP, "2001:db8:100::9", "192.0.2.1"]}), sides=("source",))
    for suffix, value in expected.items():
        assert out[f"source.{suffix}"].to_list()[:2] == [value, value], suffix
        assert out[f"source.{suffix}"][2] is None  # not in the database: unknown, not False


def test_detect_kind_unknown_is_none() -> None:
    assert detect_kind("Weird", {"foo": 1}) is None
    assert detect_kind("Weird", None) is None


def test_several_databases_combine(tmp_path: Path) -> None:
    geo = GeoIP.open([_db(tmp_path, "GeoLite2-ASN", GEOLITE_ASN, "a.mmdb"),
                      _db(tmp_path, "GeoLite2-Country", GEOLITE_COUNTRY, "c.mmdb"),
                      _db(tmp_path, "GeoIP2-Anonymous-IP", ANON, "x.mmdb")])
    row = geo.enrich(pl.DataFrame({"destination.ip": [IP]}), sides=("destination",)).row(0, named=True)
    assert row["destination.as.number"] == 64500
    assert row["destination.geo.country_iso_code"] == "NL"
    assert row["destination.anonymity.vpn"] is True


def test_demo_csv_enriches_both_sides_with_schema_dtypes() -> None:
    geo = GeoIP.open([str(DEMO_CSV)])
    frame = pl.DataFrame({"source.ip": ["198.51.100.9", "::ffff:192.0.2.200", None, "junk"],
                          "destination.ip": ["203.0.113.7", "160.79.104.10", "10.20.0.1", "2001:db8:300::1"]})
    out = geo.enrich(frame)
    assert out.height == 4 and out["source.ip"].to_list() == frame["source.ip"].to_list()  # order kept
    assert out["source.geo.country_iso_code"].to_list() == ["CN", "SG", None, None]
    assert out["source.anonymity.vpn"].to_list() == [False, True, None, None]
    assert out["destination.as.number"].to_list() == [64500, 399358, None, 64510]
    assert out["destination.anonymity.hosting"].to_list() == [True, False, None, True]
    declared = {f.name: f.dtype for f in schema.ENRICHMENT}
    for name, dtype in out.schema.items():
        if name in declared:
            assert dtype == declared[name], name


def test_account_side_uses_signup_columns() -> None:
    geo = GeoIP.open([str(DEMO_CSV)])
    out = geo.enrich(pl.DataFrame({"signup.ip": ["203.0.113.7"]}), sides=("signup",))
    enriched = {f.name for f in schema.fields("account")} - {f.name for f in schema.ACCOUNT}
    assert enriched <= set(out.columns)
    assert out["signup.as.organization.name"][0] == "Example Hosting VPS"


def test_no_databases_gives_null_columns() -> None:
    out = GeoIP.open([]).enrich(pl.DataFrame({"source.ip": ["203.0.113.7"], "destination.ip": ["1.1.1.1"]}))
    names = [f.name for f in schema.ENRICHMENT if f.name != "destination.service"]
    assert set(names) <= set(out.columns)
    assert all(out[n].null_count() == 1 for n in names)


def test_missing_side_is_skipped() -> None:
    out = GeoIP.open([str(DEMO_CSV)]).enrich(pl.DataFrame({"source.ip": ["203.0.113.7"]}))
    assert not any(c.startswith("destination.") for c in out.columns)


def test_lookups_once_per_unique_ip_and_cache_bounded() -> None:
    geo = GeoIP.open([str(DEMO_CSV)], cache_size=2)
    frame = pl.DataFrame({"source.ip": ["203.0.113.7", "203.0.113.8", "203.0.113.9"] * 1000})
    geo.enrich(frame, sides=("source",))
    assert geo.stats["lookups"] == 3
    assert len(geo._cache) == 2 and geo.stats["evicted"] == 1


def test_missing_database_names_the_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "GeoLite2-ASN.mmdb")
    with pytest.raises(InputError, match="GeoLite2-ASN.mmdb"):
        GeoIP.open([missing])


@pytest.mark.parametrize("content", [b"", b"not a database at all" * 10, b"\xab\xcd\xefMaxMind.com\x00\x01"])
def test_corrupt_database_names_the_file(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "broken.mmdb"
    bad.write_bytes(content)
    with pytest.raises(InputError, match="broken.mmdb"):
        GeoIP.open([str(bad)])


def test_truncated_database_names_the_file(tmp_path: Path) -> None:
    good = Path(_db(tmp_path, "GeoLite2-ASN", GEOLITE_ASN))
    cut = tmp_path / "cut.mmdb"
    cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(InputError, match="cut.mmdb"):
        GeoIP.open([str(cut)])
