"""YAML reading for rule files and lists, keeping where every key and value came from.

Rule errors must say `file:line:column` (STYLE.md §5), so this module composes PyYAML node trees
and turns them into plain dicts and lists that remember the mark of each key and value. Duplicate
mapping keys are an error here: PyYAML silently keeps the last one, which hides typos in rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from appliance.config import YAML_LOADER


@dataclass(frozen=True, order=True)
class Loc:
    """A position in a file, 1-based like editors and compilers print it."""

    path: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


class YMap(dict[str, Any]):
    """A mapping that remembers the location of itself, each key and each value."""

    loc: Loc
    key_locs: dict[str, Loc]
    val_locs: dict[str, Loc]

    def key_loc(self, key: str) -> Loc:
        return self.key_locs.get(key, self.loc)

    def val_loc(self, key: str) -> Loc:
        return self.val_locs.get(key, self.loc)


class YList(list[Any]):
    """A sequence that remembers the location of itself and each item."""

    loc: Loc
    item_locs: list[Loc]

    def item_loc(self, i: int) -> Loc:
        return self.item_locs[i] if 0 <= i < len(self.item_locs) else self.loc


class YamlProblem(Exception):
    """A file is not valid YAML, or repeats a mapping key. `loc` says where."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(f"{loc}: {message}")
        self.loc = loc
        self.message = message


_Loader = YAML_LOADER  # rule loading spent most of its time in the pure-Python parser


def _loc(path: str, node: yaml.Node) -> Loc:
    return Loc(path, node.start_mark.line + 1, node.start_mark.column + 1)


def _convert(path: str, node: yaml.Node, ctor: yaml.constructor.SafeConstructor) -> Any:
    if isinstance(node, yaml.MappingNode):
        ctor.flatten_mapping(node)  # resolves `<<:` merge keys the way PyYAML's SafeLoader does
        out = YMap()
        out.loc, out.key_locs, out.val_locs = _loc(path, node), {}, {}
        for knode, vnode in node.value:
            key = ctor.construct_object(knode, deep=True)
            if not isinstance(key, str | int | float | bool) or key is None:
                raise YamlProblem(_loc(path, knode), "mapping keys must be scalars")
            skey = str(key) if not isinstance(key, bool) else str(key).lower()
            if skey in out:
                first = out.key_locs[skey]
                raise YamlProblem(
                    _loc(path, knode), f"duplicate key '{skey}' (first at line {first.line}, column {first.col})"
                )
            out[skey] = _convert(path, vnode, ctor)
            out.key_locs[skey] = _loc(path, knode)
            out.val_locs[skey] = _loc(path, vnode)
        return out
    if isinstance(node, yaml.SequenceNode):
        seq = YList(_convert(path, item, ctor) for item in node.value)
        seq.loc = _loc(path, node)
        seq.item_locs = [_loc(path, item) for item in node.value]
        return seq
    value = ctor.construct_object(node, deep=True)
    return value


def load_documents(path: str, text: str | None = None) -> list[tuple[Any, Loc]]:
    """Every YAML document in a file as (converted value, location of the document)."""
    if text is None:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise YamlProblem(Loc(path, 1, 1), f"cannot read: {exc}") from None
    loader = _Loader(text)
    docs: list[tuple[Any, Loc]] = []
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            docs.append((_convert(path, node, loader), _loc(path, node)))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Loc(path, mark.line + 1, mark.column + 1) if mark else Loc(path, 1, 1)
        raise YamlProblem(loc, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise YamlProblem(Loc(path, 1, 1), f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    return docs
