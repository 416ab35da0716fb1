"""`nimsforest test [PATH...]`: run a forest's test files in-process (the format and the
runner are nimsforest.forest.testing's; this module only finds, prints and reports)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from nimsforest.forest.testing import CaseResult

from nimsforest.cli._exit import EXIT_FAILURE, EXIT_USAGE, fail

EXIT_NO_TESTS = 5  # as pytest


@click.command("test")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("-v", "--verbose", is_flag=True, help="One line per test.")
@click.option("--record", is_flag=True,
              help="Ask the real HTTP brains (openai, anthropic) and store their answers in "
                   "the fixtures files, instead of answering from them.")
@click.option("--live", is_flag=True,
              help="Run against a real node instead (a nats-server started for each test "
                   "file, the forest on it, real HTTP brains); slower, end to end.")
@click.option("--junit-xml", "junit", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="Also write the results as JUnit XML (for CI).")
def test(paths: tuple[Path, ...], verbose: bool, record: bool, live: bool,
         junit: Path | None) -> None:
    """Run the forest's tests: every `*.test.yaml` under PATH (a folder, a forest.yaml's
    folder, or test files; default: FOREST_CONFIG's folder, else the current one).

    Each test puts events on the River or leaves on the Wind and checks the leaves, Humus
    entries and Soil values the forest makes of them (partial matching), running the real
    Lua, templates and rules brain in-process, without NATS. HTTP brains answer from the
    recorded fixtures beside the test file. The format is in docs/FOREST.md ("Tests").

    \b
    Exit status: 0 all passed, 1 a test failed or could not run, 2 usage, 5 no tests.
    """
    from nimsforest.forest.testing import find_test_files, run_test_file, run_test_file_live

    began = time.perf_counter()
    if not paths:
        forest = os.environ.get("FOREST_CONFIG")
        paths = (Path(forest).parent if forest else Path("."),)
    for p in paths:
        if not p.exists():
            fail(f"{p} does not exist (give test files or the folder that holds them).",
                 EXIT_USAGE)
    files = find_test_files(paths)
    width = shutil.get_terminal_size((80, 20)).columns
    click.echo(_rule(" nimsforest test ", width))
    if not files:
        click.echo(f"no test files (*.test.yaml) under {', '.join(map(str, paths))}")
        raise SystemExit(EXIT_NO_TESTS)
    results = []
    for f in files:
        got = asyncio.run(run_test_file_live(f) if live else run_test_file(f, record=record))
        results += got
        shown = _relative(f)
        if verbose:
            for r in got:
                click.echo(f"{shown}::{r.name} {'PASSED' if r.passed else 'ERROR' if r.error else 'FAILED'}")
        else:
            marks = "".join("." if r.passed else "E" if r.error else "F" for r in got)
            click.echo(f"{shown} {marks}")
    failed = [r for r in results if not r.passed]
    if failed:
        click.echo("")
        click.echo(_rule(" FAILURES ", width))
        for r in failed:
            click.echo(_rule(f" {_relative(r.file)}::{r.name} ", width, "_"))
            for line in r.failures:
                click.echo(f"E   {line}")
    seconds = time.perf_counter() - began
    n_fail = sum(1 for r in failed if not r.error)
    n_err = sum(1 for r in failed if r.error)
    parts = [f"{len(results) - len(failed)} passed"]
    if n_fail:
        parts.append(f"{n_fail} failed")
    if n_err:
        parts.append(f"{n_err} error{'s' if n_err > 1 else ''}")
    click.echo(_rule(f" {', '.join(parts)} in {seconds:.2f}s ", width))
    if junit is not None:
        _write_junit(junit, results, seconds)
    if failed:
        raise SystemExit(EXIT_FAILURE)


def _rule(text: str, width: int, ch: str = "=") -> str:
    side = max(3, (width - len(text)) // 2)
    return f"{ch * side}{text}{ch * side}"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _write_junit(path: Path, results: list[CaseResult], seconds: float) -> None:
    suite = ET.Element("testsuite", name="nimsforest test", tests=str(len(results)),
                       failures=str(sum(1 for r in results if not r.passed and not r.error)),
                       errors=str(sum(1 for r in results if r.error)), time=f"{seconds:.3f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=_relative(r.file), name=r.name,
                             time=f"{r.seconds:.4f}")
        if not r.passed:
            tag = "error" if r.error else "failure"
            ET.SubElement(case, tag, message=r.failures[0]).text = "\n".join(r.failures)
    root = ET.Element("testsuites")
    root.append(suite)
    try:
        ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        fail(f"Cannot write {path}: {exc.strerror or exc}.", EXIT_USAGE)
