"""pcap and pcapng files (plain or gzip) → packet batches, in timestamp order across files.

The format is decided by the file's magic bytes, never its name (FoxIO's `http1.pcapng` is libpcap).
Records are walked with one small struct unpack each; everything else about a packet (timestamps,
lengths) is gathered for the whole batch with numpy. A fault in a file (bad magic, truncated record,
absurd caplen) raises InputError with the file name and byte offset *after* every good packet
before it has been yielded, so nothing already decoded is lost.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appliance.errors import InputError
from appliance.sources.batch import PAD, PacketBatch

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1000),  # big-endian, microseconds
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),  # big-endian, nanoseconds
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
GZIP_MAGIC = b"\x1f\x8b"

# A record claiming more than this is not a packet but a corrupt length field: nothing after it can
# be trusted, so the file is abandoned there (libpcap's own limit is 256 KiB for most link types).
MAX_CAPLEN = 262144 * 4
CHUNK_BYTES = 32 << 20
_NO_DATA = np.zeros(PAD, np.uint8)


@dataclass
class ReadStats:
    """Per-file counters the summary reports."""

    files: list[str] = field(default_factory=list)
    packets: int = 0
    bytes: int = 0
    zero_caplen: int = 0
    errors: list[str] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)


def sniff_format(path: str) -> str | None:
    """'pcap', 'pcapng', 'pcap+gzip', 'pcapng+gzip' or None when the file is not a capture."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            if head[:2] == GZIP_MAGIC:
                fh.seek(0)
                try:
                    with gzip.open(fh) as gz:
                        inner = gz.read(4)
                except (OSError, EOFError):
                    return None
                kind = _kind(inner)
                return f"{kind}+gzip" if kind else None
            return _kind(head)
    except OSError as exc:
        raise InputError(path, f"cannot open: {exc.strerror or exc}") from None


def _kind(head: bytes) -> str | None:
    if head in PCAP_MAGICS:
        return "pcap"
    if head == PCAPNG_MAGIC:
        return "pcapng"
    return None


def expand_paths(paths: Iterable[str]) -> list[str]:
    """Files as given, and every capture file (by magic) below each directory, sorted."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if sniff_format(full):
                        out.append(full)
        elif os.path.exists(p):
            out.append(p)
        else:
            raise InputError(p, "no such file or directory")
    return out


class _Reader:
    """Reads one file in chunks, yielding batches of at most `batch_size` packets."""

    def __init__(self, path: str, file_index: int, batch_size: int, stats: ReadStats, index_only: bool = False) -> None:
        self.path = path
        self.index_only = index_only  # batches carry file offsets and no bytes (see CaptureReader.index)
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
        self.buf = b""
        self.pos = 0  # first unread byte of buf
        self.base = 0  # file offset of buf[0] (decompressed offset for gzip)
        self.eof = False
        self.frame = 0

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
        self.fh.close()

    def batches(self) -> Iterator[PacketBatch]:
        if self.format.startswith("pcapng"):
            yield from self._pcapng()
        else:
            yield from self._pcap()

    # -- libpcap -----------------------------------------------------------------------------
    def _pcap(self) -> Iterator[PacketBatch]:
        if not self._fill(24):
            raise InputError(self.path, "truncated file header (need 24 bytes)", self.base + len(self.buf))
        endian, ts_mult = PCAP_MAGICS[self.buf[:4]]
        snaplen, linktype = struct.unpack_from(endian + "II", self.buf, 16)
        linktype &= 0x0FFFFFFF  # upper bits carry FCS info (pcap-savefile(5))
        self.pos = 24
        caplen_at = struct.Struct(endian + "I").unpack_from
        hdr_dtype = np.dtype([("sec", endian + "u4"), ("frac", endian + "u4"), ("incl", endian + "u4"), ("orig", endian + "u4")])
        while True:
            self._fill(CHUNK_BYTES // 2)
            buf, end = self.buf, len(self.buf)
            positions: list[int] = []
            pos = self.pos
            limit = self.batch_size
            error: InputError | None = None
            append = positions.append
            stop = end - 16
            for _ in range(limit):  # the one per-packet Python loop: keep it minimal
                if pos > stop:
                    break
                nxt = pos + 16 + caplen_at(buf, pos + 8)[0]
                if nxt > end:
                    break
                append(pos)
                pos = nxt
            if positions:
                caps = np.frombuffer(buf, np.uint8)[np.asarray(positions, np.int64)[:, None] + np.arange(8, 12)]
                bad = np.nonzero(caps.copy().view(endian + "u4").reshape(-1) > MAX_CAPLEN)[0]
                if len(bad):
                    pos = positions[int(bad[0])]
                    del positions[int(bad[0]) :]
            if pos <= stop and caplen_at(buf, pos + 8)[0] > MAX_CAPLEN:
                incl = caplen_at(buf, pos + 8)[0]
                error = InputError(self.path, f"absurd record length {incl} (corrupt record header)", self.base + pos)
            if positions:
                yield self._pcap_batch(buf, positions, hdr_dtype, ts_mult, linktype)
            self.pos = pos
            if error:
                raise error
            if not positions and not self._fill(len(self.buf) - self.pos + 1):
                if self.pos < len(self.buf):
                    raise InputError(
                        self.path, f"truncated packet record ({len(self.buf) - self.pos} trailing bytes)", self.base + self.pos
                    )
                return

    def _pcap_batch(self, buf: bytes, positions: list[int], hdr_dtype: np.dtype, ts_mult: int, linktype: int) -> PacketBatch:
        pos = np.asarray(positions, np.int64)
        raw = np.frombuffer(buf, np.uint8)
        # gather the 16-byte record headers of all packets at once
        hdr = raw[pos[:, None] + np.arange(16)].copy().view(hdr_dtype).reshape(-1)
        caplen = hdr["incl"].astype(np.int32)
        ts = hdr["sec"].astype(np.int64) * 1_000_000_000 + hdr["frac"].astype(np.int64) * ts_mult
        return self._make_batch(raw, pos + 16, caplen, hdr["orig"].astype(np.int32), ts, np.full(len(pos), linktype, np.int32))

    def _make_batch(self, raw: np.ndarray, data_pos: np.ndarray, caplen: np.ndarray, wirelen: np.ndarray, ts: np.ndarray, linktype: np.ndarray) -> PacketBatch:
        n = len(data_pos)
        if self.index_only:
            frames = np.arange(self.frame + 1, self.frame + 1 + n, dtype=np.int64)
            self.frame += n
            self.stats.packets += n
            self.stats.bytes += int(caplen.sum())
            return PacketBatch(_NO_DATA, data_pos + self.base, caplen, wirelen, ts, linktype, frames,
                               np.full(n, self.file_index, np.int16))
        last = int(data_pos[-1] + caplen[-1]) if n else 0
        first = int(data_pos[0]) if n else 0
        data = np.empty(last - first + PAD, np.uint8)
        data[: last - first] = raw[first:last]
        data[last - first :] = 0
        frames = np.arange(self.frame + 1, self.frame + 1 + n, dtype=np.int64)
        self.frame += n
        self.stats.packets += n
        self.stats.bytes += int(caplen.sum())
        return PacketBatch(
            data, data_pos - first, caplen, wirelen, ts, linktype, frames, np.full(n, self.file_index, np.int16)
        )

    # -- pcapng ------------------------------------------------------------------------------
    def _pcapng(self) -> Iterator[PacketBatch]:
        endian = "<"
        interfaces: list[tuple[int, int, int]] = []  # (linktype, tsresol code, tsoffset seconds)
        while True:
            positions: list[int] = []
            caplens: list[int] = []
            origs: list[int] = []
            tss: list[int] = []
            links: list[int] = []
            self._fill(CHUNK_BYTES // 2)
            buf, end, pos = self.buf, len(self.buf), self.pos
            error: InputError | None = None
            while pos + 12 <= end and len(positions) < self.batch_size:
                btype = struct.unpack_from(endian + "I", buf, pos)[0]
                if btype == 0x0A0D0D0A:
                    bom = buf[pos + 8 : pos + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        endian = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        endian = ">"
                    else:
                        error = InputError(self.path, "bad pcapng byte-order magic", self.base + pos)
                        break
                    interfaces = []
                blen = struct.unpack_from(endian + "I", buf, pos + 4)[0]
                if blen < 12 or blen % 4 or blen > MAX_CAPLEN + 4096:
                    error = InputError(self.path, f"bad pcapng block length {blen}", self.base + pos)
                    break
                if pos + blen > end:
                    break
                if btype == 1:  # Interface Description Block
                    lt = struct.unpack_from(endian + "H", buf, pos + 8)[0]
                    interfaces.append((lt, *_idb_options(buf, pos + 16, pos + blen - 4, endian)))
                elif btype in (6, 3, 2):
                    pkt = _packet_block(buf, pos, blen, btype, endian, interfaces)
                    if pkt is None:
                        error = InputError(self.path, "packet block for an undeclared interface or with a bad length", self.base + pos)
                        break
                    data_pos, cap, orig, ts, lt = pkt
                    positions.append(data_pos)
                    caplens.append(cap)
                    origs.append(orig)
                    tss.append(ts)
                    links.append(lt)
                # every other block (NRB, ISB, DSB 0x0A decryption secrets, custom, comments) is skipped
                pos += blen
            if positions:
                raw = np.frombuffer(buf, np.uint8)
                yield self._make_batch(
                    raw,
                    np.asarray(positions, np.int64),
                    np.asarray(caplens, np.int32),
                    np.asarray(origs, np.int32),
                    np.asarray(tss, np.int64),
                    np.asarray(links, np.int32),
                )
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


def _idb_options(buf: bytes, pos: int, end: int, endian: str) -> tuple[int, int]:
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
    buf: bytes, pos: int, blen: int, btype: int, endian: str, interfaces: list[tuple[int, int, int]]
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

    def index(self) -> list[PacketBatch] | None:
        """For one uncompressed file: every batch's packet offsets, lengths and times, without the
        bytes. Worker processes then read packets straight from a shared memory map of the file
        (attach_data), so the record walk happens once and no packet byte is copied. None when
        the input is several files or compressed (each worker then reads for itself)."""
        if len(self.paths) != 1 or (sniff_format(self.paths[0]) or "gzip").endswith("gzip"):
            return None
        try:
            r = _Reader(self.paths[0], 0, self.batch_size, self.stats, index_only=True)
        except InputError as exc:
            self.stats.errors.append(str(exc))
            return []
        out = list(self._guard(r, r.batches()))
        r.close()
        return out

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


def attach_data(batch: PacketBatch, mapped: np.ndarray) -> PacketBatch:
    """An index batch (CaptureReader.index) reading its bytes from the memory-mapped file.

    Header gathers read a little past a packet's start; within PAD bytes of the end of the file
    that would leave the map, so a batch that reaches there gets its bytes copied, with padding."""
    if len(batch) and int((batch.offsets + batch.caplen).max()) + PAD > len(mapped):
        first = int(batch.offsets.min())
        data = np.zeros(len(mapped) - first + PAD, np.uint8)
        data[: len(mapped) - first] = mapped[first:]
        return PacketBatch(data, batch.offsets - first, batch.caplen, batch.wirelen, batch.ts, batch.linktype,
                           batch.frame, batch.file_index)
    return PacketBatch(mapped, batch.offsets, batch.caplen, batch.wirelen, batch.ts, batch.linktype, batch.frame,
                       batch.file_index)


def map_file(path: str) -> np.ndarray:
    """The whole file as a read-only uint8 array; pages are shared by every process that maps it."""
    return np.memmap(path, np.uint8, mode="r")
