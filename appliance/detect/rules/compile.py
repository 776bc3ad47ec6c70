"""Rules → polars expressions evaluated over one event batch, many rules for little more than one.

Three measures keep the cost of N rules far below N passes over the batch:

1. Predicates are shared: every distinct (field, modifier, values) question is computed once,
   however many rules ask it.
2. String questions run on a column's distinct values, not its rows. Network events repeat
   the same domains, user agents, paths and JA4s; a batch of 1M rows has a few thousand distinct
   values. A predicate true for no distinct value becomes the constant False without touching
   the rows; one true for some becomes a single hash probe (`is_in`) over the rows.
3. Each rule's condition is folded with those constants, so a rule that cannot match this batch
   costs nothing more; the remaining rules are one `select` over the predicate columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from appliance.detect.rules.condition import positive_names
from appliance.detect.rules.fields import field_types, kind_of
from appliance.detect.rules.model import Cond, FieldMatch, Rule
from appliance.detect.rules.modifiers import COMPARISONS, DICTIONARY_OPS

# Tree over predicate indexes: ("p", i) | ("not", t) | ("and", (t…)) | ("or", (t…)) | ("const", bool)
Tree = tuple[Any, ...]
Value = bool | pl.Expr


@dataclass
class RuleHits:
    """Rows of one batch that raised one rule, and per row which selection matched which field value."""

    rule: Rule
    rows: list[int]
    evidence: list[list[dict[str, Any]]]


def _build(m: FieldMatch, expr: pl.Expr) -> pl.Expr:
    build = COMPARISONS[m.op]
    if m.match_all and len(m.values) > 1:  # Sigma `|all`: every value must match, not any
        out = build(expr, [m.values[0]], m.cased, m.flags)
        for v in m.values[1:]:
            out = out & build(expr, [v], m.cased, m.flags)
        return out
    return build(expr, list(m.values), m.cased, m.flags)


class CompiledRules:
    """All detection rules of one logsource, compiled once; `match(frame)` per batch."""

    def __init__(self, logsource: str, rules: list[Rule]) -> None:
        self.logsource = logsource
        self.rules = rules
        self.types = field_types(logsource)
        self.preds: list[FieldMatch] = []
        index: dict[tuple[Any, ...], int] = {}
        self.sel_trees: list[dict[str, Tree]] = []
        self.cond_trees: list[Tree] = []
        self.positive: list[list[str]] = []
        for rule in rules:
            trees: dict[str, Tree] = {}
            for name, sel in rule.selections.items():
                alts: list[Tree] = []
                for alt in sel.alternatives:
                    leaves: list[Tree] = []
                    for m in alt:
                        key = m.key()
                        if key not in index:
                            index[key] = len(self.preds)
                            self.preds.append(m)
                        leaves.append(("p", index[key]))
                    alts.append(("and", tuple(leaves)))
                trees[name] = ("or", tuple(alts))
            self.sel_trees.append(trees)
            self.cond_trees.append(_substitute(rule.condition, trees))
            self.positive.append(positive_names(rule.condition))
        self.columns = sorted({m.field for m in self.preds})

    def _prepare(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The needed columns with their declared dtypes; absent ones (no enrichment, say) are null."""
        cols = []
        for name in self.columns:
            dtype = self.types[name]
            if name not in frame.columns:
                cols.append(pl.lit(None, dtype=dtype).alias(name))
            elif frame.schema[name] != dtype:
                cols.append(pl.col(name).cast(dtype, strict=False))
            else:
                cols.append(pl.col(name))
        return frame.select(cols) if cols else pl.DataFrame({"_": pl.zeros(frame.height, eager=True)})

    def _predicates(self, frame: pl.DataFrame) -> dict[int, Value]:
        """Each predicate as a constant or a row expression (see the module docstring, point 2)."""
        values: dict[int, Value] = {}
        by_field: dict[str, list[int]] = {}
        for i, m in enumerate(self.preds):
            kind = kind_of(self.types[m.field])
            if m.op in DICTIONARY_OPS and kind in ("string", "list") and None not in m.values:
                by_field.setdefault(m.field, []).append(i)
            else:
                values[i] = _build(m, pl.col(m.field)).fill_null(False)
        if not by_field:
            return values
        # Distinct values via the first row of each distinct 64-bit hash: about half the cost of
        # `unique()` on strings (measured, bench/rules_bench.py). Polars' hash is seeded
        # deterministically; two different values sharing a hash (~1e-12 per batch at 10^4
        # values) would let the second go unevaluated.
        exprs = []
        for f in by_field:
            col = pl.col(f).explode() if kind_of(self.types[f]) == "list" else pl.col(f)
            exprs.append(col.gather(col.hash().arg_unique()).drop_nulls().implode().alias(f))
        distinct = frame.lazy().select(exprs).collect()
        for fld, idxs in by_field.items():
            uniq = distinct.get_column(fld)[0]
            if len(uniq) == 0:
                values.update({i: False for i in idxs})
                continue
            truth = pl.DataFrame({"v": uniq}).select(
                [_build(self.preds[i], pl.col("v")).fill_null(False).alias(str(i)) for i in idxs]
            )
            is_list = kind_of(self.types[fld]) == "list"
            for i in idxs:
                hit = uniq.filter(truth.get_column(str(i)))
                if len(hit) == 0:
                    values[i] = False
                elif is_list:
                    values[i] = pl.col(fld).list.eval(pl.element().is_in(hit.implode())).list.any().fill_null(False)
                else:
                    values[i] = pl.col(fld).is_in(hit.implode()).fill_null(False)
        return values

    def match(self, frame: pl.DataFrame) -> list[RuleHits]:
        if frame.height == 0 or not self.rules:
            return []
        data = self._prepare(frame)
        pvals = self._predicates(data)
        live = sorted(i for i, v in pvals.items() if isinstance(v, pl.Expr))
        exprs: dict[int, pl.Expr] = {}
        for r, tree in enumerate(self.cond_trees):
            folded = _fold(tree, pvals)
            if folded is True:
                exprs[r] = pl.repeat(True, pl.len())
            elif isinstance(folded, pl.Expr):
                exprs[r] = folded
        if not exprs:
            return []
        pcols = data.lazy().select([_as_expr(pvals[i]).alias(f"p{i}") for i in live]).collect() if live else \
            pl.DataFrame({"_": pl.zeros(frame.height, eager=True)})
        renamed = {i: pl.col(f"p{i}") for i in live}
        cols = {i: (renamed[i] if i in renamed else v) for i, v in pvals.items()}
        decided = pcols.select([_as_expr(_fold(self.cond_trees[r], cols)).alias(str(r)) for r in exprs])
        out: list[RuleHits] = []
        for r in exprs:
            col = decided.get_column(str(r))
            if not col.any():
                continue
            rows = col.arg_true()
            out.append(RuleHits(self.rules[r], rows.to_list(), self._evidence(r, rows, data, pcols, cols)))
        return out

    def _evidence(self, r: int, rows: pl.Series, data: pl.DataFrame, pcols: pl.DataFrame,
                  cols: dict[int, Value]) -> list[list[dict[str, Any]]]:
        """Per matched row: each true positive selection, its true field predicates and the row's values."""
        names = self.positive[r]
        trees = self.sel_trees[r]
        sub = pcols[rows]
        checks: list[pl.Expr] = []
        items: list[tuple[str, int]] = []
        for name in names:
            checks.append(_as_expr(_fold(trees[name], cols)).alias(f"s:{name}"))
            for leaf in _leaves(trees[name]):
                items.append((name, leaf))
                checks.append(_as_expr(cols[leaf]).alias(f"l:{name}:{leaf}"))
        truth = sub.select(checks) if checks else pl.DataFrame()
        fields = sorted({self.preds[leaf].field for _, leaf in items})
        vals = data[rows].select(fields).to_dicts() if fields else [{} for _ in range(len(rows))]
        tdicts = truth.to_dicts() if checks else [{} for _ in range(len(rows))]
        out: list[list[dict[str, Any]]] = []
        for row_vals, t in zip(vals, tdicts, strict=True):
            ev: list[dict[str, Any]] = []
            for name, leaf in items:
                if not t.get(f"s:{name}") or not t.get(f"l:{name}:{leaf}"):
                    continue
                m = self.preds[leaf]
                value = row_vals.get(m.field)
                if isinstance(value, datetime):  # JSON-safe, like @timestamp
                    value = value.isoformat()
                item = {"selection": name, "field": m.field, "match": m.op, "value": value}
                if m.lists:
                    item["list"] = ",".join(m.lists)
                if item not in ev:
                    ev.append(item)
            out.append(ev)
        return out


def _substitute(cond: Cond, trees: dict[str, Tree]) -> Tree:
    kind = cond[0]
    if kind == "name":
        return trees[cond[1]]
    if kind == "not":
        return ("not", _substitute(cond[1], trees))
    return (kind, tuple(_substitute(c, trees) for c in cond[1]))


def _leaves(tree: Tree) -> list[int]:
    if tree[0] == "p":
        return [tree[1]]
    if tree[0] == "not":
        return []  # a negated predicate is not evidence of a match
    out: list[int] = []
    for t in tree[1]:
        out.extend(x for x in _leaves(t) if x not in out)
    return out


def _fold(tree: Tree, values: dict[int, Value]) -> Value:
    """Constant-fold a tree: predicates known constant this batch collapse whole rules to False."""
    kind = tree[0]
    if kind == "p":
        return values[tree[1]]
    if kind == "not":
        inner = _fold(tree[1], values)
        return (not inner) if isinstance(inner, bool) else ~inner
    is_and = kind == "and"
    parts: list[pl.Expr] = []
    for t in tree[1]:
        v = _fold(t, values)
        if isinstance(v, bool):
            if v != is_and:  # False in an AND, True in an OR decides it
                return v
            continue
        parts.append(v)
    if not parts:
        return is_and
    out = parts[0]
    for p in parts[1:]:
        out = (out & p) if is_and else (out | p)
    return out


def _as_expr(v: Value) -> pl.Expr:
    # pl.repeat, not pl.lit: a select of only literals would give one row, not one per event.
    return pl.repeat(v, pl.len()) if isinstance(v, bool) else v
