"""Rule engine throughput: 100 rules vs 1 rule over the same 1M http events (issue 4: ≤ 3× the time
when no event matches).

Events repeat realistic cardinalities (hundreds of domains, paths and user agents, thousands of
client addresses); rules mix the modifiers of the shipped pack (contains, startswith, equality,
cidr, regex, numeric, exists). The 1-rule case is the first template, a realistic `contains` rule.
Two workloads: `quiet` (no event matches, the common case of a sensor; the ≤ 3× target is its
ratio) and `alerting` (about 1% of events match one of the 100 rules, so alert and evidence
building are measured too). Its ratio is printed for information only: 100 rules raise ~100× the
alerts of one, and building alerts grows with the alerts, not with the rules.

Each measurement evaluates a fresh batch (another seed, same distributions), so nothing learnt
from one batch can flatter the next; the 1-rule and 100-rule engines take turns on each batch, and
the figure printed is the median of --repeat batches.
Run: .venv/bin/python bench/rules_bench.py [--events N] [--repeat R]
"""

from __future__ import annotations

import argparse
import statistics
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


def _hit(i: int) -> dict[str, object]:
    """Field values that make rule i (of the 100) match, one template each."""
    hits: list[dict[str, object]] = [
        {"url.path": f"/v{i}/chat/completions"},
        {"user_agent.original": f"agent-{i}/1.0", "destination.port": 8080},
        {"url.domain": f"HOST{i}.example.net", "destination.port": 80},
        {"http.request.auth.key_format": f"fmt-{i}"},
        {"source.ip": f"10.{i}.7.9", "url.path": f"/q/x{i}"},
        {"http.request.header_order": f"h0,x-h{i},h2"},
        {"url.path": f"/api/{i}/models"},
    ]
    return hits[i % len(TEMPLATES)]


def make_events(n: int, seed: int = 1, hit_rate: float = 0.0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)

    def pick(values: list[str]) -> np.ndarray:
        return np.array(values, dtype=object)[rng.integers(0, len(values), n)]

    cols: dict[str, np.ndarray] = {
        "source.ip": pick([f"10.{a}.{b}.{c}" for a in range(60, 64) for b in range(8) for c in range(200)]),
        "destination.ip": pick([f"203.0.113.{i}" for i in range(50)]),
        "destination.port": np.array([443, 80, 8080, 3000], dtype=np.int32)[rng.integers(0, 4, n)],
        "network.community_id": pick([f"1:{i:020d}=" for i in range(5000)]),
        "url.domain": pick([f"site{i}.example.org" for i in range(500)]),
        "url.path": pick([f"/p/{i}/item" for i in range(300)]),
        "user_agent.original": pick([f"Mozilla/5.0 build {i}" for i in range(150)]),
        "http.request.auth.key_format": pick(["sk-proj-156urlsafe", "jwt", "sk-ant-api03-95urlsafe"]),
        "http.request.header_order": pick([",".join(f"h{j}" for j in range(i % 9 + 3)) for i in range(60)]),
    }
    if hit_rate:
        for row in np.flatnonzero(rng.random(n) < hit_rate):
            for field, value in _hit(int(rng.integers(0, 100))).items():
                cols[field][row] = value
    return pl.DataFrame({
        "@timestamp": pl.Series(np.sort(rng.integers(1_700_000_000 * 10**9, 1_700_003_600 * 10**9, n))).cast(pl.Datetime("ns", "UTC")),
        "source.port": rng.integers(1024, 65535, n).astype(np.int32),
        **{k: pl.Series(k, v, dtype=pl.Int32 if k == "destination.port" else pl.Utf8) for k, v in cols.items()},
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


def medians(engines: dict[int, RuleEngine], frames: list[pl.DataFrame]) -> dict[int, tuple[float, int]]:
    """Per engine, the median seconds per batch and the alerts of a batch. One warm-up batch first
    (imports, regex caches); then the engines take turns on each batch, so a slow spell of this
    shared machine weighs on both sides of the ratio instead of on whichever ran then."""
    for engine in engines.values():
        engine.evaluate("http", frames[0])
    secs: dict[int, list[float]] = {count: [] for count in engines}
    alerts = dict.fromkeys(engines, 0)
    for frame in frames[1:]:
        for count, engine in engines.items():
            start = time.perf_counter()
            alerts[count] = len(engine.evaluate("http", frame))
            secs[count].append(time.perf_counter() - start)
    return {count: (statistics.median(secs[count]), alerts[count]) for count in engines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--hit-rate", type=float, default=0.01, help="share of events matching a rule (alerting)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engines = {count: RuleEngine.load([write_rules(Path(tmp), count)], data_dirs=[]) for count in (1, 100)}
        for label, rate in (("quiet", 0.0), ("alerting", args.hit_rate)):
            frames = [make_events(args.events, seed, rate) for seed in range(1, args.repeat + 2)]
            results = medians(engines, frames)
            for count, (secs, alerts) in results.items():
                print(f"{label:>8} {count:>3} rule(s): {secs * 1000:8.1f} ms  {args.events / secs:14,.0f} events/s"
                      f"  {alerts} alerts")
            ratio = results[100][0] / results[1][0]
            if label == "quiet":
                print(f"{label:>8} ratio 100 rules / 1 rule: {ratio:.2f}x (target <= 3x)")
            else:
                print(f"{label:>8} ratio 100 rules / 1 rule: {ratio:.2f}x (informational: {results[100][1]} vs "
                      f"{results[1][1]} alerts; alert building grows with alerts, not rules)")


if __name__ == "__main__":
    main()
