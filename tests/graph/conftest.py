"""Shared scenarios for the graph tests: generated once per session (they take ~0.1 s)."""

from __future__ import annotations

import pytest

from appliance.graph.synthetic import Scenario, generate


@pytest.fixture(scope="session")
def scenario() -> Scenario:
    return generate(seed=7, n_background=1500, farm_sizes=(5, 9, 25, 60, 150), difficulty="medium")
