"""Provider logs: canonical fields, RFC 3339 times, and the farm / look-alike structure in truth."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import pytest

from appliance import schema
from appliance.secrets import key_format, luhn_ok
from appliance.simulate import logs, scenario

OPTIONAL_REQUEST = {"tls.client.ja4", "http.request.header_order"}
COMPUTED_ACCOUNT = {"email.fingerprint"}  # the appliance derives it from email.address at ingestion


@pytest.fixture(scope="module")
def built():
    w = scenario.run("demo", "medium", 4)
    ips = [c["ip"] for c in w.truth["clients"]]
    return w, *logs.build(w.calls, 4, ips)


def _t(s: str) -> datetime:
    assert s.endswith("Z")
    return datetime.fromisoformat(s)


def test_rfc3339() -> None:
    assert logs.rfc3339(1_741_597_200_123_456_789) == "2025-03-10T09:00:00.123456Z"


def test_canonical_fields(built) -> None:
    _, requests, accounts, _ = built
    req_fields = set(schema.field_names("request", enriched=False)) - OPTIONAL_REQUEST
    acc_fields = set(schema.field_names("account", enriched=False)) - COMPUTED_ACCOUNT
    assert all(req_fields <= r.keys() for r in requests)
    assert all(acc_fields <= a.keys() for a in accounts)
    for r in requests[:200]:
        _t(r["@timestamp"])
        assert isinstance(r["event.duration"], int) and r["event.duration"] > 0
        assert key_format(r["api.key"]) == "sk-proj-48alnum"
    for a in accounts:
        assert _t(a["account.created"]) == _t(a["@timestamp"])
        assert luhn_ok(a["payment.card.number"]) and a["payment.card.bin"] == a["payment.card.number"][:6]
        assert a["email.address"].endswith("@" + a["email.domain"])


def test_farm_structure(built) -> None:
    w, requests, accounts, truth = built
    farm = set(truth["farm"]["accounts"])
    rows = [a for a in accounts if a["account.id"] in farm]
    assert len(rows) == 24
    assert len({a["payment.fingerprint"] for a in rows}) <= 3
    assert {a["email.domain"] for a in rows} <= set(logs.DISPOSABLE)
    assert {a["signup.ip"] for a in rows} <= set(logs.FARM_SIGNUP_IPS)
    created = sorted(_t(a["account.created"]).timestamp() for a in rows)
    bursts = Counter(round(c / 86400) for c in created)
    assert len(bursts) <= 6  # three sign-up bursts (a burst may straddle midnight)
    farm_reqs = [r for r in requests if r["account.id"] in farm]
    assert {r["source.ip"] for r in farm_reqs} <= set(logs.FARM_EGRESS)
    # Key rotation: a farm account uses several keys over the week.
    per_account = Counter((r["account.id"], r["api.key_id"]) for r in farm_reqs)
    assert max(Counter(a for a, _ in per_account).values()) > 3
    # The relay's upstream calls in the capture appear as farm requests from the relay's IP.
    relay_calls = [c for c in w.calls if c.actor.startswith("relay:203.0.113.7")]
    stamps = {r["@timestamp"] for r in farm_reqs if r["source.ip"] == "203.0.113.7"}
    assert relay_calls and all(logs.rfc3339(c.ts) in stamps for c in relay_calls)


def test_lookalikes(built) -> None:
    _, requests, accounts, truth = built
    ent = set(truth["decoys"]["enterprise"]["accounts"])
    uni = set(truth["decoys"]["university_nat"]["accounts"])
    ent_rows = [a for a in accounts if a["account.id"] in ent]
    uni_rows = [a for a in accounts if a["account.id"] in uni]
    assert {a["organization.id"] for a in ent_rows} == {truth["decoys"]["enterprise"]["organization.id"]}
    assert len({a["payment.fingerprint"] for a in ent_rows}) == 1
    assert len({a["payment.fingerprint"] for a in uni_rows}) == len(uni_rows) > 10
    assert {a["signup.ip"] for a in uni_rows} == {truth["decoys"]["university_nat"]["ip"]}
    assert not (ent | uni) & set(truth["farm"]["accounts"])
