"""`appliance rules …`: validate, test, list and explain rule packs.

The only module of the rule language that prints (STYLE.md §7): everything it calls returns values
or raises. Errors print as `file:line:column: message`, all at once, and the exit code says
whether the pack is usable.
"""

from __future__ import annotations

from enum import IntEnum

import click

from appliance.detect.rules.engine import DATA_DIRS, validate
from appliance.detect.rules.explain import explain_correlation, explain_rule
from appliance.detect.rules.lists import load_lists
from appliance.detect.rules.model import Correlation, Rule, RuleSet
from appliance.detect.rules.parse import parse_paths
from appliance.detect.rules.testing import run_tests


class ExitStatus(IntEnum):
    OK = 0
    FAILED = 1  # tests failed or rules are invalid
    USAGE = 2  # click's own code for bad arguments


_data_dir = click.option(
    "--data-dir", "data_dirs", multiple=True, default=DATA_DIRS, show_default=True,
    help="Folders of named lists (rules/lists) and catalogs (rules/data) that rules refer to.",
)
_paths = click.argument("paths", nargs=-1, type=click.Path(exists=True))


@click.group("rules")
def rules() -> None:
    """Validate, test, list and explain detection rules."""


@rules.command("validate")
@_paths
@_data_dir
def validate_cmd(paths: tuple[str, ...], data_dirs: tuple[str, ...]) -> None:
    """Check rule files: schema, fields, modifiers, regexes, CIDRs, ids, references, lists."""
    targets = list(paths) or ["rules"]
    problems = validate(targets, data_dirs)
    for p in problems:
        click.echo(str(p))
    if problems:
        click.echo(f"{len(problems)} error(s)", err=True)
        raise SystemExit(ExitStatus.FAILED)
    ruleset = _load(targets, data_dirs)
    click.echo(f"ok: {len(ruleset.rules)} rules, {len(ruleset.correlations)} correlations")


@rules.command("test")
@_paths
@_data_dir
@click.option("--allow-untested", is_flag=True, help="Do not fail on rules without test cases.")
@click.option("-v", "--verbose", is_flag=True, help="List every case, not only failures.")
def test_cmd(paths: tuple[str, ...], data_dirs: tuple[str, ...], allow_untested: bool, verbose: bool) -> None:
    """Run every rule's sample events: matches must alert, non-matches must not."""
    report = run_tests(list(paths) or ["rules"], data_dirs)
    for d in report.diagnostics:
        click.echo(str(d))
    if report.diagnostics:
        click.echo(f"{len(report.diagnostics)} error(s); no tests were run", err=True)
        raise SystemExit(ExitStatus.FAILED)
    for r in report.results:
        if verbose or not r.ok:
            click.echo(("PASS " if r.ok else "FAIL ") + r.describe())
    for rid, title, loc in report.untested:
        click.echo(f"{loc}: {title} ({rid}) has no test cases")
    failed = len(report.failed)
    rules_run = len({r.rule_id for r in report.results})
    click.echo(f"{len(report.results) - failed} passed, {failed} failed, {len(report.results)} cases "
               f"in {rules_run} rules; {len(report.untested)} rules without tests")
    if failed or (report.untested and not allow_untested):
        raise SystemExit(ExitStatus.FAILED)


@rules.command("list")
@_paths
@_data_dir
def list_cmd(paths: tuple[str, ...], data_dirs: tuple[str, ...]) -> None:
    """A table of rules: id, title, level, logsource (or correlation type)."""
    ruleset = _load(list(paths) or ["rules"], data_dirs)
    rows = [(r.id, r.title, r.level, r.logsource) for r in ruleset.rules]
    rows += [(c.id, c.title, c.level, f"correlation:{c.type}") for c in ruleset.correlations]
    rows.sort(key=lambda r: (r[3], r[1]))
    header = ("ID", "TITLE", "LEVEL", "LOGSOURCE")
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


@rules.command("explain")
@click.argument("rule_id")
@click.option("--path", "paths", multiple=True, default=("rules",), show_default=True,
              type=click.Path(exists=True), help="Rule files or folders to search.")
@_data_dir
def explain_cmd(rule_id: str, paths: tuple[str, ...], data_dirs: tuple[str, ...]) -> None:
    """Describe one rule (by id, id prefix or name) in words."""
    ruleset = _load(list(paths), data_dirs)
    target = _find(ruleset, rule_id)
    if isinstance(target, Rule):
        click.echo(explain_rule(target))
    else:
        titles = {}
        for r in ruleset.rules:
            titles[r.id] = r.title
            if r.name:
                titles[r.name] = r.title
        click.echo(explain_correlation(target, titles))


def _load(paths: list[str], data_dirs: tuple[str, ...]) -> RuleSet:
    lists, diags = load_lists(data_dirs)
    ruleset, more = parse_paths(paths, lists)
    problems = sorted(set(diags + more))
    if problems:
        for p in problems:
            click.echo(f"appliance: error: {p}", err=True)
        raise SystemExit(ExitStatus.FAILED)
    return ruleset


def _find(ruleset: RuleSet, key: str) -> Rule | Correlation:
    everything: list[Rule | Correlation] = [*ruleset.rules, *ruleset.correlations]
    exact = [r for r in everything if key in (r.id, r.name)]
    found = exact or [r for r in everything if r.id.startswith(key)]
    if len(found) != 1:
        reason = "no rule" if not found else f"{len(found)} rules"
        click.echo(f"appliance: error: {reason} match '{key}'", err=True)
        raise SystemExit(ExitStatus.FAILED)
    return found[0]
