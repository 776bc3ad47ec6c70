"""Bidirectional flows with Zeek-style TCP history, built a batch at a time.

Per batch the packets are sorted by (canonical 5-tuple, time) and cut into *segments*: runs of one
flow's packets inside the batch. A segment starts at a new key, after an idle gap, or at a SYN that
follows a FIN/RST of the same key (port reuse). Per-segment counters, flags and history letters are
numpy reductions (`reduceat`) over the sorted arrays; Python only touches each segment once, to merge
it into the bounded flow table. So the Python work grows with flows per batch, not with packets.

Originator = the SYN sender, else the first packet's sender. End reasons: fin (both sides sent FIN),
rst, idle_timeout, active_timeout (checked at segment granularity), evicted (table full) and
end_of_input.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass, field

import numpy as np

from appliance.decode.community_id import community_id, community_ids
from appliance.decode.headers import ACK, FIN, ICMP, ICMP6, RST, SCTP, SYN, TCP, UDP, Headers

TRANSPORT_NAMES = {TCP: "tcp", UDP: "udp", ICMP: "icmp", ICMP6: "ipv6-icmp", SCTP: "sctp"}
# History letters in the order Zeek writes them when one packet carries several.
_LETTERS = "SHADFR"


@dataclass
class FlowLimits:
    """Bounds of the flow table; every setting has its one paragraph in docs/operations.md."""

    max_flows: int = 262_144
    tcp_idle_s: float = 300.0
    udp_idle_s: float = 60.0
    other_idle_s: float = 60.0
    active_s: float = 1800.0
    close_grace_s: float = 5.0
    community_id_seed: int = 0


class Flow:
    """One live flow. `a` is the canonical lower endpoint; `orig_a` says whether it originated."""

    __slots__ = (
        "key", "fid", "cid", "orig_a", "start", "last", "pkts", "bytes", "payload",
        "history", "fin_a", "fin_b", "rst", "closed_at", "vlan", "protocol", "sni", "host",
        "tls_seen", "_ends",
    )

    def __init__(self, key: tuple, orig_a: bool, start: int, vlan: list[int], cid: str, ends: tuple[str, str]) -> None:
        """`cid` is the flow's Community ID, `ends` the text of its endpoints a and b (FlowTable
        computes both for a whole batch's new flows at once)."""
        self.key = key
        self.orig_a = orig_a
        self.start = start
        self.last = start
        self.pkts = [0, 0]  # by canonical direction: [a->b, b->a]
        self.bytes = [0, 0]
        self.payload = [0, 0]
        self.history = ""
        self.fin_a = self.fin_b = self.rst = False
        self.closed_at: int | None = None
        self.vlan = vlan
        self.protocol: str | None = None
        self.sni: str | None = None
        self.host: str | None = None
        self.tls_seen: set[tuple[object, object]] = set()  # parsed message starts; ("hello", direction) marks
        self.cid = cid
        self.fid = "C" + hashlib.sha1(f"{cid}|{start}".encode()).hexdigest()[:17]
        a, b = ends
        a_port, b_port = key[6], key[7]
        self._ends = (a, a_port, b, b_port) if orig_a else (b, b_port, a, a_port)

    def endpoints(self) -> tuple[str, int, str, int]:
        """(source ip, source port, destination ip, destination port) in originator order."""
        return self._ends


def _addr_bytes(ver: int, hi: int, lo: int) -> bytes:
    if ver == 4:
        return int(lo).to_bytes(4, "big")
    return int(hi).to_bytes(8, "big") + int(lo).to_bytes(8, "big")


_ADDR_TEXT: dict[tuple[int, int, int], str] = {}  # flows share addresses: format each once
_ADDR_TEXT_MAX = 1 << 16


def _addr_text_cached(ver: int, hi: int, lo: int) -> str:
    key = (ver, hi, lo)
    text = _ADDR_TEXT.get(key)
    if text is None:
        if len(_ADDR_TEXT) >= _ADDR_TEXT_MAX:
            _ADDR_TEXT.clear()
        text = _ADDR_TEXT[key] = addr_text(ver, hi, lo)
    return text


def addr_text(ver: int, hi: int, lo: int) -> str:
    if ver == 4:
        return socket.inet_ntop(socket.AF_INET, int(lo).to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, _addr_bytes(6, hi, lo))


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))


def _key_hash(ver: np.ndarray, proto: np.ndarray, a_hi: np.ndarray, a_lo: np.ndarray, b_hi: np.ndarray,
              b_lo: np.ndarray, a_port: np.ndarray, b_port: np.ndarray) -> np.ndarray:
    """A 64-bit mix of each packet's flow key. Sorting by it (then time) groups a flow's packets as
    sorting by the nine key columns does, at a third of the cost (~6 ms of 14 per 130k packets).
    Two keys sharing a hash (~1e-9 per batch) would interleave, not merge: segments are still cut
    wherever any key column changes, so each segment holds one key, in time order."""
    k1, k2, k3 = _MIX
    with np.errstate(over="ignore"):
        x: np.ndarray = a_hi * k1 + a_lo * k2 + b_hi * k3 + b_lo * k1
        x += ((a_port.astype(np.uint64) << np.uint64(16)) | b_port.astype(np.uint64)) * k2
        x += (proto.astype(np.uint64) << np.uint64(8) | ver.astype(np.uint64)) * k3
        x ^= x >> np.uint64(29)
        x *= k1
        x ^= x >> np.uint64(32)
    return x


@dataclass
class FlowStats:
    created: int = 0
    finished: int = 0
    evicted: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


@dataclass
class Segments:
    """The packets of one batch grouped per flow: what the deep parsers need to find their flow."""

    order: np.ndarray  # indices into the batch, sorted by (key, time)
    seg_of_sorted: np.ndarray  # segment number of each sorted packet
    a_to_b: np.ndarray  # per sorted packet: sent by the canonical lower endpoint
    flows: list[Flow]  # the flow of each segment
    bounds: np.ndarray  # sorted position where each segment starts, plus the end (len = segments + 1)


class FlowTable:
    """The bounded table of live flows and the finished-flow records waiting to be written."""

    def __init__(self, limits: FlowLimits | None = None) -> None:
        self.limits = limits or FlowLimits()
        self.flows: dict[tuple, Flow] = {}
        self.finished: list[tuple[Flow, str]] = []
        self.stats = FlowStats()
        self._next_scan = 0
        self.on_finish: list = []  # callbacks(flow, reason) run before a flow leaves the table

    # -- per batch ---------------------------------------------------------------------------
    def update(self, h: Headers, ts: np.ndarray) -> Segments:
        lim = self.limits
        sel = np.nonzero(h.flowable)[0]
        if len(sel) == 0:
            return Segments(sel, sel, np.zeros(0, bool), [], np.zeros(1, np.int64))
        ver = h.ipver[sel]
        proto = h.proto[sel]
        s_hi, s_lo, d_hi, d_lo = h.src_hi[sel], h.src_lo[sel], h.dst_hi[sel], h.dst_lo[sel]
        sp, dp = h.sport[sel], h.dport[sel]
        oneway = h.icmp_oneway[sel]
        swap = (s_hi > d_hi) | ((s_hi == d_hi) & ((s_lo > d_lo) | ((s_lo == d_lo) & (sp > dp))))
        swap &= ~oneway
        a_hi = np.where(swap, d_hi, s_hi)
        a_lo = np.where(swap, d_lo, s_lo)
        b_hi = np.where(swap, s_hi, d_hi)
        b_lo = np.where(swap, s_lo, d_lo)
        a_port = np.where(swap, dp, sp)
        b_port = np.where(swap, sp, dp)
        t = ts[sel]
        order = np.lexsort((t, _key_hash(ver, proto, a_hi, a_lo, b_hi, b_lo, a_port, b_port)))
        cols = [c[order] for c in (ver, proto, a_hi, a_lo, b_hi, b_lo, a_port, b_port, oneway)]
        t = t[order]
        a_to_b = ~swap[order]
        rows = sel[order]  # batch row of each sorted packet: one gather per column from here on
        flags = h.tcp_flags[rows]
        n = len(order)

        newkey = np.ones(n, bool)
        same = np.ones(n - 1, bool)
        for c in cols:
            same &= c[1:] == c[:-1]
        newkey[1:] = ~same
        idle_ns = np.where(cols[1] == TCP, lim.tcp_idle_s, np.where(cols[1] == UDP, lim.udp_idle_s, lim.other_idle_s)) * 1e9
        gap = np.zeros(n, np.int64)
        gap[1:] = t[1:] - t[:-1]
        newseg = newkey | (gap > idle_ns)
        # port reuse: a SYN after a FIN or RST of the same key starts a new connection
        is_tcp = cols[1] == TCP
        pure_syn = is_tcp & ((flags & SYN) != 0) & ((flags & ACK) == 0)
        finrst = is_tcp & ((flags & (FIN | RST)) != 0)
        csum = np.cumsum(finrst)
        before = csum - finrst
        key_start = np.maximum.accumulate(np.where(newkey, np.arange(n), 0))
        syn_idx = np.nonzero(pure_syn)[0]
        if len(syn_idx):
            prev = np.empty(len(syn_idx), np.int64)
            prev[0] = before[key_start[syn_idx[0]]]
            prev_same_key = key_start[syn_idx[1:]] == key_start[syn_idx[:-1]]
            prev[1:] = np.where(prev_same_key, before[syn_idx[:-1]], before[key_start[syn_idx[1:]]])
            newseg[syn_idx] |= before[syn_idx] > prev
        starts = np.nonzero(newseg)[0]
        seg_of = np.cumsum(newseg) - 1
        nseg = len(starts)

        ip_bytes = h.ip_bytes[rows].astype(np.int64)
        plen = h.payload_len[rows].astype(np.int64)
        fwd = a_to_b.astype(np.int64)
        rev = 1 - fwd
        red = np.add.reduceat
        pk_a, pk_b = red(fwd, starts), red(rev, starts)
        by_a, by_b = red(ip_bytes * fwd, starts), red(ip_bytes * rev, starts)
        pl_a, pl_b = red(plen * fwd, starts), red(plen * rev, starts)
        last_t = np.maximum.reduceat(t, starts)
        big = np.iinfo(np.int64).max
        pos = np.arange(n, dtype=np.int64)
        first_syn = np.minimum.reduceat(np.where(pure_syn, pos, big), starts)
        fin_a = np.maximum.reduceat(((flags & FIN) != 0) & a_to_b, starts)
        fin_b = np.maximum.reduceat(((flags & FIN) != 0) & ~a_to_b, starts)
        rst = np.maximum.reduceat((flags & RST) != 0, starts)

        # history letters: first position of each letter per direction, per segment
        syn, ack, fin, rstf = (flags & SYN) != 0, (flags & ACK) != 0, (flags & FIN) != 0, (flags & RST) != 0
        masks = (syn & ~ack, syn & ack, ack & ~syn & ~fin & ~rstf & (plen == 0), plen > 0, fin, rstf)
        hist_pos = np.empty((nseg, 12), np.int64)
        for li, m in enumerate(masks):
            m = m & is_tcp
            hist_pos[:, 2 * li] = np.minimum.reduceat(np.where(m & a_to_b, pos * 16 + li, big), starts)
            hist_pos[:, 2 * li + 1] = np.minimum.reduceat(np.where(m & ~a_to_b, pos * 16 + li, big), starts)

        # Python: one step per segment, to find or create its flow
        keys = list(zip(*(c[starts].tolist() for c in cols), strict=True))
        start_t = t[starts].tolist()
        first_syn_l = first_syn.tolist()
        a_to_b_l = a_to_b.tolist()
        vo = h.vlan_outer[rows[starts]].tolist()
        vi = h.vlan_inner[rows[starts]].tolist()
        # names (Community ID, endpoint text) of the segments that will likely open a flow, computed
        # together; a flow opened by a timeout or port reuse is named on its own
        flows = self.flows
        fresh = np.fromiter((k not in flows for k in keys), bool, nseg)
        names = self._names(cols, starts, fresh)
        seg_flows: list[Flow] = []
        orig_a = np.empty(nseg, bool)
        counts = zip(
            pk_a.tolist(), pk_b.tolist(), by_a.tolist(), by_b.tolist(), pl_a.tolist(), pl_b.tolist(),
            last_t.tolist(), fin_a.tolist(), fin_b.tolist(), rst.tolist(), strict=True,
        )
        for s, (pa, pb, ba, bb, qa, qb, lt_, fa, fb, r) in enumerate(counts):
            key = keys[s]
            t0 = start_t[s]
            fsyn = first_syn_l[s]
            f = self.flows.get(key)
            if f is not None:
                p = key[1]
                idle = lim.tcp_idle_s if p == TCP else lim.udp_idle_s if p == UDP else lim.other_idle_s
                if t0 - f.last > idle * 1e9:
                    self._finish(f, self._closed_reason(f) or "idle_timeout")
                    f = None
                elif fsyn == int(starts[s]) and (f.fin_a or f.fin_b or f.rst):
                    self._finish(f, self._closed_reason(f) or "fin")  # port reuse: a new connection
                    f = None
                elif t0 - f.start > lim.active_s * 1e9:
                    self._finish(f, "active_timeout")
                    f = None
            if f is None:
                first = fsyn if fsyn != big else int(starts[s])
                vlan = [v for v in (vo[s], vi[s]) if v >= 0]
                cid, ends = names.get(s) or self._name_one(key)
                f = Flow(key, a_to_b_l[first], t0, vlan, cid, ends)
                if len(self.flows) >= lim.max_flows:
                    self._evict()
                self.flows[key] = f
                self.stats.created += 1
            seg_flows.append(f)
            orig_a[s] = f.orig_a
            # counters now, so a later segment of the same key in this batch sees this one's state
            f.pkts[0] += pa
            f.pkts[1] += pb
            f.bytes[0] += ba
            f.bytes[1] += bb
            f.payload[0] += qa
            f.payload[1] += qb
            f.last = lt_
            f.fin_a |= fa
            f.fin_b |= fb
            f.rst |= r
            if f.closed_at is None and (f.rst or (f.fin_a and f.fin_b)):
                f.closed_at = lt_

        # history strings, vectorised: letters sorted by first position, upper case = originator
        chars = np.frombuffer(b"SsHhAaDdFfRr", np.uint8)
        lower = np.frombuffer(b"sShHaAdDfFrR", np.uint8)
        letter = np.where(orig_a[:, None], chars[None, :], lower[None, :])
        srt = np.argsort(hist_pos, axis=1, kind="stable")
        hp = np.take_along_axis(hist_pos, srt, axis=1)
        lt = np.take_along_axis(letter, srt, axis=1)
        lt = np.where(hp == big, 0, lt).astype(np.uint8)
        hist = np.ascontiguousarray(lt).view("S12").reshape(-1).tolist()
        for f, hs in zip(seg_flows, hist, strict=True):
            if hs:
                if not f.history:
                    f.history = hs.decode()
                else:
                    f.history += "".join(ch for ch in hs.decode() if ch not in f.history)
        return Segments(rows, seg_of, a_to_b, seg_flows, np.append(starts, n))

    def _names(self, cols: list[np.ndarray], starts: np.ndarray, which: np.ndarray
               ) -> dict[int, tuple[str, tuple[str, str]]]:
        """(Community ID, (text of a, text of b)) of the chosen segments, by segment number."""
        segs = np.flatnonzero(which)
        if len(segs) == 0:
            return {}
        ver, proto, a_hi, a_lo, b_hi, b_lo, a_port, b_port = (c[starts[segs]] for c in cols[:8])
        cids = community_ids(ver, proto, a_hi, a_lo, b_hi, b_lo, a_port, b_port, self.limits.community_id_seed)
        text = _addr_text_cached
        ends = [(text(v, ah, al), text(v, bh, bl)) for v, ah, al, bh, bl in
                zip(ver.tolist(), a_hi.tolist(), a_lo.tolist(), b_hi.tolist(), b_lo.tolist(), strict=True)]
        return dict(zip(segs.tolist(), zip(cids, ends, strict=True), strict=True))

    def _name_one(self, key: tuple) -> tuple[str, tuple[str, str]]:
        ver, proto, a_hi, a_lo, b_hi, b_lo, a_port, b_port, _oneway = key
        cid = community_id(proto, _addr_bytes(ver, a_hi, a_lo), _addr_bytes(ver, b_hi, b_lo), a_port, b_port,
                           self.limits.community_id_seed, one_way=True)  # a is already the first endpoint
        return cid, (_addr_text_cached(ver, a_hi, a_lo), _addr_text_cached(ver, b_hi, b_lo))

    # -- expiry ------------------------------------------------------------------------------
    def expire(self, now_ns: int, scan_every_s: float = 10.0) -> None:
        """Finish flows idle past their timeout (or closed past the grace), at most every few seconds."""
        if now_ns < self._next_scan:
            return
        self._next_scan = now_ns + int(scan_every_s * 1e9)
        lim = self.limits
        grace = lim.close_grace_s * 1e9
        idle_tcp, idle_udp, idle_other = lim.tcp_idle_s * 1e9, lim.udp_idle_s * 1e9, lim.other_idle_s * 1e9
        for f in list(self.flows.values()):
            quiet = now_ns - f.last
            if f.closed_at is not None and quiet > grace:
                self._finish(f, self._closed_reason(f) or "fin")
                continue
            p = f.key[1]
            if quiet > (idle_tcp if p == TCP else idle_udp if p == UDP else idle_other):
                self._finish(f, "idle_timeout")

    def finish_all(self) -> None:
        for f in list(self.flows.values()):
            self._finish(f, self._closed_reason(f) or "end_of_input")

    @staticmethod
    def _closed_reason(f: Flow) -> str | None:
        if f.rst:
            return "rst"
        if f.fin_a and f.fin_b:
            return "fin"
        return None

    def _evict(self) -> None:
        """Table full: finish the flow that has waited longest since its last packet."""
        victim = min(self.flows.values(), key=lambda f: f.last) if len(self.flows) < 4096 else next(iter(self.flows.values()))
        self.stats.evicted += 1
        self._finish(victim, "evicted")

    def _finish(self, f: Flow, reason: str) -> None:
        for cb in self.on_finish:
            cb(f, reason)
        if self.flows.get(f.key) is f:
            del self.flows[f.key]
        self.finished.append((f, reason))
        self.stats.finished += 1
        self.stats.by_reason[reason] = self.stats.by_reason.get(reason, 0) + 1

    def drain(self) -> list[tuple[Flow, str]]:
        out, self.finished = self.finished, []
        return out


_FLOW_COLUMNS = (
    "@timestamp", "source.ip", "source.port", "destination.ip", "destination.port", "network.transport",
    "network.community_id", "network.vlan.id", "flow.id", "event.start", "event.end", "event.duration",
    "source.packets", "source.bytes", "source.payload_bytes", "destination.packets", "destination.bytes",
    "destination.payload_bytes", "flow.history", "flow.end_reason", "network.protocol",
    "tls.client.server_name", "url.domain",
)


def flow_frame(finished: list[tuple[Flow, str]]) -> dict[str, list]:
    """Column lists of flow events (schema FLOW) for finished flows, in originator orientation.
    One tuple per flow, transposed by zip in C: half the time of appending to 23 lists."""
    rows = []
    for f, reason in finished:
        sip, sport, dip, dport = f._ends
        o, r = (0, 1) if f.orig_a else (1, 0)
        p = f.key[1]
        start, last = f.start, f.last
        rows.append((
            start, sip, sport, dip, dport, TRANSPORT_NAMES.get(p) or str(p), f.cid, f.vlan, f.fid, start,
            last, last - start, f.pkts[o], f.bytes[o], f.payload[o], f.pkts[r], f.bytes[r], f.payload[r],
            f.history if p == TCP else None, reason, f.protocol, f.sni, f.host,
        ))
    if not rows:
        return {k: [] for k in _FLOW_COLUMNS}
    return dict(zip(_FLOW_COLUMNS, map(list, zip(*rows, strict=True)), strict=True))
