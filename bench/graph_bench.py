"""Entity-graph benchmark: cluster quality over seeds and difficulties, and scale (time, peak RSS).

    .venv/bin/python bench/graph_bench.py quality            # precision / recall / mean Jaccard
    .venv/bin/python bench/graph_bench.py scale 10000 100000 1000000

Quality: a ground-truth farm is recalled when a flagged cluster (score >= 0.5) has Jaccard >= 0.5
with it; precision is the share of flagged clusters that match a farm that way; mean Jaccard is the
best flagged cluster's Jaccard per farm, averaged (0 for a missed farm); decoys flagged counts
flagged clusters overlapping a look-alike. Calibration: share of clusters that are farms per score band.
Scale: each size runs in its own process so ru_maxrss is that run's peak; generation is timed apart.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance.graph import EntityGraph  # noqa: E402
from bench.graph_data import generate, scale_scenario  # noqa: E402


def _jac(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def quality(seeds: range = range(5), difficulties: tuple[str, ...] = ("easy", "medium", "hard")) -> None:
    bands: dict[str, list[int]] = {}
    print("difficulty seed farms recall precision mean_jaccard decoys_flagged")
    for diff in difficulties:
        for seed in seeds:
            sc = generate(seed=seed, n_background=3000, farm_sizes=(5, 8, 15, 30, 60, 120, 300, 800),
                          difficulty=diff)
            g = EntityGraph.open(None)
            g.add_events("account", sc.accounts)
            g.add_events("request", sc.requests)
            g.add_findings(sc.relay_findings)
            cl = g.clusters()
            flagged = [set(c.accounts) for c in cl if c.score >= 0.5]
            best = [max((_jac(m, f) for f in flagged), default=0.0) for m in sc.farms.values()]
            recall = sum(b >= 0.5 for b in best) / len(best)
            prec = sum(max(_jac(m, f) for m in sc.farms.values()) >= 0.5 for f in flagged) / max(1, len(flagged))
            decoys = set().union(*sc.decoys.values())
            bad = sum(bool(f & decoys) for f in flagged)
            print(f"{diff:6} {seed} {len(best):5} {recall:.3f} {prec:.3f} {sum(best) / len(best):.3f} {bad}")
            for c in cl:
                is_farm = max(_jac(m, set(c.accounts)) for m in sc.farms.values()) >= 0.5
                band = f"{min(int(c.score * 10), 9) / 10:.1f}"
                bands.setdefault(band, [0, 0])[is_farm] += 1
    print("calibration: score band -> clusters, share that are farms")
    for band in sorted(bands):
        neg, pos = bands[band]
        print(f"  {band}-{float(band) + 0.1:.1f}: {neg + pos:4} clusters, {pos / (neg + pos):.2f} farms")


def scale_one(n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    sc = scale_scenario(n)
    t1 = time.perf_counter()
    g = EntityGraph.open(None)
    g.add_events("account", sc.accounts)
    g.add_events("request", sc.requests)
    t2 = time.perf_counter()
    cl = g.clusters()
    t3 = time.perf_counter()
    flagged = [c for c in cl if c.score >= 0.5]
    best = [max((_jac(m, set(c.accounts)) for c in flagged), default=0.0) for m in sc.farms.values()]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    return {"accounts": n, "requests": sc.requests.height, "generate_s": round(t1 - t0, 1),
            "ingest_s": round(t2 - t1, 1), "cluster_s": round(t3 - t2, 1), "graph_total_s": round(t3 - t1, 1),
            "peak_rss_gb": round(rss, 2), "edges": g.stats.edges, "nodes": g.stats.nodes,
            "clusters": len(cl), "flagged": len(flagged), "farms": len(sc.farms),
            "mean_jaccard": round(sum(best) / len(best), 3)}


def main(argv: list[str]) -> None:
    if not argv or argv[0] == "quality":
        quality()
    elif argv[0] == "scale":
        for n in argv[1:] or ["10000", "100000", "1000000"]:
            out = subprocess.run([sys.executable, __file__, "_one", n], capture_output=True, text=True, check=True)
            print(out.stdout.strip().splitlines()[-1])
    elif argv[0] == "_one":
        print(json.dumps(scale_one(int(argv[1]))))


if __name__ == "__main__":
    main(sys.argv[1:])
