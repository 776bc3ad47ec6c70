"""The schema declaration is the one source of truth: docs and frames follow it."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from appliance import schema

ROOT = Path(__file__).resolve().parents[1]


def test_docs_schema_is_generated_from_the_declarations() -> None:
    assert (ROOT / "docs" / "schema.md").read_text() == schema.markdown(), "run: appliance schema > docs/schema.md"


def test_every_packet_event_carries_the_common_fields() -> None:
    for etype in ("flow", "tls", "http", "dns"):
        names = schema.field_names(etype)
        for common in ("@timestamp", "source.ip", "source.port", "destination.ip", "destination.port",
                       "network.transport", "network.community_id"):
            assert common in names, (etype, common)


def test_conform_fills_missing_and_rejects_unknown_columns() -> None:
    frame = pl.DataFrame({"source.ip": ["192.0.2.1"], "dns.id": [7]})
    out = schema.conform(frame, "dns")
    assert out.columns == schema.field_names("dns", enriched=False)
    assert out["dns.id"].to_list() == [7] and out["dns.question.name"].to_list() == [None]
    with pytest.raises(ValueError, match="undeclared"):
        schema.conform(pl.DataFrame({"tls.sni": ["x"]}), "tls")


def test_field_names_are_unique_per_event_type() -> None:
    for etype in schema.EVENT_TYPES:
        names = schema.field_names(etype)
        assert len(names) == len(set(names)), etype
