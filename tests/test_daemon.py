"""`appliance run` end to end on real packets: two network namespaces joined by a veth pair.

The daemon captures in one namespace while tcpreplay sends the bundled relay capture from the
other; its events and alerts must equal `appliance replay` of the same file (content, not times:
live timestamps are arrival times). Also: SIGHUP reloads (a broken rule keeps the running set),
SIGTERM exits 0 within seconds, privileges are dropped, restarts neither duplicate nor lose alerts.
Needs root for namespaces (CI runs as root).
"""

from __future__ import annotations

import collections
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
APPLIANCE = str(ROOT / ".venv" / "bin" / "appliance")
PCAP = ROOT / "pcaps" / "relay-easy.pcap"
ENV = {**os.environ, "APPLIANCE_SECRET": "test-secret-daemon"}

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root (CI runs as root)")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=60)


class NetPair:
    """Namespaces `cap` and `send` joined by veth `cap_if` <-> `send_if`; IPv6 off so nothing chatters."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.cap, self.send = f"aplc{tag}", f"apls{tag}"
        self.cap_if, self.send_if = f"vc{tag}", f"vs{tag}"
        sh("ip", "netns", "add", self.cap)
        sh("ip", "netns", "add", self.send)
        sh("ip", "link", "add", self.cap_if, "netns", self.cap, "type", "veth", "peer", "name", self.send_if,
           "netns", self.send)
        for ns, ifname in ((self.cap, self.cap_if), (self.send, self.send_if)):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", ifname, "up")

    def replay(self, pcap: Path, pps: int) -> None:
        sh("ip", "netns", "exec", self.send, "tcpreplay", "-q", "-i", self.send_if, f"--pps={pps}", str(pcap))

    def close(self) -> None:
        for ns in (self.cap, self.send):
            sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def net() -> Iterator[NetPair]:
    pair = NetPair()
    try:
        yield pair
    finally:
        pair.close()


@pytest.fixture
def outdir() -> Iterator[Path]:
    """An output folder the unprivileged run.user can reach (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="appliance-daemon-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Daemon:
    def __init__(self, ns: str, args: list[str], out: Path) -> None:
        self.ns, self.out = ns, out
        self.log = out.parent / f"{out.name}.log"
        self.fh = open(self.log, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, APPLIANCE, "run", "--out", str(out), *args],
                                     stderr=self.fh, stdout=self.fh, env=ENV)
        self.wait_log("started")

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log.read_text().splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                out.append({"msg": raw})
        return out

    def wait_log(self, msg: str, count: int = 1, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = [x for x in self.lines() if x.get("msg") == msg]
            if len(hits) >= count:
                return hits[-1]
            assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
            time.sleep(0.05)
        raise AssertionError(f"no {msg!r} log line within {timeout}s: {self.log.read_text()[-3000:]}")

    def get(self, port: int, path: str) -> tuple[int, str]:
        code = ("import sys,urllib.request,urllib.error\n"
                f"try:\n r=urllib.request.urlopen('http://127.0.0.1:{port}{path}',timeout=3); print(r.status); "
                "print(r.read().decode())\nexcept urllib.error.HTTPError as e: print(e.code); print(e.read().decode())")
        r = sh("ip", "netns", "exec", self.ns, sys.executable, "-c", code, check=False)
        assert r.returncode == 0, r.stderr + self.log.read_text()[-2000:]
        status, _, body = r.stdout.partition("\n")
        return int(status), body

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> tuple[int, float]:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=timeout)
        self.fh.close()
        return rc, time.monotonic() - t0


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def read_events(folder: Path) -> pl.DataFrame:
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else [folder.with_suffix(".parquet")]
    return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")


def read_alerts(out: Path) -> list[dict[str, Any]]:
    files = sorted((out / "alerts").glob("part-*.jsonl")) if (out / "alerts").is_dir() else [out / "alerts.jsonl"]
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


# Content that must match between live and replay (times differ by design).
KEYS = {
    "flows": ["network.community_id", "source.packets", "destination.packets", "source.bytes", "destination.bytes"],
    "tls": ["network.community_id", "tls.client.server_name", "tls.client.ja4", "tls.client.ja3", "tls.server.ja3s"],
    "http": ["network.community_id", "http.request.method", "url.path", "http.request.auth.fingerprint"],
    "dns": ["network.community_id", "dns.question.name", "dns.question.type"],
}


def content(df: pl.DataFrame, cols: list[str]) -> collections.Counter[tuple[Any, ...]]:
    return collections.Counter(tuple(r) for r in df.select(cols).iter_rows())


def write_config(path: Path, **values: Any) -> Path:
    path.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in values.items()) + "\n")
    path.chmod(0o644)
    return path


@needs_root
def test_live_capture_matches_replay_with_reload_and_clean_stop(net: NetPair, outdir: Path) -> None:
    rules = outdir / "rules"
    shutil.copytree(ROOT / "rules", rules, ignore=shutil.ignore_patterns("lists", "data", "mappings"))
    for p in [rules, *rules.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    cfg = write_config(outdir / "appliance.yaml", **{"run.user": "nobody", "rules": [str(rules)], "run.batch_max_ms": 100})
    live, offline = outdir / "live", outdir / "replay"
    live.mkdir()
    d = Daemon(net.cap, ["-i", net.cap_if, "--config", str(cfg), "--metrics", "127.0.0.1:9108"], live)

    # least privilege: running as nobody with no capability left once the socket is open
    status = Path(f"/proc/{d.proc.pid}/status").read_text()
    nobody = pwd.getpwnam("nobody").pw_uid
    assert f"Uid:\t{nobody}\t{nobody}\t{nobody}\t{nobody}" in status
    assert "CapEff:\t0000000000000000" in status and "CapPrm:\t0000000000000000" in status

    net.replay(PCAP, pps=4000)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        code, text = d.get(9108, "/metrics")
        if metric(text, "appliance_packets_total") >= 5917:
            break
        time.sleep(0.2)
    assert metric(text, "appliance_packets_total") == 5917
    assert metric(text, "appliance_capture_kernel_drops_total") == 0
    assert 'appliance_events_total{type="http"} 41' in text
    assert "appliance_batch_latency_seconds_bucket" in text and metric(text, "appliance_resident_memory_bytes") > 1e6
    code, body = d.get(9108, "/healthz")
    assert code == 200 and json.loads(body)["status"] == "ok"

    # SIGHUP with valid files reloads; a broken rule file keeps the running set and says where
    d.proc.send_signal(signal.SIGHUP)
    assert d.wait_log("reloaded")["rules"] > 0
    bad = rules / "zz_broken.yml"
    bad.write_text("title: broken\nid: 1\nlogsource: http\ndetection:\n  sel:\n    no.such.field: 1\n  condition: sel\n")
    bad.chmod(0o644)
    d.proc.send_signal(signal.SIGHUP)
    err = d.wait_log("reload failed: keeping the running config and rules")
    assert "zz_broken.yml:" in err["error"]
    assert d.proc.poll() is None

    rc, took = d.stop()
    assert rc == 0 and took < 5, (rc, took, d.log.read_text()[-2000:])
    summary = json.loads((live / "summary.json").read_text())
    assert summary["packets"] == 5917 and summary["capture"]["kernel_drops"] == 0
    assert summary["reloads"] == {"ok": 1, "failed": 1}

    r = subprocess.run([APPLIANCE, "replay", str(PCAP), "--out", str(offline), "--rules", str(rules), "--no-progress"],
                       env=ENV, capture_output=True, text=True, timeout=60)
    # the replay must not see the broken file either: run it against the rules as they were
    assert r.returncode != 0 and "zz_broken.yml" in r.stderr
    bad.unlink()
    r = subprocess.run([APPLIANCE, "replay", str(PCAP), "--out", str(offline), "--rules", str(rules), "--no-progress"],
                       env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for name, cols in KEYS.items():
        got, want = read_events(live / "events" / name), read_events(offline / "events" / name)
        assert got.height == want.height > 0, name
        assert content(got, cols) == content(want, cols), name
    assert (read_events(live / "events" / "flows")["event.start"].min()
            != read_events(offline / "events" / "flows")["event.start"].min())  # live time is arrival time

    # Alerts match one for one: single-event rules by (rule, flow), correlations by rule; the
    # engine judges correlations on event time behind a watermark, so micro-batches do not matter.
    got_alerts, want_alerts = read_alerts(live), read_alerts(offline)
    assert collections.Counter((a["rule.id"], a.get("network.community_id")) for a in got_alerts) == \
        collections.Counter((a["rule.id"], a.get("network.community_id")) for a in want_alerts)
    assert len(want_alerts) > 40

    # Findings: the same relay hosts (ids hash event times, which differ live, so compare subjects)
    live_findings = [json.loads(line) for f in sorted((live / "findings").glob("part-*.jsonl"))
                     for line in f.read_text().splitlines()]
    want_findings = [json.loads(line) for line in (offline / "findings.jsonl").read_text().splitlines()]
    assert {(f["kind"], f["subject"]["value"]) for f in live_findings} == {(f["kind"], f["subject"]["value"]) for f in want_findings}
    assert ("relay_host", "203.0.113.7") in {(f["kind"], f["subject"]["value"]) for f in want_findings}


@needs_root
def test_refuses_root_without_user_or_allow_root(net: NetPair, outdir: Path) -> None:
    r = sh("ip", "netns", "exec", net.cap, APPLIANCE, "run", "-i", net.cap_if, "--out", str(outdir / "o"), check=False)
    assert r.returncode == 1 and "refusing to run as root" in r.stderr


@needs_root
def test_restart_neither_duplicates_nor_loses_alerts(net: NetPair, outdir: Path) -> None:
    """Account records followed across a crash (SIGKILL) and a clean restart: each alert exactly once."""
    lines = (ROOT / "pcaps" / "accounts.jsonl").read_bytes().splitlines(keepends=True)
    follow = outdir / "accounts.jsonl"
    base = ["-i", net.cap_if, "--allow-root", "--metrics", "", "--accounts-follow", str(follow)]
    cfg = write_config(outdir / "c.yaml", **{"run.follow_interval_s": 0.1})

    def run(out: Path, parts: list[list[bytes]], crash_after_first: bool) -> list[dict[str, Any]]:
        follow.write_bytes(b"")
        d = Daemon(net.cap, [*base, "--config", str(cfg)], out)
        for i, part in enumerate(parts):
            with open(follow, "ab") as fh:
                fh.write(b"".join(part))
            want = follow.stat().st_size
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # committed = in state.json with its alerts
                st = json.loads((out / "state.json").read_text()) if (out / "state.json").exists() else {}
                if any(v["offset"] == want for v in st.get("follow", {}).values()):
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("follow position never committed")
            if i == 0 and crash_after_first:
                d.stop(signal.SIGKILL)
                d = Daemon(net.cap, [*base, "--config", str(cfg)], out)
        assert d.stop()[0] == 0
        return read_alerts(out)

    once = run(outdir / "once", [lines], False)
    half = len(lines) // 2
    twice = run(outdir / "twice", [lines[:half], lines[half:]], True)
    assert len(once) > 10
    assert sorted(map(json.dumps, once)) == sorted(map(json.dumps, twice))


def test_follower_survives_rotation_and_truncation(tmp_path: Path) -> None:
    """tail -F: the old file is read to its end, then the new one; a truncated file from the start."""
    from appliance.sources.follow import Follower

    src = (ROOT / "pcaps" / "accounts.jsonl").read_bytes().splitlines(keepends=True)[:30]
    log = tmp_path / "accounts.jsonl"
    log.write_bytes(b"".join(src[:10]) + src[10][:15])  # the 11th line is still being written
    f = Follower(str(log), "account", str(tmp_path))
    ids = []

    def poll() -> None:
        r = f.poll()
        if r is not None:
            ids.extend(r.frame["account.id"].to_list())

    poll()
    assert len(ids) == 10
    with open(log, "ab") as fh:
        fh.write(src[10][15:] + b"".join(src[11:15]))
    log.rename(tmp_path / "accounts.jsonl.1")  # logrotate: the old file gets one more line
    with open(tmp_path / "accounts.jsonl.1", "ab") as fh:
        fh.write(src[15])
    log.write_bytes(b"".join(src[16:20]) + b"not json\n")
    poll()
    assert len(ids) == 20 and f.rotations == 1
    saved = f.position()
    log.write_bytes(b"".join(src[20:22]))  # copytruncate: shorter than our position
    poll()
    assert f.truncations == 1 and len(ids) == 22
    want = [json.loads(x)["account.id"] for x in src[:22]]
    assert ids == want
    f.close()
    resumed = Follower(str(log), "account", str(tmp_path), position=f.position())
    assert resumed.poll() is None and saved["line"] == 5
