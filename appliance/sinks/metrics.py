"""Prometheus metrics and a health endpoint for the live daemon (the `metrics` sink).

The capture loop owns the numbers; it publishes a snapshot after each cycle with `Metrics.update`,
and a small http.server thread renders the last snapshot in the Prometheus text exposition format
(version 0.0.4: `# HELP`, `# TYPE`, `name{label="v"} value`, histograms as cumulative `_bucket{le}`
plus `_sum` and `_count`). Rendering never touches pipeline state, so a slow scraper cannot stall
capture. The server socket is bound in the constructor, before privileges are dropped, and the
thread starts later with `start()`.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from appliance.errors import ConfigError

# Batch latency buckets (seconds): micro-batches take ~1 ms idle up to a few hundred ms when full.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# name → (type, help). Label sets are free; the name decides the type and help line.
FAMILIES: dict[str, tuple[str, str]] = {
    "appliance_packets_total": ("counter", "Packets through the pipeline."),
    "appliance_bytes_total": ("counter", "Captured bytes through the pipeline."),
    "appliance_capture_packets_total": ("counter", "Packets read from the capture ring, per interface."),
    "appliance_capture_received_total": ("counter", "Packets the kernel delivered to the socket (after BPF), "
                                         "stored or dropped."),
    "appliance_capture_kernel_drops_total": ("counter", "Packets the kernel dropped because the ring was full."),
    "appliance_capture_freeze_total": ("counter", "Times the kernel found every ring block in user space."),
    "appliance_queue_drops_total": ("counter", "Items dropped inside the daemon (failed batches, follow lines)."),
    "appliance_evicted_total": ("counter", "State evicted at its limit (flows, reassembly, QUIC)."),
    "appliance_malformed_total": ("counter", "Malformed packets or messages, by reason."),
    "appliance_events_total": ("counter", "Events produced, by event type."),
    "appliance_alerts_total": ("counter", "Alerts written, by rule."),
    "appliance_findings_total": ("counter", "Findings written."),
    "appliance_reloads_total": ("counter", "SIGHUP reloads, by result."),
    "appliance_output_intervals_total": ("counter", "Output intervals closed (rotations)."),
    "appliance_flows_active": ("gauge", "Flows currently in the flow table."),
    "appliance_resident_memory_bytes": ("gauge", "Resident set size of the daemon."),
    "appliance_last_cycle_timestamp_seconds": ("gauge", "Unix time the capture loop last completed a cycle."),
    "appliance_batch_latency_seconds": ("histogram", "Wall time to run one micro-batch through the pipeline."),
}


class Histogram:
    """Cumulative-bucket histogram (observations kept as counts per bucket, not samples)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for le, c in zip(self.buckets, self.counts, strict=False):
            running += c
            out.append(f'{name}_bucket{{le="{le:g}"}} {running}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {self.sum:.6f}")
        out.append(f"{name}_count {self.count}")
        return out


Sample = tuple[str, dict[str, str], float]


class Metrics:
    """The last published snapshot of samples plus the latency histogram, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: list[Sample] = []
        self.latency = Histogram()
        self.last_cycle = time.time()

    def observe_batch(self, seconds: float) -> None:
        with self._lock:
            self.latency.observe(seconds)

    def update(self, samples: list[Sample]) -> None:
        samples = [*samples, ("appliance_resident_memory_bytes", {}, float(rss_bytes()))]
        with self._lock:
            self._samples = samples
            self.last_cycle = time.time()

    def render(self) -> str:
        with self._lock:
            samples = list(self._samples)
            hist = self.latency.lines("appliance_batch_latency_seconds")
            last = self.last_cycle
        samples.append(("appliance_last_cycle_timestamp_seconds", {}, last))
        by_name: dict[str, list[Sample]] = {}
        for s in samples:
            by_name.setdefault(s[0], []).append(s)
        lines: list[str] = []
        for name, (kind, text) in FAMILIES.items():
            if kind == "histogram":
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram", *hist]
                continue
            rows = by_name.get(name)
            if not rows:
                continue
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for _, labels, value in rows:
                lines.append(f"{name}{_labels(labels)} {_num(value)}")
        return "\n".join(lines) + "\n"


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    # Text format: label values escape backslash, double quote and line feed.
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def rss_bytes() -> int:
    """Resident set size from /proc/self/statm (pages × page size); 0 where /proc is absent."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def parse_address(addr: str) -> tuple[str, int]:
    """'127.0.0.1:9108', '[::1]:9108' or ':9108' (loopback) → (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"metrics address {addr!r}: expected host:port")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class MetricsServer:
    """GET /metrics (text exposition) and GET /healthz (JSON; 503 when the loop has stalled)."""

    def __init__(self, address: str, metrics: Metrics, stall_s: float = 30.0) -> None:
        host, port = parse_address(address)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner._answer(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not log events
                return

        server_cls = type("_Server", (ThreadingHTTPServer,), {"address_family": _family(host), "daemon_threads": True})
        try:
            self.server = server_cls((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"metrics address {address}: cannot listen: {exc.strerror or exc}") from None
        self.metrics = metrics
        self.stall_s = stall_s
        self.address = f"{host}:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def _answer(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        if path == "/metrics":
            body, status, ctype = self.metrics.render().encode(), 200, "text/plain; version=0.0.4; charset=utf-8"
        elif path in ("/healthz", "/health"):
            age = time.time() - self.metrics.last_cycle
            ok = age <= self.stall_s
            body = json.dumps({"status": "ok" if ok else "stalled", "last_cycle_age_s": round(age, 3)}).encode()
            status, ctype = (200 if ok else 503), "application/json"
        else:
            body, status, ctype = b"not found\n", 404, "text/plain"
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout=2)
        self.server.server_close()


def _family(host: str) -> int:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET
