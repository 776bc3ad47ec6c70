"""The relay score: evidence weighed as log-likelihood ratios and squashed to [0, 1].

Stage: detect. score = sigmoid(PRIOR + sum of contributions); 0.5 is the decision (ARCHITECTURE.md
output contract). Each contribution is the natural-log odds a measure adds for "relay" against
"legitimate host that also calls a model API" (naive Bayes: measures are treated as independent,
which they roughly are: timing, byte volume, TLS names, client set). Weights were set from what
each look-alike in issue 5 must and must not show, then checked on the simulator's three levels
(bench/relay_bench.py): every relay lands above 0.8 and every decoy below 0.2, so the 0.5 line has
margin on both sides. Every weight names the look-alike it guards against.
"""

from __future__ import annotations

import math

from appliance.detect.relay.evidence import Measures

# A host that calls a model API and accepts connections is, a priori, much more often a web
# service with its own API use than a reseller: start at odds 1:12.
PRIOR = -2.5

# Upstream openings explained by inbound activity, as excess over chance in [-1, 1]. A relay's are
# all caused by clients (excess near 1); a web server's cron calls are not (near 0). Full weight
# from 6 openings on; fewer (pooled relays open a handful) count proportionally less.
W_EXPLAINED = 2.5
EXPLAINED_FULL_AT = 6
# Inbound requests each followed by an upstream opening, beyond chance. Only positive: a pooled
# relay re-uses connections, so unmatched requests are expected of relays too.
W_REQUEST_LAG = 1.5
# One inbound request per upstream call (ratio within 0.8-1.25) is what a relay does.
W_ONE_TO_ONE = 0.5
# Binned byte series correlation above 0.2 (only with per-request upstream flows).
W_XCORR = 1.0
# Byte mirroring: the answer bytes (and answer packets) sent to clients equal those received from
# the API. Peaks at +2 for ratios of 1, zero at e^0.8 (2.2x off), floor -1.5 when nothing received
# upstream goes to clients (the web server's cron answers stay on the box). The worse of the two
# ratios counts: on random volumes each lands within 20 % of 1 about one time in six, both about
# one time in thirty, which is the e^2 odds the peak claims.
W_MIRROR = 2.0
MIRROR_SLOPE = 2.5
MIRROR_FLOOR = -1.5
# Tunnelling: clients name the model API themselves (CONNECT target or inner SNI). That is a
# forward proxy (corporate CONNECT proxy), not a reseller: a veto-sized negative weight.
W_TUNNEL = -6.0
# Upstream handshakes with a client's own JA4 mean the ClientHello passed through unchanged.
W_JA4_REUSED = -1.0
W_JA4_DISTINCT = 0.5
# Inbound TLS names the host's own domain (it terminates TLS, as a reseller front-end does).
W_TERMINATED = 0.5
# Plaintext requests with model-API paths or API keys sent to a non-API host: reseller front-end.
W_API_PLAINTEXT = 1.5
# Fan-in: 0.2 per doubling of clients, at most 0.8 (16 clients). Weak on purpose: every server has
# many clients; it only separates a shared relay from one person's own proxy.
W_FAN_IN_PER_DOUBLING = 0.2
FAN_IN_CAP = 0.8
# Clients in restricted regions (the reason resellers exist): up to +1 when all are.
W_RESTRICTED = 1.0
# The candidate is in a hosting ASN (VPS): +0.5.
W_HOSTING = 0.5


def contributions(m: Measures) -> dict[str, float]:
    """Log-odds added by each measure, keyed by evidence rule."""
    c: dict[str, float] = {}
    if m.requests and m.lag_matched:
        excess = (m.lag_fraction - m.lag_chance) / (1 - m.lag_chance) if m.lag_chance < 1 else 0.0
        c["relay.request_lag"] = W_REQUEST_LAG * max(0.0, excess)
    if m.one_to_one is not None and m.lag_matched >= 3:
        c["relay.one_to_one"] = W_ONE_TO_ONE if 0.8 <= m.one_to_one <= 1.25 else 0.0
    if m.explained_excess is not None:
        conf = min(1.0, m.short_upstream / EXPLAINED_FULL_AT)
        c["relay.upstream_explained"] = W_EXPLAINED * (2 * max(-1.0, m.explained_excess) - 1) * conf
    if m.xcorr is not None:
        c["relay.byte_xcorr"] = W_XCORR * max(0.0, (m.xcorr - 0.2) / 0.8)
    r, rp = m.mirror_ratio, m.mirror_packet_ratio
    if r is not None:
        # Bytes and answer packets must both match: either alone agrees by chance too often.
        off = max(abs(math.log(max(x, 1e-6))) for x in (r, rp if rp is not None else 1e-6))
        c["relay.byte_mirror"] = max(MIRROR_FLOOR, W_MIRROR - MIRROR_SLOPE * off)
    if m.tunnel_hellos or m.inbound_hellos:
        tunnel = m.tunnel_hellos / max(1, m.tunnel_hellos + m.terminated_hellos)
        term = m.terminated_hellos / max(1, m.inbound_hellos)
        c["relay.tls_tunnel"] = W_TUNNEL * tunnel + W_TERMINATED * term * (1 - tunnel)
    if m.ja4_reuse is not None:
        c["relay.ja4_reuse"] = (W_JA4_REUSED if m.ja4_reuse >= 0.5 else
                                W_JA4_DISTINCT if m.ja4_reuse <= 0.1 else 0.0)
    if m.api_requests:
        c["relay.api_plaintext"] = W_API_PLAINTEXT * min(1.0, m.api_requests / 3)
    n = len(m.clients)
    c["relay.fan_in"] = min(FAN_IN_CAP, W_FAN_IN_PER_DOUBLING * math.log2(n)) if n > 1 else 0.0
    if n:
        c["relay.client_geo"] = W_RESTRICTED * m.restricted_clients / n
    c["relay.hosting_asn"] = W_HOSTING if m.hosting else 0.0
    return c


def score(contrib: dict[str, float]) -> float:
    """Calibrated score in [0, 1]; 0.5 is the decision threshold."""
    z = PRIOR + sum(contrib.values())
    return 1.0 / (1.0 + math.exp(-z))


def severity(s: float, m: Measures) -> str:
    """critical: near-certain and serving restricted regions; high/medium/low by score."""
    if s >= 0.95 and m.restricted_clients:
        return "critical"
    if s >= 0.85:
        return "high"
    if s >= 0.65:
        return "medium"
    return "low"
