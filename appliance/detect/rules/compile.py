"""Rules → per-batch boolean row masks: the detect stage's matcher, many rules for little more than one.

A batch's cost is set by the columns the rules must read, not by the number of rules
(docs/rules.md, Performance; measured by bench/rules_bench.py):

1. Predicates are shared: every distinct (field, modifier, values) question is computed once,
   however many rules ask it.
2. String questions run on a column's distinct values, not its rows. Network events repeat the
   same domains, user agents, paths and JA4s: a batch of 1M rows has a few thousand distinct
   values. Per column, one hash pass finds them; every predicate on that column is then one
   vectorised expression over the distinct values (compiled once, not per batch). Only rows whose
   hash is one of the few *hit* values are mapped back (a small `is_in` over the hashes), and
   each candidate row is checked against its representative, so a hash collision can never
   invent a match.
3. Short-circuit per column: a rule is folded with what is known so far, in waves. Each wave
   reads, for every still-undecided rule, the one unread column most rules ask about; a rule
   already decided (e.g. `cidr AND endswith` whose path test matched no distinct value) never
   makes its other columns be read. The columns of one wave are read in parallel threads
   (polars releases the GIL).
4. Row-level predicates (numbers, exists, hour, null tests) are computed only for rules still
   alive after the string columns, and every condition is combined as numpy boolean arrays.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from appliance.detect.rules.condition import positive_names
from appliance.detect.rules.fields import field_types, kind_of
from appliance.detect.rules.model import Cond, FieldMatch, Rule
from appliance.detect.rules.modifiers import COMPARISONS, DICTIONARY_OPS

# Tree over predicate indexes: ("p", i) | ("not", t) | ("and", (t…)) | ("or", (t…))
Tree = tuple[Any, ...]
# A predicate's value over one batch: a constant, or one bool per row.
Truth = bool | np.ndarray

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(2, pl.thread_pool_size()), thread_name_prefix="rules")
    return _POOL


@dataclass
class RuleHits:
    """Rows of one batch that raised one rule, and per row which selection matched which field value."""

    rule: Rule
    rows: list[int]
    evidence: list[list[dict[str, Any]]]


def build(m: FieldMatch, expr: pl.Expr) -> pl.Expr:
    """The straightforward polars expression of one field item over `expr` (nulls → False)."""
    make = COMPARISONS[m.op]
    if m.match_all and len(m.values) > 1:  # Sigma `|all`: every value must match, not any
        out = make(expr, [m.values[0]], m.cased, m.flags)
        for v in m.values[1:]:
            out = out & make(expr, [v], m.cased, m.flags)
        return out.fill_null(False)
    return make(expr, list(m.values), m.cased, m.flags).fill_null(False)


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
        # Dictionary predicates (value-only string tests) grouped by column, their expressions over
        # the distinct values built once here; the rest are row expressions.
        self._dict_cols: dict[str, list[int]] = {}
        self._row_exprs: dict[int, pl.Expr] = {}
        for i, m in enumerate(self.preds):
            if m.op in DICTIONARY_OPS and kind_of(self.types[m.field]) in ("string", "list") \
                    and None not in m.values:
                self._dict_cols.setdefault(m.field, []).append(i)
            else:
                self._row_exprs[i] = build(m, pl.col(m.field)).alias(str(i))
        self._dict_exprs = {c: [build(self.preds[i], pl.col("v")).alias(str(i)) for i in idxs]
                            for c, idxs in self._dict_cols.items()}
        self._rule_cols = [sorted({self.preds[i].field for i in _all_leaves(t)} & set(self._dict_cols))
                           for t in self.cond_trees]

    def _series(self, frame: pl.DataFrame, name: str) -> pl.Series:
        """One column with its declared dtype; absent (no enrichment, say) means all null."""
        dtype = self.types[name]
        if name not in frame.columns:
            return pl.Series(name, [None] * frame.height, dtype=dtype)
        s = frame.get_column(name)
        return s if s.dtype == dtype else s.cast(dtype, strict=False)

    def match(self, frame: pl.DataFrame) -> list[RuleHits]:
        if frame.height == 0 or not self.rules:
            return []
        vals: dict[int, Truth] = {}
        alive = self._read_columns(frame, vals)
        if not alive:
            return []
        self._row_predicates(frame, alive, vals)
        out: list[RuleHits] = []
        for r in alive:
            t = _eval(self.cond_trees[r], vals)
            if t is False:
                continue
            rows = np.arange(frame.height) if t is True else np.flatnonzero(t)
            if len(rows):
                out.append(RuleHits(self.rules[r], rows.tolist(), self._evidence(r, rows, frame, vals)))
        return out

    def _read_columns(self, frame: pl.DataFrame, vals: dict[int, Truth]) -> list[int]:
        """Resolve dictionary predicates in waves (module docstring, point 3); the rules not yet False."""
        done: set[str] = set()
        alive = list(range(len(self.rules)))
        while True:
            wanted: list[list[str]] = []
            still = []
            for r in alive:
                if _fold(self.cond_trees[r], vals) is False:
                    continue
                still.append(r)
                cols = [c for c in self._rule_cols[r] if c not in done]
                if cols:
                    wanted.append(cols)
            alive = still
            if not wanted:
                return alive
            popular = Counter(c for cols in wanted for c in cols)
            wave = sorted({max(cols, key=lambda c: (popular[c], c)) for cols in wanted})
            if len(wave) == 1:
                results = [self._resolve(frame, wave[0])]
            else:
                results = list(_pool().map(lambda c: self._resolve(frame, c), wave))
            for c, res in zip(wave, results, strict=True):
                vals.update(res)
                done.add(c)

    def _resolve(self, frame: pl.DataFrame, col: str) -> dict[int, Truth]:
        """Every dictionary predicate of one column (module docstring, point 2)."""
        idxs = self._dict_cols[col]
        n = frame.height
        s = self._series(frame, col)
        if s.null_count() == n:
            return dict.fromkeys(idxs, False)
        owner: np.ndarray | None = None  # list columns: the row each exploded element came from
        if isinstance(s.dtype, pl.List):
            exploded = pl.DataFrame({"r": np.arange(n, dtype=np.int64), "v": s}).explode("v")
            owner, flat = exploded.get_column("r").to_numpy(), exploded.get_column("v")
        else:
            flat = s
        # Distinct values via the first row of each distinct 64-bit hash: about half the cost of
        # `unique()` on strings (measured, bench/rules_bench.py). Polars' hash is seeded
        # deterministically; a value sharing its hash with another (~1e-12 per batch at 10^4
        # distinct values) would be judged by the other's truth.
        h = flat.hash()
        first = h.arg_unique()
        uniq = flat.gather(first)
        truth = pl.DataFrame({"v": uniq}).select(self._dict_exprs[col]).to_numpy()
        hit = np.flatnonzero(truth.any(axis=1))
        if len(hit) == 0:
            return dict.fromkeys(idxs, False)
        cand, which = _locate(h.to_numpy(), h.gather(first).to_numpy(), hit)
        row_truth = truth[which]
        rows = cand if owner is None else owner[cand]
        out: dict[int, Truth] = {}
        for j, i in enumerate(idxs):
            on = rows[row_truth[:, j]]
            if len(on) == 0:
                out[i] = False
                continue
            arr = np.zeros(n, dtype=bool)
            arr[on] = True  # list columns: any element matching marks the row
            out[i] = True if len(on) == n and owner is None else arr
        return out

    def _row_predicates(self, frame: pl.DataFrame, alive: list[int], vals: dict[int, Truth]) -> None:
        """Row expressions needed by the rules still alive, as numpy masks (constants when uniform)."""
        need = sorted({i for r in alive for i in _all_leaves(self.cond_trees[r]) if i not in vals})
        if not need:
            return
        fields = sorted({self.preds[i].field for i in need})
        data = pl.DataFrame([self._series(frame, f) for f in fields])
        got = data.select([self._row_exprs[i] for i in need])
        for i in need:
            arr = got.get_column(str(i)).to_numpy()
            vals[i] = _constant(arr)

    def _evidence(self, r: int, rows: np.ndarray, frame: pl.DataFrame,
                  vals: dict[int, Truth]) -> list[list[dict[str, Any]]]:
        """Per matched row: each true positive selection, its true field predicates and the row's values."""
        trees = self.sel_trees[r]
        items: list[tuple[str, int]] = []
        sel_truth: dict[str, Truth] = {}
        leaf_truth: dict[int, Truth] = {}
        for name in self.positive[r]:
            sel_truth[name] = _eval(trees[name], vals, rows)
            for leaf in _leaves(trees[name]):
                items.append((name, leaf))
                leaf_truth[leaf] = _at(vals[leaf], rows)
        fields = sorted({self.preds[leaf].field for _, leaf in items})
        idx = pl.Series(rows)
        columns = {f: self._series(frame, f).gather(idx).to_list() for f in fields}
        out: list[list[dict[str, Any]]] = []
        for k in range(len(rows)):
            ev: list[dict[str, Any]] = []
            for name, leaf in items:
                if not _bit(sel_truth[name], k) or not _bit(leaf_truth[leaf], k):
                    continue
                m = self.preds[leaf]
                value = columns[m.field][k]
                if isinstance(value, datetime):  # JSON-safe, like @timestamp
                    value = value.isoformat()
                item = {"selection": name, "field": m.field, "match": m.op, "value": value}
                if m.lists:
                    item["list"] = ",".join(m.lists)
                if item not in ev:
                    ev.append(item)
            out.append(ev)
        return out


def _locate(row_hash: np.ndarray, uniq_hash: np.ndarray, hit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose hash is one of the hit distinct values', and which one (an index into uniq_hash).

    Every row's hash is one of uniq_hash, so a direct-address table on the top bits of the hash
    (16 to 32 slots per distinct value) maps rows to values with one gather, no hashing or
    searching per row; rows in the few slots shared by two distinct values fall back to a
    binary search. Measured on 1M rows: ~3 ms where `is_in` + `searchsorted` took ~25 ms.
    """
    bits = max(8, min(22, int(16 * len(uniq_hash)).bit_length()))
    shift = np.uint64(64 - bits)
    slot_of = (uniq_hash >> shift).astype(np.intp)
    table = np.full(1 << bits, -1, dtype=np.int32)
    table[slot_of[hit]] = hit
    table[(np.bincount(slot_of, minlength=1 << bits) > 1) & (table >= 0)] = -2  # a hit shares its slot
    code = table[(row_hash >> shift).view(np.int64)]  # a view: no copy of 1M slots
    cand = np.flatnonzero(code != -1)
    which = code[cand]
    odd = which == -2
    if odd.any():
        order = np.argsort(uniq_hash)
        found = order[np.searchsorted(uniq_hash, row_hash[cand[odd]], sorter=order)]
        which[odd] = found
        keep = np.isin(which, hit)
        cand, which = cand[keep], which[keep]
    return cand, which


def _constant(arr: np.ndarray) -> Truth:
    if not arr.any():
        return False
    return True if arr.all() else arr


def _at(v: Truth, rows: np.ndarray) -> Truth:
    return v if isinstance(v, bool) else v[rows]


def _bit(v: Truth, k: int) -> bool:
    return v if isinstance(v, bool) else bool(v[k])


def _substitute(cond: Cond, trees: dict[str, Tree]) -> Tree:
    kind = cond[0]
    if kind == "name":
        return trees[cond[1]]
    if kind == "not":
        return ("not", _substitute(cond[1], trees))
    return (kind, tuple(_substitute(c, trees) for c in cond[1]))


def _leaves(tree: Tree) -> list[int]:
    """Predicates that are evidence of a match: not under a `not`, first-seen order."""
    if tree[0] == "p":
        return [tree[1]]
    if tree[0] == "not":
        return []
    out: list[int] = []
    for t in tree[1]:
        out.extend(x for x in _leaves(t) if x not in out)
    return out


def _all_leaves(tree: Tree) -> set[int]:
    if tree[0] == "p":
        return {tree[1]}
    if tree[0] == "not":
        return _all_leaves(tree[1])
    return set().union(*(_all_leaves(t) for t in tree[1]))


def _fold(tree: Tree, values: dict[int, Truth]) -> bool | None:
    """Three-valued fold: True/False when known constant this batch, None when it depends on rows or
    on predicates not computed yet. A False removes the rule without touching the rows."""
    kind = tree[0]
    if kind == "p":
        v = values.get(tree[1])
        return v if isinstance(v, bool) else None
    if kind == "not":
        inner = _fold(tree[1], values)
        return None if inner is None else not inner
    is_and = kind == "and"
    unknown = False
    for t in tree[1]:
        v = _fold(t, values)
        if v is None:
            unknown = True
        elif v != is_and:  # False in an AND, True in an OR decides it
            return v
    return None if unknown else is_and


def _eval(tree: Tree, values: dict[int, Truth], rows: np.ndarray | None = None) -> Truth:
    """A tree over fully known predicates, as a constant or a numpy mask (over `rows` when given)."""
    kind = tree[0]
    if kind == "p":
        v = values[tree[1]]
        return v if rows is None or isinstance(v, bool) else v[rows]
    if kind == "not":
        inner = _eval(tree[1], values, rows)
        return (not inner) if isinstance(inner, bool) else ~inner
    is_and = kind == "and"
    acc: np.ndarray | None = None
    for t in tree[1]:
        v = _eval(t, values, rows)
        if isinstance(v, bool):
            if v != is_and:
                return v
            continue
        acc = v if acc is None else (acc & v if is_and else acc | v)
    return is_and if acc is None else acc
