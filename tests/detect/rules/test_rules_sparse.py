"""The matcher's shortcuts against the straightforward polars expressions, on batches big enough to
take them: sparse hits that bound a rule to a few candidate rows (NARROW), the prefix prefilter
(PREFILTER) and Categorical columns. Each rule's rows must equal the plain expression's, with the
thresholds as shipped and with both shortcuts forced on every batch.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.detect.rules import compile as compile_mod
from appliance.detect.rules.compile import CompiledRules
from appliance.detect.rules.loader import Loc
from appliance.detect.rules.model import FieldMatch, Rule, Selection
from appliance.detect.rules.testing import plain_match

LOC = Loc("t.yml", 1, 1)
NAMES = ["api.openai.com", "API.anthropic.com", "cdn.example.org", "\u212aelvin.example", "a", "",
         "x.evil", "api.evil", "static.example.net.very.long.name"]
IPS = ["10.0.0.1", "10.1.2.3", "192.168.1.1", "2607:6bc0::10", "nonsense"]
TEXT = st.sampled_from(["api", "API.", "x", "\u212a", "cdn.example.org", "evil", "a", "static.example"])
CONDITIONS = [("name", "sel"), ("not", ("name", "sel")), ("and", (("name", "sel"), ("not", ("name", "f")))),
              ("or", (("name", "sel"), ("name", "f")))]


@st.composite
def frames(draw: Any) -> pl.DataFrame:
    n = draw(st.integers(1, 300))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rare = draw(st.floats(0, 0.2))  # most rows quiet, a few (or none) interesting

    def column(common: list[Any], interesting: list[Any]) -> list[Any]:
        pick = rng.random(n) < rare
        return [interesting[rng.integers(len(interesting))] if p else common[rng.integers(len(common))]
                for p in pick]

    return pl.DataFrame({
        "dns.question.name": pl.Series(column(["cdn.example.org", None, "static.example.net.very.long.name"],
                                              NAMES), dtype=pl.Utf8),
        "source.ip": pl.Series(column(["192.168.1.1", None], IPS), dtype=pl.Utf8),
        "dns.answers.data": pl.Series(column([["cdn.example.org"], None, []], [["x.evil", "a"], ["API.anthropic.com"], ["api.evil", "x.evil", "API.anthropic.com"]]),
                                      dtype=pl.List(pl.Utf8)),
        "destination.port": pl.Series(column([53, None], [443, 5353]), dtype=pl.Int32),
    })


@st.composite
def matches(draw: Any) -> FieldMatch:
    fld = draw(st.sampled_from(["dns.question.name", "dns.question.name", "dns.answers.data", "source.ip",
                                "destination.port"]))
    if fld == "destination.port":
        op = draw(st.sampled_from(["eq", "gt", "lte"]))
        return FieldMatch(fld, op, (draw(st.sampled_from([53, 443, 1000])),), False, False, "", LOC)
    if fld == "source.ip":
        op = draw(st.sampled_from(["cidr", "eq", "startswith"]))
        values = ("10.0.0.0/8",) if op == "cidr" else tuple(draw(st.lists(st.sampled_from(IPS), min_size=1, max_size=2)))
        return FieldMatch(fld, op, values, False, False, "", LOC)
    # The question name is asked only prefix questions, so the prefilter serves it.
    ops = ["eq", "startswith"] if fld == "dns.question.name" else ["eq", "contains", "endswith", "startswith"]
    op = draw(st.sampled_from(ops))
    values = tuple(draw(st.lists(TEXT, min_size=1, max_size=3)))
    return FieldMatch(fld, op, values, draw(st.booleans()), draw(st.booleans()), "", LOC)


@st.composite
def rules(draw: Any) -> list[Rule]:
    out = []
    for k in range(draw(st.integers(1, 5))):
        sels = {}
        for name in ("sel", "f"):
            alts = tuple(tuple(draw(st.lists(matches(), min_size=1, max_size=2)))
                         for _ in range(draw(st.integers(1, 2))))
            sels[name] = Selection(name, alts, LOC)
        out.append(Rule(f"r{k}", f"r{k}", "low", "dns", sels, draw(st.sampled_from(CONDITIONS)), LOC, "t.yml"))
    return out


_plain = plain_match


def _expected(rule: Rule, frame: pl.DataFrame) -> list[int]:
    def sel(name: str) -> pl.Expr:
        alts = rule.selections[name].alternatives
        return pl.any_horizontal([pl.all_horizontal([_plain(m) for m in alt]) for alt in alts])

    def cond(c: Any) -> pl.Expr:
        if c[0] == "name":
            return sel(c[1])
        if c[0] == "not":
            return ~cond(c[1])
        parts = [cond(x) for x in c[1]]
        return pl.all_horizontal(parts) if c[0] == "and" else pl.any_horizontal(parts)

    return np.flatnonzero(frame.select(cond(rule.condition).alias("x")).to_series().to_numpy()).tolist()


def _check(frame: pl.DataFrame, ruleset: list[Rule]) -> None:
    got = {h.rule.id: h.rows for h in CompiledRules("dns", ruleset).match(frame)}
    for rule in ruleset:
        assert got.get(rule.id, []) == _expected(rule, frame), rule


@settings(max_examples=150, deadline=None)
@given(frames(), rules())
def test_shortcuts_as_shipped_equal_plain_expressions(frame: pl.DataFrame, ruleset: list[Rule]) -> None:
    _check(frame, ruleset)


@settings(max_examples=150, deadline=None)
@given(frames(), rules())
def test_shortcuts_forced_equal_plain_expressions(frame: pl.DataFrame, ruleset: list[Rule]) -> None:
    with mock.patch.object(compile_mod, "NARROW", 1), mock.patch.object(compile_mod, "PREFILTER", 1):
        _check(frame, ruleset)


@settings(max_examples=60, deadline=None)
@given(frames(), rules())
def test_categorical_columns_match_like_strings(frame: pl.DataFrame, ruleset: list[Rule]) -> None:
    cat = frame.with_columns(pl.col("dns.question.name", "source.ip").cast(pl.Categorical))
    plain = {h.rule.id: (h.rows, h.evidence) for h in CompiledRules("dns", ruleset).match(frame)}
    assert {h.rule.id: (h.rows, h.evidence) for h in CompiledRules("dns", ruleset).match(cat)} == plain


def test_rare_hits_read_the_other_column_on_their_rows_only(monkeypatch: Any) -> None:
    """`cidr AND startswith` whose name test holds on 2 rows of 1000 reads source.ip for those 2."""
    read: list[tuple[str, int]] = []
    real = CompiledRules._resolve

    def spy(self: CompiledRules, frame: pl.DataFrame, col: str) -> Any:
        read.append((col, frame.height))
        return real(self, frame, col)

    monkeypatch.setattr(compile_mod.CompiledRules, "_resolve", spy)
    alt = (FieldMatch("source.ip", "cidr", ("10.0.0.0/8",), False, False, "", LOC),
           FieldMatch("dns.question.name", "startswith", ("x.",), False, False, "", LOC))
    rule = Rule("r0", "t", "low", "dns", {"sel": Selection("sel", (alt,), LOC)}, ("name", "sel"), LOC, "t")
    names = ["cdn.example.org"] * 1000
    names[10], names[500] = "x.evil", "X.EVIL"
    ips = ["10.0.0.1"] * 500 + ["1.1.1.1"] * 500
    frame = pl.DataFrame({"source.ip": ips, "dns.question.name": names})
    hits = CompiledRules("dns", [rule]).match(frame)
    assert [(h.rule.id, h.rows) for h in hits] == [("r0", [10])]
    assert read == [("dns.question.name", 1000), ("source.ip", 2)]


def test_a_list_row_matching_twice_counts_once() -> None:
    """Two matching elements in one row of two must not read as 'every row matches'."""
    m = FieldMatch("dns.answers.data", "contains", ("evil",), False, False, "", LOC)
    rule = Rule("r0", "t", "low", "dns", {"sel": Selection("sel", ((m,),), LOC)}, ("name", "sel"), LOC, "t")
    frame = pl.DataFrame({"dns.answers.data": [["x.evil", "api.evil"], ["cdn.example.org"]]})
    assert [h.rows for h in CompiledRules("dns", [rule]).match(frame)] == [[0]]
