"""Event frames → DIR/events/<type>.parquet (one file; a folder of parts when a run is large).

Rows are buffered per event type and written in parts of bounded size, so memory stays flat on
long replays; a run that fits in one part gets a single file, as the output contract names it.
"""

from __future__ import annotations

import os
import shutil

import polars as pl

from appliance import schema
from appliance.atomic import write_parquet

PART_ROWS = 500_000


class EventWriter:
    def __init__(self, out_dir: str, event_type: str, enriched: bool) -> None:
        self.dir = os.path.join(out_dir, "events")
        self.event_type = event_type
        self.enriched = enriched
        self.name = schema.EVENT_FILES[event_type]
        self.frames: list[pl.DataFrame] = []
        self.buffered = 0
        self.parts = 0
        self.rows = 0
        os.makedirs(self.dir, exist_ok=True)
        # a previous run's output of the same name would mix with ours
        for stale in (os.path.join(self.dir, self.name + ".parquet"), os.path.join(self.dir, self.name)):
            if os.path.isdir(stale):
                shutil.rmtree(stale)
            elif os.path.exists(stale):
                os.remove(stale)

    def write(self, frame: pl.DataFrame) -> None:
        if frame.height == 0:
            return
        self.frames.append(frame)
        self.buffered += frame.height
        self.rows += frame.height
        if self.buffered >= PART_ROWS:
            self._flush_part()

    def _flush_part(self) -> None:
        folder = os.path.join(self.dir, self.name)
        os.makedirs(folder, exist_ok=True)
        write_parquet(pl.concat(self.frames, how="vertical_relaxed"), os.path.join(folder, f"part-{self.parts:05d}.parquet"))
        self.parts += 1
        self.frames, self.buffered = [], 0

    def close(self) -> str:
        """Write what is left; returns the path of the file or folder."""
        if self.parts:
            if self.frames:
                self._flush_part()
            return os.path.join(self.dir, self.name)
        frame = pl.concat(self.frames, how="vertical_relaxed") if self.frames else schema.empty_frame(self.event_type, self.enriched)
        path = os.path.join(self.dir, self.name + ".parquet")
        write_parquet(frame, path)
        return path
