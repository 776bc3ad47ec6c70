#!/usr/bin/env python3
"""Replay benchmark: the appliance against tshark and nDPI on the same mixed capture, in one run.

Each tool reads the whole file and does comparable work: the appliance's full `replay` (decode,
flows, TLS/HTTP/DNS, rules, findings); tshark extracting SNI + JA3 from every ClientHello (which
needs TCP reassembly for the two-segment post-quantum hellos); ndpiReader classifying every flow.
Every tool runs N times; the table shows the median wall time, packets/s, MB/s, the peak RSS and the
appliance's throughput as a ratio of each peer's. A tool that fails is reported and the rest go on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_FILE = os.path.join(HERE, "data", "mixed-1m.pcap")
TIME = "/usr/bin/time"


def count_packets(path: str) -> int | None:
    """Packets in a classic pcap, by walking its record headers (None for other formats)."""
    with open(path, "rb") as fh:
        head = fh.read(24)
        if len(head) < 24 or head[:4] not in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
            return None
        n, rec = 0, struct.Struct("<IIII")
        while True:
            h = fh.read(16)
            if len(h) < 16:
                return n
            fh.seek(rec.unpack(h)[2], 1)
            n += 1


def tshark_command(path: str) -> list[str]:
    """SNI + JA3 of every ClientHello. tshark ≥ 3.6 computes tls.handshake.ja3 without extra prefs."""
    fields = subprocess.run(["tshark", "-G", "fields"], capture_output=True, text=True).stdout
    ja3 = "tls.handshake.ja3" if "\ttls.handshake.ja3\t" in fields else "tls.handshake.ciphersuite"
    return ["tshark", "-n", "-r", path, "-Y", "tls.handshake.type == 1", "-T", "fields",
            "-e", "tls.handshake.extensions_server_name", "-e", ja3]


def commands(path: str, outdir: str) -> dict[str, list[str]]:
    appliance = os.path.join(ROOT, ".venv", "bin", "appliance")
    if not os.path.exists(appliance):
        appliance = shutil.which("appliance") or appliance
    return {
        "appliance": [appliance, "replay", path, "--out", outdir, "--no-progress"],  # --workers auto (2 here)
        "appliance-1proc": [appliance, "replay", path, "--out", outdir, "--no-progress", "--workers", "1"],
        "tshark": tshark_command(path),
        "ndpiReader": ["ndpiReader", "-q", "-i", path],
    }


def run_once(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run one command; wall seconds, peak RSS (kB) and exit status. Output is discarded."""
    use_time = os.path.exists(TIME)
    full = [TIME, "-v", *cmd] if use_time else [sys.executable, "-c", _RUSAGE_WRAPPER, *cmd]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout:.0f} s"}
    except OSError as e:
        return {"ok": False, "error": str(e)}
    wall = time.perf_counter() - t0
    rss = None
    for line in p.stderr.splitlines():
        if "Maximum resident set size" in line or line.startswith("MAXRSS_KB="):
            rss = int(line.rsplit("=" if line.startswith("MAXRSS") else ":", 1)[1].strip())
    rc = p.returncode
    if rc != 0:
        tail = [ln for ln in p.stderr.splitlines() if not ln.startswith("\t")][-3:]
        return {"ok": False, "error": f"exit {rc}: " + " | ".join(tail)[-300:], "seconds": wall}
    return {"ok": True, "seconds": wall, "rss_kb": rss}


# Fallback when /usr/bin/time is missing: run the child, report its own peak RSS on stderr.
_RUSAGE_WRAPPER = (
    "import resource,subprocess,sys\n"
    "rc=subprocess.call(sys.argv[1:],stdout=subprocess.DEVNULL)\n"
    "sys.stderr.write('MAXRSS_KB=%d\\n'%resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(rc)\n"
)


def bench(path: str, reps: int, tools: list[str], timeout: float) -> dict[str, Any]:
    """Round-robin: repetition k of every tool runs before repetition k+1 of any, so a slow spell
    of this shared machine weighs on all tools alike instead of on whichever ran then."""
    size = os.path.getsize(path)
    packets = count_packets(path)
    results: dict[str, Any] = {"file": path, "bytes": size, "packets": packets, "repetitions": reps, "tools": {}}
    all_runs: dict[str, list[dict[str, Any]]] = {tool: [] for tool in tools}
    for _ in range(reps):
        for tool, runs in all_runs.items():
            if runs and not runs[-1]["ok"]:
                continue  # a broken tool fails the same way every time; report it once
            with tempfile.TemporaryDirectory(prefix="bench-") as out:
                runs.append(run_once(commands(path, out)[tool], timeout))
    for tool, runs in all_runs.items():
        ok = [r for r in runs if r["ok"]]
        entry: dict[str, Any] = {"command": " ".join(commands(path, "OUT")[tool]), "runs": len(runs),
                                 "ok_runs": len(ok)}
        if ok:
            med = statistics.median(r["seconds"] for r in ok)
            rss = [r["rss_kb"] for r in ok if r.get("rss_kb")]
            entry.update({
                "median_seconds": round(med, 3),
                "packets_per_s": round(packets / med) if packets else None,
                "mb_per_s": round(size / 1e6 / med, 1),
                "peak_rss_mb": round(max(rss) / 1024, 1) if rss else None,
                "all_seconds": [round(r["seconds"], 3) for r in ok],
            })
        errors = [r["error"] for r in runs if not r["ok"]]
        if errors:
            entry["error"] = errors[0]
        results["tools"][tool] = entry
    app = results["tools"].get("appliance", {}).get("median_seconds")
    ratios = {}
    for peer in ("ndpiReader", "tshark"):
        other = results["tools"].get(peer, {}).get("median_seconds")
        # Throughput ratio: > 1 means the appliance is faster than the peer on this file.
        ratios[f"appliance/{peer}"] = round(other / app, 3) if app and other else None
    results["throughput_ratios"] = ratios
    return results


def table(res: dict[str, Any]) -> str:
    lines = [f"file: {res['file']}  ({res['packets'] or '?'} packets, {res['bytes'] / 1e6:.1f} MB), "
             f"{res['repetitions']} runs each, median shown",
             f"{'tool':<12} {'ok':>4} {'median s':>9} {'packets/s':>11} {'MB/s':>7} {'peak RSS MB':>12}"]
    for tool, e in res["tools"].items():
        if "median_seconds" in e:
            pps = f"{e['packets_per_s']:,}" if e["packets_per_s"] else "?"
            rss = f"{e['peak_rss_mb']}" if e["peak_rss_mb"] is not None else "?"
            lines.append(f"{tool:<12} {e['ok_runs']:>2}/{e['runs']:<1} {e['median_seconds']:>9.2f} {pps:>11} "
                         f"{e['mb_per_s']:>7.1f} {rss:>12}")
        else:
            lines.append(f"{tool:<12} {e['ok_runs']:>2}/{e['runs']:<1}  FAILED: {e.get('error', '')}")
    for k, v in res["throughput_ratios"].items():
        lines.append(f"throughput {k}: {v if v is not None else 'n/a'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=DEFAULT_FILE, help="capture to replay (made if it is the default and missing)")
    ap.add_argument("--packets", type=int, default=1_000_000, help="size of the generated capture")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tools", default="appliance,appliance-1proc,tshark,ndpiReader")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    if not os.path.exists(args.file):
        sys.path.insert(0, HERE)
        from make_mixed_pcap import make  # the generator lives next to this script

        os.makedirs(os.path.dirname(os.path.abspath(args.file)), exist_ok=True)
        info = make(args.file, args.packets)
        print(f"made {args.file}: {info['packets']:,} packets in {info['seconds']:.1f} s", file=sys.stderr)
    # A wheel install byte-compiles the package; an editable one leaves it to the first import, and
    # PYTHONDONTWRITEBYTECODE (set in some containers) would make every timed run compile it again.
    subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(ROOT, "appliance")],
                   stdout=subprocess.DEVNULL, check=False)
    res = bench(args.file, args.reps, [t.strip() for t in args.tools.split(",") if t.strip()], args.timeout)
    print(json.dumps(res, indent=1) if args.json else table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
