"""_strdict.c (through strdict.py) must give every row the code of its exact value, as a dict does.

Codes are numbered in order of first appearance, so they must equal a Python dict's exactly, and
so must the first row of each. Hypothesis draws nulls, empty, short (inlined in the 16-byte views),
13-32-byte and longer values, non-ASCII ones, and long values sharing their length and first bytes
(which the kernel first compares, then hashes), over several chunks, sliced, with every row or a
subset in any order. Big columns check the table's growth and the two give-ups (too many values,
mostly hashed rows). `_resolve` must give the same truths with the kernel and without.
Planted bugs caught: dropping the padding mask of short views (test_padding_is_not_part_of_a_value),
and answering a long row with its length-and-prefix slot without comparing its bytes
(test_codes_equal_a_dict).
"""

from __future__ import annotations

import importlib
import shutil
import struct
from typing import Any
from unittest import mock

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.detect.rules import prefix, strdict
from appliance.detect.rules.compile import CompiledRules
from appliance.detect.rules.loader import Loc
from appliance.detect.rules.model import FieldMatch, Rule, Selection
from appliance.detect.rules.truth import Rows

try:  # the kernel itself, whether or not APPLIANCE_NO_COMPILED rules it out of the engine
    KERNEL: Any = importlib.import_module("appliance.detect.rules._strdict")
except ImportError:
    KERNEL = None
LOC = Loc("t.yml", 1, 1)

SHORT = st.text(max_size=12)  # non-ASCII text of up to 12 characters may well be longer in bytes
CROWDED = st.builds(lambda mid, tail: "Mozi" + mid + tail,  # one length, one prefix, many values
                    st.text(alphabet="xyé", min_size=9, max_size=9), st.sampled_from(["", "/v1", "-" * 40]))
VALUE = st.one_of(st.none(), st.just(""), SHORT, CROWDED, st.text(min_size=13, max_size=80))


def reference(values: list[str | None], rows: list[int]) -> tuple[list[int], list[int]]:
    seen: dict[str, int] = {}
    codes: list[int] = []
    first: list[int] = []
    for r in rows:
        v = values[r]
        if v is None:
            codes.append(-1)
            continue
        if v not in seen:
            seen[v] = len(first)
            first.append(r)
        codes.append(seen[v])
    return codes, first


def encode(s: pl.Series, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """strdict.encode with the kernel in, even under APPLIANCE_NO_COMPILED; None without a kernel."""
    with mock.patch.object(strdict, "_strdict", KERNEL):
        return strdict.encode(s, rows)


def check(s: pl.Series, rows: np.ndarray | None = None) -> None:
    got = encode(s, rows)
    if KERNEL is None:  # no compiler: the engine takes the polars path (test_the_kernel_is_built...)
        assert got is None
        return
    assert got is not None
    want = reference(s.to_list(), list(range(s.len())) if rows is None else rows.tolist())
    assert (got[0].tolist(), got[1].tolist()) == want


def test_the_kernel_is_built_where_a_compiler_exists() -> None:
    if shutil.which("cc") or shutil.which("gcc"):
        assert strdict.COMPILED and KERNEL is not None, \
            "appliance/detect/rules/_strdict.c was not built: run pip install -e . again"


@settings(max_examples=400, deadline=None)
@given(st.lists(VALUE, min_size=1, max_size=12), st.data())
def test_codes_equal_a_dict(pool: list[str | None], data: Any) -> None:
    values = data.draw(st.lists(st.sampled_from(pool), max_size=200))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=3)))
    parts = [pl.Series("v", values[a:b], dtype=pl.Utf8) for a, b in zip([0, *cuts], [*cuts, len(values)], strict=True)]
    s = pl.concat(parts, rechunk=False)
    start = data.draw(st.integers(0, len(values)))
    s = s.slice(start)  # views and validity read at an offset
    check(s)
    if s.len():
        rows = np.array(data.draw(st.lists(st.integers(0, s.len() - 1), max_size=50)), dtype=np.int64)
        check(s, rows)  # any order, repeats
        check(s, np.unique(rows))  # sorted, as the prefix screen gives them


def test_padding_is_not_part_of_a_value() -> None:
    """Arrow's short views are zero-padded by convention only: garbage after the bytes is ignored."""
    long = b"a value longer than twelve bytes"
    views = (struct.pack("<i", 3) + b"abc" + b"\xff" * 9 + struct.pack("<i", 3) + b"abc" + bytes(9)
             + struct.pack("<i", 0) + b"\x01" * 12 + struct.pack("<i", 0) + bytes(12)
             + struct.pack("<i", len(long)) + long[:4] + struct.pack("<ii", 0, 0))
    arr = pa.Array.from_buffers(pa.string_view(), 5, [None, pa.py_buffer(views), pa.py_buffer(long)])
    s = pl.from_arrow(arr)
    assert isinstance(s, pl.Series)
    check(s)
    if KERNEL is not None:
        codes = encode(s)
        assert codes is not None and codes[0].tolist() == [0, 0, 1, 1, 2]


def test_a_view_outside_its_buffer_is_an_error_not_a_read() -> None:
    long = b"a value longer than twelve bytes"
    views = struct.pack("<i", len(long)) + long[:4] + struct.pack("<ii", 0, 10)
    s = pl.from_arrow(pa.Array.from_buffers(pa.string_view(), 1, [None, pa.py_buffer(views), pa.py_buffer(long)]))
    assert isinstance(s, pl.Series)
    if KERNEL is not None:
        with pytest.raises(ValueError, match="outside its data buffer"):
            encode(s)
        with pytest.raises(IndexError):
            encode(pl.Series(["a", "b"]), np.array([2]))


def test_the_table_grows_past_small_sizes() -> None:
    """40,000 values (short, crowded long ones of 13-32 and of 60 bytes) in 60,000 rows."""
    rng = np.random.default_rng(1)
    pool = np.array([f"v{i}" for i in range(20_000)] + [f"/api/{i:08d}/x" for i in range(10_000)]
                    + [f"/api/{i:08d}/" + "y" * 46 for i in range(10_000)], dtype=object)
    values = pool[rng.permutation(len(pool))].tolist() + pool[rng.integers(0, len(pool), 20_000)].tolist()
    check(pl.Series("v", values, dtype=pl.Utf8))


def test_it_gives_up_on_too_many_values_or_mostly_hashed_rows() -> None:
    """Past 65,536 values, or when most of the first 65,536 rows must be hashed, polars' path is
    faster (_strdict.c, MAX_CODES and SAMPLE): encode says None."""
    if KERNEL is None:
        return
    assert encode(pl.Series("v", [f"value {i}" for i in range(70_000)])) is None
    rng = np.random.default_rng(2)
    crowded = np.array([f"/api/v1/conversations/{i:08x}/messages" for i in range(300)], dtype=object)
    assert encode(pl.Series("v", crowded[rng.integers(0, 300, 70_000)].tolist(), dtype=pl.Utf8)) is None
    distinct = np.array([f"{i:03d}-and-a-long-distinct-tail" for i in range(300)], dtype=object)
    assert encode(pl.Series("v", distinct[rng.integers(0, 300, 70_000)].tolist(), dtype=pl.Utf8)) is not None


def _truths(cr: CompiledRules, frame: pl.DataFrame, col: str) -> dict[int, Any]:
    def norm(t: Any) -> Any:
        if isinstance(t, Rows):
            return tuple(t.idx.tolist())
        if isinstance(t, np.ndarray):
            return tuple(np.flatnonzero(t).tolist())
        return t
    return {i: norm(t) for i, t in cr._resolve(frame, col).items()}


PATHS = ["/v1/chat/completions", "/V1/CHAT", "/api/7/models", "/q/x7", "", "/\u212aelvin/x7", "/p/1/item",
         "/api/7/models/extra/and/a/long/tail/of/more/than/32/bytes"]
AGENTS = ["agent-7/1.0", "Agent-7/2.0", "Mozilla/5.0 build 1", "Mozilla/5.0 build 2", "curl/8", "ag"]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_resolve_gives_the_same_truths_with_and_without_the_kernel(data: Any) -> None:
    n = data.draw(st.integers(1, 400))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    frame = pl.DataFrame({
        "url.path": pl.Series([None if rng.random() < 0.1 else PATHS[rng.integers(len(PATHS))] for _ in range(n)],
                              dtype=pl.Utf8),
        "user_agent.original": pl.Series([AGENTS[rng.integers(len(AGENTS))] for _ in range(n)], dtype=pl.Utf8),
    })
    preds = [FieldMatch("url.path", "contains", ("/v1/",), False, False, "", LOC),
             FieldMatch("url.path", "endswith", ("/x7",), False, True, "", LOC),
             FieldMatch("url.path", "re", ("^/api/[0-9]+/[a-z]+$",), False, True, "", LOC),
             FieldMatch("url.path", "contains", ("tail", "CHAT"), True, False, "", LOC),
             FieldMatch("user_agent.original", "startswith", ("agent-",), False, False, "", LOC),
             FieldMatch("user_agent.original", "eq", ("curl/8",), False, True, "", LOC)]
    rules = [Rule(f"r{k}", "t", "low", "http", {"sel": Selection("sel", ((m,),), LOC)}, ("name", "sel"), LOC, "t")
             for k, m in enumerate(preds)]
    cr = CompiledRules("http", rules)
    assert "user_agent.original" in cr._prefix  # the prefix-screened subset goes to the kernel too
    used = []
    real = strdict.encode

    def spy(s: pl.Series, rows: np.ndarray | None = None) -> Any:
        out = real(s, rows)
        used.append(out is not None)
        return out

    for col in ("url.path", "user_agent.original"):
        with mock.patch.object(strdict, "_strdict", None):
            want = _truths(cr, frame, col)
        with mock.patch.object(strdict, "_strdict", KERNEL), mock.patch.object(strdict, "encode", spy):
            assert _truths(cr, frame, col) == want, col
    if KERNEL is not None and frame["url.path"].null_count() < n:
        assert used[0]  # url.path (not prefix-screened) went through the kernel


def test_the_compiled_screen_passes_the_rows_prefix_candidates_does() -> None:
    rng = np.random.default_rng(3)
    values = np.array(AGENTS + PATHS + [None], dtype=object)[rng.integers(0, len(AGENTS) + len(PATHS) + 1, 5000)]
    s = pl.concat([pl.Series("v", values[:2000].tolist(), dtype=pl.Utf8),
                   pl.Series("v", values[2000:].tolist(), dtype=pl.Utf8)], rechunk=False).slice(7)
    flags = prefix.table([(b"agent-", False), (b"/v", True)])
    with mock.patch.object(strdict, "_strdict", KERNEL):
        got = strdict.candidates(s, flags)
    want = prefix.candidates(s, flags)
    assert got is not None and want is not None and got.tolist() == want.tolist() and len(got)
