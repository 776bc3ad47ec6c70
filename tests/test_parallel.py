"""Sharded replay (--workers N) gives the same events, alerts and findings as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "pcaps" / "peer"
ENV = {**os.environ, "APPLIANCE_SECRET": "test-secret"}


def replay(out: Path, workers: int, *inputs: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "appliance.cli", "replay", *inputs, "--out", str(out), "--json",
                        "--workers", str(workers), "--geoip", str(ROOT / "pcaps" / "geo" / "demo-geo.csv")],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(["@timestamp", "flow.id", "source.port"], maintain_order=True)


@pytest.mark.parametrize("inputs", [
    [str(ROOT / "pcaps" / "demo.pcap")],  # one plain file: workers share a memory map of it
    [str(PEER / "zeek" / "echo-connections.pcap.gz"), str(PEER / "ndpi" / "reddit.pcap")],  # each worker reads
])
def test_workers_give_the_same_results(tmp_path: Path, inputs: list[str]) -> None:
    one = replay(tmp_path / "one", 1, *inputs)
    two = replay(tmp_path / "two", 2, *inputs)
    assert two["workers"] == 2
    assert two["workers_started_by"] == "fork"  # the CLI forks before any thread exists
    for key in ("packets", "bytes", "decoded", "flows", "events", "malformed", "flows_by_end_reason", "alerts", "findings"):
        assert one[key] == two[key], key
    for name in ("flows", "tls", "http", "dns"):
        a = _sorted(pl.read_parquet(tmp_path / "one" / "events" / f"{name}.parquet"))
        b = _sorted(pl.read_parquet(tmp_path / "two" / "events" / f"{name}.parquet"))
        assert a.equals(b), name
    for name in ("alerts.jsonl", "findings.jsonl"):
        a = sorted((tmp_path / "one" / name).read_text().splitlines())
        b = sorted((tmp_path / "two" / name).read_text().splitlines())
        assert a == b, name


def _route(out: Path) -> object:
    from appliance.pipeline import Pipeline

    return Pipeline(str(out), enrichers=[lambda t, f: f])


def test_a_failing_worker_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A worker that raises (here: on a bad flow-limit argument) is reported with its error."""
    from appliance.parallel import ShardedReplay, WorkerError

    run = ShardedReplay([str(ROOT / "pcaps" / "demo.pcap")], {"bogus_limit": 1}, 4096, 2).start()
    with pytest.raises(WorkerError, match="replay worker 0 failed: TypeError: .*bogus_limit"):
        run.drain(_route(tmp_path))  # type: ignore[arg-type]
    assert not any(p.is_alive() for p in run.procs)


def test_a_worker_that_dies_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A worker killed from outside (the OOM killer, say) says so; the other is stopped."""
    import signal

    from appliance.parallel import ShardedReplay, WorkerError

    run = ShardedReplay([str(ROOT / "pcaps" / "demo.pcap")], {}, 64, 2).start()
    os.kill(run.procs[1].pid, signal.SIGKILL)
    with pytest.raises(WorkerError, match="replay worker 1 exited with code -9"):
        run.drain(_route(tmp_path))  # type: ignore[arg-type]
    assert not any(p.is_alive() for p in run.procs)


def test_the_parent_sees_every_batch_of_every_worker(tmp_path: Path) -> None:
    """Events reach the parent batch by batch, and the counts match one process's. This process has
    run polars (threads), so the workers come from a fork server, not a fork of it."""
    from appliance.parallel import PACKET_EVENTS, ShardedReplay
    from appliance.pipeline import PACKET_EVENTS as PIPELINE_EVENTS
    from appliance.pipeline import Pipeline
    from appliance.sources.pcap import CaptureReader

    assert PACKET_EVENTS == PIPELINE_EVENTS

    path = str(ROOT / "pcaps" / "demo.pcap")
    one = Pipeline(str(tmp_path / "one"))
    one.run_packets(CaptureReader([path], batch_size=512).batches())
    from appliance.parallel import start_method

    assert start_method() == "forkserver"
    route = _route(tmp_path / "two")
    calls: list[int] = []
    emit = route.emit  # type: ignore[attr-defined]
    route.emit = lambda frames: (calls.append(len(frames)), emit(frames))  # type: ignore[attr-defined]
    summary, errors, _ = ShardedReplay([path], {}, 512, 2).start().drain(route)  # type: ignore[arg-type]
    assert not errors
    batches = -(-one.counters.packets // 512)
    assert len(calls) == batches + 1  # one call per batch, one for the events left at the end
    assert summary["events"] == one.summary()["events"]
    assert summary["packets"] == one.counters.packets and summary["flows"] == one.summary()["flows"]


def test_preload_loads_the_decoders_and_keeps_the_process_safe_to_fork() -> None:
    """What the workers inherit is loaded before the fork, but nothing that starts a thread."""
    code = ("import sys; from appliance.parallel import preload, start_method; preload(); "
            "print(start_method(), 'numpy' in sys.modules, 'appliance.decode.stream' in sys.modules, "
            "'polars' in sys.modules)")
    env = {k: v for k, v in ENV.items() if k != "OPENBLAS_NUM_THREADS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["fork", "True", "True", "False"]


def test_a_worker_decodes_and_sends_events_without_loading_polars() -> None:
    """Workers send plain columns and rows; the parent makes the frames (no polars import per worker)."""
    path = str(ROOT / "pcaps" / "demo.pcap")
    code = ("import sys, queue; from appliance.parallel import _worker; q = queue.Queue(); "
            f"_worker([{path!r}], {{}}, 512, (0, 2), q); msgs = [q.get() for _ in range(q.qsize())]; "
            "events = [m[2] for m in msgs if m[0] == 'batch'] + [msgs[-1][1]]; "
            "print(msgs[-1][0], 'polars' in sys.modules, sum(len(e['tls']['tls.client.ja4']) for e in events if 'tls' in e))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    end, polars_loaded, tls_rows = r.stdout.split()
    assert (end, polars_loaded) == ("end", "False")
    assert int(tls_rows) > 0
