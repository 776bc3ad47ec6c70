"""pcap and pcapng files (plain or gzip) → packet batches, in timestamp order across files.

The format is decided by the file's magic bytes, never its name (FoxIO's `http1.pcapng` is libpcap).
Record starts are found by the compiled walk in recwalk.py; everything else about a packet
(timestamps, lengths, interfaces) is gathered for the whole batch with numpy. A fault in a file
(bad magic, truncated record, absurd caplen) raises InputError with the file name and byte offset
*after* every good packet before it has been yielded, so nothing already decoded is lost.
"""

from __future__ import annotations

import gzip
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appliance.errors import InputError
from appliance.sources.batch import PAD, PacketBatch
from appliance.sources.files import PCAP_MAGICS, expand_paths, sniff_format  # noqa: F401 - re-exported
from appliance.sources.recwalk import pcap_records, pcapng_packets

# A record claiming more than this is not a packet but a corrupt length field: nothing after it can
# be trusted, so the file is abandoned there (libpcap's own limit is 256 KiB for most link types).
MAX_CAPLEN = 262144 * 4
MAX_BLOCK = MAX_CAPLEN + 4096  # a pcapng block longer than this has a corrupt length field
CHUNK_BYTES = 32 << 20


@dataclass
class ReadStats:
    """Per-file counters the summary reports."""

    files: list[str] = field(default_factory=list)
    packets: int = 0
    bytes: int = 0
    zero_caplen: int = 0
    errors: list[str] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)


class _Reader:
    """Reads one file, yielding batches of at most `batch_size` packets.

    A plain file is memory-mapped whole: the record walk reads it in place, and batches point into
    the map instead of copying packet bytes. A gzip file is decompressed in chunks instead. A file
    cut shorter while it is being replayed ends the process (SIGBUS, as for any mapped file):
    replay a finished capture or a copy, not one a capture tool is still rewriting."""

    def __init__(self, path: str, file_index: int, batch_size: int, stats: ReadStats) -> None:
        self.path = path
        self.file_index = file_index
        self.batch_size = batch_size
        self.stats = stats
        fmt = sniff_format(path)
        if fmt is None:
            with open(path, "rb") as fh:
                magic = fh.read(4)
            raise InputError(path, f"not a pcap or pcapng file (magic {magic.hex() or 'empty'})", 0)
        self.format = fmt
        stats.formats[path] = fmt
        self.fh: Any = gzip.open(path, "rb") if fmt.endswith("gzip") else open(path, "rb")
        self.buf: Any = b""
        self.mapped: np.ndarray | None = None  # the whole plain file, when it could be mapped
        self.pos = 0  # first unread byte of buf
        self.base = 0  # file offset of buf[0] (decompressed offset for gzip)
        self.eof = False
        self.frame = 0
        if not fmt.endswith("gzip"):
            try:
                self.buf = mmap.mmap(self.fh.fileno(), 0, access=mmap.ACCESS_READ)
                self.mapped = np.frombuffer(self.buf, np.uint8)
                self.eof = True
            except (OSError, ValueError):  # empty file, or one that cannot be mapped (a pipe): read it
                self.buf = b""

    def _fill(self, need: int) -> bool:
        """Make at least `need` unread bytes available from `pos`; False at end of file.

        The unread tail is copied once per chunk read (not once per batch), so the cost of buffer
        management stays far below the record walk's."""
        while len(self.buf) - self.pos < need and not self.eof:
            try:
                chunk = self.fh.read(max(CHUNK_BYTES, need))
            except (OSError, EOFError) as exc:
                self.eof = True
                raise InputError(self.path, f"read error: {exc}", self.base + len(self.buf)) from None
            if not chunk:
                self.eof = True
                break
            self.base += self.pos
            self.buf = self.buf[self.pos :] + chunk if self.pos < len(self.buf) else chunk
            self.pos = 0
        return len(self.buf) - self.pos >= need

    def close(self) -> None:
        self.fh.close()  # a map stays valid until the batches that point into it are gone

    def batches(self) -> Iterator[PacketBatch]:
        if self.format.startswith("pcapng"):
            yield from self._pcapng()
        else:
            yield from self._pcap()

    # -- libpcap -----------------------------------------------------------------------------
    def _pcap(self) -> Iterator[PacketBatch]:
        if not self._fill(24):
            raise InputError(self.path, "truncated file header (need 24 bytes)", self.base + len(self.buf))
        endian, ts_mult = PCAP_MAGICS[bytes(self.buf[:4])]
        snaplen, linktype = struct.unpack_from(endian + "II", self.buf, 16)
        linktype &= 0x0FFFFFFF  # upper bits carry FCS info (pcap-savefile(5))
        self.pos = 24
        while True:
            self._fill(CHUNK_BYTES // 2)
            buf = self.buf
            starts, fields, pos, absurd = pcap_records(buf, self.pos, endian == ">", MAX_CAPLEN, self.batch_size)
            if len(starts):
                ts = fields[:, 0] * 1_000_000_000 + fields[:, 1] * ts_mult
                yield self._make_batch(self._raw(buf), starts + 16, fields[:, 2].astype(np.int32),
                                       fields[:, 3].astype(np.int32), ts, np.full(len(starts), linktype, np.int32))
            self.pos = pos
            if absurd:
                incl = struct.unpack_from(endian + "I", buf, pos + 8)[0]
                raise InputError(self.path, f"absurd record length {incl} (corrupt record header)", self.base + pos)
            if not len(starts) and not self._fill(len(self.buf) - self.pos + 1):
                if self.pos < len(self.buf):
                    raise InputError(
                        self.path, f"truncated packet record ({len(self.buf) - self.pos} trailing bytes)", self.base + self.pos
                    )
                return

    def _raw(self, buf: Any) -> np.ndarray:
        return self.mapped if self.mapped is not None and buf is self.buf else np.frombuffer(buf, np.uint8)

    def _make_batch(self, raw: np.ndarray, data_pos: np.ndarray, caplen: np.ndarray, wirelen: np.ndarray, ts: np.ndarray, linktype: np.ndarray) -> PacketBatch:
        n = len(data_pos)
        frames = np.arange(self.frame + 1, self.frame + 1 + n, dtype=np.int64)
        self.frame += n
        self.stats.packets += n
        self.stats.bytes += int(caplen.sum())
        file_index = np.full(n, self.file_index, np.int16)
        # Point into the map, unless the batch ends within PAD bytes of the file's end: header
        # gathers read up to PAD bytes past a packet, so such a batch is copied with zero padding.
        if raw is self.mapped and n and int((data_pos + caplen).max()) + PAD <= len(raw):
            return PacketBatch(raw, data_pos, caplen, wirelen, ts, linktype, frames, file_index)
        last = int(data_pos[-1] + caplen[-1]) if n else 0
        first = int(data_pos[0]) if n else 0
        data = np.empty(last - first + PAD, np.uint8)
        data[: last - first] = raw[first:last]
        data[last - first :] = 0
        return PacketBatch(data, data_pos - first, caplen, wirelen, ts, linktype, frames, file_index)

    # -- pcapng ------------------------------------------------------------------------------
    def _pcapng(self) -> Iterator[PacketBatch]:
        endian = "<"
        interfaces: list[tuple[int, int, int]] = []  # (linktype, tsresol code, tsoffset seconds)
        while True:
            runs: list[tuple[np.ndarray, ...]] = []  # (data pos, caplen, orig, ts, linktype) arrays
            count = 0
            self._fill(CHUNK_BYTES // 2)
            buf, end, pos = self.buf, len(self.buf), self.pos
            raw = self._raw(buf)
            error: InputError | None = None
            while pos + 12 <= end and count < self.batch_size:
                starts, pos = pcapng_packets(buf, pos, endian == ">", MAX_BLOCK, self.batch_size - count)
                if len(starts):
                    run, bad = _epb_run(raw, starts, endian, interfaces)
                    runs.append(run)
                    count += len(run[0])
                    if bad is not None:
                        pos = bad
                        error = InputError(self.path, "packet block for an undeclared interface or with a bad length", self.base + pos)
                        break
                    continue
                if pos + 12 > end:
                    break
                btype = struct.unpack_from(endian + "I", buf, pos)[0]
                if btype == 0x0A0D0D0A:
                    bom = bytes(buf[pos + 8 : pos + 12])
                    if bom == b"\x4d\x3c\x2b\x1a":
                        endian = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        endian = ">"
                    else:
                        error = InputError(self.path, "bad pcapng byte-order magic", self.base + pos)
                        break
                    interfaces = []
                blen = struct.unpack_from(endian + "I", buf, pos + 4)[0]
                if blen < 12 or blen % 4 or blen > MAX_BLOCK:
                    error = InputError(self.path, f"bad pcapng block length {blen}", self.base + pos)
                    break
                if pos + blen > end:
                    break
                if btype == 1:  # Interface Description Block
                    lt = struct.unpack_from(endian + "H", buf, pos + 8)[0]
                    interfaces.append((lt, *_idb_options(buf, pos + 16, pos + blen - 4, endian)))
                elif btype in (6, 3, 2):  # an EPB the fast walk refused (too short), SPB, obsolete PB
                    pkt = _packet_block(buf, pos, blen, btype, endian, interfaces)
                    if pkt is None:
                        error = InputError(self.path, "packet block for an undeclared interface or with a bad length", self.base + pos)
                        break
                    runs.append(tuple(np.asarray([v], np.int64) for v in pkt))
                    count += 1
                # every other block (NRB, ISB, DSB 0x0A decryption secrets, custom, comments) is skipped
                pos += blen
            if runs:
                cols = [np.concatenate([r[i] for r in runs]) for i in range(5)]
                yield self._make_batch(raw, cols[0], cols[1].astype(np.int32), cols[2].astype(np.int32), cols[3],
                                       cols[4].astype(np.int32))
            progressed = pos > self.pos
            self.pos = pos
            if error:
                raise error
            if not progressed and not self._fill(len(self.buf) - self.pos + 1):
                if self.pos < len(self.buf):
                    raise InputError(
                        self.path, f"truncated pcapng block ({len(self.buf) - self.pos} trailing bytes)", self.base + self.pos
                    )
                return


def _epb_run(raw: np.ndarray, starts: np.ndarray, endian: str, interfaces: list[tuple[int, int, int]]
             ) -> tuple[tuple[np.ndarray, ...], int | None]:
    """Fields of consecutive Enhanced Packet Blocks, gathered at once: (data pos, caplen, orig,
    ts ns, linktype) and the start of the first block that is invalid (None when all are good);
    the run is cut before it so every packet before the fault is kept."""
    u32 = np.dtype(endian + "u4")
    fields = raw[starts[:, None] + np.arange(4, 28)].view(u32).reshape(-1, 6).astype(np.int64)
    blen, ifid, hi, lo, cap, orig = fields.T
    ok = (ifid < len(interfaces)) & (28 + cap <= blen - 4)
    bad: int | None = None
    if not ok.all():
        k = int(np.argmin(ok))
        bad = int(starts[k])
        starts, ifid, hi, lo, cap, orig = starts[:k], ifid[:k], hi[:k], lo[:k], cap[:k], orig[:k]
    units = (hi << 32) | lo
    ts = np.empty(len(starts), np.int64)
    links = np.empty(len(starts), np.int64)
    for i in np.unique(ifid).tolist():
        lt, tsresol, tsoffset = interfaces[i]
        sel = ifid == i
        links[sel] = lt
        if not tsresol & 0x80 and tsresol <= 9:
            ts[sel] = units[sel] * 10 ** (9 - tsresol) + tsoffset * 1_000_000_000
        else:  # binary or sub-nanosecond resolution: exact integer arithmetic, packet by packet
            ts[sel] = [_to_ns(u, tsresol) + tsoffset * 1_000_000_000 for u in units[sel].tolist()]
    return (starts + 28, cap, orig, ts, links), bad


def _idb_options(buf: Any, pos: int, end: int, endian: str) -> tuple[int, int]:
    """if_tsresol (code 9) and if_tsoffset (code 14) of an Interface Description Block."""
    tsresol, tsoffset = 6, 0
    while pos + 4 <= end:
        code, length = struct.unpack_from(endian + "HH", buf, pos)
        if code == 0:
            break
        if code == 9 and length >= 1:
            tsresol = buf[pos + 4]
        elif code == 14 and length >= 8:
            tsoffset = struct.unpack_from(endian + "q", buf, pos + 4)[0]
        pos += 4 + ((length + 3) & ~3)
    return tsresol, tsoffset


def _to_ns(units: int, tsresol: int) -> int:
    if tsresol & 0x80:  # binary resolution: 2^-v seconds
        return (units * 1_000_000_000) >> (tsresol & 0x7F)
    if tsresol <= 9:
        return units * 10 ** (9 - tsresol)
    return units // 10 ** (tsresol - 9)


def _packet_block(
    buf: Any, pos: int, blen: int, btype: int, endian: str, interfaces: list[tuple[int, int, int]]
) -> tuple[int, int, int, int, int] | None:
    """(data position, caplen, original length, ts ns, linktype) of an EPB, SPB or obsolete PB."""
    if btype == 6:
        ifid, hi, lo, cap, orig = struct.unpack_from(endian + "IIIII", buf, pos + 8)
        data_pos = pos + 28
    elif btype == 2:
        ifid, _drops, hi, lo, cap, orig = struct.unpack_from(endian + "HHIIII", buf, pos + 8)
        data_pos = pos + 28
    else:  # Simple Packet Block: interface 0, no timestamp
        ifid, hi, lo = 0, 0, 0
        orig = struct.unpack_from(endian + "I", buf, pos + 8)[0]
        data_pos = pos + 12
        cap = min(orig, blen - 16)
    if ifid >= len(interfaces) or data_pos + cap > pos + blen - 4:
        return None
    lt, tsresol, tsoffset = interfaces[ifid]
    ts = _to_ns((hi << 32) | lo, tsresol) + tsoffset * 1_000_000_000
    return data_pos, cap, orig, ts, lt



class CaptureReader:
    """Every input file, merged into one stream of batches in timestamp order.

    Files are read concurrently (one open reader each) and merged batch-wise: each output batch holds
    the packets up to the earliest "last timestamp" among the readers' current batches, so a packet
    is never emitted before an earlier one from another file. A file that fails is reported in
    `stats.errors` and the others go on.
    """

    def __init__(self, paths: list[str], batch_size: int = 65536) -> None:
        self.paths = paths
        self.batch_size = batch_size
        self.stats = ReadStats(files=list(paths))
        self.total_bytes = sum(_file_size(p) for p in paths)

    def batches(self) -> Iterator[PacketBatch]:
        readers: list[tuple[_Reader, Iterator[PacketBatch]]] = []
        for i, p in enumerate(self.paths):
            try:
                r = _Reader(p, i, self.batch_size, self.stats)
            except InputError as exc:
                self.stats.errors.append(str(exc))
                continue
            readers.append((r, r.batches()))
        if len(readers) == 1:
            reader, it = readers[0]
            yield from self._guard(reader, it)
            reader.close()
            return
        yield from self._merge(readers)

    def _guard(self, reader: _Reader, it: Iterator[PacketBatch]) -> Iterator[PacketBatch]:
        try:
            for b in it:
                if len(b):
                    yield b
        except InputError as exc:
            self.stats.errors.append(str(exc))

    def _merge(self, readers: list[tuple[_Reader, Iterator[PacketBatch]]]) -> Iterator[PacketBatch]:
        pending: dict[int, PacketBatch] = {}
        iters = {i: self._guard(r, it) for i, (r, it) in enumerate(readers)}

        def refill(i: int) -> None:
            b = next(iters[i], None)
            if b is None:
                del iters[i]
                readers[i][0].close()
            else:
                order = np.argsort(b.ts, kind="stable")
                pending[i] = b.take(order) if not np.all(order[:-1] < order[1:]) else b

        for i in list(iters):
            refill(i)
        while pending:
            cutoff = min(int(b.ts[-1]) for b in pending.values())
            parts = []
            for i in list(pending):
                b = pending[i]
                k = int(np.searchsorted(b.ts, cutoff, side="right"))
                if k:
                    parts.append(b.take(np.arange(k)))
                if k == len(b):
                    del pending[i]
                    refill(i)
                elif k:
                    pending[i] = b.take(np.arange(k, len(b)))
            if parts:
                merged = PacketBatch.concat(parts)
                order = np.argsort(merged.ts, kind="stable")
                yield merged.take(order)


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
