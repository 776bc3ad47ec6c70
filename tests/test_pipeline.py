"""Decoded events → plain columns (what replay workers send) → frames of the declared schema."""

from __future__ import annotations

import polars as pl

from appliance import schema
from appliance.pipeline import _SEP, event_frames, flatten, frames_from_flat, merge_flat


def _dns_row(name: str, answers: list[str] | None, vlan: list[int]) -> dict:
    row = {"@timestamp": 1_700_000_000_000_000_000, "source.ip": "10.0.0.1", "dns.question.name": name,
           "network.vlan.id": vlan}
    if answers is not None:  # a query has no answers key at all
        row["dns.answers.data"] = answers
    return row


def test_flatten_transposes_rows_and_joins_lists() -> None:
    flat = flatten({"dns": [_dns_row("a.example", None, []), _dns_row("b.example", ["192.0.2.1", "192.0.2.2"], [7, 9])]})
    cols = flat["dns"]
    assert cols["dns.question.name"] == ["a.example", "b.example"]
    assert cols["dns.answers.data"] == [None, f"192.0.2.1{_SEP}192.0.2.2"]
    assert cols["network.vlan.id"] == ["", f"7{_SEP}9"]  # numbers joined through str()


def test_merged_shards_make_the_frame_one_process_makes() -> None:
    rows = [_dns_row("a.example", None, []), _dns_row("b.example", ["192.0.2.1"], [7]),
            _dns_row("c.example", ["2001:db8::1", "192.0.2.9"], [])]
    whole = event_frames({"dns": rows})["dns"]
    # shard 0 never saw an answer, so its columns lack dns.answers.data: merged, its rows are None
    parts = [flatten({"dns": rows[:1]}), flatten({"dns": rows[1:]})]
    assert "dns.answers.data" not in parts[0]["dns"]
    merged = frames_from_flat(merge_flat(parts))["dns"]
    assert merged.equals(whole)
    assert merged.schema == pl.Schema({k: v for k, v in schema.polars_schema("dns", enriched=False).items()})
    assert merged.get_column("dns.answers.data").to_list() == [None, ["192.0.2.1"], ["2001:db8::1", "192.0.2.9"]]
    assert merged.get_column("network.vlan.id").to_list() == [[], [7], []]
    assert merged.get_column("dns.response_code").null_count() == 3  # declared, set by no event
