"""Vectorised covering networks (appliance/graph/prefix.py) against the ipaddress reference."""

from __future__ import annotations

import ipaddress

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.graph.prefix import prefix_of, prefixes


def _spellings(value: int) -> list[str]:
    a = ipaddress.IPv6Address(value)
    short = ":".join(g.lstrip("0") or "0" for g in a.exploded.split(":"))
    return [a.compressed, a.exploded, a.exploded.upper(), short, a.compressed.upper()]


# Hextets drawn mostly from {0, small, any} so zero runs (and "::" placement) vary.
_hextet = st.one_of(st.just(0), st.integers(0, 0xF), st.integers(0, 0xFFFF))
_v6 = st.lists(_hextet, min_size=8, max_size=8).map(lambda gs: int("".join(f"{g:04x}" for g in gs), 16))


@settings(max_examples=300, deadline=None)
@given(st.lists(_v6, min_size=1, max_size=20), st.lists(st.integers(0, 2**32 - 1), max_size=10))
def test_addresses_match_ipaddress(v6: list[int], v4: list[int]) -> None:
    ips = [s for v in v6 for s in _spellings(v)] + [str(ipaddress.IPv4Address(v)) for v in v4]
    assert prefixes(pl.Series(ips)).to_list() == [prefix_of(ip) for ip in ips]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text("0123456789abcdefABCDEF:.% ", max_size=24)), max_size=30))
def test_any_text_matches_ipaddress(texts: list[str | None]) -> None:
    got = prefixes(pl.Series(texts, dtype=pl.Utf8)).to_list()
    assert got == [prefix_of(t) if t is not None else None for t in texts]


def test_known_forms() -> None:
    cases = {"203.0.113.7": "203.0.113.0/24", "2001:db8:8000:17::1": "2001:db8:8000::/48",
             "2001:DB8::1": "2001:db8::/48", "::": "::/48", "0:0:5::": "0:0:5::/48",
             "::ffff:192.0.2.1": "::/48", "fe80::1%eth0": "fe80::/48", "1:2:3:4::5:6:7:8": None,
             "01.2.3.4": None, "1.2.3": None, "": None, "1:2:3:4:5:6:7::": "1:2:3::/48"}
    got = prefixes(pl.Series(list(cases))).to_list()
    assert dict(zip(cases, got, strict=True)) == cases
    assert cases == {k: prefix_of(k) for k in cases}
