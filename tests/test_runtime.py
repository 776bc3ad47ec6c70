"""Process settings for batch work: applied, inherited by forked workers, an operator's choice kept."""

from __future__ import annotations

import os
import subprocess
import sys

from appliance.runtime import GC_THRESHOLDS

CODE = ("import gc, os; from appliance.runtime import tune_for_batches; tune_for_batches(); "
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    print(gc.get_threshold(), os.environ['POLARS_ENGINE_AFFINITY'], flush=True); os._exit(0)\n"
        "os.waitpid(pid, 0)")


def _run(env: dict[str, str]) -> str:
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_forked_worker_inherits_the_settings() -> None:
    env = {k: v for k, v in os.environ.items() if k != "POLARS_ENGINE_AFFINITY"}
    assert _run(env) == f"{GC_THRESHOLDS} in-memory"


def test_an_operators_polars_engine_is_kept() -> None:
    assert _run({**os.environ, "POLARS_ENGINE_AFFINITY": "streaming"}).endswith(" streaming")
