"""Predicate truths over one batch and the condition trees folded over them (used by compile.py).

A predicate's truth is a constant, a dense mask (one bool per row, for row-level tests such as
numbers) or `Rows`, the sorted row indexes where it holds (string tests, which answer on distinct
values and usually hold on few rows). Keeping string hits sparse lets a rule whose selections are
rare be evaluated, and its remaining fields read, on its few candidate rows instead of the whole
batch: at 1% matches over 1M events it took the 100-rule bench's matching from ~120 ms to ~50 ms.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

# Tree over predicate indexes: ("p", i) | ("not", t) | ("and", (t…)) | ("or", (t…))
Tree = tuple[Any, ...]


class Rows:
    """The sorted, distinct row indexes where a predicate holds (never empty, never every row)."""

    __slots__ = ("idx",)

    def __init__(self, idx: np.ndarray) -> None:
        self.idx = idx


# A predicate's value over one batch: a constant, one bool per row, or the rows where it holds.
Truth = bool | np.ndarray | Rows


def member(sorted_idx: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each of `rows`, whether it is in `sorted_idx` (both sorted): a binary search, no hashing."""
    pos = np.searchsorted(sorted_idx, rows)
    out = np.zeros(len(rows), dtype=bool)
    ok = pos < len(sorted_idx)
    out[ok] = sorted_idx[pos[ok]] == rows[ok]
    return out


def substitute(cond: Any, trees: dict[str, Tree]) -> Tree:
    """A parsed condition with each selection name replaced by its predicate tree."""
    kind = cond[0]
    if kind == "name":
        return trees[cond[1]]
    if kind == "not":
        return ("not", substitute(cond[1], trees))
    return (kind, tuple(substitute(c, trees) for c in cond[1]))


def leaves(tree: Tree) -> list[int]:
    """Predicates that are evidence of a match: not under a `not`, first-seen order."""
    if tree[0] == "p":
        return [tree[1]]
    if tree[0] == "not":
        return []
    out: list[int] = []
    for t in tree[1]:
        out.extend(x for x in leaves(t) if x not in out)
    return out


def all_leaves(tree: Tree) -> set[int]:
    if tree[0] == "p":
        return {tree[1]}
    if tree[0] == "not":
        return all_leaves(tree[1])
    return set().union(*(all_leaves(t) for t in tree[1]))


def fold(tree: Tree, values: dict[int, Truth]) -> bool | None:
    """Three-valued fold: True/False when known constant this batch, None when it depends on rows or
    on predicates not computed yet. A False removes the rule without touching the rows."""
    kind = tree[0]
    if kind == "p":
        v = values.get(tree[1])
        return v if isinstance(v, bool) else None
    if kind == "not":
        inner = fold(tree[1], values)
        return None if inner is None else not inner
    is_and = kind == "and"
    unknown = False
    for t in tree[1]:
        v = fold(t, values)
        if v is None:
            unknown = True
        elif v != is_and:  # False in an AND, True in an OR decides it
            return v
    return None if unknown else is_and


def support(tree: Tree, values: dict[int, Truth], limit: int) -> np.ndarray | None:
    """Sorted rows outside which the tree is certainly false, from the sparse truths known so far;
    None when no bound of at most `limit` rows follows (unknown, dense or negated parts)."""
    kind = tree[0]
    if kind == "p":
        v = values.get(tree[1])
        if v is False:
            return np.empty(0, dtype=np.int64)
        return v.idx if isinstance(v, Rows) and len(v.idx) <= limit else None
    if kind == "not":
        return np.empty(0, dtype=np.int64) if fold(tree[1], values) is True else None
    parts = [support(t, values, limit) for t in tree[1]]
    if kind == "and":
        bounded = sorted((p for p in parts if p is not None), key=len)
        if not bounded:
            return None
        acc = bounded[0]
        for other in bounded[1:]:
            acc = acc[member(other, acc)]
        return acc
    if any(p is None for p in parts) or sum(len(p) for p in parts if p is not None) > limit:
        return None
    return np.unique(np.concatenate([p for p in parts if p is not None]))


def evaluate(tree: Tree, leaf: Callable[[int], bool | np.ndarray]) -> bool | np.ndarray:
    """A tree over predicates whose values `leaf` gives aligned on the same rows: a constant or a mask."""
    kind = tree[0]
    if kind == "p":
        return leaf(tree[1])
    if kind == "not":
        inner = evaluate(tree[1], leaf)
        return (not inner) if isinstance(inner, bool) else ~inner
    is_and = kind == "and"
    acc: np.ndarray | None = None
    for t in tree[1]:
        v = evaluate(t, leaf)
        if isinstance(v, bool):
            if v != is_and:
                return v
            continue
        acc = v if acc is None else (acc & v if is_and else acc | v)
    return is_and if acc is None else acc


class Truths:
    """Every predicate value known for one batch: over all rows (`known`), or over the candidate rows
    `cand` of the rules evaluated sparsely (`local`, aligned with `cand`)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.known: dict[int, Truth] = {}
        self.cand = np.empty(0, dtype=np.int64)
        self.local: dict[int, bool | np.ndarray] = {}
        self._dense: dict[int, np.ndarray] = {}

    def at(self, i: int, rows: np.ndarray | None) -> bool | np.ndarray:
        """Predicate i over `rows` (sorted; None: every row) as a constant or an aligned mask."""
        v = self.known.get(i)
        if v is None:  # computed on the candidate rows only; `rows` is a subset of them
            local = self.local[i]
            if isinstance(local, bool):
                return local
            assert rows is not None
            return local[np.searchsorted(self.cand, rows)]
        if isinstance(v, bool):
            return v
        if isinstance(v, Rows):
            if rows is not None:
                return member(v.idx, rows)
            if i not in self._dense:
                mask = np.zeros(self.n, dtype=bool)
                mask[v.idx] = True
                self._dense[i] = mask
            return self._dense[i]
        return v if rows is None else v[rows]
