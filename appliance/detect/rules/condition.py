"""The Sigma `condition` expression: tokenizer and recursive-descent parser.

Grammar (Sigma rules specification, "Condition"; precedence not > and > or):

    expr   := and ('or' and)*
    and    := unary ('and' unary)*
    unary  := 'not' unary | atom
    atom   := '(' expr ')' | quant | NAME
    quant  := ('1' | 'any' | 'all' | N) 'of' (PATTERN | 'them')

`them` covers every selection except those starting with `_` (spec); `sel_*` is a glob over the
selection names. Quantifiers are expanded into plain and/or trees here, so the compiler sees only
names, not, and, or. The old aggregation syntax (`| count() by …`) and `near` are rejected: Sigma
replaced them with correlation rules.
"""

from __future__ import annotations

import fnmatch
import re
from itertools import combinations

from appliance.detect.rules.model import Cond

_TOKEN = re.compile(r"\s*(?:(\()|(\))|(\|)|([A-Za-z0-9_*?.\-]+))")
_KEYWORDS = {"and", "or", "not", "of", "them"}


class ConditionError(Exception):
    """A condition does not parse; `offset` is the 0-based character position in the string."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset
        self.message = message


def _tokenize(text: str) -> list[tuple[str, int]]:
    tokens: list[tuple[str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            start = pos + (len(text[pos:]) - len(text[pos:].lstrip()))
            raise ConditionError(start, f"unexpected character {text[start]!r} in condition")
        tok = next(g for g in m.groups() if g is not None)
        if tok == "|":
            raise ConditionError(m.start(3), "aggregation expressions ('| count() …') are not supported; "
                                             "write a correlation rule instead")
        tokens.append((tok, m.start(m.lastindex or 0)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str, names: list[str]) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.names = names
        self.used: set[str] = set()

    def peek(self) -> str | None:
        return self.tokens[self.i][0].lower() if self.i < len(self.tokens) else None

    def offset(self) -> int:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else len(self.text)

    def take(self) -> tuple[str, int]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def parse(self) -> Cond:
        if not self.tokens:
            raise ConditionError(0, "empty condition")
        node = self.expr()
        if self.i < len(self.tokens):
            tok, off = self.tokens[self.i]
            raise ConditionError(off, f"unexpected '{tok}' in condition")
        return node

    def expr(self) -> Cond:
        parts = [self.and_()]
        while self.peek() == "or":
            self.take()
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else ("or", tuple(parts))

    def and_(self) -> Cond:
        parts = [self.unary()]
        while self.peek() == "and":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else ("and", tuple(parts))

    def unary(self) -> Cond:
        if self.peek() == "not":
            self.take()
            return ("not", self.unary())
        return self.atom()

    def atom(self) -> Cond:
        if self.i >= len(self.tokens):
            raise ConditionError(len(self.text), "condition ends too early")
        tok, off = self.take()
        low = tok.lower()
        if tok == "(":
            node = self.expr()
            if self.peek() != ")":
                raise ConditionError(self.offset(), "missing ')'")
            self.take()
            return node
        if tok == ")":
            raise ConditionError(off, f"unexpected '{tok}' in condition")
        if self.peek() == "of" and (low in ("1", "any", "all") or low.isdigit()):
            self.take()
            return self.quantifier(low, off)
        if low in _KEYWORDS or low == "near":
            raise ConditionError(off, f"unexpected keyword '{tok}' in condition")
        if tok not in self.names:
            raise ConditionError(off, f"unknown selection '{tok}' in condition")
        self.used.add(tok)
        return ("name", tok)

    def quantifier(self, quant: str, off: int) -> Cond:
        if self.i >= len(self.tokens):
            raise ConditionError(len(self.text), "expected a selection pattern or 'them' after 'of'")
        pat, poff = self.take()
        if pat.lower() == "them":
            matched = [n for n in self.names if not n.startswith("_")]
        else:
            matched = [n for n in self.names if fnmatch.fnmatchcase(n, pat)]
        if not matched:
            raise ConditionError(poff, f"'{pat}' matches no selection")
        self.used.update(matched)
        leaves: tuple[Cond, ...] = tuple(("name", n) for n in matched)
        if quant == "all":
            return leaves[0] if len(leaves) == 1 else ("and", leaves)
        k = 1 if quant in ("1", "any") else int(quant)
        if k <= 0 or k > len(leaves):
            raise ConditionError(off, f"'{quant} of {pat}' needs {k} of {len(leaves)} selections")
        if k == 1:
            return leaves[0] if len(leaves) == 1 else ("or", leaves)
        # N of M: OR over the AND of every N-subset; M is small in practice (a handful of selections).
        return ("or", tuple(("and", combo) for combo in combinations(leaves, k)))


def parse_condition(text: str, names: list[str]) -> Cond:
    """Parse a condition over the given selection names. Raises ConditionError with an offset."""
    return _Parser(text, names).parse()


def positive_names(cond: Cond, negated: bool = False) -> list[str]:
    """Selections that count as evidence when true: those not under an odd number of `not`."""
    kind = cond[0]
    if kind == "name":
        return [] if negated else [cond[1]]
    if kind == "not":
        return positive_names(cond[1], not negated)
    out: list[str] = []
    for part in cond[1]:
        for n in positive_names(part, negated):
            if n not in out:
                out.append(n)
    return out


def to_text(cond: Cond) -> str:
    """Render a condition back to text (used by `rules explain`)."""
    kind = cond[0]
    if kind == "name":
        return str(cond[1])
    if kind == "not":
        return f"not {to_text(cond[1])}"
    inner = f" {kind} ".join(to_text(p) if p[0] in ("name", "not") else f"({to_text(p)})" for p in cond[1])
    return inner
