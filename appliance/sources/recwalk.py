"""Finding where each record of a capture file starts: the one sequential per-packet loop.

Record k+1 starts where record k's length field says, so no numpy trick finds the starts; a
Python loop costs ~0.5 s per million packets. The compiled `_recwalk` module (built from
`_recwalk.c` at install) does the same walk in milliseconds; the pure-Python functions below are
its reference and fallback, and the tests hold both to identical results.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

try:
    from appliance.sources import _recwalk  # type: ignore[attr-defined]
except ImportError:  # built without a C compiler: the Python walk below is used instead
    _recwalk = None
COMPILED = _recwalk is not None  # built (the tests check that it is, where a compiler exists)
if os.environ.get("APPLIANCE_NO_COMPILED"):  # operators can rule the compiled kernels out
    _recwalk = None
IN_USE = _recwalk is not None  # what summary.json reports as compiled_kernels


def pcap_records(buf: Any, pos: int, big_endian: bool, max_caplen: int, limit: int
                 ) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """Starts of up to `limit` complete pcap records from `pos`, and their header fields (an
    (n, 4) int64 array: seconds, fraction, captured and original length); the position after the
    last one; and whether the walk stopped at a record claiming more than `max_caplen` bytes (then
    the returned position is that record's)."""
    if _recwalk is None:
        return pcap_records_py(buf, pos, big_endian, max_caplen, limit)
    out = np.empty(limit, np.int64)
    fields = np.empty((limit, 4), np.int64)
    n, nxt, absurd = _recwalk.pcap_records(buf, pos, int(big_endian), max_caplen, out, fields)
    return out[:n], fields[:n], nxt, bool(absurd)


def pcap_records_py(buf: Any, pos: int, big_endian: bool, max_caplen: int, limit: int
                    ) -> tuple[np.ndarray, np.ndarray, int, bool]:
    """pcap_records in Python: the reference the compiled walk is tested against."""
    starts, nxt, absurd = _pcap_records_py(buf, pos, big_endian, max_caplen, np.empty(limit, np.int64))
    fields = np.zeros((0, 4), np.int64)
    if len(starts):
        raw = np.frombuffer(buf, np.uint8)
        fields = raw[starts[:, None] + np.arange(16)].view(">u4" if big_endian else "<u4").astype(np.int64)
    return starts, fields, nxt, absurd


def pcapng_packets(buf: Any, pos: int, big_endian: bool, max_block: int, limit: int) -> tuple[np.ndarray, int]:
    """Starts of up to `limit` consecutive complete Enhanced Packet Blocks from `pos`, and the
    position of the first block that is not one (another type, incomplete, or a bad length)."""
    out = np.empty(limit, np.int64)
    if _recwalk is not None:
        n, nxt = _recwalk.pcapng_packets(buf, pos, int(big_endian), max_block, out)
        return out[:n], nxt
    return _pcapng_packets_py(buf, pos, big_endian, max_block, out)


def _pcap_records_py(buf: Any, pos: int, big_endian: bool, max_caplen: int, out: np.ndarray) -> tuple[np.ndarray, int, bool]:
    caplen_at = struct.Struct(">I" if big_endian else "<I").unpack_from
    end, n, limit = len(buf), 0, len(out)
    starts: list[int] = []
    append = starts.append
    absurd = False
    while n < limit and pos + 16 <= end:
        caplen = caplen_at(buf, pos + 8)[0]
        if caplen > max_caplen:
            absurd = True
            break
        nxt = pos + 16 + caplen
        if nxt > end:
            break
        append(pos)
        n += 1
        pos = nxt
    out[:n] = starts
    return out[:n], pos, absurd


def _pcapng_packets_py(buf: Any, pos: int, big_endian: bool, max_block: int, out: np.ndarray) -> tuple[np.ndarray, int]:
    u32x2 = struct.Struct(">II" if big_endian else "<II").unpack_from
    end, n, limit = len(buf), 0, len(out)
    while n < limit and pos + 12 <= end:
        btype, blen = u32x2(buf, pos)
        if btype != 6 or blen < 32 or blen % 4 or blen > max_block or pos + blen > end:
            break
        out[n] = pos
        n += 1
        pos += blen
    return out[:n], pos
