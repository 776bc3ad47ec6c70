"""Persistent state: incremental add/save/open cycles, atomic snapshots, bounds and evictions."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from appliance.graph import EntityGraph, GraphLimits
from appliance.graph.store import GraphStore


def _halves(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    k = frame.height // 2
    return frame.head(k), frame.tail(frame.height - k)


def test_incremental_two_cycles_equal_one_pass(scenario, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    (acc1, acc2), (req1, req2) = _halves(scenario.accounts), _halves(scenario.requests)
    g = EntityGraph.open(state)
    g.add_events("account", acc1)
    g.add_events("request", req1)
    g.save()
    g = EntityGraph.open(state)  # second replay adds to the first
    assert g.stats.nodes > 0
    g.add_events("account", acc2)
    g.add_events("request", req2)
    g.save()
    inc = EntityGraph.open(state)
    one = EntityGraph.open(None)
    one.add_events("account", scenario.accounts)
    one.add_events("request", scenario.requests)
    assert inc.stats.edges == one.stats.edges
    edge_sum = inc.store.tables["edges"].get_column("count").sum()
    assert edge_sum == one.store.tables["edges"].get_column("count").sum()
    assert [(c.id, round(c.score, 6)) for c in inc.clusters()] == [(c.id, round(c.score, 6)) for c in one.clusters()]
    # Only the committed snapshot remains on disk.
    assert len(list(Path(state).glob("snap-*"))) == 1


def test_crash_mid_write_keeps_previous_state(scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = str(tmp_path / "state")
    g = EntityGraph.open(state)
    g.add_events("account", scenario.accounts.head(100))
    g.save()
    committed = EntityGraph.open(state).stats.edges
    g.add_events("request", scenario.requests)

    def crash(tmp: Path, target: Path) -> None:
        raise OSError("simulated crash between temp write and replace")

    monkeypatch.setattr(GraphStore, "_commit", staticmethod(crash))
    with pytest.raises(OSError):
        g.save()
    monkeypatch.undo()
    again = EntityGraph.open(state)
    assert again.stats.edges == committed
    assert again.store.tables["activity"].height == 0
    # The next successful save replaces the half-written snapshot and commits everything.
    g.save()
    assert EntityGraph.open(state).stats.edges == g.stats.edges > committed


def test_bounds_evict_oldest_and_count(scenario) -> None:
    g = EntityGraph.open(None, GraphLimits(max_edges=3000, max_activity_rows=1000, max_nodes=2000))
    g.add_events("account", scenario.accounts)
    g.add_events("request", scenario.requests)
    st = g.stats
    assert st.edges <= 3000 and st.activity_rows <= 1000
    assert st.evicted_edges > 0 and st.evicted_activity > 0 and st.evicted_nodes > 0
    # Newest activity survives: exactly the 1,000 latest (account, minute) rows of the full table.
    kept = g.store.tables["activity"].get_column("minute").sort(descending=True)
    full = EntityGraph.open(None)
    full.add_events("request", scenario.requests)
    newest = full.store.tables["activity"].get_column("minute").sort(descending=True).head(1000)
    assert kept.to_list() == newest.to_list()
