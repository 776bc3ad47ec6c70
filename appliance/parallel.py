"""Replay on several cores: flows are sharded by a symmetric hash of their endpoints.

Each worker process reads every packet (the compiled record walk over a memory map is cheap) but
decodes flows and deep-parses only its own shard, so the costly per-flow Python work is split across
cores. Both directions of a flow hash alike (Pipeline._keep_shard), so a flow never straddles two
workers. Every worker walks the same batches, so after each batch it sends that batch's events to
the parent; the parent merges the shards' events of batch k and enriches, judges and writes them
while the workers decode batch k+1 — the same order of work a single process follows.

The CLI starts the workers before it loads polars, rules or databases: a fork of a one-threaded
process is instant and safe, and the parent's loading overlaps the workers' decoding. What forking
allows is loaded once, before the fork (`preload`), instead of once per worker.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # this module stays light: the CLI forks workers before polars loads
    from appliance.pipeline import Pipeline

QUEUE_BATCHES = 8  # batches of events a worker may run ahead of the parent (bounds memory)
_SUM_KEYS = ("decoded", "flows", "deep_parsed_packets", "malformed_total")
_DICT_KEYS = ("malformed", "flows_by_end_reason", "evicted", "timings_s")
_PARENT_TIMINGS = ("enrich", "detect", "write")  # measured by the parent, which does that work



PACKET_EVENTS = ("flow", "tls", "http", "dns")  # as appliance.pipeline.PACKET_EVENTS (tested equal)


def _worker(paths: list[str], limits: dict[str, Any], batch_size: int, shard: tuple[int, int], out: Any) -> None:
    """Read every packet, decode this shard's flows batch by batch; send each batch's decoded
    events, then the summary. `limits` are FlowLimits' arguments. The events go as plain columns
    (pipeline.flatten): the parent merges the shards' and makes one frame per type, so a worker
    never loads polars (~0.1 s of CPU each) nor pays for frames it would only serialise."""
    try:
        from appliance.decode.flows import FlowLimits
        from appliance.pipeline import FlatEvents, Pipeline, flatten, merge_flat
        from appliance.sources.pcap import CaptureReader

        pending: list[FlatEvents] = []
        pipe = Pipeline("", FlowLimits(**limits), shard=shard, raw_sink=lambda raw: pending.append(flatten(raw)))
        reader = CaptureReader(paths, batch_size=batch_size)
        batches = reader.batches()

        def take() -> FlatEvents:
            merged = merge_flat(pending)
            pending.clear()
            return merged

        for batch in batches:
            pipe.process_batch(batch)
            out.put(("batch", batch.captured_bytes + 16 * len(batch), take()))
        pipe.finish()
        out.put(("end", take(), {"summary": pipe.summary(), "errors": reader.stats.errors, "formats": reader.stats.formats}))
    except BaseException as exc:  # noqa: B036 - reported to the parent, which raises it as an internal error
        out.put(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


class WorkerError(RuntimeError):
    """A worker process failed; the message carries its traceback."""


class ShardedReplay:
    """Replay in `workers` processes: start() forks them (the caller may then load rules and
    databases while they decode); drain() feeds each batch's merged events to `route.emit`."""

    def __init__(self, paths: list[str], limits: dict[str, Any], batch_size: int, workers: int) -> None:
        self.paths, self.limits, self.batch_size, self.workers = paths, limits, batch_size, workers
        self.queues: list[Any] = []
        self.procs: list[Any] = []
        self.method = ""

    def start(self) -> ShardedReplay:
        preload()
        method = self.method = start_method()
        ctx: Any = multiprocessing.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["appliance.pipeline"])
        self.queues = [ctx.Queue(QUEUE_BATCHES) for _ in range(self.workers)]
        self.procs = [ctx.Process(target=_worker, args=(self.paths, self.limits, self.batch_size, (i, self.workers), q),
                                  daemon=True) for i, q in enumerate(self.queues)]
        for p in self.procs:
            p.start()
        return self

    def drain(self, route: Pipeline, progress: Callable[[int], None] | None = None
              ) -> tuple[dict[str, Any], list[str], dict[str, str]]:
        """Merged decode summary, input errors and formats. `progress(bytes_read)` is called after
        every batch."""
        from appliance.pipeline import frames_from_flat, merge_flat

        ends: list[dict[str, Any] | None] = [None] * self.workers
        done_bytes = 0
        try:
            while any(e is None for e in ends):
                parts = []
                for i in range(self.workers):
                    if ends[i] is not None:
                        continue
                    msg = _get(self.queues[i], self.procs[i], i)
                    if msg[0] == "end":
                        events, ends[i] = msg[1], msg[2]
                    else:
                        events = msg[2]
                        if i == 0:
                            done_bytes += msg[1]
                    parts.append(events)
                merged = merge_flat(parts)
                route.emit(frames_from_flat({t: merged[t] for t in PACKET_EVENTS if t in merged}))
                if progress is not None:
                    progress(done_bytes)
        except BaseException:  # a failed worker (or ^C): the others' work is of no use
            self.kill()
            raise
        self.stop()
        results = [e for e in ends if e is not None]
        errors = results[0]["errors"]
        summary = _merge_summaries([r["summary"] for r in results])
        summary["events"] = dict(sorted(route.counters.events.items()))
        timings = summary["timings_s"]
        for k in _PARENT_TIMINGS:
            timings[k] = round(route.counters.timings.get(k, 0.0), 4)
        summary["timings_s"] = dict(sorted(timings.items()))
        summary["workers"] = self.workers
        summary["workers_started_by"] = self.method
        return summary, errors, results[0]["formats"]

    def stop(self) -> None:
        for p in self.procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()

    def kill(self) -> None:
        for p in self.procs:
            p.kill()
            p.join()


def preload() -> None:
    """Import numpy and the decoders here, so the forked workers inherit them: ~0.1 s of CPU per
    worker on this machine's 2 cores, where three processes otherwise import the same modules at
    once (1M-packet replay: 2.18 s -> 2.04 s, medians of 5). Not polars: its import starts threads
    (jemalloc's, a cleanup thread), after which forking is unsafe; workers never need it.
    numpy's BLAS is held to one thread unless the operator chose otherwise: the decoders use no BLAS,
    and a BLAS thread pool would make this process unsafe to fork (start_method then takes the fork
    server, slower but safe)."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy  # noqa: F401

    from appliance import pipeline  # noqa: F401 - loads no polars
    from appliance.sources import pcap  # noqa: F401


def start_method() -> str:
    """'fork' while this process has one thread: the workers start at once and inherit what is
    loaded. Forking a process whose other threads may hold locks (polars' and BLAS's pools exist
    from their import on) can deadlock the child, so otherwise a clean fork server starts them."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            threads = next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))
    except (OSError, StopIteration, ValueError):
        threads = 0  # unknown (not Linux): take the safe way
    methods = multiprocessing.get_all_start_methods()
    if threads == 1 and "fork" in methods:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _get(q: Any, proc: Any, shard: int) -> tuple:
    """The worker's next message; a worker that died or failed is an error, never a hang."""
    while True:
        try:
            msg = q.get(timeout=1.0)
        except queue.Empty:
            if not proc.is_alive():
                raise WorkerError(f"replay worker {shard} exited with code {proc.exitcode}") from None
            continue
        if msg[0] == "error":
            raise WorkerError(f"replay worker {shard} failed: {msg[1]}\n{msg[2]}")
        return msg


def _merge_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Shard 0 holds the packet-level counts; per-flow counts and timings add up over shards."""
    out = dict(parts[0])
    for p in parts[1:]:
        for k in _SUM_KEYS:
            out[k] = out.get(k, 0) + p.get(k, 0)
        for k in _DICT_KEYS:
            merged = dict(out.get(k) or {})
            for kk, v in (p.get(k) or {}).items():
                merged[kk] = round(merged.get(kk, 0) + v, 4) if isinstance(v, float) else merged.get(kk, 0) + v
            out[k] = dict(sorted(merged.items()))
    return out


def auto_workers(paths: list[str]) -> int:
    """Two workers (this machine class has two cores) once the input is big enough to pay for them."""
    size = sum(os.path.getsize(p) for p in paths if os.path.exists(p))
    return min(2, os.cpu_count() or 1) if size >= 64 << 20 else 1
