"""The demo-DB writer produces files the maxminddb reader (C extension and pure Python) accepts."""

from __future__ import annotations

from pathlib import Path

import maxminddb
import pytest

from appliance.enrich.mmdb_writer import DEMO_DATABASE_TYPE, UInt32, build_demo_db, write_mmdb

ROOT = Path(__file__).resolve().parents[2]
RECORDS = [
    ("192.0.2.0/25", {"autonomous_system_number": UInt32(64502), "org": "broadband"}),
    ("192.0.2.64/27", {"autonomous_system_number": UInt32(64510), "org": "cdn"}),  # nested: wins
    ("2001:db8:100::/48", {"flag": True, "n": -5, "big": 1 << 40, "f": 1.5, "list": ["a", "b"]}),
]


@pytest.mark.parametrize("record_size", [24, 28, 32])
@pytest.mark.parametrize("mode", [maxminddb.MODE_AUTO, maxminddb.MODE_MEMORY])
def test_round_trip_all_record_sizes(tmp_path: Path, record_size: int, mode: int) -> None:
    path = tmp_path / "t.mmdb"
    write_mmdb(path, RECORDS, "Test-DB", record_size=record_size, build_epoch=1_700_000_000)
    with maxminddb.open_database(str(path), mode) as reader:
        meta = reader.metadata()
        assert (meta.database_type, meta.ip_version, meta.record_size) == ("Test-DB", 6, record_size)
        assert meta.build_epoch == 1_700_000_000
        assert reader.get("192.0.2.10") == {"autonomous_system_number": 64502, "org": "broadband"}
        assert reader.get("192.0.2.70")["org"] == "cdn"
        assert reader.get("192.0.2.100")["org"] == "broadband"  # both sides of the nested /27
        assert reader.get("192.0.2.128") is None
        assert reader.get("2001:db8:100::1") == {"flag": True, "n": -5, "big": 1 << 40, "f": 1.5, "list": ["a", "b"]}
        assert reader.get("2001:db8:101::1") is None
        # IPv4 lives in the ::/96 subtree (spec "IPv4 addresses in an IPv6 tree").
        assert reader.get("::c000:20a")["org"] == "broadband"


def test_ipv4_only_database(tmp_path: Path) -> None:
    path = tmp_path / "v4.mmdb"
    write_mmdb(path, [("10.0.0.0/8", {"x": "y"})], "V4", ip_version=4)
    with maxminddb.open_database(str(path)) as reader:
        assert reader.metadata().ip_version == 4
        assert reader.get("10.1.2.3") == {"x": "y"}
        assert reader.get("11.0.0.1") is None
    with pytest.raises(ValueError):
        write_mmdb(path, [("2001:db8::/32", {})], "V4", ip_version=4)


def test_long_strings_use_extended_sizes(tmp_path: Path) -> None:
    path = tmp_path / "long.mmdb"
    values = {"a": "x" * 100, "b": "y" * 400, "c": "z" * 70_000}  # sizes 29+, 285+, 65821+
    write_mmdb(path, [("198.51.100.0/24", values)], "Long")
    with maxminddb.open_database(str(path), maxminddb.MODE_MEMORY) as reader:
        assert reader.get("198.51.100.1") == values


def test_demo_db_matches_address_plan(tmp_path: Path) -> None:
    out = build_demo_db(ROOT / "pcaps/geo/demo-geo.csv", tmp_path / "demo.mmdb")
    with maxminddb.open_database(str(out)) as reader:
        assert reader.metadata().database_type == DEMO_DATABASE_TYPE
        relay = reader.get("203.0.113.7")
        assert relay["autonomous_system_number"] == 64500 and relay["country"]["iso_code"] == "NL"
        assert relay["is_hosting_provider"] is True
        vpn = reader.get("192.0.2.200")
        assert vpn["is_anonymous_vpn"] is True and vpn["country"]["iso_code"] == "SG"
        assert reader.get("192.0.2.10")["autonomous_system_number"] == 64502  # corporate proxy
        assert reader.get("192.0.2.70")["autonomous_system_number"] == 64510  # CDN inside /25
        assert reader.get("2001:db8:200::9")["country"]["iso_code"] == "CN"
        assert reader.get("160.79.104.10")["autonomous_system_number"] == 399358
        assert reader.get("10.20.0.5") is None  # private: not in the DB
