"""The batch matcher (appliance/detect/rules/compile.py) against the straightforward polars expressions.

The compiler answers string questions on distinct values, maps hits back through a hash table and
skips columns no undecided rule needs; none of that may change a result. Hypothesis draws random
frames (repeated values, nulls, case variants, wildcard characters, IPv4/IPv6, list columns) and
random rules over every dictionary modifier, and each rule's rows must equal the plain expression's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.detect.rules import compile as compile_mod
from appliance.detect.rules.compile import CompiledRules, _locate
from appliance.detect.rules.loader import Loc
from appliance.detect.rules.model import FieldMatch, Rule, Selection
from appliance.detect.rules.testing import plain_match

LOC = Loc("t.yml", 1, 1)
TEXT = st.text(alphabet="aAbB./*?-x1", max_size=5)
IPS = ["10.0.0.1", "10.1.2.3", "10.1.255.0", "192.168.1.1", "2607:6bc0::10", "::1", "nonsense", "10.0.0.256", ""]
NETS = ["10.0.0.0/8", "10.1.0.0/16", "192.168.1.0/24", "2607:6bc0::/48", "0.0.0.0/0"]
REGEXES = ["^a", "b$", "[0-9]", "a.b", "^$", "A|x"]


@st.composite
def frames(draw: Any) -> pl.DataFrame:
    n = draw(st.integers(1, 40))
    pool = draw(st.lists(TEXT, min_size=1, max_size=6))  # few distinct values, many repeats
    text = st.one_of(st.none(), st.sampled_from(pool))
    return pl.DataFrame({
        "dns.question.name": pl.Series(draw(st.lists(text, min_size=n, max_size=n)), dtype=pl.Utf8),
        "source.ip": pl.Series(draw(st.lists(st.one_of(st.none(), st.sampled_from(IPS)), min_size=n, max_size=n)),
                               dtype=pl.Utf8),
        "dns.answers.data": pl.Series(draw(st.lists(st.one_of(st.none(), st.lists(text, max_size=3)),
                                                    min_size=n, max_size=n)), dtype=pl.List(pl.Utf8)),
        "destination.port": pl.Series(draw(st.lists(st.one_of(st.none(), st.sampled_from([53, 443, 5353])),
                                                    min_size=n, max_size=n)), dtype=pl.Int32),
    })


@st.composite
def matches(draw: Any) -> FieldMatch:
    fld = draw(st.sampled_from(["dns.question.name", "dns.answers.data", "source.ip", "destination.port"]))
    if fld == "destination.port":
        op = draw(st.sampled_from(["eq", "gt", "lte"]))
        values: tuple[Any, ...] = (draw(st.sampled_from([53, 443, 1000])),)
        return FieldMatch(fld, op, values, False, False, "", LOC)
    op = draw(st.sampled_from(["eq", "contains", "startswith", "endswith", "re", "cidr"]))
    pool = {"re": st.sampled_from(REGEXES), "cidr": st.sampled_from(NETS)}.get(op, TEXT)
    values = tuple(draw(st.lists(pool, min_size=1, max_size=3)))
    flags = draw(st.sampled_from(["", "i"])) if op == "re" else ""
    return FieldMatch(fld, op, values, draw(st.booleans()), draw(st.booleans()), flags, LOC)


@st.composite
def rules(draw: Any) -> list[Rule]:
    out = []
    for k in range(draw(st.integers(1, 4))):
        alts = tuple(tuple(draw(st.lists(matches(), min_size=1, max_size=2))) for _ in range(draw(st.integers(1, 2))))
        cond = draw(st.sampled_from([("name", "sel"), ("not", ("name", "sel"))]))
        out.append(Rule(f"r{k}", f"r{k}", "low", "dns", {"sel": Selection("sel", alts, LOC)}, cond, LOC, "t.yml"))
    return out


_plain = plain_match


def _expected(rule: Rule, frame: pl.DataFrame) -> list[int]:
    sel = pl.any_horizontal([pl.all_horizontal([_plain(m) for m in alt]) for alt in rule.selections["sel"].alternatives])
    expr = sel if rule.condition[0] == "name" else ~sel
    return np.flatnonzero(frame.select(expr.alias("x")).get_column("x").to_numpy()).tolist()


@settings(max_examples=250, deadline=None)
@given(frames(), rules())
def test_matches_equal_plain_polars_expressions(frame: pl.DataFrame, ruleset: list[Rule]) -> None:
    compiled = CompiledRules("dns", ruleset)
    got = {h.rule.id: h.rows for h in compiled.match(frame)}
    for rule in ruleset:
        assert got.get(rule.id, []) == _expected(rule, frame), rule


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=300, unique=True), st.data())
def test_locate_maps_every_hit_row_to_its_value(uniq: list[int], data: Any) -> None:
    # Crowd half of the values into a few top-bit slots so the shared-slot fallback runs too.
    uniq_hash = np.array([v if i % 2 else (v >> 60) << 60 | i for i, v in enumerate(uniq)], dtype=np.uint64)
    uniq_hash = np.unique(uniq_hash)
    rows = data.draw(st.lists(st.integers(0, len(uniq_hash) - 1), min_size=1, max_size=200))
    hit = np.array(sorted(set(data.draw(st.lists(st.sampled_from(range(len(uniq_hash))), max_size=10)))),
                   dtype=np.int64)
    cand, which = _locate(uniq_hash[rows], uniq_hash, hit)
    expect = [i for i, r in enumerate(rows) if r in set(hit.tolist())]
    assert cand.tolist() == expect
    assert which.tolist() == [rows[i] for i in expect]


def test_decided_rules_do_not_read_their_other_columns(monkeypatch: Any) -> None:
    """`cidr AND endswith` whose endswith matches no distinct value never reads source.ip."""
    read: list[str] = []
    real = CompiledRules._resolve

    def spy(self: CompiledRules, frame: pl.DataFrame, col: str) -> Any:
        read.append(col)
        return real(self, frame, col)

    monkeypatch.setattr(compile_mod.CompiledRules, "_resolve", spy)
    both = (FieldMatch("source.ip", "cidr", ("10.0.0.0/8",), False, False, "", LOC),
            FieldMatch("dns.question.name", "endswith", (".evil",), False, False, "", LOC))
    only = (both[1],)
    ruleset = [Rule(f"r{k}", "t", "low", "dns", {"sel": Selection("sel", (alt,), LOC)}, ("name", "sel"), LOC, "t")
               for k, alt in enumerate([both, only])]
    frame = pl.DataFrame({"source.ip": ["10.0.0.1", "1.1.1.1"], "dns.question.name": ["a.com", "b.org"]})
    assert CompiledRules("dns", ruleset).match(frame) == []
    assert read == ["dns.question.name"]
    read.clear()
    frame = pl.DataFrame({"source.ip": ["10.0.0.1", "1.1.1.1"], "dns.question.name": ["x.evil", "y.evil"]})
    hits = CompiledRules("dns", ruleset).match(frame)
    assert [(h.rule.id, h.rows) for h in hits] == [("r0", [0]), ("r1", [0, 1])]
    assert read == ["dns.question.name", "source.ip"]
