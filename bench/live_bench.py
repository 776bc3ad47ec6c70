"""Live capture + full pipeline on a veth pair: the highest packet rate with zero drops.

For each rate, a fresh `appliance run` captures in one network namespace while tcpreplay sends
`rate × --seconds` packets of the mixed capture from another at `--pps`. Reported per rate: the rate
tcpreplay achieved, packets the daemon processed, kernel ring drops, and the daemon's CPU seconds
(utime + stime from /proc, start-up excluded) per 100k packets. Needs root.

    sudo .venv/bin/python bench/live_bench.py [--rates 25000,50000,100000,150000,200000] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
APPLIANCE = str(ROOT / ".venv" / "bin" / "appliance")
TICK = os.sysconf("SC_CLK_TCK")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=600)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (proc(5) fields 14, 15)


class Pair:
    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.cap, self.send, self.cap_if, self.send_if = f"lbc{tag}", f"lbs{tag}", f"lc{tag}", f"ls{tag}"
        for ns in (self.cap, self.send):
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", self.cap_if, "netns", self.cap, "type", "veth", "peer", "name", self.send_if,
           "netns", self.send)
        for ns, i in ((self.cap, self.cap_if), (self.send, self.send_if)):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", i, "up")

    def close(self) -> None:
        for ns in (self.cap, self.send):
            sh("ip", "netns", "del", ns, check=False)


def one_rate(pair: Pair, pcap: str, pps: int, packets: int, ring_mb: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="live-bench-") as tmp:
        out = Path(tmp) / "out"
        cfg = Path(tmp) / "c.yaml"
        cfg.write_text(f"capture.ring_mb: {ring_mb}\noutput.rotate_s: 0\n")
        log = open(Path(tmp) / "log", "w+b")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(["ip", "netns", "exec", pair.cap, APPLIANCE, "run", "-i", pair.cap_if, "--out", str(out),
                                 "--config", str(cfg), "--allow-root", "--metrics", ""],
                                stderr=log, stdout=log, env={**os.environ, "APPLIANCE_SECRET": "bench"})
        deadline = time.monotonic() + 60
        while b'"started"' not in Path(log.name).read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(Path(log.name).read_text()[-2000:])
            time.sleep(0.1)
        cpu0 = cpu_s(proc.pid)
        r = sh("ip", "netns", "exec", pair.send, "tcpreplay", "-i", pair.send_if, f"--pps={pps}",
               f"--limit={packets}", pcap)
        m = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", r.stdout)
        achieved = float(m.group(1)) if m else 0.0
        # let the daemon catch up with what the ring holds, then stop it
        time.sleep(1.0)
        prev = -1.0
        while True:
            time.sleep(0.5)
            now = cpu_s(proc.pid)
            if now - prev < 0.05:
                break
            prev = now
        cpu1 = cpu_s(proc.pid)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        log.close()
        summary = json.loads((out / "summary.json").read_text())
    processed = summary["packets"]
    return {"target_pps": pps, "achieved_pps": round(achieved), "sent": packets, "processed": processed,
            "kernel_drops": summary["capture"]["kernel_drops"], "exit": rc,
            "cpu_s_per_100k": round((cpu1 - cpu0) / max(processed, 1) * 100_000, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=str(ROOT / "bench" / "data" / "mixed-1m.pcap"))
    ap.add_argument("--rates", default="25000,50000,75000,100000,150000,200000")
    ap.add_argument("--seconds", type=float, default=4.0, help="sending time per rate")
    ap.add_argument("--ring-mb", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("live_bench needs root (network namespaces)")
    if not Path(args.file).exists():
        sh(sys.executable, str(ROOT / "bench" / "make_mixed_pcap.py"), "--packets", "1000000", "--out", args.file)
    pair = Pair()
    rows = []
    try:
        for pps in (int(x) for x in args.rates.split(",")):
            rows.append(one_rate(pair, args.file, pps, min(1_000_000, int(pps * args.seconds)), args.ring_mb))
            if not args.json:
                print(rows[-1], flush=True)
    finally:
        pair.close()
    clean = [r for r in rows if r["kernel_drops"] == 0 and r["processed"] == r["sent"]]
    best = max(clean, key=lambda r: r["achieved_pps"], default=None)
    result = {"rows": rows, "highest_zero_drop_pps": best["achieved_pps"] if best else None,
              "cpu_s_per_100k_at_best": best["cpu_s_per_100k"] if best else None}
    print(json.dumps(result, indent=2) if args.json else f"highest zero-drop rate: {result['highest_zero_drop_pps']} pps, "
          f"CPU {result['cpu_s_per_100k_at_best']} s per 100k packets")


if __name__ == "__main__":
    main()
