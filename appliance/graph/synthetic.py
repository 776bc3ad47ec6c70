"""Labelled request/account frames for the graph stage: farms, look-alikes and background users.

Tests (tests/graph/) and the benchmark (bench/graph_bench.py) need ground truth at any scale, from
a few hundred accounts to 1M accounts with 10M request rows, so everything is generated with numpy
arrays and polars string expressions, never per row in Python. Frames carry the enriched columns of
appliance.schema fields("request") / fields("account") that the graph reads.

Populations (issue 6): background users (own address, card, key); reseller farms of varied size
using a difficulty-dependent subset of tactics (shared cards, sequential BINs, creation bursts,
disposable domains, synchronised 24/7 traffic, key rotation, account succession, JA4/UA mismatch,
egress through a relay host); and look-alikes that must not be flagged: an enterprise (one
organization, one corporate card, one proxy address, an onboarding burst), a university NAT (many
independent students and cards behind one address) and VPN users sharing exits.

Addresses follow /tmp/address-plan.md where it has room (relay 203.0.113.7, corporate proxy
192.0.2.10, NAT 192.0.2.20, VPN exits 192.0.2.128/25, hosting 2001:db8:100::/48); background users
and residential proxies need millions of addresses, so they take 2001:db8:8000::/33,
documentation space the plan leaves unused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import polars as pl

from appliance.schema import TIMESTAMP

T0 = int(datetime(2025, 1, 6, tzinfo=UTC).timestamp()) * 1_000_000_000
MIN = 60_000_000_000
HOUR = 60 * MIN
DAY = 24 * HOUR

CHROME_UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
CHROME_JA4 = "t13d1516h2_8daaf6152771_02713d6af862"
SDK_UA = "OpenAI/Python 1.54.0"
SDK_JA4 = "t13d1812h1_85036bcba153_375ca2c5e164"
GO_JA4 = "t13d0912h1_f57a46bbacb6_e7c285222651"  # a Go/script client: no h2, few extensions
DISPOSABLE = ("mailinator.com", "guerrillamail.com", "yopmail.com", "sharklasers.com", "maildrop.cc")
WEBMAIL = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "icloud.com")
TACTICS = ("shared_cards", "sequential_bins", "burst", "disposable", "sync", "rotation", "succession",
           "mismatch", "hosting", "shared_signup", "relay")
# Share of tactics a farm uses per difficulty; hard farms also hide behind residential proxies.
DIFFICULTY = {"easy": 1.0, "medium": 0.6, "hard": 0.4}


@dataclass
class Scenario:
    requests: pl.DataFrame
    accounts: pl.DataFrame
    farms: dict[str, set[str]] = field(default_factory=dict)
    decoys: dict[str, set[str]] = field(default_factory=dict)
    relay_findings: list[dict] = field(default_factory=list)


class _Builder:
    def __init__(self, seed: int, days: float, rpa: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.days = days
        self.rpa = rpa
        self.next_acct = 0
        self.next_card = 0
        self.acc: list[pl.DataFrame] = []
        self.req: list[pl.DataFrame] = []

    def ids(self, n: int) -> np.ndarray:
        out = np.arange(self.next_acct, self.next_acct + n)
        self.next_acct += n
        return out

    def cards(self, n: int) -> np.ndarray:
        out = np.arange(self.next_card, self.next_card + n)
        self.next_card += n
        return out

    def diurnal(self, n: int, start_h: int, end_h: int) -> np.ndarray:
        """Times within local waking hours [start_h, end_h) on random days of the window."""
        day = self.rng.integers(0, max(1, int(self.days)), n)
        hour = (start_h + self.rng.random(n) * (end_h - start_h)) % 24
        return T0 + day * DAY + (hour * HOUR).astype(np.int64)

    def add(self, idx: np.ndarray, *, org: list | np.ndarray | None, created: np.ndarray, email: np.ndarray,
            card: np.ndarray, bins: np.ndarray, signup: pl.Series, signup_attr: tuple[int, bool, bool],
            req_acct: np.ndarray, req_t: np.ndarray, req_ip: pl.Series, ip_attr: tuple[int, bool, bool],
            ua: pl.Series | str, ja4: pl.Series | str, status: np.ndarray | None = None) -> list[str]:
        n, m = len(idx), len(req_acct)
        names = pl.Series("i", idx).cast(pl.Utf8).str.zfill(7)
        acc = pl.DataFrame({
            "@timestamp": created, "account.id": "a" + names, "account.created": created,
            "organization.id": pl.Series(org if org is not None else [None] * n, dtype=pl.Utf8),
            "email.domain": email, "email.fingerprint": "fp:mail" + names,
            "payment.fingerprint": "fp:pay" + pl.Series(card).cast(pl.Utf8),
            "payment.card.bin": pl.Series(bins).cast(pl.Utf8), "billing.country": "US", "signup.ip": signup,
            "signup.as.number": signup_attr[0], "signup.anonymity.hosting": signup_attr[1],
            "signup.anonymity.vpn": signup_attr[2],
        }).with_columns(pl.col("@timestamp", "account.created").cast(pl.Int64).cast(TIMESTAMP))
        self.acc.append(acc)
        rnames = pl.Series("i", req_acct).cast(pl.Utf8).str.zfill(7)
        org_of = dict(zip(idx.tolist(), org, strict=True)) if org is not None else None
        req = pl.DataFrame({
            "@timestamp": pl.Series(req_t).cast(TIMESTAMP), "source.ip": req_ip,
            "user_agent.original": _column(ua, m),
            "api.key_id": "fp:key" + rnames, "account.id": "a" + rnames,
            "organization.id": pl.Series([org_of[i] for i in req_acct.tolist()] if org_of else [None] * m,
                                         dtype=pl.Utf8),
            "url.path": "/v1/chat/completions", "model": "gpt-4o-mini",
            "http.response.status_code": pl.Series(status if status is not None else np.full(m, 200), dtype=pl.Int32),
            "tls.client.ja4": _column(ja4, m),
            "source.as.number": ip_attr[0], "source.anonymity.hosting": ip_attr[1], "source.anonymity.vpn": ip_attr[2],
        })
        self.req.append(req)
        return acc.get_column("account.id").to_list()

    def per_request(self, idx: np.ndarray) -> np.ndarray:
        return np.repeat(idx, self.rpa)


def _pick(mask: np.ndarray, yes: str, no: str) -> pl.Series:
    """One of two strings per row. Not np.where: that makes a fixed-width unicode array (4 bytes per
    character per row, 4 GB for 10M User-Agents), which was the 1M-account benchmark's peak RSS."""
    return pl.select(pl.when(pl.Series(mask)).then(pl.lit(yes)).otherwise(pl.lit(no))).to_series()


def _column(value: pl.Series | str, m: int) -> pl.Series:
    return value if isinstance(value, pl.Series) else pl.repeat(value, m, dtype=pl.Utf8, eager=True)


def _sorted_by_time(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate and sort by @timestamp one column at a time, so the peak is the frame plus one
    column rather than two whole frames (DataFrame.sort gathers every column at once)."""
    frame = pl.concat(parts, how="vertical_relaxed")
    parts.clear()
    order = frame.get_column("@timestamp").arg_sort()
    cols = frame.get_columns()
    del frame
    out: list[pl.Series] = []
    for i in range(len(cols)):
        out.append(cols[i].gather(order))
        cols[i] = out[-1]  # drop the unsorted column before gathering the next
    return pl.DataFrame(out)


def _resi(digit: str, idx: np.ndarray) -> pl.Series:
    """Unique residential IPv6 addresses 2001:db8:<digit><hi:03>:<lo>::1 (decimal digits are valid hex)."""
    x = pl.col("x")
    return pl.DataFrame({"x": idx}).select(
        pl.format("2001:db8:" + digit + "{}:{}::1", (x // 10000).cast(pl.Utf8).str.zfill(3),
                  (x % 10000).cast(pl.Utf8))).to_series()


def background(b: _Builder, n: int) -> None:
    idx = b.ids(n)
    r = b.rng
    ip = _resi("8", idx)
    ra = b.per_request(idx)
    pos = np.searchsorted(idx, ra)
    sdk = r.random(n) < 0.5
    b.add(idx, org=None, created=T0 - r.integers(1, 400, n) * DAY - r.integers(0, DAY, n),
          email=r.choice(WEBMAIL, n), card=b.cards(n), bins=r.integers(400000, 559999, n),
          signup=ip, signup_attr=(64502, False, False), req_acct=ra, req_t=b.diurnal(len(ra), 7, 24),
          req_ip=ip.gather(pos), ip_attr=(64502, False, False),
          ua=_pick(sdk[pos], SDK_UA, CHROME_UA), ja4=_pick(sdk[pos], SDK_JA4, CHROME_JA4))


def enterprise(b: _Builder, n: int, tag: str) -> list[str]:
    idx = b.ids(n)
    r = b.rng
    created = T0 - r.integers(1, 700, n) * DAY
    onboard = min(n, 30)  # an onboarding day: IT creates 30 accounts within the hour
    created[:onboard] = T0 - 90 * DAY + r.integers(0, HOUR, onboard)
    card = np.full(n, b.cards(1)[0])
    ra = b.per_request(idx)
    ip = pl.Series(["192.0.2.10"] * len(ra))
    return b.add(idx, org=[f"org-{tag}"] * n, created=created, email=np.full(n, f"{tag}.example.com"),
                 card=card, bins=np.full(n, 545454), signup=pl.Series(["192.0.2.10"] * n),
                 signup_attr=(64502, False, False), req_acct=ra, req_t=b.diurnal(len(ra), 13, 23),
                 req_ip=ip, ip_attr=(64502, False, False), ua=CHROME_UA, ja4=CHROME_JA4)


def university(b: _Builder, n: int) -> list[str]:
    idx = b.ids(n)
    r = b.rng
    ra = b.per_request(idx)
    sdk = r.random(n) < 0.3
    pos = np.searchsorted(idx, ra)
    return b.add(idx, org=None, created=T0 - r.integers(1, 365, n) * DAY - r.integers(0, DAY, n),
                 email=r.choice(np.array(["example.edu", *WEBMAIL]), n), card=b.cards(n),
                 bins=r.choice(r.integers(400000, 559999, 40), n), signup=pl.Series(["192.0.2.20"] * n),
                 signup_attr=(64502, False, False), req_acct=ra, req_t=b.diurnal(len(ra), 8, 26),
                 req_ip=pl.Series(["192.0.2.20"] * len(ra)), ip_attr=(64502, False, False),
                 ua=_pick(sdk[pos], SDK_UA, CHROME_UA), ja4=_pick(sdk[pos], SDK_JA4, CHROME_JA4))


def vpn_users(b: _Builder, n: int) -> list[str]:
    idx = b.ids(n)
    r = b.rng
    ra = b.per_request(idx)
    exit_ = r.integers(0, 8, n)[np.searchsorted(idx, ra)]
    return b.add(idx, org=None, created=T0 - r.integers(1, 400, n) * DAY - r.integers(0, DAY, n),
                 email=r.choice(WEBMAIL, n), card=b.cards(n), bins=r.integers(400000, 559999, n),
                 signup=_resi("8", idx), signup_attr=(64502, False, False), req_acct=ra,
                 req_t=b.diurnal(len(ra), 7, 24), req_ip=pl.Series([f"192.0.2.{130 + e}" for e in exit_.tolist()]),
                 ip_attr=(64505, False, True), ua=CHROME_UA, ja4=CHROME_JA4)


def farm(b: _Builder, f: int, n: int, difficulty: str) -> tuple[list[str], list[dict]]:
    r = b.rng
    share = DIFFICULTY[difficulty]
    t = {k: bool(r.random() < share) for k in TACTICS}
    # Every farm keeps at least one strong link (a card or a sign-up address) and sync or hosting,
    # else it is indistinguishable from independent users by construction.
    if not (t["shared_cards"] or t["shared_signup"]):
        t["shared_cards"] = True
    if not (t["sync"] or t["hosting"]):
        t["sync"] = True
    idx = b.ids(n)
    # Strong links: cards shared by 3-8 accounts (pairs when not a tactic), sign-up from the farm's VPS.
    per_card = int(r.integers(3, 9)) if t["shared_cards"] else 1
    card = b.cards(max(1, -(-n // per_card)))[np.arange(n) // per_card]
    base_bin = int(r.integers(400000, 559000))
    n_cards = int(card.max() - card.min() + 1)
    bins = (base_bin + np.arange(n_cards) * int(r.integers(1, 4)) if t["sequential_bins"]
            else r.integers(400000, 559999, n_cards))[card - card.min()]
    host = t["hosting"]
    n_egress = max(1, n // 40) if host else max(2, n // 5)
    egress = ([f"2001:db8:100:{f}::{j + 1}" for j in range(n_egress)] if host
              else _resi("9", f * 10000 + np.arange(n_egress)).to_list())
    if f == 0 and host:
        egress[0] = "203.0.113.7"  # the demo's main relay
    signup = (pl.Series([egress[j % min(3, n_egress)] for j in range(n)]) if t["shared_signup"]
              else _resi("a", idx))
    created = (T0 - int(r.integers(2, 60)) * DAY + (np.arange(n) // 20) * 6 * HOUR + r.integers(0, 5 * MIN, n)
               if t["burst"] else T0 - r.integers(2, 120, n) * DAY - r.integers(0, DAY, n))
    ra = b.per_request(idx)
    m = len(ra)
    span = int(b.days * DAY)
    if t["sync"]:  # bursts of customer demand fanned over ~20 keys within the same minute
        slots = T0 + r.integers(0, span // MIN, max(1, m // 20)) * MIN
        times = slots[r.integers(0, len(slots), m)] + r.integers(0, 50_000_000_000, m)
    else:
        times = T0 + r.integers(0, span, m)
    status = np.full(m, 200)
    pos = np.arange(m)
    if t["rotation"]:  # the first 30% of accounts used one after another until rate-limited
        k = max(2, int(n * 0.3))
        start = T0 + int(r.integers(0, span // 2))
        for j in range(k):
            sl = pos[j * b.rpa:(j + 1) * b.rpa]
            times[sl] = start + j * 20 * MIN + np.sort(r.integers(0, 19 * MIN, len(sl)))
            status[sl[-1]] = 429
    if t["succession"]:  # the last 20%: each replaces a banned predecessor within minutes
        k = max(1, int(n * 0.2))
        for j in range(n - k, n):
            prev = j - k
            sl, ps = pos[j * b.rpa:(j + 1) * b.rpa], pos[prev * b.rpa:(prev + 1) * b.rpa]
            ban = int(times[ps].max())
            status[ps[np.argmax(times[ps])]] = 403
            created[j] = ban + int(r.integers(1, 30)) * MIN
            times[sl] = created[j] + 5 * MIN + np.sort(r.integers(0, 6 * HOUR, len(sl)))
    ua, ja4 = (CHROME_UA, GO_JA4) if t["mismatch"] else (SDK_UA, SDK_JA4)
    ip = pl.Series(egress).gather(r.integers(0, n_egress, m))
    attr = (64500, True, False) if host else (64501, False, False)
    names = b.add(idx, org=None, created=created, email=r.choice(DISPOSABLE if t["disposable"] else WEBMAIL, n),
                  card=card, bins=bins, signup=signup, signup_attr=attr, req_acct=ra, req_t=times,
                  req_ip=ip, ip_attr=attr, ua=ua, ja4=ja4, status=status)
    relay = []
    if t["relay"] and host:
        relay.append({"id": f"f-relay{f:04d}", "kind": "relay_host", "score": 0.6, "severity": "medium",
                      "subject": {"type": "ip", "value": egress[0]}, "entities": [{"type": "ip", "value": egress[0]}],
                      "evidence": [{"rule": "relay.synthetic", "summary": "synthetic relay", "value": 1}],
                      "first_seen": None, "last_seen": None})
    return names, relay


def generate(seed: int = 0, n_background: int = 2000, farm_sizes: tuple[int, ...] = (5, 12, 30, 80, 200),
             difficulty: str = "easy", enterprise_size: int = 120, university_size: int = 150,
             vpn_size: int = 40, requests_per_account: int = 10, days: float = 3.0) -> Scenario:
    """A seeded scenario; the same arguments always give the same frames."""
    b = _Builder(seed, days, requests_per_account)
    sc = Scenario(pl.DataFrame(), pl.DataFrame())
    if n_background:
        background(b, n_background)
    if enterprise_size:
        sc.decoys["enterprise"] = set(enterprise(b, enterprise_size, "acme"))
    if university_size:
        sc.decoys["university"] = set(university(b, university_size))
    if vpn_size:
        sc.decoys["vpn_users"] = set(vpn_users(b, vpn_size))
    for f, size in enumerate(farm_sizes):
        names, relay = farm(b, f, size, difficulty)
        sc.farms[f"farm-{f}"] = set(names)
        sc.relay_findings.extend(relay)
    sc.accounts = pl.concat(b.acc, how="vertical_relaxed")
    sc.requests = _sorted_by_time(b.req)
    return sc
