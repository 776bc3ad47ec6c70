"""Relay candidates: every table's rows labelled with their candidate, aliases with stable notes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from _relay_support import API, C1, RELAY, flows, hellos

from appliance.detect.relay import RelayDetector, candidates

ALIAS = "2001:db8::7"


def detector(tls_rows: Sequence[tuple[Any, ...]]) -> RelayDetector:
    det = RelayDetector()
    det.add("flow", flows([dict(src=RELAY, dst=API, start=1, end=2, resp_bytes=9_000, resp_pkts=20, service="x"),
                           dict(src=C1, dst=RELAY, start=1, end=2, resp_bytes=9_000, resp_pkts=20)]))
    det.add("tls", hellos(tls_rows))
    return det


def test_rows_are_labelled_with_their_candidate_in_table_order() -> None:
    det = detector([(t, C1, dst, "relay.example", "ja", None) for t, dst in ((3, ALIAS), (1, RELAY), (2, ALIAS))])
    c = candidates.build(det.store, det.window_ns)
    assert c.ips == [RELAY] and list(c.aliases[0]) == [ALIAS]
    assert c.tls_in is not None and c.tls_in.get_column("cand").to_list() == [0, 0, 0]
    assert c.tls_in.get_column("cand_ip").unique().to_list() == [RELAY]
    # The store's row order is kept, aliases' rows interleaved with the candidate's own.
    table = det.store.table("tls_in")
    assert table is not None
    assert c.tls_in.select("t", "dst").rows() == table.select("t", "dst").rows()
    assert c.tls_in.get_column("dst").to_list() == [ALIAS, RELAY, ALIAS]
    assert c.http_in is None and c.up is not None and c.up.height == 1


def test_an_alias_note_names_the_same_server_name_on_every_run() -> None:
    # Six inbound-only addresses each see both of the candidate's names, as often as the candidate
    # does: every tie must go to the first name. (Ties used to follow polars' unordered unique(),
    # which changes from process to process: all six agreeing by chance is 1 in 64.)
    aliases = [f"2001:db8::{i}" for i in range(1, 7)]
    clients = [f"192.0.2.{i}" for i in range(30, 36)]
    targets = [(dst, name, c) for dst in [RELAY, *aliases] for name in ("b.example", "a.example") for c in clients]
    rows = [(float(k), c, dst, name, "ja", None) for k, (dst, name, c) in enumerate(targets)]
    c = candidates.build(detector(rows).store, 1_000_000_000)
    assert c.aliases[0] == {a: f"inbound TLS names a.example, as {RELAY}'s does" for a in aliases}
