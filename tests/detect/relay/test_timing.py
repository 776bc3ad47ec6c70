"""Grouped timing kernels (one search over all candidate hosts) against per-group brute force."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.detect.relay import timing

MS = 1_000_000
# Real event times are ns since the epoch: group * time would overflow int64, so the kernels must not.
EPOCH = 1_700_000_000_000_000_000
events = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3_000)), max_size=40)


def split(evs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    g = np.array([a for a, _ in evs], dtype=np.int64)
    t = np.array([b for _, b in evs], dtype=np.int64) * MS + EPOCH
    return g, t


@settings(max_examples=80, deadline=None)
@given(events, events, st.integers(0, 500))
def test_match_lag_and_preceded_groups_match_brute_force(reqs: list[tuple[int, int]], ups: list[tuple[int, int]],
                                                         w_ms: int) -> None:
    w = w_ms * MS
    rg, rt = split(reqs)
    ug, ut = split(ups)
    got = timing.match_lag_groups(rg, rt, ug, ut, w, 5)
    for g in range(5):
        up = sorted(t for gg, t in zip(ug, ut, strict=True) if gg == g)
        lags, hit = [], set()
        for r in (t for gg, t in zip(rg, rt, strict=True) if gg == g):
            nxt = next((u for u in up if u >= r), None)  # the next opening of the same host only
            if nxt is not None and nxt - r <= w:
                lags.append(nxt - r)
                hit.add(nxt)
        assert got.matched[g] == len(lags)
        assert got.distinct_upstream[g] == len(hit)
        assert got.lags_ns[got.lag_groups == g].tolist() == sorted(lags)
    pre = timing.preceded_groups(ug, ut, rg, rt, w)
    assert pre.tolist() == [any(gg == g and 0 <= u - r <= w for gg, r in zip(rg, rt, strict=True))
                            for g, u in zip(ug, ut, strict=True)]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1000), st.integers(0, 200)), max_size=25),
       events)
def test_interval_groups_match_brute_force(iv: list[tuple[int, int, int]], pts: list[tuple[int, int]]) -> None:
    g = np.array([a for a, _, _ in iv], dtype=np.int64)
    s = np.array([b for _, b, _ in iv], dtype=np.int64) + EPOCH
    e = s + np.array([d for _, _, d in iv], dtype=np.int64)
    pg, pt = np.array([a for a, _ in pts], dtype=np.int64), np.array([b for _, b in pts], dtype=np.int64) // 2 + EPOCH
    merged = timing.merge_interval_groups(g, s, e)
    inside = timing.contained_groups(pg, pt, merged)
    assert inside.tolist() == [any(gg == q and a <= x <= b for gg, a, b in zip(g, s, e, strict=True))
                               for q, x in zip(pg, pt, strict=True)]
    lo, hi = [EPOCH] * 4, [EPOCH + 1200] * 4
    cov = timing.coverage_groups(merged, lo, hi)
    grid = np.arange(EPOCH, EPOCH + 1200)
    for q in range(4):
        covered = np.zeros(grid.size, dtype=bool)
        for gg, a, b in zip(g, s, e, strict=True):
            if gg == q:
                covered[(grid >= a) & (grid < b)] = True
        assert abs(cov[q] - covered.mean()) < 1e-9
        # Each group's merged intervals are disjoint and sorted.
        ms, me = merged[1][merged[0] == q], merged[2][merged[0] == q]
        assert np.all(ms[1:] > me[:-1])


def test_one_host_forms_are_the_grouped_ones_with_one_group() -> None:
    req = np.array([0, 1000, 5000], dtype=np.int64) * MS + EPOCH
    up = np.array([20, 1300, 9000], dtype=np.int64) * MS + EPOCH
    m = timing.match_lag(req, up, 500 * MS, 10_000 * MS)
    assert (m.requests, m.matched, m.distinct_upstream, m.lags_ns.tolist()) == (3, 2, 2, [20 * MS, 300 * MS])
    # Shifting a host's events into another group changes nothing for it.
    g = timing.match_lag_groups(np.full(3, 7), req, np.full(3, 7), up, 500 * MS, 8)
    assert g.matched.tolist() == [0] * 7 + [2] and g.lags_ns.tolist() == m.lags_ns.tolist()
