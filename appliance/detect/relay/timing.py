"""Timing correlation between a host's inbound and upstream legs, on sorted numpy arrays.

Stage: detect (relay-host correlation). A relay re-issues each inbound request upstream a few ms
later and streams the answer back, so its upstream openings follow inbound activity; a web server
calling a model API on a timer does not. Every function here works on event times (ns since the
epoch) of ONE host, sorted, and uses `searchsorted`, so the cost is O(n log n) in that host's
events and never compares all pairs (issue 5, "Cost"). The same tests are the stepping-stone
detectors' (Zhang & Paxson, "Detecting Stepping Stones", USENIX Security 2000): matched ON periods
with a bounded lag, measured against what chance alone would give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NS = 1_000_000_000


@dataclass(frozen=True)
class LagMatch:
    """Inbound requests followed by an upstream opening within the window."""

    requests: int
    matched: int
    distinct_upstream: int  # upstream openings that some request matched (one-to-one check)
    lags_ns: np.ndarray  # lag of each matched request, sorted
    chance: float  # fraction expected if upstream openings were independent of the requests

    @property
    def fraction(self) -> float:
        return self.matched / self.requests if self.requests else 0.0


def _sorted(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64)
    return a if a.size < 2 or bool(np.all(a[1:] >= a[:-1])) else np.sort(a)


def chance_hit(n_events: int, span_ns: int, window_ns: int) -> float:
    """Probability that a random instant has at least one of n Poisson events within the window
    after it: 1 - exp(-rate * window). The baseline every matched fraction is compared with."""
    if n_events <= 0 or span_ns <= 0:
        return 0.0
    return float(1.0 - np.exp(-n_events * window_ns / span_ns))


def match_lag(requests: np.ndarray, upstream: np.ndarray, window_ns: int, span_ns: int) -> LagMatch:
    """For each inbound request, the lag to the next upstream opening (<= window_ns counts)."""
    req, up = _sorted(requests), _sorted(upstream)
    if req.size == 0 or up.size == 0:
        return LagMatch(int(req.size), 0, 0, np.empty(0, np.int64), chance_hit(int(up.size), span_ns, window_ns))
    idx = np.searchsorted(up, req, side="left")
    has = idx < up.size
    lag = np.full(req.size, np.iinfo(np.int64).max, dtype=np.int64)
    lag[has] = up[idx[has]] - req[has]
    ok = lag <= window_ns
    return LagMatch(int(req.size), int(ok.sum()), int(np.unique(idx[ok]).size), np.sort(lag[ok]),
                    chance_hit(int(up.size), span_ns, window_ns))


def preceded(events: np.ndarray, causes: np.ndarray, window_ns: int) -> np.ndarray:
    """Boolean per event: some cause happened in [event - window, event]."""
    ev, ca = _sorted(events), _sorted(causes)
    if ev.size == 0 or ca.size == 0:
        return np.zeros(ev.size, dtype=bool)
    idx = np.searchsorted(ca, ev, side="right") - 1
    out = idx >= 0
    out[out] = ev[out] - ca[idx[out]] <= window_ns
    return out


def merge_intervals(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of [start, end] intervals as disjoint sorted intervals (vectorised sweep)."""
    if starts.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.argsort(starts, kind="stable")
    s, e = starts[order].astype(np.int64), np.maximum(ends[order], starts[order]).astype(np.int64)
    run_end = np.maximum.accumulate(e)
    # A new merged interval begins where a start lies beyond every end before it.
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] > run_end[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, s.size - 1)
    return s[first], run_end[last]


def contained(points: np.ndarray, starts: np.ndarray, ends: np.ndarray, slack_ns: int = 0) -> np.ndarray:
    """Boolean per point: inside one of the intervals (widened by slack at the end)."""
    ms, me = merge_intervals(np.asarray(starts, np.int64), np.asarray(ends, np.int64) + slack_ns)
    pts = np.asarray(points, np.int64)
    if ms.size == 0 or pts.size == 0:
        return np.zeros(pts.size, dtype=bool)
    idx = np.searchsorted(ms, pts, side="right") - 1
    out = idx >= 0
    out[out] = pts[out] <= me[idx[out]]
    return out


def coverage(starts: np.ndarray, ends: np.ndarray, lo: int, hi: int, slack_ns: int = 0) -> float:
    """Fraction of [lo, hi] covered by the union of the intervals: the chance that a random
    instant falls inside one (the baseline for `contained`)."""
    if hi <= lo:
        return 1.0
    ms, me = merge_intervals(np.asarray(starts, np.int64), np.asarray(ends, np.int64) + slack_ns)
    covered = np.clip(me, lo, hi) - np.clip(ms, lo, hi)
    return float(min(1.0, covered.sum() / (hi - lo)))


def _series(starts: np.ndarray, ends: np.ndarray, amounts: np.ndarray, lo: int, bin_ns: int, nbins: int) -> np.ndarray:
    """Bytes per bin, each flow's bytes spread evenly over the bins its lifetime touches
    (a difference array, so the cost is O(flows + bins), not O(flows x bins))."""
    b0 = np.clip((starts - lo) // bin_ns, 0, nbins - 1)
    b1 = np.clip((ends - lo) // bin_ns, 0, nbins - 1)
    rate = amounts / (b1 - b0 + 1)
    diff = np.zeros(nbins + 1)
    np.add.at(diff, b0, rate)
    np.add.at(diff, b1 + 1, -rate)
    return np.cumsum(diff[:-1])


def binned_xcorr(down: tuple[np.ndarray, np.ndarray, np.ndarray], up: tuple[np.ndarray, np.ndarray, np.ndarray],
                 bin_ns: int = NS, max_lag_bins: int = 2, max_bins: int = 200_000) -> tuple[float, int]:
    """Best Pearson correlation of the downstream byte series with the upstream one shifted by
    0..max_lag_bins bins (downstream follows upstream), and that lag. Each argument is
    (starts, ends, bytes) of flows. Bins only cover the active span; very long spans use wider
    bins so the arrays stay bounded."""
    ds, de, db = (np.asarray(x, np.float64) if i == 2 else np.asarray(x, np.int64) for i, x in enumerate(down))
    us, ue, ub = (np.asarray(x, np.float64) if i == 2 else np.asarray(x, np.int64) for i, x in enumerate(up))
    if ds.size == 0 or us.size == 0:
        return 0.0, 0
    lo = int(min(ds.min(), us.min()))
    hi = int(max(de.max(), ue.max()))
    bin_ns = max(bin_ns, (hi - lo) // max_bins + 1)
    nbins = int((hi - lo) // bin_ns + 1 + max_lag_bins)
    d = _series(ds, de, db, lo, bin_ns, nbins)
    u = _series(us, ue, ub, lo, bin_ns, nbins)
    best, best_lag = 0.0, 0
    for lag in range(max_lag_bins + 1):
        a, b = d[lag:], u[: nbins - lag]
        if a.std() == 0 or b.std() == 0:
            continue
        rho = float(np.corrcoef(a, b)[0, 1])
        if rho > best:
            best, best_lag = rho, lag
    return best, best_lag
