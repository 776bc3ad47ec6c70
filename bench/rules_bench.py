"""Rule engine throughput: 100 rules vs 1 rule over the same 1M http events (target: ≤ 3× the time).

Events repeat realistic cardinalities (hundreds of domains, paths and user agents, thousands of
client addresses); rules mix the modifiers of the shipped pack (contains, startswith, equality,
lists, cidr, numeric, exists). Run: .venv/bin/python bench/rules_bench.py [--events N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from appliance.detect.rules.engine import RuleEngine

TEMPLATES = [
    "sel:\n    url.path|contains: /v{i}/chat\n  condition: sel",
    "sel:\n    user_agent.original|startswith: agent-{i}/\n    destination.port|gt: 1024\n  condition: sel",
    "sel:\n    url.domain: host{i}.example.net\n  filter:\n    destination.port: 443\n  condition: sel and not filter",
    "sel:\n    http.request.auth.key_format: fmt-{i}\n  condition: sel",
    "sel:\n    source.ip|cidr: 10.{i}.0.0/16\n    url.path|endswith: /x{i}\n  condition: sel",
    "sel_a:\n    http.request.header_order|contains: x-h{i}\n  sel_b:\n    http.request.via|exists: true\n"
    "  condition: 1 of sel_*",
    "sel:\n    url.path|re: '^/api/{i}/[a-z]+$'\n  condition: sel",
]


def make_events(n: int, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)

    def pick(values: list[str]) -> np.ndarray:
        return np.array(values)[rng.integers(0, len(values), n)]

    return pl.DataFrame({
        "@timestamp": pl.Series(np.sort(rng.integers(1.7e18, 1.7e18 + 3.6e12, n))).cast(pl.Datetime("ns", "UTC")),
        "source.ip": pick([f"10.{a}.{b}.{c}" for a in range(60, 64) for b in range(8) for c in range(200)]),
        "source.port": rng.integers(1024, 65535, n).astype(np.int32),
        "destination.ip": pick([f"203.0.113.{i}" for i in range(50)]),
        "destination.port": pick(["443", "80", "8080", "3000"]).astype(np.int32),
        "network.community_id": pick([f"1:{i:020d}=" for i in range(5000)]),
        "url.domain": pick([f"site{i}.example.org" for i in range(500)]),
        "url.path": pick([f"/p/{i}/item" for i in range(300)]),
        "user_agent.original": pick([f"Mozilla/5.0 build {i}" for i in range(150)]),
        "http.request.auth.key_format": pick(["sk-proj-156urlsafe", "jwt", "sk-ant-api03-95urlsafe"]),
        "http.request.header_order": pick([",".join(f"h{j}" for j in range(i % 9 + 3)) for i in range(60)]),
        "http.request.via": pl.Series([None] * n, dtype=pl.Utf8),
    })


def write_rules(directory: Path, count: int) -> str:
    docs = []
    for i in range(count):
        body = TEMPLATES[i % len(TEMPLATES)].format(i=i)
        docs.append(f"title: bench {i}\nid: {i:08d}-0000-4000-8000-000000000000\nlevel: low\nlogsource: http\n"
                    f"detection:\n  {body}\n")
    path = directory / f"bench_{count}.yml"
    path.write_text("---\n".join(docs))
    return str(path)


def best_of(engine: RuleEngine, frame: pl.DataFrame, repeat: int) -> tuple[float, int]:
    best, alerts = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        alerts = len(engine.evaluate("http", frame))
        best = min(best, time.perf_counter() - start)
    return best, alerts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    frame = make_events(args.events)
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for count in (1, 100):
            engine = RuleEngine.load([write_rules(Path(tmp), count)], data_dirs=[])
            results[count] = best_of(engine, frame, args.repeat)
    for count, (secs, alerts) in results.items():
        print(f"{count:>3} rule(s): {secs * 1000:8.1f} ms  {args.events / secs:14,.0f} events/s  {alerts} alerts")
    ratio = results[100][0] / results[1][0]
    print(f"ratio 100 rules / 1 rule: {ratio:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
