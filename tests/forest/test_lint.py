"""`nimsforest lint`: the demo forest is clean; in broken copies of it every broken line is
reported where it is (forest.yaml's line for a setting, the script's or prompt's own line
for what is wrong inside it); the wiring checks; the CLI's exit codes and --json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nimsforest.forest import demo_config_path
from nimsforest.forest.lint import Check, Severity, lint_forest, wiring
from nimsforest.forest.model import ComponentKind, ComponentRef
from nimsforest.forest.specs import NimSpec, TreeHouseSpec
from nimsforest.forest.subjects import overlap


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """A copy of the demo forest to break."""
    shutil.copytree(demo_config_path().parent, tmp_path / "demo")
    return tmp_path / "demo"


def replace_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


def found(path: Path) -> set[tuple[str, str, str, int | None]]:
    report = lint_forest(path)
    return {(f.severity.value, f.check.value, Path(f.file).name, f.line) for f in report.findings}


def test_the_demo_forest_is_clean() -> None:
    report = lint_forest(demo_config_path())
    assert report.findings == () and report.components == 4


def test_each_broken_line_is_reported_where_it_is(demo: Path) -> None:
    replace_line(demo / "treehouses" / "scoring.lua", 12, "    score = score + ;")
    replace_line(demo / "trees" / "contacts.lua", 12, '    os.execute("curl example.org")')
    replace_line(demo / "nims" / "qualify.md.j2", 22, "Lead {{ contact_id }} {% if %}")
    text = (demo / "forest.yaml").read_text()
    yaml_lines = text.splitlines()
    headers_at = next(i for i, x in enumerate(yaml_lines, 1) if "headers:" in x)
    (demo / "forest.yaml").write_text(text.replace("headers: [X-Request-Id]", "hedaers: [x]"))
    report = lint_forest(demo / "forest.yaml")
    got = {(f.severity, f.check, Path(f.file).name, f.line) for f in report.findings}
    assert got == {
        (Severity.ERROR, Check.BUILD, "scoring.lua", 12),
        (Severity.ERROR, Check.BUILD, "contacts.lua", 12),
        (Severity.ERROR, Check.BUILD, "qualify.md.j2", 22),
        (Severity.ERROR, Check.CONFIG, "forest.yaml", headers_at),
    }
    by_file = {Path(f.file).name: f for f in report.findings}
    assert "uses os.execute, which the sandbox does not have" in by_file["contacts.lua"].sentence
    assert by_file["forest.yaml"].sentence == (
        "source 'contacts', field 'hedaers': is not a known setting."
    )
    assert by_file["scoring.lua"].component == ComponentRef(kind=ComponentKind.TREEHOUSE,
                                                            name="scoring")


def test_inline_code_globals_env_and_prompt_rendering(demo: Path) -> None:
    (demo / "forest.yaml").write_text((demo / "forest.yaml").read_text() + """
  divide:
    subscribes: lead.qualified
    publishes: lead.divided
    brain: openai
    template: |
      Lead {{ contact_id }}
      {{ 1 // 0 }}
  remote:
    subscribes: lead.qualified
    publishes: lead.remote
    template: "{{ contact_id }}"
    brain: {type: openai, base_url: "${LINT_TEST_UNSET_URL}"}
""")
    text = (demo / "forest.yaml").read_text()
    text = text.replace("treehouses:\n", """treehouses:
  inline:
    subscribes: lead.scored
    publishes: lead.inline
    code: |
      function process(i)
        local x = 1
        return {v = undefined_thing}
      end
""", 1)
    (demo / "forest.yaml").write_text(text)
    lines = text.splitlines()
    code_line = next(i for i, x in enumerate(lines, 1) if "undefined_thing" in x)
    divide_line = next(i for i, x in enumerate(lines, 1) if "1 // 0" in x)
    url_line = next(i for i, x in enumerate(lines, 1) if "LINT_TEST_UNSET_URL" in x)
    got = found(demo / "forest.yaml")
    assert got == {
        ("warning", "global", "forest.yaml", code_line),
        ("error", "prompt", "forest.yaml", divide_line),
        ("warning", "env", "forest.yaml", url_line),
    }


def test_yaml_and_read_errors_have_their_line(tmp_path: Path) -> None:
    bad = tmp_path / "forest.yaml"
    bad.write_text("trees:\n  a: {watches: x\n  b: 1\n")
    (f,) = lint_forest(bad).findings
    assert f.check is Check.YAML and f.line == 3
    (f,) = lint_forest(tmp_path / "missing.yaml").findings
    assert f.check is Check.READ and "cannot be read" in f.sentence


def th(subscribes: str, publishes: str) -> TreeHouseSpec:
    return TreeHouseSpec(subscribes=subscribes, publishes=publishes, code="x")


def ref(name: str, kind: ComponentKind = ComponentKind.TREEHOUSE) -> ComponentRef:
    return ComponentRef(kind=kind, name=name)


def test_wiring_unfed_subscriptions_and_cycles() -> None:
    specs = {
        ref("a"): th("start", "one"),
        ref("b"): th("one", "two"),
        ref("c"): th("two.>", "one"),  # two.x never published: unfed; no cycle through it
        ref("d"): th("two", "one"),  # b -> d -> b: a cycle
        ref("n", ComponentKind.NIM): NimSpec(subscribes="one", publishes="lead.{id}",
                                             template="x"),
        ref("m"): th("lead.*", "out"),  # fed by the nim's placeholder subject
    }
    got = {(r.name, check, severity) for r, _, severity, check, _ in wiring(specs)}
    assert got == {
        ("a", Check.UNFED, Severity.WARNING),
        ("c", Check.UNFED, Severity.WARNING),
        ("b", Check.CYCLE, Severity.ERROR),
    }
    (cycle,) = [s for r, _, _, c, s in wiring(specs) if c is Check.CYCLE]
    assert "treehouse 'b' -> treehouse 'd' -> treehouse 'b'" in cycle
    assert overlap("a.*", "a.b") and overlap("a.>", "a.b.c") and not overlap("a.>", "a")
    assert not overlap("a.b", "a.c") and overlap("*", "x") and not overlap("a", "a.b")


def test_the_cli_exit_codes_and_json(demo: Path) -> None:
    def lint(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nimsforest", "lint", *args],
                              capture_output=True, text=True, timeout=60)

    clean = lint(str(demo / "forest.yaml"))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "4 components, no problems" in clean.stdout
    replace_line(demo / "treehouses" / "scoring.lua", 12, "    score = score + ;")
    broken = lint(str(demo / "forest.yaml"))
    assert broken.returncode == 1
    assert f"{demo / 'treehouses' / 'scoring.lua'}:12: error: treehouse 'scoring'" in broken.stdout
    as_json = json.loads(lint("--json", str(demo / "forest.yaml")).stdout)
    assert as_json["errors"] == 1 and as_json["findings"][0]["line"] == 12
    usage = lint(str(demo / "nope.yaml"))
    assert usage.returncode == 2 and "does not exist" in usage.stderr


def test_sections_follow_forest_yaml_rules(tmp_path: Path) -> None:
    """Lint takes the file's sections by config.py's own rules: an alias (songbirds) is
    its section, a section forest.yaml refuses is one finding with its line."""
    f = tmp_path / "forest.yaml"
    f.write_text("treehouses:\n  t: {subscribes: a, publishes: b, code: 'function process(i) return i end'}\n"
                 "songbirds:\n  out:\n    type: http\n    subscribes: b\n    url: http://127.0.0.1:9/x\n"
                 "    bogus: 1\n")
    got = {(x.check, x.line, x.sentence) for x in lint_forest(f).findings}
    assert got == {(Check.UNFED, 2, "treehouse 't' subscribes to a, which no component "
                    "publishes (leaves may still come from outside the forest)."),
                   (Check.CONFIG, 8, "output 'out', field 'bogus': is not a known setting.")}
    f.write_text("trees: {}\nviewer: {port: 1}\n")
    (finding,) = lint_forest(f).findings  # the Go original's live view: loads, ignored
    assert finding.line == 2 and finding.severity is Severity.WARNING
    assert "section 'viewer'" in finding.sentence and "/ui" in finding.sentence
    f.write_text("trees: {}\n\ntreehouse: {}\n")
    (finding,) = lint_forest(f).findings
    assert finding.line == 3 and "'treehouse' is not a known section" in finding.sentence
