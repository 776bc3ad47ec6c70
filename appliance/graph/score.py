"""Cluster features -> calibrated reseller score in [0, 1] (issue 6; ARCHITECTURE.md: 0.5 decides).

A logistic model: score = 1 / (1 + exp(-(BIAS + sum(WEIGHTS[f] * feature_f)))), every feature in
[0, 1]. A logistic sum is the simplest model an investigator can replay by hand from the evidence
list, and each weight reads as "how many times the odds grow when this feature is fully present"
(exp(weight)). The bias puts an empty cluster at 0.01; reaching 0.5 takes several independent
farm traits, never one alone, because every single trait has an innocent explanation (a NAT, a
corporate card, a VPN). Calibration is checked, not assumed: bench/graph_bench.py prints the share of
true farms per score band over seeded scenarios (docs/graph.md records the numbers).
"""

from __future__ import annotations

import math

import polars as pl

from appliance.graph.features import FEATURES

BIAS = -4.6

# Weight per feature and why (docs/graph.md repeats this table).
WEIGHTS: dict[str, tuple[float, str]] = {
    "accounts_per_egress_ip": (1.0, "many accounts per address is a farm trait but also every NAT and proxy"),
    "hosting_vpn_share": (1.5, "people reach the API from home or office networks; farms from VPS and VPNs"),
    "payment_reuse": (2.0, "one card across accounts of different organizations evades per-account limits"),
    "sequential_bins": (1.5, "consecutive BINs mean cards bought in one lot (virtual or stolen ranges)"),
    "creation_burst": (1.5, "scripted sign-up; tempered because an enterprise onboarding day looks alike"),
    "missing_organization": (0.75, "weak alone (students and hobbyists have none) but farms never have one"),
    "disposable_email": (1.5, "throwaway mailboxes are a cheap sign-up resource; rare among paying users"),
    "synchronized_activity": (2.0, "a relay fans customer traffic over its keys in lock-step"),
    "no_diurnal_pause": (1.0, "customers in every time zone; weak alone since bots and CI also never sleep"),
    "key_rotation": (2.0, "use a key until rate-limited, then the next: quota evasion, no other use"),
    "account_succession": (1.5, "a banned or idle account replaced at once on the same infrastructure"),
    "ja4_ua_mismatch": (1.5, "a script wearing a browser's User-Agent: the relay's client, not a person's"),
    "relay_link": (2.5, "an egress address is an independently detected relay host (relay_host finding)"),
}

assert set(WEIGHTS) == set(FEATURES), "every feature needs a documented weight"


def score_expr() -> pl.Expr:
    logit = pl.lit(BIAS)
    for name, (w, _why) in WEIGHTS.items():
        logit = logit + pl.col(name).fill_null(0.0) * w
    return (1.0 / (1.0 + (-logit).exp())).alias("score")


def score_one(features: dict[str, float]) -> float:
    logit = BIAS + sum(w * float(features.get(name, 0.0) or 0.0) for name, (w, _) in WEIGHTS.items())
    return 1.0 / (1.0 + math.exp(-logit))


def severity(score: float) -> str:
    """Severity bands over the calibrated score (0.5 is the decision threshold)."""
    if score >= 0.95:
        return "critical"
    if score >= 0.8:
        return "high"
    if score >= 0.5:
        return "medium"
    return "low"
