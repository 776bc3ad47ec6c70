"""Catalogs load with a source per entry; destination.service by SNI, Host, DNS and IP."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from appliance.enrich.catalog import KINDS, Catalogs
from appliance.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "rules/data"


@pytest.fixture(scope="module")
def cats() -> Catalogs:
    return Catalogs.load(DATA)


def test_every_catalog_loads_and_every_entry_has_a_source(cats: Catalogs) -> None:
    assert {"ai_api_endpoints", "hosting_asns", "vpn_proxy_asns", "restricted_regions",
            "disposable_email_domains"} <= set(cats.names())
    for name in cats.names():
        cat = cats[name]
        assert cat.description and cat.entries, name
        for e in cat.entries:
            assert isinstance(e.value, str) and e.value and e.source, (name, e)
            assert e.kind is None or e.kind in KINDS


def test_demo_asns_are_catalogued_with_a_note(cats: Catalogs) -> None:
    assert {64500, 64510} <= cats.asns("hosting_asns")
    assert 64505 in cats.asns("vpn_proxy_asns")
    demo = [e for e in cats["hosting_asns"].entries + cats["vpn_proxy_asns"].entries if e.value.startswith("645")]
    assert demo and all(e.note and "DEMO" in e.note for e in demo)


def test_domain_matching_exact_or_subdomain(cats: Catalogs) -> None:
    assert cats.domain_service("api.openai.com") == "openai-api"
    assert cats.domain_service("API.OpenAI.com.") == "openai-api"
    assert cats.domain_service("eu.api.openai.com") == "openai-api"
    assert cats.domain_service("notapi.openai.com") is None  # a suffix of the string is not a subdomain
    assert cats.domain_service("openai.com") is None
    assert cats.domain_service("contoso.openai.azure.com") == "azure-openai"
    assert cats.domain_service("openai.azure.com") is None  # "*." entries match below only
    assert cats.domain_service("") is None and cats.domain_service(None) is None


def test_service_by_sni_host_and_ip(cats: Catalogs) -> None:
    tls = pl.DataFrame({
        "tls.client.server_name": ["api.anthropic.com", "", None, None],
        "destination.ip": ["203.0.113.7", "160.79.104.10", "2607:6bc0::10", "93.184.215.14"],
    })
    assert cats.service(tls, "tls")["destination.service"].to_list() == [
        "anthropic-api", "anthropic-api", "anthropic-api", None]
    http = pl.DataFrame({"url.domain": ["generativelanguage.googleapis.com", "www.example.com"],
                         "destination.ip": ["203.0.113.7", "93.184.215.14"]})
    assert cats.service(http, "http")["destination.service"].to_list() == ["gemini-api", None]


def test_sni_beats_ip(cats: Catalogs) -> None:
    flow = pl.DataFrame({"tls.client.server_name": ["api.openai.com"], "url.domain": [None],
                         "destination.ip": ["160.79.104.10"]})
    assert cats.service(flow, "flow")["destination.service"][0] == "openai-api"


def test_dns_question_and_learned_answers() -> None:
    cats = Catalogs.load(DATA)
    dns = pl.DataFrame({
        "dns.question.name": ["api.openai.com", "www.example.com"],
        "dns.answers.data": [["api.openai.com.cdn.cloudflare.net", "162.159.140.245", "2606:4700::6812:8cf5"],
                             ["93.184.215.14"]],
        "destination.ip": ["192.0.2.53", "192.0.2.53"],
    })
    assert cats.service(dns, "dns")["destination.service"].to_list() == ["openai-api", None]
    assert cats.learn_dns(dns) == 2
    flows = pl.DataFrame({"destination.ip": ["162.159.140.245", "2606:4700::6812:8cf5", "93.184.215.14"]})
    assert cats.service(flows, "flow")["destination.service"].to_list() == ["openai-api", "openai-api", None]


def test_learned_dns_is_bounded() -> None:
    cats = Catalogs.load(DATA, dns_limit=2)
    dns = pl.DataFrame({"dns.question.name": ["api.openai.com"],
                        "dns.answers.data": [["162.159.140.1", "162.159.140.2", "162.159.140.3"]]})
    cats.learn_dns(dns)
    assert cats.stats["dns_evicted"] == 1
    assert cats.ip_service("162.159.140.1") is None and cats.ip_service("162.159.140.3") == "openai-api"


def test_events_without_destination_service_are_untouched(cats: Catalogs) -> None:
    req = pl.DataFrame({"source.ip": ["203.0.113.7"]})
    assert cats.service(req, "request").columns == ["source.ip"]


def test_entry_without_source_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: bad\ndescription: x\nentries:\n  - {value: example.com}\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        Catalogs.load(tmp_path)


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("name: broken\nentries: [\n  {value: x\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+:\d+"):
        Catalogs.load(tmp_path)
