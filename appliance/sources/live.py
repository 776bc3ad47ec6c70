"""Live capture: Linux AF_PACKET with a TPACKET_V3 memory-mapped ring → packet batches.

The live counterpart of sources/pcap.py: it yields the same PacketBatch, so every stage after the
source is shared with replay (ARCHITECTURE.md, "live capture is replay in micro-batches").

Why TPACKET_V3: the kernel fills whole blocks of packets in a shared ring and hands a block over
when it is full or its timer (`retire_blk_tov`) expires, so the reader pays one poll and one
memcpy per block instead of a system call per packet (packet(7), Documentation/networking/
packet_mmap.rst, "TPACKET_V3"). A block is copied out and given back to the kernel at once, so a
slow pipeline backs up into the ring, where the kernel counts what it cannot store
(PACKET_STATISTICS tp_drops): drops are never silent.

scapy is used only for interface discovery (index and ARPHRD type) and for compiling a BPF
expression with libpcap (attached with SO_ATTACH_FILTER before the socket is bound, so no
unfiltered packet is ever queued). Opening needs CAP_NET_RAW (CAP_NET_ADMIN for promiscuous
mode); reading the ring afterwards needs no privilege, which is what lets the daemon drop it.
"""

from __future__ import annotations

import ctypes
import mmap
import select
import socket
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from appliance.errors import ConfigError, InputError
from appliance.sources.batch import PAD, PacketBatch

# <linux/if_packet.h>
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1
_BLK_STATUS, _BLK_NUM_PKTS, _BLK_FIRST, _BLK_LEN = 8, 12, 16, 20
# struct tpacket3_hdr field offsets
_H_NEXT, _H_SEC, _H_NSEC, _H_SNAPLEN, _H_LEN, _H_STATUS, _H_MAC, _H_NET = 0, 4, 8, 12, 16, 20, 24, 26
_H_VLAN_TCI, _H_VLAN_TPID = 32, 36

# Link types the header decoder reads from the MAC header (decode/headers.py); anything else is
# handed over from the network header as raw IP (LINKTYPE_RAW), which is what tp_net points at.
_MAC_LINKTYPES = {1, 12, 101, 113, 276}
LINKTYPE_RAW = 101


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@dataclass
class RingConfig:
    """Ring geometry. Blocks must be a power-of-two multiple of the page size (packet_mmap.rst)."""

    block_kb: int = 256
    ring_mb: int = 64
    block_timeout_ms: int = 20

    def geometry(self) -> tuple[int, int]:
        block = self.block_kb * 1024
        page = mmap.PAGESIZE
        if block < page or block % page or (block // page) & (block // page - 1):
            raise ConfigError(f"capture.block_kb must be a power-of-two multiple of {page // 1024} KiB")
        blocks = max(2, (self.ring_mb << 20) // block)
        return block, blocks


@dataclass
class InterfaceStats:
    """Counters per interface; kernel values are accumulated (PACKET_STATISTICS resets on read)."""

    received: int = 0  # packets the kernel saw for this socket (after BPF), kept or dropped
    kernel_drops: int = 0  # ring full: the kernel could not store the packet
    freeze_queue: int = 0  # times the ring was frozen because every block was in user space
    packets: int = 0  # packets read from the ring
    bytes: int = 0
    blocks: int = 0


@dataclass
class _Ring:
    name: str
    index: int  # position in the capture's interface list (PacketBatch.file_index)
    sock: socket.socket
    mm: mmap.mmap
    u8: np.ndarray
    u32: memoryview
    block_size: int
    blocks: int
    linktype: int
    from_mac: bool
    next_block: int = 0
    frame_no: int = 0
    stats: InterfaceStats = field(default_factory=InterfaceStats)


def interface_info(name: str) -> tuple[int, int]:
    """(ifindex, ARPHRD type) of an interface, by name; InputError naming the known ones otherwise."""
    from scapy.arch import linux  # noqa: F401 - populates conf.ifaces with the Linux provider
    from scapy.config import conf

    iface: Any
    try:
        iface = conf.ifaces.dev_from_networkname(name)
    except ValueError:
        conf.ifaces.reload()
        try:
            iface = conf.ifaces.dev_from_networkname(name)
        except ValueError:
            known = ", ".join(sorted(i.network_name for i in conf.ifaces.values())) or "none"
            raise InputError(name, f"no such interface (known: {known})") from None
    return int(iface.index), int(iface.type)


def compile_bpf(expr: str, arphrd: int) -> tuple[bytes, object]:
    """libpcap-compiled BPF for the interface's link type, as a sock_fprog (bytes kept alive)."""
    from scapy.arch.common import compile_filter
    from scapy.data import ARPHRD_TO_DLT
    from scapy.error import Scapy_Exception

    try:
        prog = compile_filter(expr, linktype=ARPHRD_TO_DLT.get(arphrd, 1))
    except (Scapy_Exception, ImportError, OSError) as exc:
        raise ConfigError(f"--bpf {expr!r}: {exc}") from None
    insns = ctypes.string_at(ctypes.addressof(prog.bf_insns.contents), prog.bf_len * 8)
    return insns, prog


class LiveCapture:
    """One TPACKET_V3 ring per interface; `read` returns every ready block as one batch."""

    def __init__(self, interfaces: list[str], bpf: str | None = None, promiscuous: bool = False,
                 ring: RingConfig | None = None) -> None:
        if not interfaces:
            raise ConfigError("at least one --interface is required")
        if len(set(interfaces)) != len(interfaces):
            raise ConfigError("an interface is named twice")
        self.interfaces = list(interfaces)
        self.bpf = bpf or None
        self.promiscuous = promiscuous
        self.ring = ring or RingConfig()
        self.rings: list[_Ring] = []
        self._poll = select.poll()

    # -- opening (the privileged part) -----------------------------------------------------------
    def open(self) -> None:
        """Create, filter, map and bind every socket. Needs CAP_NET_RAW; nothing after this does."""
        try:
            for i, name in enumerate(self.interfaces):
                self.rings.append(self._open_one(i, name))
        except BaseException:
            self.close()
            raise
        for r in self.rings:
            self._poll.register(r.sock.fileno(), select.POLLIN | select.POLLERR)

    def _open_one(self, index: int, name: str) -> _Ring:
        ifindex, arphrd = interface_info(name)
        # Protocol 0: the socket receives nothing until bind(), so the filter and ring are in
        # place before the first packet (no unfiltered packets leak into the ring).
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise ConfigError(f"{name}: opening a packet socket needs CAP_NET_RAW") from None
        try:
            if self.bpf:
                insns, prog = compile_bpf(self.bpf, arphrd)
                buf = ctypes.create_string_buffer(insns, len(insns))
                fprog = _SockFprog(len(insns) // 8, ctypes.addressof(buf))
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))  # type: ignore[arg-type]
                del prog
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            block, blocks = self.ring.geometry()
            frame = 2048  # TPACKET_V3 ignores frame slots but validates block_size/frame_size
            req = struct.pack("7I", block, blocks, frame, block // frame * blocks, self.ring.block_timeout_ms, 0, 0)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            mm = mmap.mmap(sock.fileno(), block * blocks, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            if self.promiscuous:
                # Membership is per socket and undone by the kernel when the socket closes.
                mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
                try:
                    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
                except PermissionError:
                    raise ConfigError(f"{name}: promiscuous mode needs CAP_NET_ADMIN") from None
            sock.bind((name, ETH_P_ALL))
        except BaseException:
            sock.close()
            raise
        dlt = _dlt(arphrd)
        from_mac = dlt in _MAC_LINKTYPES
        return _Ring(name, index, sock, mm, np.frombuffer(mm, np.uint8), memoryview(mm).cast("I"),
                     block, blocks, dlt if from_mac else LINKTYPE_RAW, from_mac)

    # -- reading ---------------------------------------------------------------------------------
    def watch(self, fd: int) -> None:
        """Also wake `read` when fd is readable (the daemon's signal wake-up pipe)."""
        self._poll.register(fd, select.POLLIN)

    def read(self, timeout_s: float, max_blocks: int = 64) -> PacketBatch | None:
        """Wait up to timeout_s for ready blocks; return their packets as one batch (or None)."""
        parts = self._ready(max_blocks)
        if not parts and timeout_s > 0:
            self._poll.poll(max(0, int(timeout_s * 1000)))
            parts = self._ready(max_blocks)
        if not parts:
            return None
        batch = _concat_parts(parts)
        if len(self.rings) > 1:
            # Interleave interfaces in arrival order: flows see both directions in time order.
            order = np.argsort(batch.ts, kind="stable")
            batch = batch.take(order)
        return batch

    def _ready(self, max_blocks: int) -> list[tuple[np.ndarray, _BlockPackets]]:
        out: list[tuple[np.ndarray, _BlockPackets]] = []
        for r in self.rings:
            for _ in range(r.blocks):
                if len(out) >= max_blocks:
                    return out
                base = r.next_block * r.block_size
                if not r.u32[(base + _BLK_STATUS) >> 2] & TP_STATUS_USER:
                    break
                out.append(_take_block(r, base))
                r.u32[(base + _BLK_STATUS) >> 2] = TP_STATUS_KERNEL  # hand the block back
                r.next_block = (r.next_block + 1) % r.blocks
        return out

    def kernel_stats(self) -> dict[str, InterfaceStats]:
        """Read (and so reset) the kernel counters into the accumulated per-interface stats."""
        for r in self.rings:
            raw = r.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
            packets, drops, freeze = struct.unpack("3I", raw)
            # The kernel's tp_packets already includes tp_drops (af_packet.c packet_getsockopt).
            r.stats.received += packets
            r.stats.kernel_drops += drops
            r.stats.freeze_queue += freeze
        return {r.name: r.stats for r in self.rings}

    def close(self) -> None:
        for r in self.rings:
            try:
                self._poll.unregister(r.sock.fileno())
            except (KeyError, ValueError):
                pass
            r.u32.release()
            del r.u8
            r.mm.close()
            r.sock.close()
        self.rings = []


@dataclass
class _BlockPackets:
    offsets: np.ndarray
    caplen: np.ndarray
    wirelen: np.ndarray
    ts: np.ndarray
    frame: np.ndarray
    linktype: int
    index: int
    vlan: list[tuple[int, int, int]]  # (packet position, tpid, tci) whose tag the kernel removed


def _take_block(r: _Ring, base: int) -> tuple[np.ndarray, _BlockPackets]:
    u32 = r.u32
    n = u32[(base + _BLK_NUM_PKTS) >> 2]
    used = u32[(base + _BLK_LEN) >> 2]
    # Packets form a chain of tp_next_offset links: a walk of n steps, one int read each.
    pos = [0] * n
    o = base + u32[(base + _BLK_FIRST) >> 2]
    for k in range(n):
        pos[k] = o
        o += u32[o >> 2]
    hdr = np.asarray(pos, np.int64)
    words = np.frombuffer(r.mm, np.uint32, count=(base + r.block_size) // 4)
    halves = np.frombuffer(r.mm, np.uint16, count=(base + r.block_size) // 2)
    sec = words[(hdr + _H_SEC) >> 2].astype(np.int64)
    nsec = words[(hdr + _H_NSEC) >> 2].astype(np.int64)
    caplen = words[(hdr + _H_SNAPLEN) >> 2].astype(np.int32)
    wirelen = words[(hdr + _H_LEN) >> 2].astype(np.int32)
    status = words[(hdr + _H_STATUS) >> 2]
    start = halves[(hdr + (_H_MAC if r.from_mac else _H_NET)) >> 1].astype(np.int64)
    if not r.from_mac:
        cut = start - halves[(hdr + _H_MAC) >> 1]
        caplen = caplen - cut.astype(np.int32)
        wirelen = wirelen - cut.astype(np.int32)
    data = r.u8[base : base + used].copy()
    vlan: list[tuple[int, int, int]] = []
    tagged = np.flatnonzero(status & TP_STATUS_VLAN_VALID).tolist() if r.linktype == 1 else []
    for k in tagged:
        h = int(hdr[k])
        tpid = halves[(h + _H_VLAN_TPID) >> 1] if status[k] & TP_STATUS_VLAN_TPID_VALID else 0x8100
        vlan.append((int(k), int(tpid) or 0x8100, int(words[(h + _H_VLAN_TCI) >> 2]) & 0xFFFF))
    r.stats.blocks += 1
    r.stats.packets += n
    r.stats.bytes += int(caplen.sum())
    frames = np.arange(r.frame_no + 1, r.frame_no + n + 1, dtype=np.int64)
    r.frame_no += n
    meta = _BlockPackets(hdr - base + start, caplen, wirelen, sec * 1_000_000_000 + nsec, frames, r.linktype, r.index, vlan)
    return data, meta


def _concat_parts(parts: list[tuple[np.ndarray, _BlockPackets]]) -> PacketBatch:
    """Block copies → one batch buffer; 802.1Q tags the kernel moved to metadata are put back."""
    chunks: list[np.ndarray] = []
    offsets, caplens, wirelens, tss, lts, frames, idx = [], [], [], [], [], [], []
    shift = 0
    for data, m in parts:
        chunks.append(data)
        off = m.offsets + shift
        caplen, wirelen = m.caplen.copy(), m.wirelen.copy()
        shift += len(data)
        for k, tpid, tci in m.vlan:
            # The frame as it was on the wire: MACs, the tag, then the rest (what libpcap does).
            o, c = int(m.offsets[k]), int(m.caplen[k])
            pkt = data[o : o + c]
            chunks.append(np.concatenate([pkt[:12], np.frombuffer(struct.pack(">HH", tpid, tci), np.uint8), pkt[12:]]))
            off[k] = shift
            caplen[k] += 4
            wirelen[k] += 4
            shift += c + 4
        offsets.append(off)
        caplens.append(caplen)
        wirelens.append(wirelen)
        tss.append(m.ts)
        lts.append(np.full(len(off), m.linktype, np.int32))
        frames.append(m.frame)
        idx.append(np.full(len(off), m.index, np.int16))
    chunks.append(np.zeros(PAD, np.uint8))
    return PacketBatch(np.concatenate(chunks), np.concatenate(offsets), np.concatenate(caplens),
                       np.concatenate(wirelens), np.concatenate(tss), np.concatenate(lts),
                       np.concatenate(frames), np.concatenate(idx))


def _dlt(arphrd: int) -> int:
    from scapy.data import ARPHRD_TO_DLT

    return int(ARPHRD_TO_DLT.get(arphrd, LINKTYPE_RAW))
