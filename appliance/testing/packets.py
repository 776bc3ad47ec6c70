"""Build PacketBatch objects from frame bytes: what decoder tests feed in."""

from __future__ import annotations

import numpy as np

from appliance.sources.batch import PAD, PacketBatch


def batch_from_frames(frames: list[bytes], linktype: int | list[int] = 1, ts_ns: list[int] | None = None,
                      wirelen: list[int] | None = None) -> PacketBatch:
    n = len(frames)
    sizes = np.array([len(f) for f in frames], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if n else np.zeros(0, np.int64)
    data = np.frombuffer(b"".join(frames) + b"\0" * PAD, np.uint8).copy()
    lts = np.array(linktype if isinstance(linktype, list) else [linktype] * n, np.int32)
    ts = np.array(ts_ns if ts_ns is not None else [1_000_000_000 * (i + 1) for i in range(n)], np.int64)
    wl = np.array(wirelen if wirelen is not None else sizes, np.int32)
    return PacketBatch(data, offsets, sizes.astype(np.int32), wl, ts, lts, np.arange(1, n + 1, dtype=np.int64),
                       np.zeros(n, np.int16))
