"""The data flow, wired in one place: sources → decode → enrich → detect → graph → sinks.

`Pipeline.run_packets` is the whole offline replay; live capture feeds the same `process_batch`
with micro-batches. Each stage's wall time is measured and reported in summary.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.decode.flows import FlowLimits, FlowTable, flow_frame
from appliance.decode.headers import REASONS, decode_headers
from appliance.decode.stream import DeepParser
from appliance.sources.batch import PacketBatch

if TYPE_CHECKING:  # polars loads on first use: replay workers decode without it (parallel.py)
    import polars as pl

    from appliance import schema

PACKET_EVENTS = ("flow", "tls", "http", "dns")
Enricher = Callable[[str, "pl.DataFrame"], "pl.DataFrame"]
# Decoded events before they become frames: flow columns (flow_frame) and tls/http/dns row dicts.
RawEvents = dict[str, Any]
# The same as plain columns per event type (flatten): list values joined into strings.
FlatEvents = dict[str, dict[str, list]]


@dataclass
class Counters:
    packets: int = 0
    bytes: int = 0
    decoded: int = 0
    non_ip: int = 0
    fragments: int = 0
    snaplen_cut: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    first_ts: int | None = None
    last_ts: int | None = None

    def time(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds


class Pipeline:
    """Owns the per-run state (flow table, reassembly, writers) and moves batches through stages."""

    def __init__(
        self,
        out_dir: str,
        flow_limits: FlowLimits | None = None,
        enrichers: list[Enricher] | None = None,
        event_sinks: list[Callable[[str, pl.DataFrame], None]] | None = None,
        shard: tuple[int, int] = (0, 1),
        writer_factory: Callable[[str], Any] | None = None,
        raw_sink: Callable[[RawEvents], None] | None = None,
    ) -> None:
        """`raw_sink`, when given, receives each batch's decoded events instead of their frames
        being enriched, judged and written here (a replay worker: its parent does that)."""
        self.out_dir = out_dir
        self.flows = FlowTable(flow_limits)
        self.deep = DeepParser()
        self.flows.on_finish.append(self.deep.flow_finished)
        self.enrichers = enrichers or []
        self.event_sinks = event_sinks or []
        self.counters = Counters()
        enriched = bool(self.enrichers)
        self.raw_sink = raw_sink
        self.writers: dict[str, Any] = {}
        if raw_sink is None:
            from appliance.sinks.parquet import EventWriter

            make = writer_factory or (lambda t: EventWriter(out_dir, t, enriched))
            self.writers = {t: make(t) for t in PACKET_EVENTS}
        self.enriched = enriched
        self.shard = shard  # (index, count): this pipeline decodes only the flows hashed to `index`

    # -- stages ------------------------------------------------------------------------------
    def process_batch(self, batch: PacketBatch) -> None:
        c = self.counters
        n = len(batch)
        if n == 0:
            return
        first_shard = self.shard[0] == 0
        if not first_shard:  # packet-level counts belong to shard 0 only, so shards add up
            t0 = time.perf_counter()
            h = decode_headers(batch)
            self._keep_shard(h)
            c.time("decode.headers", time.perf_counter() - t0)
            self._flows_and_deep(batch, h)
            return
        c.packets += n
        c.bytes += batch.captured_bytes
        c.first_ts = int(batch.ts.min()) if c.first_ts is None else min(c.first_ts, int(batch.ts.min()))
        c.last_ts = int(batch.ts.max()) if c.last_ts is None else max(c.last_ts, int(batch.ts.max()))

        t0 = time.perf_counter()
        h = decode_headers(batch)
        reasons, counts = np.unique(h.reason, return_counts=True)
        for r, k in zip(reasons.tolist(), counts.tolist(), strict=True):
            if r:
                c.malformed[REASONS[r]] = c.malformed.get(REASONS[r], 0) + k
        c.non_ip += int(((h.reason == 0) & (h.ipver == 0)).sum())
        c.fragments += int(h.fragment.sum())
        c.snaplen_cut += int(h.snap_cut.sum())
        if self.shard[1] > 1:
            self._keep_shard(h)
        c.time("decode.headers", time.perf_counter() - t0)
        self._flows_and_deep(batch, h)

    def _keep_shard(self, h: Any) -> None:
        """Leave only this shard's flows flowable: a symmetric hash of the endpoints, so both
        directions of a flow land in the same shard (see appliance/parallel.py)."""
        idx, count = self.shard
        k1, k2, k3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)
        with np.errstate(over="ignore"):
            x = (h.src_hi + h.dst_hi) * k1 + (h.src_lo + h.dst_lo) * k2
            x += (h.sport.astype(np.uint64) + h.dport.astype(np.uint64)) * k3 + h.proto.astype(np.uint64)
            x ^= x >> np.uint64(29)
            x *= k1
        h.ipver[(x >> np.uint64(32)) % np.uint64(count) != np.uint64(idx)] = 0

    def _flows_and_deep(self, batch: PacketBatch, h: Any) -> None:
        c = self.counters
        t1 = time.perf_counter()
        seg = self.flows.update(h, batch.ts)
        c.decoded += len(seg.order)
        t2 = time.perf_counter()
        c.time("decode.flows", t2 - t1)

        self.deep.process(batch, h, seg)
        t3 = time.perf_counter()
        c.time("decode.deep", t3 - t2)

        self.advance(int(batch.ts.max()))
        c.time("emit", time.perf_counter() - t3)

    def advance(self, now_ns: int) -> None:
        """Move event time to `now_ns`: end idle flows, release waiting rows, emit their events.
        The live daemon calls this when no packet has come for a while, so quiet flows still end."""
        self.flows.expire(now_ns)
        self.deep.sweep(now_ns)
        self._emit_events()

    def set_writers(self, factory: Callable[[str], Any]) -> None:
        """Replace the event writers (the daemon writes one file per output interval)."""
        self.writers = {t: factory(t) for t in self.writers}

    def finish(self) -> dict[str, str]:
        """End of input: every live flow ends, every waiting row is written."""
        self.flows.finish_all()
        self.deep.sweep(0, final=True)
        self._emit_events()
        return self.close_writers()

    def close_writers(self) -> dict[str, str]:
        return {t: w.close() for t, w in self.writers.items()}

    def run_packets(self, batches: Iterable[PacketBatch], progress: Callable[[PacketBatch], None] | None = None) -> dict[str, str]:
        for b in batches:
            self.process_batch(b)
            if progress:
                progress(b)
        return self.finish()

    # -- events ------------------------------------------------------------------------------
    def _emit_events(self) -> None:
        raw: RawEvents = {}
        finished = self.flows.drain()
        if finished:
            raw["flow"] = flow_frame(finished)
        for etype, rows in self.deep.take_rows().items():
            if rows:
                raw[etype] = rows
        if self.raw_sink is not None:
            self.raw_sink(raw)
        else:
            self.emit(event_frames(raw))

    def emit(self, frames: dict[str, pl.DataFrame]) -> None:
        """Enrich, judge and write one batch's events. The sharded replay's parent calls this with
        the merged events of its workers' batch, so the order of work is a single process's."""
        # DNS first: its answers name the addresses that later flow and TLS events reach
        for etype in sorted(frames, key=lambda t: t != "dns"):
            frame = frames[etype]
            t0 = time.perf_counter()
            for enrich in self.enrichers:
                frame = enrich(etype, frame)
            self.counters.time("enrich", time.perf_counter() - t0)
            self.counters.events[etype] = self.counters.events.get(etype, 0) + frame.height
            t1 = time.perf_counter()
            for sink in self.event_sinks:
                sink(etype, frame)
            self.counters.time("detect", time.perf_counter() - t1)
            t2 = time.perf_counter()
            self.writers[etype].write(frame)
            self.counters.time("write", time.perf_counter() - t2)

    def summary(self) -> dict[str, Any]:
        c = self.counters
        fs = self.flows.stats
        return {
            "packets": c.packets,
            "bytes": c.bytes,
            "decoded": c.decoded,
            "non_ip": c.non_ip,
            "ip_fragments": c.fragments,
            "snaplen_truncated": c.snaplen_cut,
            "malformed": dict(sorted({**c.malformed, **self.deep.malformed}.items())),
            "malformed_total": sum(c.malformed.values()) + sum(self.deep.malformed.values()),
            "flows": fs.finished,
            "flows_by_end_reason": dict(sorted(fs.by_reason.items())),
            "evicted": {"flows": fs.evicted, **{k: v for k, v in self.deep.counters.items() if k.endswith("dropped")}},
            "deep_parsed_packets": self.deep.counters["deep_parsed_packets"],
            "events": dict(sorted(c.events.items())),
            "first_packet": _rfc3339(c.first_ts),
            "last_packet": _rfc3339(c.last_ts),
            "timings_s": {k: round(v, 4) for k, v in sorted(c.timings.items())},
        }


def _rfc3339(ns: int | None) -> str | None:
    if ns is None:
        return None
    return np.datetime_as_string(np.datetime64(ns, "ns"), unit="us") + "Z"


_TS_FIELDS = ("@timestamp", "event.start", "event.end", "account.created")


def event_frames(raw: RawEvents) -> dict[str, pl.DataFrame]:
    """Decoded events as frames of the declared schema, per event type."""
    return frames_from_flat(flatten(raw))


def flatten(raw: RawEvents) -> FlatEvents:
    """Decoded events as plain columns, list values joined with _SEP: what a replay worker sends
    (no polars needed; pickled columns of strings load several times faster than row dicts)."""
    out: FlatEvents = {}
    for etype, events in raw.items():
        cols = events if etype == "flow" else _transpose(events)
        out[etype] = {k: _joined(v) if _holds_lists(v) else v for k, v in cols.items()}
    return out


def merge_flat(parts: list[FlatEvents]) -> FlatEvents:
    """The flattened events of several shards of one batch, shard after shard, as one; a column
    one shard lacks is None in its rows."""
    out: FlatEvents = {}
    for etype in dict.fromkeys(t for part in parts for t in part):
        have = [part[etype] for part in parts if etype in part]
        if len(have) == 1:
            out[etype] = have[0]
            continue
        sizes = [_rows(cols) for cols in have]
        merged: dict[str, list] = {}
        for k in dict.fromkeys(k for cols in have for k in cols):
            column: list = []
            for cols, n in zip(have, sizes, strict=True):
                column.extend(cols.get(k) or [None] * n)
            merged[k] = column
        out[etype] = merged
    return out


def frames_from_flat(flat: FlatEvents) -> dict[str, pl.DataFrame]:
    return {etype: _frame_from_flat(etype, cols) for etype, cols in flat.items()}


def _rows(cols: dict[str, list]) -> int:
    return len(next(iter(cols.values()))) if cols else 0


def _transpose(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Row dicts → columns over every key any row has."""
    keys = set().union(*rows)
    return {k: [r.get(k) for r in rows] for k in sorted(keys)}


def _holds_lists(values: list) -> bool:
    for v in values:
        if v is not None:
            return type(v) is list
    return False


def _int_schema(etype: str) -> dict[str, schema.DType]:
    import polars as pl

    from appliance import schema

    return {k: (pl.Int64 if k in _TS_FIELDS else v) for k, v in schema.polars_schema(etype, enriched=False).items()}


def _to_declared(etype: str, frame: pl.DataFrame) -> pl.DataFrame:
    import polars as pl

    from appliance import schema

    casts = [pl.col(k).cast(schema.TIMESTAMP) for k in _TS_FIELDS if k in frame.columns]
    return frame.with_columns(casts)


_SEP = "\x1f"  # ASCII unit separator: never inside a decoded name, path or fingerprint


def _frame_from_flat(etype: str, cols: dict[str, list]) -> pl.DataFrame:
    """Flattened columns → the declared frame; a declared column no event set is all None.

    List columns arrive as joined strings and are split here: building one small Series per row
    (what polars does for a list of lists) cost ~4 µs a row, the split ~0.2 µs.
    """
    import polars as pl

    n = _rows(cols)
    sch = _int_schema(etype)
    data: dict[str, list] = {}
    flat: dict[str, schema.DType] = {}
    lists: list[pl.Expr] = []
    for k, dtype in sch.items():
        values = cols.get(k)
        data[k] = values if values is not None else [None] * n
        if isinstance(dtype, pl.List):
            flat[k] = pl.Utf8
            inner = pl.element().filter(pl.element() != "")
            if dtype.inner != pl.Utf8:
                inner = inner.cast(dtype.inner)
            lists.append(pl.col(k).str.split(_SEP).list.eval(inner).cast(dtype))
        else:
            flat[k] = dtype
    frame = pl.DataFrame(data, schema=flat)
    if lists:
        frame = frame.with_columns(lists)
    return _to_declared(etype, frame)


def _joined(values: list) -> list[str | None]:
    """Each list as one _SEP-joined string (None stays None). Lists of strings are joined as they
    are (~0.15 µs a list); through str() (numbers) ~0.8 µs."""
    join = _SEP.join
    try:
        return [None if v is None else join(v) for v in values]
    except TypeError:  # a non-string item
        return [None if v is None else join(map(str, v)) if v else "" for v in values]
