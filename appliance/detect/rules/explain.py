"""`appliance rules explain ID`: a rule in words, its selections, and what it needs from enrichment.

Analysts reviewing a pack should not have to read modifier syntax to know what a rule does or
why it stays silent on a sensor without GeoIP/ASN databases; this renders both as text.
"""

from __future__ import annotations

from appliance import schema
from appliance.detect.rules.condition import to_text
from appliance.detect.rules.model import Correlation, FieldMatch, Rule

_OPS = {
    "eq": "is",
    "contains": "contains",
    "startswith": "starts with",
    "endswith": "ends with",
    "re": "matches regex",
    "cidr": "is in network",
    "gt": "is greater than",
    "gte": "is at least",
    "lt": "is less than",
    "lte": "is at most",
}
_CMP = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<=", "eq": "=="}
_MAX_SHOWN = 6

ENRICHMENT_FIELDS = frozenset(f.name for f in schema.ENRICHMENT) | frozenset(
    f.name.replace("source.", "signup.") for f in schema.ENRICHMENT if f.name.startswith("source.")
)


def _values(m: FieldMatch) -> str:
    if m.lists:
        return "a value of list " + ", ".join(f"'{n}'" for n in m.lists) + f" ({len(m.values)} values)"
    shown = [repr(v) for v in m.values[:_MAX_SHOWN]]
    more = f" … (+{len(m.values) - _MAX_SHOWN})" if len(m.values) > _MAX_SHOWN else ""
    joiner = " and " if m.match_all else " or "
    return joiner.join(shown) + more


def describe_match(m: FieldMatch) -> str:
    if m.op == "exists":
        return f"{m.field} is {'present' if m.values[0] else 'absent'}"
    if m.op == "eq" and m.values == (None,):
        return f"{m.field} is absent"
    case = " (case-sensitive)" if m.cased or m.op == "re" and "i" not in m.flags else ""
    return f"{m.field} {_OPS[m.op]} {_values(m)}{case}"


def enrichment_needs(rule: Rule) -> list[str]:
    return sorted({m.field for s in rule.selections.values() for alt in s.alternatives for m in alt
                   if m.field in ENRICHMENT_FIELDS})


def explain_rule(rule: Rule) -> str:
    lines = [f"{rule.title}  [{rule.level}]", f"id: {rule.id}", f"logsource: {rule.logsource}"
             + ("  (plain Sigma, fields mapped)" if rule.sigma else ""), f"file: {rule.loc}"]
    if rule.description:
        lines += ["", rule.description.strip()]
    lines += ["", f"Raises an alert for each {rule.logsource} event where: {to_text(rule.condition)}", ""]
    for name, sel in rule.selections.items():
        alts = [" and ".join(describe_match(m) for m in alt) for alt in sel.alternatives]
        lines.append(f"  {name}: " + ("\n      or ".join(alts)))
    needs = enrichment_needs(rule)
    lines.append("")
    if needs:
        lines.append("Needs enrichment (silent without it): " + ", ".join(needs))
    else:
        lines.append("Needs no enrichment: works on decoded events alone.")
    lines += _tail(rule.falsepositives, rule.references, len(rule.tests))
    return "\n".join(lines)


def explain_correlation(corr: Correlation, titles: dict[str, str]) -> str:
    names = [f"'{titles.get(r, r)}'" for r in corr.rules]
    group = ", ".join(corr.group_by) or "everything (no group-by)"
    thr = corr.threshold
    cond = " and ".join(f"{_CMP[op]} {v:g}" for op, v in thr.ops) if thr else ""
    if corr.type == "event_count":
        what = f"counts matches of {' or '.join(names)} per {group} within {corr.timespan_text}; fires when the count is {cond}"
    elif corr.type == "value_count":
        what = (f"counts distinct values of {thr.field if thr else '?'} in matches of {' or '.join(names)} "
                f"per {group} within {corr.timespan_text}; fires when that number is {cond}")
    else:
        order = " then ".join(names) if corr.type == "temporal_ordered" else " and ".join(names)
        need = f"{cond} of the rules" if thr else "all of them"
        what = f"fires when {order} match for the same {group} within {corr.timespan_text} ({need})"
    lines = [f"{corr.title}  [{corr.level}]", f"id: {corr.id}", f"correlation: {corr.type}", f"file: {corr.loc}"]
    if corr.description:
        lines += ["", corr.description.strip()]
    lines += ["", "It " + what + ".", "Windows run on event time (@timestamp), identically in replay and live."]
    if not corr.generate:
        lines.append("The referenced rules raise no alerts of their own (Sigma 'generate: false').")
    lines += _tail(corr.falsepositives, corr.references, len(corr.tests))
    return "\n".join(lines)


def _tail(fps: tuple[str, ...], refs: tuple[str, ...], n_tests: int) -> list[str]:
    out = ["", "False positives:"] + [f"  - {f}" for f in fps or ("none documented",)]
    out += ["References:"] + [f"  - {r}" for r in refs or ("none",)]
    out.append(f"Test cases: {n_tests}")
    return out
