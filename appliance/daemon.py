"""The live daemon (`appliance run`): capture → micro-batches → the replay pipeline → rotating outputs.

Live capture is replay in micro-batches (ARCHITECTURE.md): packets from the ring are collected
until `run.batch_max_packets` or `run.batch_max_ms`, then go through the same `Pipeline`, enrichers
and `RuleEngine` as `appliance replay`, so the same packets give the same events and alerts.

Start-up order is the security story: open the packet sockets and the metrics port (the only
privileged steps), then switch to `run.user` and drop every capability, then read rules, state
and logs. Signals only set flags; the loop acts on them between batches: SIGHUP reloads config
and rules (built first, swapped only when all of it is valid), SIGTERM/SIGINT drain the ring,
end every flow, flush and exit 0. A batch that raises is logged, counted and skipped (STYLE.md §9).

Outputs are written per interval (`Output`): alerts/findings/rejects JSONL are appended to a hidden
`.part-N.jsonl.open` file and fsync'd with the restart state (state.json) after every batch that
added lines, so a restart (or a crash) resumes exactly after the last committed line: nothing is
written twice, and the follow positions committed with it mean no log line is read twice. When an
interval closes (`output.rotate_s` / `output.rotate_mb`, or at stop) the files are renamed to
`part-N.jsonl` and the interval's events are written as `events/<type>/part-N.parquet`, each
atomically (write a temporary file, fsync, rename).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import pwd
import shutil
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from appliance import config, schema, secrets
from appliance.detect.stage import Detection
from appliance.errors import ApplianceError, ConfigError
from appliance.sinks.metrics import Metrics, MetricsServer, Sample
from appliance.sinks.segments import Output
from appliance.sources.batch import PacketBatch
from appliance.sources.live import LiveCapture, RingConfig

log = logging.getLogger("appliance.daemon")

# Settings that take effect only at start; a SIGHUP that changes them says so in the log.
RESTART_ONLY = ("capture.interfaces", "capture.bpf", "capture.promiscuous", "capture.ring_mb", "capture.block_kb",
                "capture.block_timeout_ms", "run.user", "run.metrics", "geoip", "catalogs", "flows.max",
                "flows.tcp_idle_s", "flows.udp_idle_s", "flows.other_idle_s", "flows.active_s",
                "flows.community_id_seed", "secret")
IDLE_ADVANCE_S = 2.0
# Imported before the privilege drop (see Daemon.start): codecs and modules used only later.
_PRELOAD = ("encodings.ascii", "encodings.latin_1", "encodings.idna", "appliance.sources.follow",
            "appliance.sources.metadata", "appliance.sinks.summary", "appliance.detect.rules.engine")  # with no packets, event time follows the clock this far behind it


@dataclass
class RunOptions:
    interfaces: list[str]
    out_dir: str
    config_path: str | None = None
    bpf: str | None = None
    promiscuous: bool | None = None
    allow_root: bool = False
    metrics: str | None = None
    rules: list[str] = field(default_factory=list)
    no_rules: bool = False
    geoip: list[str] = field(default_factory=list)
    requests_follow: list[str] = field(default_factory=list)
    accounts_follow: list[str] = field(default_factory=list)
    mapping: str | None = None
    state_dir: str | None = None  # the entity graph persists here across restarts (writable by run.user)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (journald and log shippers parse it); `extra={"fields": {...}}` merges."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                               + f".{int(record.msecs):03d}Z", "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            out["traceback"] = "".join(traceback.format_exception(*record.exc_info)[-3:])[-2000:]
        return json.dumps(out, default=str)


def _f(**kv: Any) -> dict[str, Any]:
    return {"fields": kv}


class Daemon:
    def __init__(self, cfg: config.Config, opts: RunOptions) -> None:
        self.cfg = cfg
        self.opts = opts
        self.interfaces = opts.interfaces or list(cfg["capture.interfaces"])
        if not self.interfaces:
            raise ConfigError("no interface: pass --interface or set capture.interfaces")
        self.metrics = Metrics()
        self.stop_requested = False
        self.reload_requested = False
        self.queue_drops: dict[str, int] = {}
        self.reloads = {"ok": 0, "failed": 0}
        self.alerts_by_rule: dict[str, int] = {}
        self.started = time.time()
        self._last_stats: dict[str, dict[str, int]] = {}
        self._logged_drops: dict[str, int] = {}

    # -- start-up ----------------------------------------------------------------------------
    def start(self) -> None:
        cfg, opts = self.cfg, self.opts
        user = cfg["run.user"]
        if os.geteuid() == 0 and not user and not opts.allow_root:
            raise ConfigError("refusing to run as root: set run.user (dropped to after opening sockets) "
                              "or pass --allow-root")
        secrets.set_secret(cfg["secret"])
        os.makedirs(opts.out_dir, exist_ok=True)
        promisc = cfg["capture.promiscuous"] if opts.promiscuous is None else opts.promiscuous
        ring = RingConfig(cfg["capture.block_kb"], cfg["capture.ring_mb"], cfg["capture.block_timeout_ms"])
        self.capture = LiveCapture(self.interfaces, opts.bpf or cfg["capture.bpf"], promisc, ring)
        self.capture.open()
        addr = cfg["run.metrics"] if opts.metrics is None else opts.metrics
        self.server = MetricsServer(addr, self.metrics, cfg["run.health_stall_s"]) if addr else None
        # Code and read-only data are loaded while still privileged: the installed Python may not be
        # readable by run.user (e.g. under /root), and nothing is imported lazily after the switch.
        self._build_pipeline()
        secrets.fingerprint("", "startup")  # reads APPLIANCE_SECRET_FILE now: it may be root-only
        for name in _PRELOAD:
            try:
                importlib.import_module(name)
            except ImportError:  # an optional stage (the rules engine) may be absent
                log.debug("not preloaded: %s", name)
        dropped_to = drop_privileges(user if os.geteuid() == 0 else None, opts.out_dir)
        # Everything written from here on is created by the unprivileged user.
        self.output = Output(opts.out_dir)
        self.pipeline.set_writers(self.output.event_writer)
        self.followers = self._followers()
        self._install_signals()
        if self.server:
            self.server.start()
        log.info("started", extra=_f(interfaces=self.interfaces, out=os.path.abspath(opts.out_dir), user=dropped_to,
                                     metrics=self.server.address if self.server else None, interval=self.output.seq,
                                     rules=self._rule_count()))

    def _build_pipeline(self) -> None:
        from appliance.decode.flows import FlowLimits
        from appliance.enrich.catalog import Catalogs
        from appliance.enrich.geoip import GeoIP
        from appliance.pipeline import Pipeline

        cfg = self.cfg
        limits = FlowLimits(max_flows=cfg["flows.max"], tcp_idle_s=cfg["flows.tcp_idle_s"],
                            udp_idle_s=cfg["flows.udp_idle_s"], other_idle_s=cfg["flows.other_idle_s"],
                            active_s=cfg["flows.active_s"], community_id_seed=cfg["flows.community_id_seed"])
        self.geo = GeoIP.open(list(self.opts.geoip) or cfg["geoip"])
        self.catalogs_dir = cfg["catalogs"] or os.path.join(config.PROJECT_RULES, "data")
        cats = Catalogs.load(self.catalogs_dir)
        self.detection = Detection(self._alerts, self._rule_paths(cfg), self.catalogs_dir, self.opts.state_dir, cats, cfg)
        self._reported: dict[str, tuple[float, int]] = {}  # finding id → (score, evidence count) last written

        def enrich(etype: str, frame: pl.DataFrame) -> pl.DataFrame:
            if etype == "dns":
                cats.learn_dns(frame)
            return cats.service(self.geo.enrich(frame), etype)

        # The pipeline's own writers would replace DIR/events/<type> at start (one file per run);
        # they get a throw-away folder and are swapped for this daemon's per-interval writers.
        scratch = tempfile.mkdtemp(prefix="appliance-pipeline-")
        try:
            self.pipeline = Pipeline(scratch, limits, enrichers=[enrich], event_sinks=[self._on_events])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _rule_paths(self, cfg: config.Config) -> list[str] | None:
        if self.opts.no_rules:
            return None
        return list(self.opts.rules) or cfg["rules"] or [config.PROJECT_RULES]

    @property
    def engine(self) -> Any:
        return self.detection.engine

    def _rule_count(self) -> int:
        return len(self.engine.ruleset.rules) if self.engine is not None else 0

    def _followers(self) -> list[Any]:
        from appliance.sources.follow import Follower

        out = []
        scratch = os.path.join(self.opts.out_dir, ".scratch")
        os.makedirs(scratch, exist_ok=True)
        for kind, paths in (("request", self.opts.requests_follow), ("account", self.opts.accounts_follow)):
            for p in paths:
                key = f"{kind}:{os.path.abspath(p)}"
                f = Follower(p, kind, scratch, self.opts.mapping if kind == "request" else None,  # type: ignore[arg-type]
                             self.output.follow.get(key))
                f.key = key  # type: ignore[attr-defined]
                out.append(f)
        return out

    def _install_signals(self) -> None:
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r = r
        signal.set_wakeup_fd(w)
        self.capture.watch(r)

        def on_stop(signum: int, _frame: Any) -> None:
            self.stop_requested = True

        def on_hup(signum: int, _frame: Any) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        pending: list[PacketBatch] = []
        pending_n = 0
        first_at = 0.0
        last_house = last_follow = last_packet = time.monotonic()
        while not self.stop_requested:
            max_s = self.cfg["run.batch_max_ms"] / 1000
            now = time.monotonic()
            wait = min(0.25, max(0.0, first_at + max_s - now) if pending else 0.25)
            batch = self.capture.read(wait)
            self._drain_wakeups()
            now = time.monotonic()
            if batch is not None and len(batch):
                if not pending:
                    first_at = now
                pending.append(batch)
                pending_n += len(batch)
                last_packet = now
            if pending and (pending_n >= self.cfg["run.batch_max_packets"] or now - first_at >= max_s):
                self._process(pending)
                pending, pending_n = [], 0
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            if now - last_follow >= self.cfg["run.follow_interval_s"]:
                last_follow = now
                self._poll_followers()
            if now - last_house >= 1.0:
                last_house = now
                if now - last_packet >= IDLE_ADVANCE_S and not pending:
                    self._advance_idle(time.time_ns() - int(IDLE_ADVANCE_S * 1e9))
                self._housekeeping()
        return self._shutdown(pending)

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _process(self, batches: list[PacketBatch]) -> None:
        batch = PacketBatch.concat(batches)
        t0 = time.perf_counter()
        try:
            self.pipeline.process_batch(batch)
        except Exception as exc:  # one bad batch must not stop the capture (STYLE.md §9)
            self.queue_drops["pipeline_error"] = self.queue_drops.get("pipeline_error", 0) + len(batch)
            log.error("batch failed; its packets are counted as dropped", exc_info=exc,
                      extra=_f(packets=len(batch), error=f"{type(exc).__name__}: {exc}"))
        self.metrics.observe_batch(time.perf_counter() - t0)
        self.output.commit(self._follow_positions())

    def _advance_idle(self, now_ns: int) -> None:
        """No traffic: let event time follow the clock so idle flows still end and are written."""
        p = self.pipeline
        if p.counters.last_ts is None or now_ns <= p.counters.last_ts:
            return
        try:
            p.advance(now_ns)
        except Exception as exc:
            log.error("idle flow expiry failed", exc_info=exc)
        self.output.commit(self._follow_positions())

    def _on_events(self, etype: str, frame: pl.DataFrame) -> None:
        self.detection.on_events(etype, frame)

    def _alerts(self, alerts: list[dict[str, Any]]) -> None:
        for a in alerts:
            self.alerts_by_rule[a["rule.name"]] = self.alerts_by_rule.get(a["rule.name"], 0) + 1
        self.output.add("alerts", alerts)

    def on_findings(self, findings: list[dict[str, Any]]) -> None:
        """Write the findings that are new, or whose score or evidence changed since last written:
        a finding grows as a relay keeps relaying, and findings.jsonl is its history."""
        changed = []
        for f in findings:
            key = (float(f["score"]), len(f["evidence"]))
            if self._reported.get(f["id"]) != key:
                self._reported[f["id"]] = key
                changed.append(f)
        self.output.add("findings", changed)

    def _poll_followers(self) -> None:
        for f in self.followers:
            try:
                result = f.poll()
            except ApplianceError as exc:
                self.queue_drops["follow_error"] = self.queue_drops.get("follow_error", 0) + 1
                log.error("follow: cannot read new lines", extra=_f(file=f.path, error=str(exc)))
                continue
            if result is None:
                continue
            side = "source" if f.kind == "request" else "signup"
            frame = schema.conform(self.geo.enrich(result.frame, (side,)), f.kind, enriched=True)
            self._on_events(f.kind, frame)
            self.output.event_writer(f.kind).write(frame)
            self.output.add("rejects", result.rejects)
            if result.rejects:
                log.warning("follow: rejected lines", extra=_f(file=f.path, rejected=len(result.rejects)))
        if self.followers:
            self.output.commit(self._follow_positions())

    def _follow_positions(self) -> dict[str, dict[str, int]]:
        return {f.key: f.position() for f in getattr(self, "followers", [])}

    def _housekeeping(self) -> None:
        stats = self.capture.kernel_stats()
        for name, s in stats.items():
            if s.kernel_drops > self._logged_drops.get(name, 0):
                log.warning("kernel ring dropped packets", extra=_f(interface=name, kernel_drops=s.kernel_drops))
                self._logged_drops[name] = s.kernel_drops
        self.metrics.update(self._samples())
        rotate_mb = self.cfg["output.rotate_mb"]
        if self.output.due(self.cfg["output.rotate_s"], rotate_mb << 20 if rotate_mb else 0):
            self._rotate()

    def _rotate(self, final: bool = False) -> None:
        try:
            self.on_findings(self.detection.finish() if final else self.detection.findings())
        except Exception as exc:  # findings must not stop the capture (STYLE.md §9)
            log.error("findings failed", exc_info=exc)
        paths = self.output.rotate(self._follow_positions(), final)
        self.output.write_summary(self.summary())
        log.info("output interval closed", extra=_f(interval=self.output.seq - 1, files=paths))

    # -- reload and stop -------------------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: new config and rules replace the running ones only if all of them are valid."""
        log.info("reload requested", extra=_f(config=self.opts.config_path))
        try:
            cfg = config.load(self.opts.config_path)
            paths = self._rule_paths(cfg)
            engine = self.detection.load_rules(paths, cfg) if paths is not None else None
        except ApplianceError as exc:
            self.reloads["failed"] += 1
            log.error("reload failed: keeping the running config and rules", extra=_f(error=str(exc)))
            return
        needs_restart = [k for k in RESTART_ONLY if cfg.values.get(k) != self.cfg.values.get(k)]
        for k in needs_restart:  # keep what is running; say what waits for a restart
            cfg.values[k] = self.cfg.values[k]
        self.detection.replace_engine(engine)  # windows still open are judged by the old rules
        self.cfg = self.detection.cfg = cfg
        self.reloads["ok"] += 1
        self.output.commit(self._follow_positions())
        log.info("reloaded", extra=_f(rules=self._rule_count(), needs_restart=needs_restart))

    def _shutdown(self, pending: list[PacketBatch]) -> int:
        log.info("stopping: draining the capture ring and flushing")
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # what the kernel already holds is part of this run
            b = self.capture.read(0)
            if b is None:
                break
            pending.append(b)
        if pending:
            self._process(pending)
        self._poll_followers()
        try:
            self.pipeline.finish()
        except Exception as exc:
            log.error("final flush of the pipeline failed", exc_info=exc)
        self.capture.kernel_stats()
        self._rotate(final=True)  # closes every correlation window and writes the final findings
        self.metrics.update(self._samples())
        for f in self.followers:
            f.close()
        self.capture.close()
        if self.server:
            self.server.close()
        s = self.summary()
        log.info("stopped", extra=_f(packets=s["packets"], kernel_drops=s["capture"]["kernel_drops"],
                                     alerts=s["alerts"], events=s["events"]))
        return 0

    # -- reporting ---------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        stats = {n: vars(s) for n, s in self.capture.kernel_stats().items()} if self.capture.rings else self._last_stats
        self._last_stats = stats
        return {
            **self.pipeline.summary(),
            "capture": {"interfaces": stats, "kernel_drops": sum(s["kernel_drops"] for s in stats.values())},
            "queue_drops": dict(self.queue_drops),
            "alerts": self.output.totals["alerts"],
            "alerts_by_rule": dict(sorted(self.alerts_by_rule.items())),
            "findings": self.output.totals["findings"],
            "rejects": self.output.totals["rejects"],
            "reloads": dict(self.reloads),
            "interval": self.output.seq,
            "uptime_s": round(time.time() - self.started, 3),
        }

    def _samples(self) -> list[Sample]:
        p = self.pipeline
        out: list[Sample] = [("appliance_packets_total", {}, p.counters.packets),
                             ("appliance_bytes_total", {}, p.counters.bytes),
                             ("appliance_findings_total", {}, self.output.totals["findings"]),
                             ("appliance_output_intervals_total", {}, self.output.seq - 1),
                             ("appliance_flows_active", {}, _active_flows(p))]
        for r in self.capture.rings:
            lab = {"interface": r.name}
            out += [("appliance_capture_packets_total", lab, r.stats.packets),
                    ("appliance_capture_received_total", lab, r.stats.received),
                    ("appliance_capture_kernel_drops_total", lab, r.stats.kernel_drops),
                    ("appliance_capture_freeze_total", lab, r.stats.freeze_queue)]
        out += [("appliance_queue_drops_total", {"queue": q}, n) for q, n in
                {"pipeline_error": 0, "follow_error": 0, **self.queue_drops}.items()]
        summary = p.summary()
        out += [("appliance_evicted_total", {"kind": k}, v) for k, v in summary["evicted"].items()]
        out += [("appliance_malformed_total", {"reason": k}, v) for k, v in summary["malformed"].items()]
        out += [("appliance_events_total", {"type": k}, v) for k, v in p.counters.events.items()]
        out += [("appliance_alerts_total", {"rule": k}, v) for k, v in self.alerts_by_rule.items()]
        out += [("appliance_reloads_total", {"result": k}, v) for k, v in self.reloads.items()]
        return out


def _active_flows(p: Any) -> int:
    return len(getattr(p.flows, "flows", ()))


# -- least privilege ---------------------------------------------------------------------------------
_PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
_CAP_V3 = 0x20080522  # _LINUX_CAPABILITY_VERSION_3 (capget(2))


def drop_privileges(user: str | None, out_dir: str) -> str:
    """After the sockets are open: become `user` (when root), then give up every capability.

    setuid from root to another user clears the capability sets (capabilities(7), "Effect of user
    ID changes"); a non-root service started with ambient capabilities clears them here, so a
    compromise of the parsers never holds CAP_NET_RAW. Returns the user name now in effect.
    """
    if user:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(f"run.user {user!r}: no such user") from None
        st = os.stat(out_dir)
        if st.st_uid == 0 and not os.listdir(out_dir):
            os.chown(out_dir, pw.pw_uid, pw.pw_gid)  # a fresh output folder belongs to the service
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise ConfigError("privilege drop failed: could regain root")
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise ConfigError(f"{out_dir}: not writable by run.user {user!r}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    header = (ctypes.c_uint32 * 2)(_CAP_V3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable × 2 words: all zero
    if libc.capset(header, data) != 0:
        log.warning("could not drop capabilities", extra=_f(errno=ctypes.get_errno()))
    return pwd.getpwuid(os.getuid()).pw_name
