"""The judgement stage: every enriched event frame → rules (alerts), relay detector and entity graph
(findings). Replay and the live daemon share it, so the same events give the same alerts and findings.

Observation (decode, enrich) stays neutral; this is where judgement happens (STYLE.md §3).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import polars as pl

from appliance import config

AlertSink = Callable[[list[dict[str, Any]]], None]


class Detection:
    """Rules, relay hosts and reseller clusters over the event stream, in event-time order."""

    GRAPH_EVENTS = ("request", "account", "tls", "http", "flow")
    # The graph pays a fixed cost per call (edge aggregation, store merge): measured 0.71 s for the
    # 1M-packet benchmark's events fed per batch vs 0.23 s fed at once, so frames are buffered up to
    # this many rows (and flushed whenever findings are asked for).
    GRAPH_BUFFER_ROWS = 200_000

    def __init__(self, alert_sink: AlertSink, rule_paths: list[str] | None, catalogs_dir: str,
                 state_dir: str | None = None, catalogs: Any = None, cfg: config.Config | None = None) -> None:
        from appliance.detect.relay.state import RelayLimits
        from appliance.graph.entity_graph import EntityGraph
        from appliance.graph.model import GraphLimits

        cfg = cfg or config.defaults()
        self.cfg = cfg
        self.alert_sink = alert_sink
        self.catalogs_dir = catalogs_dir
        self.engine = self.load_rules(rule_paths) if rule_paths is not None else None
        disposable = None
        if catalogs is not None and "disposable_email_domains" in catalogs.names():
            disposable = frozenset(catalogs["disposable_email_domains"].values())
        graph_limits = GraphLimits(max_nodes=cfg["graph.max_nodes"], max_edges=cfg["graph.max_edges"],
                                   max_activity_rows=cfg["graph.max_activity_rows"])
        self.graph = EntityGraph.open(state_dir, graph_limits, disposable=disposable)
        self.state_dir = state_dir
        self.relays = _relay_detector(RelayLimits(max_rows=cfg["relay.max_rows"], max_rows_per_host=cfg["relay.max_rows_per_host"],
                                                  max_hosts=cfg["relay.max_hosts"]))
        self.alerts = 0
        self.by_rule: dict[str, int] = {}
        self._graph_buf: dict[str, list[pl.DataFrame]] = {}
        self._graph_rows = 0

    def load_rules(self, rule_paths: list[str], cfg: config.Config | None = None) -> Any:
        """A new rule engine (raises RuleError with file:line:column at the first bad rule)."""
        from appliance.detect.rules.engine import RuleEngine

        cfg = cfg or self.cfg
        return RuleEngine.load(rule_paths, data_dirs=(os.path.join(config.PROJECT_RULES, "lists"), self.catalogs_dir),
                               allowed_lateness_ns=int(cfg["rules.allowed_lateness_s"] * 1e9),
                               max_groups=cfg["rules.max_groups"], max_pending=cfg["rules.max_pending"])

    def replace_engine(self, engine: Any) -> None:
        """SIGHUP: windows still open are judged by the old rules, then the new ones take over."""
        self.flush_alerts()
        self.engine = engine

    def on_events(self, etype: str, frame: pl.DataFrame) -> None:
        if not frame.height:
            return
        if self.engine is not None:
            self._write(self.engine.evaluate(etype, frame))
        if self.relays is not None:
            self.relays.add(etype, frame)
        if etype in self.GRAPH_EVENTS:
            self._graph_buf.setdefault(etype, []).append(frame)
            self._graph_rows += frame.height
            if self._graph_rows >= self.GRAPH_BUFFER_ROWS:
                self.flush_graph()

    def flush_graph(self) -> None:
        for etype in self.GRAPH_EVENTS:  # a fixed order keeps the graph's edge order deterministic
            frames = self._graph_buf.get(etype)
            if frames:
                self.graph.add_events(etype, pl.concat(frames, how="vertical_relaxed"))
        self._graph_buf, self._graph_rows = {}, 0

    def flush_alerts(self) -> None:
        if self.engine is not None:
            self._write(self.engine.flush())

    def _write(self, alerts: list[dict[str, Any]]) -> None:
        if not alerts:
            return
        for a in alerts:
            self.by_rule[a["rule.name"]] = self.by_rule.get(a["rule.name"], 0) + 1
        self.alerts += len(alerts)
        self.alert_sink(alerts)

    def findings(self) -> list[dict[str, Any]]:
        """Relay-host and reseller-cluster findings for everything seen so far (callable any time)."""
        self.flush_graph()
        relay_findings = self.relays.findings() if self.relays is not None else []
        return self.graph.reseller_findings(relay_findings)

    def finish(self) -> list[dict[str, Any]]:
        """End of input: close every window, compute the findings, persist the graph.

        Closing the rule windows, the relay detector's findings and the graph's last events touch
        disjoint state, so they run side by side (polars releases the GIL for most of their work):
        the tail of a 1M-packet replay, where the workers are done and one core would idle."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(2, thread_name_prefix="finish") as pool:
            closing = pool.submit(self.flush_alerts)
            relays = pool.submit(self.relays.findings) if self.relays is not None else None
            self.flush_graph()
            relay_findings = relays.result() if relays is not None else []
            closing.result()
        self.graph.add_findings(relay_findings)
        findings = self.graph.reseller_findings(relay_findings)
        if self.state_dir:
            self.graph.save()
        return findings

    def stats(self, findings: list[dict[str, Any]]) -> dict[str, Any]:
        by_kind: dict[str, int] = {}
        for f in findings:
            key = f"{f['kind']}/{f['severity']}"
            by_kind[key] = by_kind.get(key, 0) + 1
        return {
            "alerts": self.alerts,
            "alerts_by_rule": dict(sorted(self.by_rule.items())),
            "findings": len(findings),
            "findings_by_kind": dict(sorted(by_kind.items())),
            "rules": {"stats": dict(getattr(self.engine, "stats", {}) or {})} if self.engine else None,
            "graph": _jsonable(self.graph.stats),
            "relay_detector": _jsonable(getattr(self.relays, "stats", None)),
        }


def _relay_detector(limits: Any) -> Any:
    from appliance.detect.relay.detector import RelayDetector

    return RelayDetector(limits)


def _jsonable(obj: Any) -> Any:
    if obj is None:
        return None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj if isinstance(obj, dict) else str(obj)
