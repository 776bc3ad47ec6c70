"""Simulated provider-side logs: the gateway request log and the account records, with ground truth.

Packets show a relay; the provider's own logs show the reseller behind it: an account farm (accounts
created in bursts, sharing a few cards and card BINs, disposable email domains, sign-ups from hosting
and VPN addresses, requests from the relay's egress IP, keys rotated every few hours). Look-alikes
that must not be flagged: an enterprise (many accounts, one organization.id and one corporate card)
and a university NAT (many independent users and cards behind one IP).

Field names are the canonical `request` and `account` fields (ARCHITECTURE.md), flat dotted keys,
RFC 3339 timestamps. Like a real provider export, the rows also carry the raw secrets (`api.key`,
`email.address`, `payment.card.number`): the appliance must fingerprint them at ingestion
(appliance/secrets.py) and never write them out again. All values are fabricated.
"""

from __future__ import annotations

import hashlib
import random
import string
import time
from dataclasses import dataclass, field

from appliance.simulate import tls_hello as th
from appliance.simulate.flows import API_MODELS, API_PATHS, MS, ApiCall, rand_key

S = 1_000 * MS
HOUR, DAY = 3600 * S, 86_400 * S
DISPOSABLE = ("mailinator.com", "yopmail.com", "guerrillamail.com", "sharklasers.com")
FREEMAIL = ("gmail.com", "outlook.com", "proton.me", "yahoo.com")
FARM_SIGNUP_IPS = ("203.0.113.7", "203.0.113.31", "192.0.2.140", "192.0.2.141")
FARM_EGRESS = ("203.0.113.7", "203.0.113.45", "203.0.113.25")
ENTERPRISE_ORG, ENTERPRISE_IP, UNIVERSITY_IP = "org-acmecorp0001", "192.0.2.10", "192.0.2.20"


def rfc3339(ns: int) -> str:
    """UTC, microsecond precision, `Z` suffix (RFC 3339 §5.6)."""
    sec, rest = divmod(ns, S)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{rest // 1000:06d}Z"


def card_number(rng: random.Random, bin6: str) -> str:
    """A Luhn-valid 16-digit number under `bin6` (fabricated; passes the same check real PANs do)."""
    body = bin6 + "".join(rng.choices(string.digits, k=9))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


@dataclass
class Account:
    id: str
    org: str
    created: int
    email: str
    card: str
    country: str
    signup_ip: str
    group: str  # farm | enterprise | university | ordinary | business
    keys: list[tuple[int, str, str]] = field(default_factory=list)  # (valid from, key id, raw key)

    def key_at(self, ts: int) -> tuple[str, str]:
        current = self.keys[0]
        for k in self.keys:
            if k[0] <= ts:
                current = k
        return current[1], current[2]

    def row(self) -> dict[str, object]:
        return {
            "@timestamp": rfc3339(self.created), "account.id": self.id, "organization.id": self.org,
            "account.created": rfc3339(self.created), "email.address": self.email,
            "email.domain": self.email.split("@", 1)[1],
            # The provider's own (non-secret) instrument token, as payment processors export it.
            "payment.fingerprint": "pfp_" + hashlib.sha256(self.card.encode()).hexdigest()[:16],
            "payment.card.number": self.card, "payment.card.bin": self.card[:6],
            "billing.country": self.country, "signup.ip": self.signup_ip,
        }


class _Population:
    def __init__(self, rng: random.Random, t0: int) -> None:
        self.rng, self.t0 = rng, t0
        self.accounts: list[Account] = []
        self.by_group: dict[str, list[Account]] = {}

    def _id(self, prefix: str) -> str:
        return prefix + "".join(self.rng.choices(string.ascii_lowercase + string.digits, k=16))

    def add(self, group: str, created: int, email_domain: str, card: str, country: str, ip: str,
            org: str | None = None, rotate: int = 0, until: int = 0) -> Account:
        local = "".join(self.rng.choices(string.ascii_lowercase + string.digits, k=self.rng.randint(6, 12)))
        a = Account(self._id("user-"), org or self._id("org-"), created, f"{local}@{email_domain}", card,
                    country, ip, group)
        t = created + self.rng.randint(1, 30) * 60 * S
        while True:
            a.keys.append((t, self._id("key_"), rand_key(self.rng, "sk-proj-", 48)))
            if not rotate or t > until:
                break
            t += rotate + self.rng.randint(-HOUR // 2, HOUR // 2)
        self.accounts.append(a)
        self.by_group.setdefault(group, []).append(a)
        return a


def build(calls: list[ApiCall], seed: int, ordinary_ips: list[str]) -> tuple[list[dict[str, object]],
                                                                            list[dict[str, object]],
                                                                            dict[str, object]]:
    """(request rows, account rows, ground truth) for the API calls of the simulated captures,
    plus a week of background history before them."""
    rng = random.Random(seed ^ 0x5EED)
    t0 = min((c.ts for c in calls), default=1_741_597_200 * S)
    end = max((c.ts for c in calls), default=t0)
    pop = _Population(rng, t0)
    # Account farm: three sign-up bursts of eight accounts within ~12 minutes, on three cards.
    farm_cards = [card_number(rng, b) for b in ("459234", "459234", "532610")]
    for burst_day in (20, 12, 5):
        start = t0 - burst_day * DAY + rng.randrange(6 * HOUR)
        for _ in range(8):
            pop.add("farm", start + rng.randrange(12 * 60 * S), rng.choice(DISPOSABLE), rng.choice(farm_cards),
                    "US", rng.choice(FARM_SIGNUP_IPS), rotate=8 * HOUR, until=end)
    corp_card = card_number(rng, "552433")
    for _ in range(20):
        pop.add("enterprise", t0 - rng.randrange(400) * DAY, "acme-corp.example", corp_card, "US",
                ENTERPRISE_IP, org=ENTERPRISE_ORG)
    semester = t0 - 160 * DAY
    for _ in range(25):
        created = semester + rng.randrange(7 * DAY) if rng.random() < 0.6 else semester + rng.randrange(150 * DAY)
        pop.add("university", created, rng.choice(("uni-example.edu", *FREEMAIL)),
                card_number(rng, rng.choice(("424242", "400000", "510510", "555555", "411111"))),
                "US", UNIVERSITY_IP)
    ord_ips = list(dict.fromkeys(ordinary_ips)) + [f"192.0.2.{30 + i}" for i in range(70, 95)]
    ordinary = {ip: pop.add("ordinary", t0 - rng.randrange(30, 700) * DAY, rng.choice(FREEMAIL),
                            card_number(rng, rng.choice(("424242", "400000", "510510", "555555"))),
                            "US", ip) for ip in ord_ips}
    business: dict[str, Account] = {}

    def account_for(c: ApiCall) -> Account:
        kind, _, rest = c.actor.partition(":")
        if kind == "relay":
            return rng.choice(pop.by_group["farm"])
        if kind == "enterprise":
            return rng.choice(pop.by_group["enterprise"])
        if kind == "university":
            return pop.by_group["university"][int(rest.rsplit(":", 1)[-1]) % 25]
        if kind == "ordinary" and rest in ordinary:
            return ordinary[rest]
        if rest not in business:
            business[rest] = pop.add("business", t0 - 90 * DAY, "shop-demo.example", card_number(rng, "401288"),
                                     "NL", rest)
        return business[rest]

    requests = [_request(rng, c.ts, c.source_ip, account_for(c), c.host, c.user_agent, c.ja4, c.duration,
                         c.request_bytes, c.response_bytes) for c in calls]
    requests += _background(rng, pop, t0)
    requests.sort(key=lambda r: (r["@timestamp"], r["account.id"]))
    accounts = sorted((a.row() for a in pop.accounts), key=lambda r: (r["@timestamp"], r["account.id"]))
    truth = {
        "farm": {
            "accounts": [a.id for a in pop.by_group["farm"]],
            "payment.card.bin": sorted({c[:6] for c in farm_cards}),
            "egress_ips": list(FARM_EGRESS), "signup_ips": list(FARM_SIGNUP_IPS),
        },
        "decoys": {
            "enterprise": {"organization.id": ENTERPRISE_ORG, "accounts": [a.id for a in pop.by_group["enterprise"]]},
            "university_nat": {"ip": UNIVERSITY_IP, "accounts": [a.id for a in pop.by_group["university"]]},
        },
        "ordinary": [a.id for a in pop.by_group["ordinary"] + pop.by_group.get("business", [])],
    }
    return requests, accounts, truth


def _request(rng: random.Random, ts: int, ip: str, a: Account, host: str, ua: str, ja4: str, duration: int,
             req_bytes: int, resp_bytes: int) -> dict[str, object]:
    key_id, raw = a.key_at(ts)
    row: dict[str, object] = {
        "@timestamp": rfc3339(ts), "source.ip": ip, "user_agent.original": ua, "api.key_id": key_id,
        "api.key": raw, "account.id": a.id, "organization.id": a.org, "url.path": API_PATHS[host],
        "model": rng.choice(API_MODELS[host]), "tokens.input": max(1, req_bytes // 4),
        "tokens.output": max(1, resp_bytes // 6), "http.response.status_code": 200 if rng.random() > 0.02 else 429,
        "event.duration": duration,
    }
    if ja4:
        row["tls.client.ja4"] = ja4
    return row


_UA = {g: th.PROFILES[p] for g, p in (("farm", "go"), ("enterprise", "chrome-pq"), ("university", "firefox"),
                                      ("ordinary", "python-openai"), ("business", "python-openai"))}


def _background(rng: random.Random, pop: _Population, t0: int) -> list[dict[str, object]]:
    """A week of history: the farm around the clock from its egress IPs, others at human hours."""
    hello_rng = random.Random(1)
    ja4 = {g: th.client_hello(p, "api.openai.com", hello_rng).ja4 for g, p in _UA.items()}
    rows = []
    per_day = {"farm": 12, "enterprise": 6, "university": 3, "ordinary": 2, "business": 24}
    for a in pop.accounts:
        for day in range(7, 0, -1):
            day_start = t0 - day * DAY
            if day_start < a.created:
                continue
            for _ in range(rng.randint(per_day[a.group] // 2, per_day[a.group])):
                if a.group in ("farm", "business"):
                    ts = day_start + rng.randrange(DAY)
                else:  # working hours: 08:00-20:00 UTC (day_start is 09:00 UTC, like the captures)
                    ts = day_start - HOUR + rng.randrange(12 * HOUR)
                ip = rng.choice(FARM_EGRESS) if a.group == "farm" else a.signup_ip
                host = "api.anthropic.com" if rng.random() < 0.3 else "api.openai.com"
                rows.append(_request(rng, ts, ip, a, host, _UA[a.group].user_agent, ja4[a.group],
                                     rng.randint(400, 20_000) * MS, rng.randint(800, 12_000), rng.randint(500, 9000)))
    return rows
