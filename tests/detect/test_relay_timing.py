"""Timing primitives of relay detection, checked against brute-force definitions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.detect.relay import timing

MS = 1_000_000
times = st.lists(st.integers(0, 10_000), max_size=40).map(lambda xs: np.array(sorted(xs), dtype=np.int64) * MS)


def test_match_lag_finds_next_upstream_within_window() -> None:
    req = np.array([0, 1000, 5000], dtype=np.int64) * MS
    up = np.array([20, 1300, 9000], dtype=np.int64) * MS
    m = timing.match_lag(req, up, 500 * MS, 10_000 * MS)
    assert (m.requests, m.matched, m.distinct_upstream) == (3, 2, 2)
    assert m.lags_ns.tolist() == [20 * MS, 300 * MS]
    assert abs(m.chance - (1 - np.exp(-3 * 0.05))) < 1e-9


@settings(max_examples=60, deadline=None)
@given(times, times, st.integers(1, 3000))
def test_match_lag_and_preceded_match_brute_force(req: np.ndarray, up: np.ndarray, w_ms: int) -> None:
    w = w_ms * MS
    m = timing.match_lag(req, up, w, 10_000 * MS)
    brute = sum(1 for r in req if any(0 <= u - r <= w for u in up))
    assert m.matched == brute
    pre = timing.preceded(up, req, w)
    assert pre.tolist() == [any(0 <= u - r <= w for r in req) for u in up]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 200)), max_size=20),
       st.lists(st.integers(-50, 1300), max_size=30))
def test_contained_and_coverage_match_brute_force(iv: list[tuple[int, int]], pts: list[int]) -> None:
    s = np.array([a for a, _ in iv], dtype=np.int64)
    e = np.array([a + d for a, d in iv], dtype=np.int64)
    p = np.array(pts, dtype=np.int64)
    got = timing.contained(p, s, e)
    assert got.tolist() == [any(a <= x <= b for a, b in zip(s, e, strict=True)) for x in p]
    grid = np.arange(0, 1200)
    inside = np.zeros(grid.size, dtype=bool)
    for a, b in zip(s, e, strict=True):
        inside[(grid >= a) & (grid < b)] = True
    assert abs(timing.coverage(s, e, 0, 1200) - inside.mean()) < 1e-9


def test_binned_xcorr_finds_the_lag_of_a_mirrored_series() -> None:
    rng = np.random.default_rng(3)
    s = np.sort(rng.integers(0, 600, 80)) * 1_000 * MS
    e = s + rng.integers(1, 3, 80) * 1_000 * MS
    b = rng.integers(1_000, 20_000, 80).astype(float)
    rho, lag = timing.binned_xcorr((s + 1_000 * MS, e + 1_000 * MS, b), (s, e, b))
    assert rho > 0.95 and lag == 1
    other = np.sort(rng.integers(0, 600, 80)) * 1_000 * MS
    rho2, _ = timing.binned_xcorr((other, other + 1_000 * MS, b), (s, e, b))
    assert rho2 < 0.5
