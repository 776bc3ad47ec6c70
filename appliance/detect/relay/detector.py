"""RelayDetector: the streaming front of relay-host detection (issue 5).

Stage: detect. The pipeline calls `add(event_type, frame)` with every enriched event frame of every
batch (flow, tls, http, dns; others are ignored) and `findings()` once at the end of input, which
it writes to findings.jsonl. Replay and live capture feed the same calls, so both modes give the
same findings for the same packets (ARCHITECTURE.md "Everything is a batch"). Work per batch is a
polars projection; the correlation runs once, over all candidates together, in `findings()`.

    candidates.py → evidence.py → score.py → findings.py, over state.py's bounded tables.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from appliance.detect.relay import candidates, evidence, findings, score
from appliance.detect.relay.state import TABLES, RelayLimits, Store, project

# Restricted regions (rules/data/restricted_regions.yaml defaults); pass the catalog's values to
# follow a site's own policy.
DEFAULT_RESTRICTED = frozenset({"CN", "HK", "MO", "RU", "BY", "IR", "KP", "SY", "CU"})
# Inbound request → upstream opening. Relays measured 5-200 ms (+ connection set-up); 1 s keeps
# the chance of a random match low at the request rates a single host sees.
DEFAULT_WINDOW_MS = 1000


class RelayDetector:
    """Accumulates bounded per-host state from event frames; `findings()` scores the candidates."""

    def __init__(self, limits: RelayLimits | None = None, window_ms: int = DEFAULT_WINDOW_MS,
                 restricted: frozenset[str] | set[str] | None = None, min_score: float = 0.5) -> None:
        self.store = Store(limits or RelayLimits())
        self.window_ns = window_ms * 1_000_000
        self.restricted = frozenset(restricted) if restricted is not None else DEFAULT_RESTRICTED
        self.min_score = min_score
        self.batches = 0
        self.candidates = 0
        self.scored: list[tuple[str, float]] = []  # every candidate's (ip, score), for explain/bench

    def add(self, event_type: str, frame: pl.DataFrame) -> None:
        """Take the columns this detector needs from one enriched event frame."""
        tables = project(event_type, frame)
        if tables:
            self.batches += 1
            self.store.add(tables)

    @property
    def stats(self) -> dict[str, Any]:
        s = self.store
        return {
            "batches": self.batches,
            "rows": dict(s.rows),
            "evicted_rows": dict(s.evicted_rows),
            "evicted_hosts": dict(s.evicted_hosts),
            "evicted": sum(s.evicted_rows.values()),
            "compactions": s.compactions,
            "candidates": self.candidates,
        }

    def measures(self) -> list[evidence.Measures]:
        """Measured evidence of every candidate, in address order."""
        cands = candidates.build(self.store, self.window_ns)
        self.candidates = len(cands.ips)
        return evidence.measure_all(cands, self.window_ns, self.restricted)

    def findings(self) -> list[dict[str, Any]]:
        """relay_host findings scoring at least `min_score`, highest score first, then by subject."""
        out = []
        self.scored = []
        for m in self.measures():
            contrib = score.contributions(m)
            s = score.score(contrib)
            self.scored.append((m.ip, s))
            if s >= self.min_score:
                out.append(findings.build(m, s))
        out.sort(key=lambda f: (-f["score"], f["subject"]["value"]))
        return out


def detect_relays(events: dict[str, pl.DataFrame], **kwargs: Any) -> list[dict[str, Any]]:
    """One-shot detection over whole event frames (tests, benchmarks); kwargs go to RelayDetector."""
    det = RelayDetector(**kwargs)
    for etype in ("flow", "tls", "http", "dns"):
        if etype in events:
            det.add(etype, events[etype])
    return det.findings()


__all__ = ["TABLES", "RelayDetector", "RelayLimits", "detect_relays"]
