"""Live outputs per interval, and the restart state (used by appliance/daemon.py).

Alerts, findings and rejects JSONL are appended to a hidden `.part-N.jsonl.open` file and fsync'd
with the restart state (state.json) after every batch that added lines, so a restart (or a crash)
resumes exactly after the last committed line: nothing is written twice, and the follow positions
committed with it mean no log line is read twice. When an interval closes the files are renamed to
`part-N.jsonl` and the interval's events are written as `events/<type>/part-N.parquet`, each
atomically (write a temporary file, fsync, rename).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import polars as pl

from appliance import schema
from appliance.atomic import fsync_path, write_json
from appliance.errors import ConfigError

JSONL_KINDS = ("alerts", "findings", "rejects")


class _EventSink:
    """Stands in for the pipeline's EventWriter: frames go to the open interval."""

    def __init__(self, output: Output, etype: str) -> None:
        self.output, self.etype = output, etype

    def write(self, frame: pl.DataFrame) -> None:
        self.output.add_events(self.etype, frame)

    def close(self) -> str:
        return os.path.join(self.output.dir, "events", schema.EVENT_FILES[self.etype])


class Output:
    def __init__(self, out_dir: str) -> None:
        self.dir = out_dir
        self.state_path = os.path.join(out_dir, "state.json")
        try:
            with open(self.state_path, encoding="utf-8") as fh:
                st = json.load(fh)
        except FileNotFoundError:
            st = {}
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.state_path}: unreadable restart state ({exc}); move it away to start afresh") from None
        self.seq = int(st.get("interval", 1))
        self.totals: dict[str, int] = {k: int(st.get("totals", {}).get(k, 0)) for k in JSONL_KINDS}
        self.follow: dict[str, dict[str, int]] = st.get("follow", {})
        committed: dict[str, int] = st.get("committed", {})
        if self._closing(self.seq):  # stopped while closing this interval: finish the renames
            for k in JSONL_KINDS:
                self._truncate(self._open_path(k), committed.get(k, 0))
                self._close_file(k)
            self.seq, committed = self.seq + 1, {}
        self.fh: dict[str, Any] = {}
        for k in JSONL_KINDS:
            os.makedirs(os.path.join(out_dir, k), exist_ok=True)
            self._truncate(self._open_path(k), committed.get(k, 0))  # drop lines never committed
            self.fh[k] = open(self._open_path(k), "ab")  # noqa: SIM115 - closed in rotate()
        self.sizes = {k: self.fh[k].tell() for k in JSONL_KINDS}
        self.events: dict[str, list[pl.DataFrame]] = {}
        self.event_bytes = 0
        self.opened = time.monotonic()
        self.dirty = True
        self._writers: dict[str, _EventSink] = {}
        self.commit(self.follow)

    def _open_path(self, kind: str, seq: int | None = None) -> str:
        return os.path.join(self.dir, kind, f".part-{seq or self.seq:06d}.jsonl.open")

    def _closed_path(self, kind: str, seq: int | None = None) -> str:
        return os.path.join(self.dir, kind, f"part-{seq or self.seq:06d}.jsonl")

    def _closing(self, seq: int) -> bool:
        name = f"part-{seq:06d}"
        if any(os.path.exists(self._closed_path(k, seq)) for k in JSONL_KINDS):
            return True
        return any(os.path.exists(os.path.join(self.dir, "events", t, name + ".parquet")) for t in schema.EVENT_FILES.values())

    @staticmethod
    def _truncate(path: str, size: int) -> None:
        if os.path.exists(path) and os.path.getsize(path) > size:
            with open(path, "r+b") as fh:
                fh.truncate(size)

    def _close_file(self, kind: str) -> str | None:
        src = self._open_path(kind)
        if not os.path.exists(src):
            return None
        if os.path.getsize(src) == 0:
            os.remove(src)
            return None
        os.replace(src, self._closed_path(kind))
        return self._closed_path(kind)

    def event_writer(self, etype: str) -> _EventSink:
        return self._writers.setdefault(etype, _EventSink(self, etype))

    def add_events(self, etype: str, frame: pl.DataFrame) -> None:
        if frame.height:
            self.events.setdefault(etype, []).append(frame)
            self.event_bytes += int(frame.estimated_size())

    def add(self, kind: str, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        lines = "".join(json.dumps(r, sort_keys=True, default=str, ensure_ascii=False) + "\n" for r in records)
        self.fh[kind].write(lines.encode("utf-8"))
        self.totals[kind] += len(records)
        self.dirty = True

    def commit(self, follow: dict[str, dict[str, int]]) -> None:
        """Make every line written so far durable, together with the follow positions."""
        if not self.dirty and follow == self.follow:
            return
        for k in JSONL_KINDS:
            self.fh[k].flush()
            os.fsync(self.fh[k].fileno())
            self.sizes[k] = self.fh[k].tell()
        self.follow = {k: dict(v) for k, v in follow.items()}
        write_json(self.state_path, self._state())
        self.dirty = False

    def _state(self) -> dict[str, Any]:
        return {"interval": self.seq, "committed": self.sizes, "totals": self.totals, "follow": self.follow,
                "saved": time.time()}

    def due(self, rotate_s: float, rotate_bytes: int) -> bool:
        return bool((rotate_s and time.monotonic() - self.opened >= rotate_s)
                    or (rotate_bytes and self.event_bytes >= rotate_bytes))

    def rotate(self, follow: dict[str, dict[str, int]], final: bool = False) -> list[str]:
        """Close the interval: JSONL renamed into place, events written, then the state moves on."""
        self.commit(follow)
        paths = []
        for k in JSONL_KINDS:
            self.fh[k].close()
            p = self._close_file(k)
            if p:
                paths.append(p)
        for etype, frames in self.events.items():
            folder = os.path.join(self.dir, "events", schema.EVENT_FILES[etype])
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, f"part-{self.seq:06d}.parquet")
            tmp = path + ".tmp"
            pl.concat(frames, how="vertical_relaxed").write_parquet(tmp, compression="zstd", statistics=True)
            fsync_path(tmp)
            os.replace(tmp, path)
            paths.append(path)
        self.events, self.event_bytes = {}, 0
        self.seq += 1
        self.sizes = dict.fromkeys(JSONL_KINDS, 0)
        self.opened = time.monotonic()
        if final:  # the next start opens the next interval's files
            write_json(self.state_path, self._state())
            return paths
        for k in JSONL_KINDS:
            self.fh[k] = open(self._open_path(k), "ab")  # noqa: SIM115 - closed in rotate()
        self.dirty = True
        self.commit(follow)
        return paths

    def write_summary(self, summary: dict[str, Any]) -> None:
        from appliance.sinks.summary import write_summary

        write_summary(self.dir, summary)
