"""Request-metadata ingestion speed: read_metadata + GeoIP enrichment on 1M rows.

Targets (issue 3): >= 1M rows/s from Parquet, >= 300k rows/s from JSON Lines, enrichment included.
Generates bench/data/requests-1m.{parquet,jsonl} once (git-ignored), then prints the median of 3 runs.

    .venv/bin/python bench/ingest_bench.py [--rows N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.enrich.geoip import GeoIP  # noqa: E402
from appliance.sources.metadata import read_metadata  # noqa: E402

DATA = ROOT / "bench" / "data"


def make_requests(rows: int, unique_ips: int = 20_000, seed: int = 7) -> pl.DataFrame:
    """Realistic request rows: ~20k client IPs across the demo ranges, 0.1% raw keys to redact."""
    rng = np.random.default_rng(seed)
    prefixes = np.array(["203.0.113.", "198.51.100.", "192.0.2.", "93.184.215.", "10.20.7."])
    pool = np.char.add(prefixes[rng.integers(0, len(prefixes), unique_ips)],
                       rng.integers(1, 255, unique_ips).astype(str))
    ips = pool[rng.integers(0, unique_ips, rows)]
    start = np.datetime64("2024-05-01T00:00:00", "ns")
    ts = start + np.sort(rng.integers(0, 86_400 * 10**9, rows)).astype("timedelta64[ns]")
    keys = np.char.add("key_", rng.integers(0, 5000, rows).astype(str)).astype(object)
    raw = rng.random(rows) < 0.001
    keys[raw] = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8S9t0"
    models = np.array(["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "o1-mini"])
    agents = np.array(["OpenAI/Python 1.30.1", "Anthropic/Python 0.28.0", "curl/8.5.0", "node-fetch/1.0"])
    frame = pl.DataFrame({
        "@timestamp": pl.Series(ts).dt.replace_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ"),
        "source.ip": ips,
        "user_agent.original": agents[rng.integers(0, len(agents), rows)],
        "api.key_id": keys.astype(str),
        "account.id": np.char.add("acct_", rng.integers(0, 2000, rows).astype(str)),
        "organization.id": np.char.add("org-", rng.integers(0, 500, rows).astype(str)),
        "url.path": np.full(rows, "/v1/chat/completions"),
        "model": models[rng.integers(0, len(models), rows)],
        "tokens.input": rng.integers(10, 4000, rows),
        "tokens.output": rng.integers(10, 2000, rows),
        "http.response.status_code": rng.choice([200, 200, 200, 429, 500], rows),
        "event.duration": rng.integers(50_000_000, 20_000_000_000, rows),
    })
    return frame


def ensure_data(rows: int) -> tuple[Path, Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    pq, jl = DATA / f"requests-{rows}.parquet", DATA / f"requests-{rows}.jsonl"
    if not (pq.exists() and jl.exists()):
        frame = make_requests(rows)
        frame.write_parquet(pq)
        frame.write_ndjson(jl)
    return pq, jl


def run(path: Path, geo: GeoIP, runs: int = 3) -> tuple[float, int]:
    times = []
    rows = 0
    for _ in range(runs):
        geo._cache.clear()  # every run pays its lookups
        t0 = time.perf_counter()
        result = read_metadata([str(path)], "request")
        frame = geo.enrich(result.frame, sides=("source",))
        times.append(time.perf_counter() - t0)
        rows = frame.height
    return statistics.median(times), rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    os.environ.setdefault("APPLIANCE_SECRET", "bench-secret")
    pq, jl = ensure_data(args.rows)
    geo = GeoIP.open([str(ROOT / "pcaps" / "geo" / "demo-geo.csv")])
    print(f"cpus={os.cpu_count()} polars={pl.__version__} threads={pl.thread_pool_size()}")
    for label, path, target in (("parquet", pq, 1_000_000), ("jsonl", jl, 300_000)):
        median, rows = run(path, geo)
        rate = rows / median
        verdict = "OK" if rate >= target else "BELOW TARGET"
        print(f"{label:8s} {rows:>9,d} rows  median {median:6.3f} s  {rate:>12,.0f} rows/s  "
              f"(target {target:,}) {verdict}")


if __name__ == "__main__":
    main()
