"""Field modifiers: a plain dict from keyword to a function building a polars expression.

Each comparison modifier takes the expression of the value being tested (a column, a list
element, or the distinct values of a column) and the rule's values, and returns a boolean
expression (STYLE.md §6, pySigma's `modifier_mapping`). Sigma semantics (rules specification,
"Value modifiers"): plain strings compare case-insensitively with `*`/`?` wildcards, `|cased`
makes them exact, `|re` is case-sensitive unless `|i`, a list of values is OR unless `|all`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import polars as pl

Builder = Callable[[pl.Expr, Sequence[Any], bool, str], pl.Expr]

_WILDCARD = re.compile(r"\\[*?\\]|[*?]")


def has_wildcard(value: str) -> bool:
    return any(m.group(0) in ("*", "?") for m in _WILDCARD.finditer(value))


def unescape(value: str) -> str:
    """A Sigma string without wildcards: `\\*` → `*`, `\\\\` → `\\`."""
    return _WILDCARD.sub(lambda m: m.group(0)[1:] if m.group(0).startswith("\\") else m.group(0), value)


def wildcard_regex(value: str) -> str:
    """Translate a Sigma wildcard string to an anchored regex body."""
    out = []
    pos = 0
    for m in _WILDCARD.finditer(value):
        out.append(re.escape(value[pos : m.start()]))
        tok = m.group(0)
        out.append(".*" if tok == "*" else "." if tok == "?" else re.escape(tok[1:]))
        pos = m.end()
    out.append(re.escape(value[pos:]))
    return "".join(out)


def _fold(expr: pl.Expr, cased: bool) -> pl.Expr:
    return expr if cased else expr.str.to_lowercase()


def _any(parts: list[pl.Expr], match_all: bool) -> pl.Expr:
    out = parts[0]
    for p in parts[1:]:
        out = (out & p) if match_all else (out | p)
    return out


def _strings(values: Sequence[Any], cased: bool) -> list[str]:
    return [str(v) if cased else str(v).lower() for v in values]


def _eq(expr: pl.Expr, values: Sequence[Any], cased: bool, flags: str) -> pl.Expr:
    if any(v is None for v in values):
        rest = [v for v in values if v is not None]
        null = expr.is_null()
        return null if not rest else (null | _eq(expr, rest, cased, flags).fill_null(False))
    if not all(isinstance(v, str) for v in values):  # numbers and booleans: plain equality
        return expr.is_in(list(values)) if len(values) > 1 else expr == values[0]
    plain = [unescape(v) for v in values if not has_wildcard(v)]
    wild = [v for v in values if has_wildcard(v)]
    parts: list[pl.Expr] = []
    folded = _fold(expr, cased)
    if plain:
        strs = _strings(plain, cased)
        parts.append(folded.is_in(strs) if len(strs) > 1 else folded == strs[0])
    if wild:
        prefix = "" if cased else "(?i)"
        parts.append(expr.str.contains(prefix + "^(?s:" + "|".join(wildcard_regex(v) for v in wild) + ")$"))
    return _any(parts, False)


def _contains(expr: pl.Expr, values: Sequence[Any], cased: bool, flags: str) -> pl.Expr:
    strs = [unescape(str(v)) for v in values]
    if len(strs) > 1:
        # Aho-Corasick over all needles in one pass: the list-of-domains case stays one scan.
        return expr.str.contains_any(strs, ascii_case_insensitive=not cased)
    return _fold(expr, cased).str.contains(_strings(strs, cased)[0], literal=True)


def _startswith(expr: pl.Expr, values: Sequence[Any], cased: bool, flags: str) -> pl.Expr:
    folded = _fold(expr, cased)
    return _any([folded.str.starts_with(s) for s in _strings([unescape(str(v)) for v in values], cased)], False)


def _endswith(expr: pl.Expr, values: Sequence[Any], cased: bool, flags: str) -> pl.Expr:
    folded = _fold(expr, cased)
    return _any([folded.str.ends_with(s) for s in _strings([unescape(str(v)) for v in values], cased)], False)


def regex_prefix(flags: str) -> str:
    return f"(?{flags})" if flags else ""


def _re(expr: pl.Expr, values: Sequence[Any], cased: bool, flags: str) -> pl.Expr:
    return _any([expr.str.contains(regex_prefix(flags) + str(v)) for v in values], False)


def _cidr(expr: pl.Expr, values: Sequence[Any], cased: bool, flags: str) -> pl.Expr:
    """IPv4 networks by integer masking on the parsed address; IPv6 by prefix of the exploded form."""
    nets = [ipaddress.ip_network(str(v), strict=False) for v in values]
    parts: list[pl.Expr] = []
    v4 = [n for n in nets if n.version == 4]
    if v4:
        octets = expr.str.split_exact(".", 3)
        as_int = pl.lit(0, pl.UInt32)
        for i in range(4):
            octet = octets.struct.field(f"field_{i}").cast(pl.UInt32, strict=False)
            as_int = as_int + octet * pl.lit(1 << (8 * (3 - i)), pl.UInt32)
        for n in v4:
            mask = int(n.netmask)
            parts.append((as_int & pl.lit(mask, pl.UInt32)) == pl.lit(int(n.network_address), pl.UInt32))
    for net6 in (n for n in nets if isinstance(n, ipaddress.IPv6Network)):
        parts.append(expr.map_elements(partial(_in_v6, net=net6), return_dtype=pl.Boolean))
    return _any(parts, False)


def _in_v6(text: str, *, net: ipaddress.IPv6Network) -> bool:
    if ":" not in text:
        return False
    try:
        return ipaddress.IPv6Address(text.split("%")[0]) in net
    except ValueError:
        return False


def _cmp(op: str) -> Builder:
    def build(expr: pl.Expr, values: Sequence[Any], cased: bool, flags: str) -> pl.Expr:
        v = values[0]
        if op == "gt":
            return expr > v
        if op == "gte":
            return expr >= v
        if op == "lt":
            return expr < v
        return expr <= v

    return build


def _hour(expr: pl.Expr, values: Sequence[Any], cased: bool, flags: str) -> pl.Expr:
    """pySigma's time modifier: the UTC hour of a timestamp field is one of the values."""
    return expr.dt.hour().is_in([int(v) for v in values])


def _exists(expr: pl.Expr, values: Sequence[Any], cased: bool, flags: str) -> pl.Expr:
    present = expr.is_not_null()
    return present if values[0] else ~present


# Comparison modifiers: exactly one per field item (eq when none is written).
COMPARISONS: dict[str, Builder] = {
    "eq": _eq,
    "contains": _contains,
    "startswith": _startswith,
    "endswith": _endswith,
    "re": _re,
    "cidr": _cidr,
    "gt": _cmp("gt"),
    "gte": _cmp("gte"),
    "lt": _cmp("lt"),
    "lte": _cmp("lte"),
    "exists": _exists,
    "hour": _hour,
}

# Modifiers that change how values are read or combined rather than compare.
FLAGS: dict[str, str] = {
    "all": "AND over the values instead of OR",
    "cased": "case-sensitive string comparison",
    "i": "regex: case-insensitive",
    "m": "regex: multi-line",
    "s": "regex: dot matches newline",
    "in_list": "the values name lists in rules/lists/ or catalogs in rules/data/",
    "expand": "Sigma placeholders: '%name%' values name lists or catalogs",
}

# Sigma modifiers we know and deliberately do not implement: they target Windows command lines and
# encoded payloads, which our events never carry. Rejected with a clear message, never ignored.
UNSUPPORTED: frozenset[str] = frozenset(
    {"base64", "base64offset", "wide", "utf16", "utf16le", "utf16be", "windash", "fieldref",
     "minute", "day", "week", "month", "year"}
)

# Which comparisons apply to which kind of column.
STRING_OPS = frozenset({"eq", "contains", "startswith", "endswith", "re", "cidr", "exists"})
NUMBER_OPS = frozenset({"eq", "gt", "gte", "lt", "lte", "exists"})
OTHER_OPS = frozenset({"eq", "exists"})

# Comparisons whose answer depends only on the value, so they can run on a column's distinct values.
DICTIONARY_OPS = frozenset({"eq", "contains", "startswith", "endswith", "re", "cidr"})
