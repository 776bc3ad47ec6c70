"""LiveCapture on a real veth pair: every frame tcpreplay sends arrives byte for byte, once.

One veth end stays in this process's namespace (so the ring is opened in-process), the other
lives in a namespace of its own where tcpreplay sends from. Needs root (CI runs as root).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.utils import wrpcap

from appliance.decode.headers import decode_headers
from appliance.errors import ConfigError, InputError
from appliance.sources.batch import PacketBatch
from appliance.sources.live import LiveCapture, RingConfig
from appliance.sources.pcap import CaptureReader

ROOT = Path(__file__).resolve().parents[2]
PCAP = ROOT / "pcaps" / "relay-easy.pcap"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="veth pairs and packet sockets need root (CI runs as root)")


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=60)


@pytest.fixture
def veth() -> Iterator[tuple[str, str, str]]:
    """(local interface, sender namespace, sender interface); deleting the namespace removes both ends."""
    tag = uuid.uuid4().hex[:6]
    ns, local, peer = f"aplt{tag}", f"vl{tag}", f"vp{tag}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", local, "type", "veth", "peer", "name", peer, "netns", ns)
        sh("sysctl", "-qw", f"net.ipv6.conf.{local}.disable_ipv6=1")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        sh("ip", "link", "set", local, "up")
        sh("ip", "-n", ns, "link", "set", peer, "up")
        yield local, ns, peer
    finally:
        subprocess.run(["ip", "link", "del", local], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def send(ns: str, iface: str, pcap: Path, pps: int = 5000) -> subprocess.Popen[bytes]:
    """Start tcpreplay; the caller reads the ring while it sends, as the daemon does."""
    return subprocess.Popen(["ip", "netns", "exec", ns, "tcpreplay", "-q", "-i", iface, f"--pps={pps}", str(pcap)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def collect(cap: LiveCapture, want: int, sender: subprocess.Popen[bytes], timeout: float = 15) -> PacketBatch:
    got: list[PacketBatch] = []
    n, deadline = 0, time.monotonic() + timeout
    while n < want and time.monotonic() < deadline:
        b = cap.read(0.1)
        if b is not None:
            got.append(b)
            n += len(b)
    assert sender.wait(timeout=10) == 0
    time.sleep(0.1)  # anything beyond `want` would be a duplicate or stray frame
    extra = cap.read(0.1)
    if extra is not None:
        got.append(extra)
    return PacketBatch.concat(got)


def packets(b: PacketBatch) -> list[bytes]:
    return [b.packet(i) for i in range(len(b))]


def test_every_frame_arrives_once_byte_for_byte(veth: tuple[str, str, str]) -> None:
    local, ns, peer = veth
    want = PacketBatch.concat(list(CaptureReader([str(PCAP)]).batches()))
    cap = LiveCapture([local], ring=RingConfig(block_kb=256, ring_mb=8, block_timeout_ms=10))
    cap.open()
    try:
        started = time.time_ns()
        sender = send(ns, peer, PCAP)
        got = collect(cap, len(want), sender)
        stats = cap.kernel_stats()[local]
    finally:
        cap.close()
    assert packets(got) == packets(want)
    assert np.array_equal(got.wirelen, want.wirelen)
    assert (got.linktype == 1).all() and (got.file_index == 0).all()
    assert got.frame.tolist() == list(range(1, len(want) + 1))
    assert started <= int(got.ts.min()) and np.all(np.diff(got.ts) >= 0)  # arrival time, in order
    assert stats.kernel_drops == 0 and stats.received == len(want) == stats.packets
    assert stats.bytes == want.captured_bytes and stats.blocks >= 1
    assert len(got.data) - int(got.offsets[-1] + got.caplen[-1]) >= 128  # the batch's zero padding


def test_a_stalled_reader_makes_the_kernel_count_drops(veth: tuple[str, str, str]) -> None:
    """Nothing is lost silently: packets the full ring could not take are in PACKET_STATISTICS."""
    local, ns, peer = veth
    cap = LiveCapture([local], ring=RingConfig(block_kb=64, ring_mb=0, block_timeout_ms=5))  # 2 blocks
    cap.open()
    try:
        assert send(ns, peer, PCAP, pps=8000).wait(timeout=10) == 0  # nobody reads meanwhile
        got = 0
        for _ in range(10):
            b = cap.read(0.05)
            got += len(b) if b is not None else 0
        stats = cap.kernel_stats()[local]
    finally:
        cap.close()
    assert stats.kernel_drops > 0
    assert stats.received == stats.packets + stats.kernel_drops == 5917
    assert got == stats.packets


def test_bpf_filter_keeps_only_matching_frames(veth: tuple[str, str, str]) -> None:
    local, ns, peer = veth
    want = PacketBatch.concat(list(CaptureReader([str(PCAP)]).batches()))
    h = decode_headers(want)
    dns = want.take(np.flatnonzero((h.proto == 17) & ((h.sport == 53) | (h.dport == 53))))
    assert 0 < len(dns) < len(want)
    cap = LiveCapture([local], bpf="udp port 53")
    cap.open()
    try:
        sender = send(ns, peer, PCAP, pps=8000)
        got = collect(cap, len(dns), sender)
    finally:
        cap.close()
    assert packets(got) == packets(dns)


def test_vlan_tag_taken_off_by_the_kernel_is_put_back(veth: tuple[str, str, str], tmp_path: Path) -> None:
    local, ns, peer = veth
    frames = [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=100 + i, prio=i % 8)
              / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1000 + i, dport=53) / (b"x" * (20 + i))
              for i in range(20)]
    pcap = tmp_path / "vlan.pcap"
    wrpcap(str(pcap), frames)
    cap = LiveCapture([local])
    cap.open()
    try:
        sender = send(ns, peer, pcap, pps=1000)
        got = collect(cap, len(frames), sender)
    finally:
        cap.close()
    assert packets(got) == [bytes(f) for f in frames]
    h = decode_headers(got)
    assert h.vlan_outer.tolist() == [100 + i for i in range(20)]


def test_promiscuous_mode_lasts_as_long_as_the_socket(veth: tuple[str, str, str]) -> None:
    local = veth[0]
    flags = Path(f"/sys/class/net/{local}/flags")
    cap = LiveCapture([local], promiscuous=True)
    cap.open()
    try:
        assert int(flags.read_text(), 16) & 0x100  # IFF_PROMISC
    finally:
        cap.close()
    assert not int(flags.read_text(), 16) & 0x100


def test_two_interfaces_are_merged_in_arrival_order(veth: tuple[str, str, str]) -> None:
    local, ns, peer = veth
    cap = LiveCapture([local, "lo"])
    cap.open()
    try:
        sender = send(ns, peer, PCAP, pps=8000)
        got = collect(cap, 5917, sender)
    finally:
        cap.close()
    assert np.all(np.diff(got.ts) >= 0)
    assert (got.file_index == 0).sum() == 5917


def test_bad_filter_and_unknown_interface_are_named(veth: tuple[str, str, str]) -> None:
    with pytest.raises(ConfigError, match="syntax error"):
        LiveCapture([veth[0]], bpf="tcp portx 80").open()
    with pytest.raises(InputError, match="no such interface"):
        LiveCapture(["nonexistent0"]).open()
    with pytest.raises(ConfigError, match="power-of-two"):
        LiveCapture([veth[0]], ring=RingConfig(block_kb=12)).open()
