"""The condition grammar (appliance/detect/rules/condition.py): precedence, quantifiers, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from _rules_support import detection_rule, engine_for, hits

from appliance.detect.rules.condition import ConditionError, parse_condition, positive_names

NAMES = ["sel_a", "sel_b", "filter", "_hidden"]


def test_precedence_not_and_or() -> None:
    assert parse_condition("sel_a or sel_b and not filter", NAMES) == (
        "or", (("name", "sel_a"), ("and", (("name", "sel_b"), ("not", ("name", "filter"))))),
    )


def test_parentheses_override_precedence() -> None:
    assert parse_condition("(sel_a or sel_b) and filter", NAMES) == (
        "and", (("or", (("name", "sel_a"), ("name", "sel_b"))), ("name", "filter")),
    )


def test_quantifiers() -> None:
    assert parse_condition("1 of sel_*", NAMES) == ("or", (("name", "sel_a"), ("name", "sel_b")))
    assert parse_condition("any of sel_*", NAMES) == ("or", (("name", "sel_a"), ("name", "sel_b")))
    assert parse_condition("all of sel_*", NAMES) == ("and", (("name", "sel_a"), ("name", "sel_b")))
    # `them` leaves out names starting with an underscore (Sigma spec)
    assert parse_condition("all of them", NAMES) == (
        "and", (("name", "sel_a"), ("name", "sel_b"), ("name", "filter")),
    )
    two = parse_condition("2 of them", NAMES)
    assert two[0] == "or" and len(two[1]) == 3


@pytest.mark.parametrize(
    ("text", "offset", "fragment"),
    [
        ("sel_a and", 9, "ends too early"),
        ("sel_a and nope", 10, "unknown selection 'nope'"),
        ("(sel_a or sel_b", 15, "missing ')'"),
        ("1 of zzz*", 5, "matches no selection"),
        ("sel_a | count() > 5", 6, "aggregation"),
        ("sel_a sel_b", 6, "unexpected 'sel_b'"),
        ("sel_a $ sel_b", 6, "unexpected character"),
    ],
)
def test_errors_have_offsets(text: str, offset: int, fragment: str) -> None:
    with pytest.raises(ConditionError) as exc:
        parse_condition(text, NAMES)
    assert exc.value.offset == offset
    assert fragment in exc.value.message


def test_positive_names_skip_negated() -> None:
    cond = parse_condition("sel_a and not (filter or not sel_b)", NAMES)
    assert positive_names(cond) == ["sel_a", "sel_b"]


DET = """
sel_a:
  url.path|contains: chat
sel_b:
  destination.port: 8080
filter:
  url.domain: api.openai.com
condition: {cond}
"""

EVENTS = [
    {"source.port": 0, "url.path": "/chat", "destination.port": 8080, "url.domain": "x"},
    {"source.port": 1, "url.path": "/chat", "destination.port": 443, "url.domain": "api.openai.com"},
    {"source.port": 2, "url.path": "/other", "destination.port": 8080, "url.domain": "api.openai.com"},
    {"source.port": 3, "url.path": "/other", "destination.port": 1, "url.domain": "y"},
]


@pytest.mark.parametrize(
    ("cond", "expected"),
    [
        ("1 of sel_*", [0, 1, 2]),
        ("all of sel_*", [0]),
        ("all of them", []),
        ("1 of them", [0, 1, 2]),
        ("not filter", [0, 3]),
        ("(sel_a or sel_b) and not filter", [0]),
        ("sel_a or sel_b and not filter", [0, 1]),
        ("not (sel_a or sel_b)", [3]),
        ("2 of them", [0, 1, 2]),
    ],
)
def test_conditions_evaluate(tmp_path: Path, cond: str, expected: list[int]) -> None:
    engine = engine_for(tmp_path, detection_rule(DET.format(cond=cond)))
    assert hits(engine, "http", EVENTS) == expected


def test_condition_list_is_or(tmp_path: Path) -> None:
    det = DET.replace("condition: {cond}", "condition:\n  - sel_b and not filter\n  - not sel_a and not sel_b")
    engine = engine_for(tmp_path, detection_rule(det))
    assert hits(engine, "http", EVENTS) == [0, 3]
