"""Clusters -> `reseller_cluster` findings, and the link between clusters and relay hosts.

Output contract (ARCHITECTURE.md "A finding"): one dict per cluster with a stable id
("f-" + sha1 of the sorted member account ids, first 16 hex digits), the calibrated score and its
severity, every member account, key, payment, egress address and ASN as an entity, and every
feature as evidence with its value. The subject of a cluster finding is {"type": "cluster",
"value": <id>}: the contract names the subject only for relay_host findings.

Linking (issue 6): when a relay_host finding's address is one of a cluster's egress addresses, the
cluster gets the `relay_link` feature (its score rises through score.py) and the relay finding gets
the cluster as evidence and a raised score: 1 - (1 - relay) * (1 - cluster / 2), so a confident
cluster lifts an unsure relay without ever lowering it. `link_relays` returns updated copies;
the caller writes those instead of the originals.
"""

from __future__ import annotations

import copy
import hashlib
from datetime import datetime

from appliance.graph.features import FEATURES
from appliance.graph.model import Cluster
from appliance.graph.score import WEIGHTS, severity

_SUMMARIES: dict[str, str] = {
    "accounts_per_egress_ip": "{raw:.1f} accounts per egress address",
    "hosting_vpn_share": "{pct:.0f}% of requests from hosting, VPN, proxy or Tor addresses",
    "payment_reuse": "{rawpct:.0f}% of accounts pay with a card shared across organizations",
    "sequential_bins": "{rawpct:.0f}% of card BINs sit next to another BIN of the cluster",
    "creation_burst": "{rawpct:.0f}% of accounts created within 10 minutes of another",
    "missing_organization": "{pct:.0f}% of accounts share no organization with the others",
    "disposable_email": "{pct:.0f}% of accounts signed up with a disposable email domain",
    "synchronized_activity": "activity synchronised beyond chance: {pct:.0f}% of the way to lock-step",
    "no_diurnal_pause": "longest daily quiet period {raw:.0f} h (people pause 6+ h)",
    "key_rotation": "{rawpct:.0f}% of keys dropped at a rate limit and replaced within minutes",
    "account_succession": "{rawpct:.0f}% of accounts replaced one that had just gone quiet or been banned",
    "ja4_ua_mismatch": "{pct:.0f}% of requests carry a TLS fingerprint contradicting the User-Agent",
    "relay_link": "an egress address is a detected relay host",
}


def cluster_id(accounts: list[str]) -> str:
    return "f-" + hashlib.sha1("\n".join(sorted(accounts)).encode()).hexdigest()[:16]


def _rfc3339(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t is not None else None


def evidence(c: Cluster) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for name in FEATURES:
        value = float(c.features.get(name, 0.0) or 0.0)
        raw = c.features.get(f"{name}_raw")
        raw_v = float(raw) if raw is not None else value
        if name == "no_diurnal_pause":
            raw_v = float(c.features.get("quiet_hours_raw") or 0.0)
        summary = _SUMMARIES[name].format(raw=raw_v, pct=100 * value, rawpct=100 * raw_v)
        if name == "relay_link" and c.relay_ips:
            summary = f"egress address {', '.join(c.relay_ips)} is a detected relay host"
        out.append({"rule": f"graph.{name}", "summary": summary, "value": round(value, 4),
                    "weight": WEIGHTS[name][0]})
    return out


def cluster_finding(c: Cluster) -> dict[str, object]:
    entities: list[dict[str, str]] = []
    for etype, values in (("account", c.accounts), ("api_key", c.api_keys), ("payment", c.payments),
                          ("ip", c.egress_ips), ("asn", c.asns)):
        entities.extend({"type": etype, "value": v} for v in values)
    return {
        "id": c.id, "kind": "reseller_cluster", "score": round(c.score, 4), "severity": severity(c.score),
        "subject": {"type": "cluster", "value": c.id},
        "entities": entities, "evidence": evidence(c),
        "first_seen": _rfc3339(c.first_seen), "last_seen": _rfc3339(c.last_seen),
    }


def link_relays(clusters: list[Cluster], relay_findings: list[dict], threshold: float = 0.5) -> list[dict]:
    """Copies of the relay findings, raised and annotated where a flagged cluster egresses through them."""
    by_ip: dict[str, list[Cluster]] = {}
    for c in clusters:
        if c.score >= threshold:
            for ip in c.relay_ips:
                by_ip.setdefault(ip, []).append(c)
    out: list[dict] = []
    for f in relay_findings:
        g = copy.deepcopy(f)
        ip = str((f.get("subject") or {}).get("value", ""))
        linked = by_ip.get(ip, []) if f.get("kind") == "relay_host" else []
        if linked:
            best = max(c.score for c in linked)
            old = float(f.get("score") or 0.0)
            g["score"] = round(1 - (1 - old) * (1 - best / 2), 4)
            g["severity"] = severity(g["score"])
            ev = list(g.get("evidence") or [])
            for c in sorted(linked, key=lambda c: c.id):
                ev.append({"rule": "graph.reseller_cluster",
                           "summary": f"egress address of reseller cluster {c.id} "
                                      f"({len(c.accounts)} accounts, score {c.score:.2f})",
                           "value": c.id})
            g["evidence"] = ev
        out.append(g)
    return out
