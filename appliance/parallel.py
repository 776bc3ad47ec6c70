"""Replay on several cores: flows are sharded by a symmetric hash of their endpoints.

Each worker process reads every packet (the record walk is cheap next to the rest) but decodes
flows and deep-parses only its own shard, so the costly per-flow Python work is split across
cores. Both directions of a flow hash alike (Pipeline._keep_shard), so a flow never straddles two
workers. The parent merges the shards' events in time order, then enriches and judges them in
time slices, the same order of work a single process follows batch by batch.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from appliance.decode.flows import FlowLimits
from appliance.pipeline import PACKET_EVENTS, Pipeline
from appliance.sinks.parquet import EventWriter
from appliance.sources.batch import PacketBatch
from appliance.sources.pcap import CaptureReader, attach_data, map_file, sniff_format

SLICE_NS = 10 * 10**9  # event-time slice the parent enriches and judges at once
_SUM_KEYS = ("decoded", "flows", "deep_parsed_packets", "malformed_total")
_DICT_KEYS = ("malformed", "flows_by_end_reason", "evicted", "events", "timings_s")


_progress: Any = None  # shared counter of bytes read by shard 0 (inherited by the forked workers)
_index: list[PacketBatch] | None = None  # the parent's record index of a single plain file (inherited)


def _decode_shard(paths: list[str], out_dir: str, limits: FlowLimits, batch_size: int, shard: tuple[int, int]) -> dict[str, Any]:
    reader = CaptureReader(paths, batch_size=batch_size)
    pipe = Pipeline(out_dir, limits, shard=shard)
    if _index is not None:
        mapped = map_file(paths[0])
        batches: Any = (attach_data(b, mapped) for b in _index)
        reader.stats.formats[paths[0]] = sniff_format(paths[0]) or "?"
    else:
        batches = reader.batches()

    def tick(batch: Any) -> None:
        if shard[0] == 0 and _progress is not None:
            with _progress.get_lock():
                _progress.value += batch.captured_bytes + 16 * len(batch)

    written = pipe.run_packets(batches, tick)
    return {"summary": pipe.summary(), "written": written, "errors": reader.stats.errors, "formats": reader.stats.formats}


def decode_sharded(paths: list[str], out_dir: str, limits: FlowLimits, batch_size: int, workers: int,
                   progress: Callable[[int], None] | None = None
                   ) -> tuple[dict[str, pl.DataFrame], dict[str, Any], list[str], dict[str, str]]:
    """Decode in `workers` processes; returns merged event frames, summary, input errors, formats.
    `progress(bytes_read)` is called a few times a second while the workers run."""
    global _progress, _index
    index_reader = CaptureReader(paths, batch_size=batch_size)
    _index = index_reader.index()  # walk the records once, here, before forking
    shard_root = os.path.join(out_dir, ".shards")
    jobs = [(paths, os.path.join(shard_root, str(i)), limits, batch_size, (i, workers)) for i in range(workers)]
    ctx = multiprocessing.get_context("fork")  # workers inherit the imported modules: no re-import cost
    _progress = ctx.Value("q", 0)
    with ctx.Pool(workers) as pool:
        pending = pool.starmap_async(_decode_shard, jobs)
        while not pending.ready():
            pending.wait(0.2)
            if progress is not None:
                progress(int(_progress.value))
        results = pending.get()
    _index = None
    if index_reader.stats.errors:  # a fault found by the parent's walk: the workers never saw it
        results[0]["errors"] = index_reader.stats.errors
    frames: dict[str, pl.DataFrame] = {}
    for etype in PACKET_EVENTS:
        parts = [_read(r["written"][etype]) for r in results]
        frames[etype] = pl.concat(parts, how="vertical_relaxed").sort(["@timestamp", "flow.id"], maintain_order=True)
    summary = _merge_summaries([r["summary"] for r in results])
    summary["workers"] = workers
    shutil.rmtree(shard_root, ignore_errors=True)
    return frames, summary, results[0]["errors"], results[0]["formats"]


def _read(path: str) -> pl.DataFrame:
    return pl.read_parquet(path if path.endswith(".parquet") else os.path.join(path, "*.parquet"))


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


def analyse(frames: dict[str, pl.DataFrame], out_dir: str, enrich: Callable[[str, pl.DataFrame], pl.DataFrame],
            sinks: list[Callable[[str, pl.DataFrame], None]]) -> dict[str, str]:
    """Enrich, judge and write merged events in event-time slices (DNS first in each slice, as the
    single-process pipeline does per batch, so DNS answers name the addresses that follow)."""
    writers = {t: EventWriter(out_dir, t, enriched=True) for t in PACKET_EVENTS}
    starts = [f["@timestamp"].dt.epoch("ns").to_numpy() for f in frames.values() if f.height]
    if starts:
        lo = int(min(s.min() for s in starts))
        hi = int(max(s.max() for s in starts))
        edges = np.arange(lo, hi + SLICE_NS, SLICE_NS)
        cuts = {t: np.searchsorted(f["@timestamp"].dt.epoch("ns").to_numpy(), edges, side="right") if f.height else None
                for t, f in frames.items()}
        prev = {t: 0 for t in frames}
        for i in range(len(edges)):
            for etype in ("dns", "flow", "tls", "http"):
                c = cuts[etype]
                if c is None:
                    continue
                end = int(c[i])
                if end > prev[etype]:
                    part = enrich(etype, frames[etype].slice(prev[etype], end - prev[etype]))
                    for sink in sinks:
                        sink(etype, part)
                    writers[etype].write(part)
                    prev[etype] = end
    return {t: w.close() for t, w in writers.items()}


def auto_workers(paths: list[str]) -> int:
    """Two workers (this machine class has two cores) once the input is big enough to pay for them."""
    size = sum(os.path.getsize(p) for p in paths if os.path.exists(p))
    return min(2, os.cpu_count() or 1) if size >= 64 << 20 else 1
