"""Replay captures in-process and read the events back: what end-to-end tests compare."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

import polars as pl

from appliance.decode.flows import FlowLimits
from appliance.pipeline import Pipeline
from appliance.sources.pcap import CaptureReader


@dataclass
class ReplayResult:
    events: dict[str, pl.DataFrame]
    summary: dict[str, Any]
    errors: list[str]
    out_dir: str


def replay(paths: list[str], out_dir: str | None = None, limits: FlowLimits | None = None, batch_size: int = 65536) -> ReplayResult:
    out = out_dir or tempfile.mkdtemp(prefix="appliance-test-")
    reader = CaptureReader(paths, batch_size=batch_size)
    pipe = Pipeline(out, limits)
    written = pipe.run_packets(reader.batches())
    events = {t: pl.read_parquet(p if p.endswith(".parquet") else os.path.join(p, "*.parquet")) for t, p in written.items()}
    return ReplayResult(events, pipe.summary(), reader.stats.errors, out)
