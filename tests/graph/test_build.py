"""Event frames -> deltas (appliance/graph/build.py): codebook, edge rules, interning order."""

from __future__ import annotations

import polars as pl

from appliance.graph import EntityGraph
from appliance.graph.build import Codebook, _mismatch, from_request, ja4_ua_mismatch
from appliance.graph.synthetic import CHROME_JA4, CHROME_UA, GO_JA4, SDK_JA4, SDK_UA


def test_codebook_round_trips_and_extends() -> None:
    cb = Codebook()
    first = pl.Series(["b", None, "a", "b", ""])
    c1 = cb.encode("ip", first)
    assert c1.dtype == pl.UInt32
    assert cb.values["ip"].gather(c1).to_list() == first.to_list()
    second = pl.Series(["c", "a", None])
    c2 = cb.encode("ip", second)
    assert cb.values["ip"].gather(c2).to_list() == second.to_list()
    # Extending the dictionary keeps earlier codes valid, and each value has one code.
    assert cb.values["ip"].gather(c1).to_list() == first.to_list()
    assert cb.values["ip"].n_unique() == cb.values["ip"].len() == 4
    empty = cb.empty("ip")
    assert empty is not None and cb.values["ip"][empty] == ""
    assert cb.empty("account") is None
    one = cb.encode("ja4", pl.Series([SDK_JA4, None, SDK_JA4]))
    assert one.to_list() == [0, None, 0]


def test_mismatch_equals_row_expression() -> None:
    ja4 = [CHROME_JA4, GO_JA4, SDK_JA4, None, GO_JA4, "x", GO_JA4]
    ua = [CHROME_UA, CHROME_UA, CHROME_UA, CHROME_UA, None, CHROME_UA, SDK_UA]
    frame = pl.DataFrame({"tls.client.ja4": ja4, "user_agent.original": ua}, schema={
        "tls.client.ja4": pl.Utf8, "user_agent.original": pl.Utf8})
    d = from_request(frame)  # no account column: only encodes
    codes = pl.DataFrame([d.codes.encode("ja4", frame["tls.client.ja4"]).alias("tls.client.ja4"),
                          d.codes.encode("user_agent", frame["user_agent.original"]).alias("user_agent.original")])
    want = frame.select(ja4_ua_mismatch(pl.col("tls.client.ja4"), pl.col("user_agent.original"))).to_series()
    assert _mismatch(d, codes).to_list() == want.to_list() == [False, True, True, False, False, True, False]


def test_empty_and_null_ends_make_no_edge_and_ids_follow_type_value_order() -> None:
    t = pl.Series([0, 60, 120, 180], dtype=pl.Int64).cast(pl.Datetime("ns", "UTC"))
    frame = pl.DataFrame({"@timestamp": t, "account.id": ["a2", "a1", "", "a1"],
                          "source.ip": ["192.0.2.9", "", "192.0.2.1", None]})
    g = EntityGraph.open(None)
    g.add_events("request", frame)
    nodes = g.store.tables["nodes"]
    # Ids are handed out in (node type, value) order within a batch; an address is a node (with its
    # attributes) even where its row has no usable account.
    assert nodes.sort("id").select(pl.col("type").cast(pl.Utf8), "value").rows() == [
        ("ip", ""), ("ip", "192.0.2.1"), ("ip", "192.0.2.9"), ("prefix", "192.0.2.0/24"), ("account", ""),
        ("account", "a1"), ("account", "a2")]
    edges = g.neighbourhood("a2", "account")
    assert edges.select("etype", "dst_value").rows() == [("egress", "192.0.2.9")]
    assert g.neighbourhood("a1", "account").height == 0  # only "" or missing addresses
    # Activity keeps every non-null account, "" included: (a2, a1, "") in minute 0.
    assert g.store.tables["activity"].get_column("n").sort().to_list() == [1, 1, 2]


def test_frames_without_optional_columns() -> None:
    frame = pl.DataFrame({"account.id": ["a", "b"], "source.ip": ["2001:db8::1", "2001:db8::1"]})
    g = EntityGraph.open(None)
    g.add_events("request", frame)  # no time, no status, no client, no enrichment
    assert g.neighbourhood("2001:db8::1", "ip").select("etype").to_series().to_list().count("egress") == 2
    assert g.store.tables["ips"].get_column("ip").to_list() == ["2001:db8::1"]
