"""Named value lists (rules/lists/*.yaml) and data catalogs (rules/data/*.yaml) that rules refer to.

Lists keep long, maintained value sets (AI API domains, disposable email domains, reseller key
formats) out of rule bodies, so analysts update data without touching logic. A list file has
`name`, `description` and `values:`; a catalog has `name`, `description` and `entries:` (maps with
`value`, `source` and optional `service`, `kind`). A rule names either one the same way; `name:kind`
selects only a catalog's entries of that kind (e.g. `ai_api_endpoints:domain`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from appliance.detect.rules.loader import Loc, YamlProblem, YList, YMap, load_documents
from appliance.detect.rules.model import RuleDiagnostic


@dataclass(frozen=True)
class NamedList:
    name: str
    description: str
    values: tuple[Any, ...]
    kinds: tuple[str | None, ...]
    path: str

    def select(self, kind: str | None) -> tuple[Any, ...]:
        if kind is None:
            return self.values
        return tuple(v for v, k in zip(self.values, self.kinds, strict=True) if k == kind)


def _files(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(
        os.path.join(directory, f) for f in os.listdir(directory) if f.endswith((".yaml", ".yml"))
    )


def _scalar_ok(v: Any) -> bool:
    return isinstance(v, str | int | float | bool) and v is not None


def _parse_list(path: str, doc: Any, loc: Loc, diags: list[RuleDiagnostic]) -> NamedList | None:
    if not isinstance(doc, YMap):
        diags.append(RuleDiagnostic(loc, "a list file must be a mapping with 'name' and 'values' or 'entries'"))
        return None
    stem = os.path.splitext(os.path.basename(path))[0]
    name = doc.get("name", stem)
    if not isinstance(name, str) or not name:
        diags.append(RuleDiagnostic(doc.val_loc("name"), "'name' must be a non-empty string"))
        return None
    values: list[Any] = []
    kinds: list[str | None] = []
    if "values" in doc:
        raw = doc["values"]
        if not isinstance(raw, YList):
            diags.append(RuleDiagnostic(doc.val_loc("values"), "'values' must be a list"))
            return None
        for i, v in enumerate(raw):
            if not _scalar_ok(v):
                diags.append(RuleDiagnostic(raw.item_loc(i), "list values must be strings or numbers"))
                continue
            values.append(v)
            kinds.append(None)
    elif "entries" in doc:
        raw = doc["entries"]
        if not isinstance(raw, YList):
            diags.append(RuleDiagnostic(doc.val_loc("entries"), "'entries' must be a list"))
            return None
        for i, entry in enumerate(raw):
            if not isinstance(entry, YMap) or "value" not in entry or not _scalar_ok(entry["value"]):
                diags.append(RuleDiagnostic(raw.item_loc(i), "a catalog entry needs a scalar 'value'"))
                continue
            values.append(entry["value"])
            kind = entry.get("kind")
            kinds.append(str(kind) if kind is not None else None)
    else:
        diags.append(RuleDiagnostic(doc.loc, f"list '{name}' has neither 'values' nor 'entries'"))
        return None
    return NamedList(name, str(doc.get("description", "")), tuple(values), tuple(kinds), path)


def load_lists(dirs: tuple[str, ...] | list[str]) -> tuple[dict[str, NamedList], list[RuleDiagnostic]]:
    """Every list and catalog under the given directories, by name. Later dirs do not override."""
    out: dict[str, NamedList] = {}
    diags: list[RuleDiagnostic] = []
    for directory in dirs:
        for path in _files(directory):
            try:
                docs = load_documents(path)
            except YamlProblem as exc:
                diags.append(RuleDiagnostic(exc.loc, exc.message))
                continue
            for doc, loc in docs:
                lst = _parse_list(path, doc, loc, diags)
                if lst is None:
                    continue
                if lst.name in out:
                    where = doc.val_loc("name") if isinstance(doc, YMap) else loc
                    diags.append(RuleDiagnostic(where, f"list '{lst.name}' is also defined in {out[lst.name].path}"))
                    continue
                out[lst.name] = lst
    return out, diags
