"""Enrichment cost: GeoIP (both sides) + destination.service on a 1M-row flow-like frame.

Realistic cardinality: 20k unique source addresses, 2k destinations. Prints the median of 3 runs
with a cold cache (every run pays its lookups) and with the warm cache a long replay sees.

    .venv/bin/python bench/enrich_bench.py [--rows N] [--unique N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.enrich.catalog import Catalogs  # noqa: E402
from appliance.enrich.geoip import GeoIP  # noqa: E402


def make_frame(rows: int, unique: int, seed: int = 11) -> pl.DataFrame:
    rng = np.random.default_rng(seed)

    def pool(n: int, prefixes: list[str]) -> np.ndarray:
        pre = np.array(prefixes)[rng.integers(0, len(prefixes), n)]
        return np.char.add(np.char.add(pre, rng.integers(0, 256, n).astype(str)),
                           np.char.add(".", rng.integers(1, 255, n).astype(str)))

    src = pool(unique, ["198.51.", "203.0.", "192.0.", "10.20."])[rng.integers(0, unique, rows)]
    dst = pool(max(unique // 10, 1), ["162.159.", "160.79.", "93.184.", "203.0."])[
        rng.integers(0, max(unique // 10, 1), rows)]
    sni = np.array(["api.openai.com", "api.anthropic.com", "www.example.com", ""])[rng.integers(0, 4, rows)]
    return pl.DataFrame({"source.ip": src, "destination.ip": dst, "tls.client.server_name": sni})


def timed(fn, runs: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--unique", type=int, default=20_000)
    args = ap.parse_args()
    frame = make_frame(args.rows, args.unique)
    geo = GeoIP.open([str(ROOT / "pcaps/geo/demo-geo.csv")])
    cats = Catalogs.load(ROOT / "rules/data")

    def cold() -> None:
        geo._cache.clear()
        cats.service(geo.enrich(frame), "tls")

    def warm() -> None:
        cats.service(geo.enrich(frame), "tls")

    n_src = frame["source.ip"].n_unique()
    n_dst = frame["destination.ip"].n_unique()
    print(f"{args.rows:,} rows, {n_src:,} unique sources, {n_dst:,} unique destinations")
    for label, fn in (("cold cache", cold), ("warm cache", warm)):
        median = timed(fn)
        print(f"{label}: median {median:.3f} s = {args.rows / median:,.0f} rows/s "
              f"({median / args.rows * 1e9:.0f} ns/row)")
    t_geo = timed(lambda: geo.enrich(frame))
    t_svc = timed(lambda: cats.service(frame, "tls"))
    print(f"  of which GeoIP (2 sides, warm) {t_geo:.3f} s, destination.service {t_svc:.3f} s")


if __name__ == "__main__":
    main()
