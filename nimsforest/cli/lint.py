"""`nimsforest lint [forest.yaml]`: check a forest before it is deployed (the checks are
nimsforest.forest.lint's; this module only prints them)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from nimsforest.cli._exit import EXIT_FAILURE, EXIT_USAGE, fail


def default_forest_file() -> Path:
    """FOREST_CONFIG when it is set, else ./forest.yaml."""
    return Path(os.environ.get("FOREST_CONFIG") or "forest.yaml")


@click.command("lint")
@click.argument("path", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--strict", is_flag=True, help="Warnings fail too (exit 1).")
def lint(path: Path | None, as_json: bool, strict: bool) -> None:
    """Check forest.yaml (default: FOREST_CONFIG, else ./forest.yaml) and everything it
    names, without NATS: its settings, every Lua script compiled in the sandbox (a
    global the sandbox lacks, such as os.execute, is an error), every prompt parsed and
    rendered with sample inputs, every brain configured, and the wiring (a subscription
    nothing feeds, a cycle of leaves). Each finding names its file and line.

    \b
    Exit status: 0 no errors (warnings are printed), 1 errors (or warnings with
    --strict), 2 usage (no such file).
    """
    from nimsforest.forest.lint import lint_forest

    target = path or default_forest_file()
    if not target.exists():
        fail(f"{target} does not exist (give the forest.yaml to check).", EXIT_USAGE)
    report = lint_forest(target)
    if as_json:
        click.echo(json.dumps({
            "file": report.file, "components": report.components,
            "errors": len(report.errors), "warnings": len(report.warnings),
            "findings": [f.as_dict() for f in report.findings],
        }, indent=2))
    else:
        for f in report.findings:
            click.echo(f"{f.where}: {f.severity.value}: {f.sentence} [{f.check.value}]")
        e, w = len(report.errors), len(report.warnings)
        if e or w:
            click.echo(f"{_count(e, 'error')}, {_count(w, 'warning')} in {report.file} "
                       f"({_count(report.components, 'component')}).")
        else:
            click.echo(f"{report.file}: {_count(report.components, 'component')}, no problems.")
    if report.errors or (strict and report.warnings):
        raise SystemExit(EXIT_FAILURE)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
