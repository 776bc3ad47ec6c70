"""Timing correlation between a host's inbound and upstream legs, on sorted numpy arrays.

Stage: detect (relay-host correlation). A relay re-issues each inbound request upstream a few ms
later and streams the answer back, so its upstream openings follow inbound activity; a web server
calling a model API on a timer does not. The tests work on event times (ns since the epoch) and use
`searchsorted`, so the cost is O(n log n) in the events and never compares all pairs (issue 5,
"Cost"). The same tests are the stepping-stone detectors' (Zhang & Paxson, "Detecting Stepping
Stones", USENIX Security 2000): matched ON periods with a bounded lag, measured against what chance
alone would give.

Each test comes in a grouped form (`*_groups`) that runs every candidate host at once: events carry
a group id (the host) and are searched by a (group, time) key, so the cost follows the total number
of events, not the number of hosts. The one-host forms are the grouped ones with a single group.
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


def chance_hit(n_events: int, span_ns: int, window_ns: int) -> float:
    """Probability that a random instant has at least one of n Poisson events within the window
    after it: 1 - exp(-rate * window). The baseline every matched fraction is compared with."""
    if n_events <= 0 or span_ns <= 0:
        return 0.0
    return float(1.0 - np.exp(-n_events * window_ns / span_ns))


def _i64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.int64)


def _keys(*pairs: tuple[np.ndarray, np.ndarray]) -> list[np.ndarray]:
    """(group, time) pairs as single int64 sort keys: group * width + rank of the time among all
    the pairs' times. Ranks keep order and ties, and unlike raw ns times they cannot overflow."""
    times = np.concatenate([_i64(t) for _, t in pairs])
    rank = np.unique(times, return_inverse=True)[1].reshape(-1).astype(np.int64)
    width = int(rank.max()) + 1 if rank.size else 1
    out, i = [], 0
    for g, t in pairs:
        out.append(_i64(g) * width + rank[i: i + len(t)])
        i += len(t)
    return out


@dataclass(frozen=True)
class GroupLags:
    """`match_lag` of every group: counts indexed by group, matched lags sorted by (group, lag)."""

    matched: np.ndarray
    distinct_upstream: np.ndarray
    lag_groups: np.ndarray  # group of each entry of lags_ns
    lags_ns: np.ndarray


def match_lag_groups(req_g: np.ndarray, req_t: np.ndarray, up_g: np.ndarray, up_t: np.ndarray,
                     window_ns: int, groups: int) -> GroupLags:
    """For each request, the lag to the next upstream opening of its own group (<= window_ns counts)."""
    req_g, req_t, up_g, up_t = _i64(req_g), _i64(req_t), _i64(up_g), _i64(up_t)
    kr, ku = _keys((req_g, req_t), (up_g, up_t))
    order = np.argsort(ku, kind="stable")
    ku, ug, ut = ku[order], up_g[order], up_t[order]
    idx = np.searchsorted(ku, kr, side="left")
    ok = idx < ku.size
    ok[ok] = ug[idx[ok]] == req_g[ok]  # the next key past the group's last opening is another group's
    ok[ok] = ut[idx[ok]] - req_t[ok] <= window_ns
    g, lag = req_g[ok], ut[idx[ok]] - req_t[ok]
    # Equal openings share a key, so searchsorted names the first of them: distinct indices are
    # distinct openings, as in the one-host form.
    hit = np.unique(idx[ok])
    srt = np.lexsort((lag, g))
    return GroupLags(np.bincount(g, minlength=groups), np.bincount(ug[hit], minlength=groups), g[srt], lag[srt])


def match_lag(requests: np.ndarray, upstream: np.ndarray, window_ns: int, span_ns: int) -> LagMatch:
    """For each inbound request, the lag to the next upstream opening (<= window_ns counts)."""
    req, up = _i64(requests), _i64(upstream)
    g = match_lag_groups(np.zeros(req.size, np.int64), req, np.zeros(up.size, np.int64), up, window_ns, 1)
    return LagMatch(int(req.size), int(g.matched[0]), int(g.distinct_upstream[0]), g.lags_ns,
                    chance_hit(int(up.size), span_ns, window_ns))


def preceded_groups(ev_g: np.ndarray, ev_t: np.ndarray, ca_g: np.ndarray, ca_t: np.ndarray,
                    window_ns: int) -> np.ndarray:
    """Boolean per event (input order): a cause of its group happened in [event - window, event]."""
    ev_g, ev_t, ca_g, ca_t = _i64(ev_g), _i64(ev_t), _i64(ca_g), _i64(ca_t)
    ke, kc = _keys((ev_g, ev_t), (ca_g, ca_t))
    order = np.argsort(kc, kind="stable")
    kc, cg, ct = kc[order], ca_g[order], ca_t[order]
    idx = np.searchsorted(kc, ke, side="right") - 1
    ok = idx >= 0
    ok[ok] = cg[idx[ok]] == ev_g[ok]
    ok[ok] = ev_t[ok] - ct[idx[ok]] <= window_ns
    return ok


def preceded(events: np.ndarray, causes: np.ndarray, window_ns: int) -> np.ndarray:
    """Boolean per event (sorted): some cause happened in [event - window, event]."""
    ev, ca = np.sort(_i64(events)), _i64(causes)
    return preceded_groups(np.zeros(ev.size, np.int64), ev, np.zeros(ca.size, np.int64), ca, window_ns)


def merge_interval_groups(g: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of each group's [start, end] intervals as disjoint intervals sorted by (group, start):
    (groups, starts, ends). A vectorised sweep with a running maximum of ends per group."""
    g, starts, ends = _i64(g), _i64(starts), _i64(ends)
    if starts.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    order = np.lexsort((starts, g))  # stable
    g, s = g[order], starts[order]
    e = np.maximum(ends[order], s)
    # Running maximum within each group: on (group, rank of end) keys a plain running maximum
    # never carries one group's end into the next, whose keys are all larger.
    values, rank = np.unique(e, return_inverse=True)
    width = values.size
    run_end = values[np.maximum.accumulate(g * width + rank.reshape(-1)) - g * width]
    # A new merged interval begins a group, or where a start lies beyond every end before it.
    new = np.ones(s.size, dtype=bool)
    new[1:] = (g[1:] != g[:-1]) | (s[1:] > run_end[:-1])
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, s.size - 1)
    return g[first], s[first], run_end[last]


def merge_intervals(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of [start, end] intervals as disjoint sorted intervals (vectorised sweep)."""
    _, s, e = merge_interval_groups(np.zeros(len(starts), np.int64), starts, ends)
    return s, e


def contained_groups(pt_g: np.ndarray, pts: np.ndarray, merged: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Boolean per point (input order): inside one of its group's merged intervals."""
    mg, ms, me = merged
    pt_g, pts = _i64(pt_g), _i64(pts)
    if ms.size == 0 or pts.size == 0:
        return np.zeros(pts.size, dtype=bool)
    kp, ks = _keys((pt_g, pts), (mg, ms))  # ks is sorted: merged intervals are sorted by (group, start)
    idx = np.searchsorted(ks, kp, side="right") - 1
    ok = idx >= 0
    ok[ok] = mg[idx[ok]] == pt_g[ok]
    ok[ok] = pts[ok] <= me[idx[ok]]
    return ok


def contained(points: np.ndarray, starts: np.ndarray, ends: np.ndarray, slack_ns: int = 0) -> np.ndarray:
    """Boolean per point: inside one of the intervals (widened by slack at the end)."""
    merged = merge_interval_groups(np.zeros(len(starts), np.int64), starts, _i64(ends) + slack_ns)
    return contained_groups(np.zeros(len(points), np.int64), points, merged)


def coverage_groups(merged: tuple[np.ndarray, np.ndarray, np.ndarray], lo: list[int], hi: list[int]) -> list[float]:
    """Per group, the fraction of [lo, hi] covered by its merged intervals: the chance that a random
    instant falls inside one (the baseline for `contained`)."""
    mg, ms, me = merged
    lo_a, hi_a = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    covered = np.clip(me, lo_a[mg], hi_a[mg]) - np.clip(ms, lo_a[mg], hi_a[mg])
    total = np.zeros(len(lo), np.int64)
    np.add.at(total, mg, covered)
    return [1.0 if h <= lw else float(min(1.0, total[i] / (h - lw))) for i, (lw, h) in enumerate(zip(lo, hi, strict=True))]


def coverage(starts: np.ndarray, ends: np.ndarray, lo: int, hi: int, slack_ns: int = 0) -> float:
    """Fraction of [lo, hi] covered by the union of the intervals: the chance that a random
    instant falls inside one (the baseline for `contained`)."""
    merged = merge_interval_groups(np.zeros(len(starts), np.int64), starts, _i64(ends) + slack_ns)
    return coverage_groups(merged, [lo], [hi])[0]


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
