"""The first-two-byte prefilter (appliance/detect/rules/prefix.py) never drops a row that matches.

Hypothesis draws values with case variants, non-ASCII characters that lower-case to ASCII (the
Kelvin sign, dotted capital I), short, empty and long (out-of-view) strings and nulls, and
eq/startswith tests, cased or not; every row the plain polars expression accepts must be a
candidate. The bytes are also checked against Python's own reading of each value, over sliced and
multi-chunk series.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.detect.rules import prefix
from appliance.detect.rules.compile import build
from appliance.detect.rules.loader import Loc
from appliance.detect.rules.model import FieldMatch

LOC = Loc("t.yml", 1, 1)
CHARS = "aAbBkK.-/\u212aİéÉ\\*"
VALUE = st.one_of(st.none(), st.text(alphabet=CHARS, max_size=3),
                  st.text(alphabet=CHARS, min_size=11, max_size=20))
NEEDLE = st.text(alphabet=CHARS, min_size=1, max_size=4).filter(lambda v: v.replace("\\", "") != "")


@st.composite
def questions(draw: Any) -> list[FieldMatch]:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["eq", "startswith"]))
        values = draw(st.lists(NEEDLE, min_size=1, max_size=3))
        if op == "eq":  # plain values only: wildcards turn eq into a regex (prefix.needles says None)
            values = [v.replace("*", "x").replace("?", "x") for v in values]
        out.append(FieldMatch("f", op, tuple(values), draw(st.booleans()), draw(st.booleans()), "", LOC))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(VALUE, min_size=1, max_size=40), questions())
def test_every_matching_row_is_a_candidate(values: list[str | None], preds: list[FieldMatch]) -> None:
    series = pl.Series("f", values, dtype=pl.Utf8)
    pairs = prefix.needles(preds)
    if pairs is None:  # an unescaped value that is empty: the prefilter must stand aside
        return
    cand = prefix.candidates(series, prefix.table(pairs))
    assert cand is not None
    frame = series.to_frame()
    for m in preds:
        hits = np.flatnonzero(frame.select(build(m, pl.col("f"))).to_series().to_numpy())
        assert set(hits.tolist()) <= set(cand.tolist()), (m, [values[i] for i in hits])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=CHARS, max_size=16), min_size=1, max_size=30), st.data())
def test_candidates_read_the_first_two_bytes(values: list[str], data: Any) -> None:
    flags = np.zeros(65536, dtype=bool)
    flags[data.draw(st.lists(st.integers(0, 65535), max_size=200))] = True
    for b0 in data.draw(st.lists(st.integers(0, 255), max_size=3)):
        flags[b0::256] = True  # every second byte: the only way a value of < 2 bytes can pass
    start = data.draw(st.integers(0, len(values) - 1))
    series = pl.concat([pl.Series("f", values[:start], dtype=pl.Utf8), pl.Series("f", values[start:], dtype=pl.Utf8)], rechunk=False).slice(1)
    expect = []
    for i, v in enumerate(values[1:]):
        raw = v.encode()
        if len(raw) >= 2 and flags[raw[0] | raw[1] << 8] or len(raw) == 1 and flags[raw[0]]:
            expect.append(i)
    cand = prefix.candidates(series, flags)
    assert cand is not None
    got = cand.tolist()
    short = [i for i, v in enumerate(values[1:]) if len(v.encode()) < 2]
    assert [i for i in got if i not in short] == [i for i in expect if i not in short]
    assert set(expect) <= set(got)  # a value shorter than 2 bytes may pass on its padding


def test_only_prefix_questions_are_prefiltered() -> None:
    def m(op: str, *values: str, cased: bool = False) -> FieldMatch:
        return FieldMatch("f", op, values, False, cased, "", LOC)

    assert prefix.needles([m("eq", "Api.X"), m("startswith", "Mozilla", cased=True)]) == [
        (b"api.x", False), (b"Mozilla", True)]
    assert prefix.needles([m("eq", "a*b")]) is None  # wildcard: a regex
    assert prefix.needles([m("startswith", "a"), m("contains", "b")]) is None
    assert prefix.needles([m("startswith", "")]) is None
    flags = prefix.table([(b"ap", False)])
    assert flags[ord("A") | ord("p") << 8] and flags[ord("a") | ord("P") << 8]
    assert not flags[ord("b") | ord("p") << 8]
    assert flags[0xE2 | ord("x") << 8]  # a non-ASCII first byte always passes a case-free test
    assert not prefix.table([(b"ap", True)])[ord("A") | ord("p") << 8]
