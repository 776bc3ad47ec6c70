"""Benchmark data for the entity graph: labelled request/account frames at any scale.

The generator itself lives in appliance/graph/synthetic.py so tests import it like any package
module; this file picks scenario shapes for bench/graph_bench.py and can write them as Parquet
(`python bench/graph_data.py 100000 /tmp/graphdata`) for other tools to replay.
"""

from __future__ import annotations

import sys
from pathlib import Path

from appliance.graph.synthetic import Scenario, generate

__all__ = ["Scenario", "generate", "scale_scenario"]


def farm_sizes_for(n_accounts: int) -> tuple[int, ...]:
    """About 5% of accounts in farms of varied size, up to the 20,000-account farms public reports describe."""
    budget = n_accounts // 20
    sizes: list[int] = []
    for size in (20000, 8000, 3000, 1000, 400, 150, 60, 25, 10, 5):
        while size <= budget - sum(sizes) and sizes.count(size) < 3:
            sizes.append(size)
    return tuple(sizes) or (5,)


def scale_scenario(n_accounts: int, seed: int = 0, difficulty: str = "medium", rpa: int = 10) -> Scenario:
    farms = farm_sizes_for(n_accounts)
    decoys = 120 + 150 + 40
    return generate(seed=seed, n_background=max(0, n_accounts - sum(farms) - decoys), farm_sizes=farms,
                    difficulty=difficulty, requests_per_account=rpa)


if __name__ == "__main__":
    n, out = int(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    sc = scale_scenario(n)
    sc.requests.write_parquet(out / "requests.parquet")
    sc.accounts.write_parquet(out / "accounts.parquet")
