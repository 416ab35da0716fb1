"""`nimsforest test`: the demo forest's own tests pass; a broken copy fails them with
sentences that say what differs; partial matching; expected errors; HTTP brains answer from
recorded fixtures (`--record` against a real local OpenAI-compatible server); the CLI's
pytest-style output, exit codes and JUnit XML."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nimsforest.forest import demo_config_path
from nimsforest.forest.testing import matches, run_test_file
from tests.forest.conftest import write_forest
from tests.forest.fakellm import FakeLLM

DEMO_TESTS = demo_config_path().parent / "tests" / "demo.test.yaml"


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    shutil.copytree(demo_config_path().parent, tmp_path / "demo")
    return tmp_path / "demo"


async def test_the_demo_forest_passes_its_tests() -> None:
    results = await run_test_file(DEMO_TESTS)
    assert len(results) == 5
    assert all(r.passed for r in results), [r.failures for r in results]


async def test_a_broken_copy_fails_with_what_differs(demo: Path) -> None:
    scoring = demo / "treehouses" / "scoring.lua"
    scoring.write_text(scoring.read_text().replace("score = score + 40", "score = score + 4"))
    results = {r.name: r for r in await run_test_file(demo / "tests" / "demo.test.yaml")}
    vp = results["a VP of a mid-sized tech company is a medium-priority lead"]
    assert not vp.passed and not vp.error
    assert any(f.startswith("expected a leaf lead.scored with data {") and '"score": 49' in f
               for f in vp.failures), vp.failures
    assert any(f.startswith("expected Soil c-1001 to match") for f in vp.failures)
    assert results["other events and contacts without an id are dropped"].passed
    assert results["a scored lead put on the Wind is qualified by the nim alone"].passed


def test_partial_matching() -> None:
    assert matches({"a": 1}, {"a": 1, "b": 2}) and not matches({"a": 1, "c": 3}, {"a": 1})
    assert matches({"a": {"b": [1, {"c": 2}]}}, {"a": {"b": [1, {"c": 2, "d": 0}], "e": 1}})
    assert not matches([1], [1, 2]) and not matches(True, 1) and matches(1, 1.0)
    assert not matches({"a": None}, {}) and matches({"a": None}, {"a": None})


async def test_errors_fail_a_test_unless_expected(tmp_path: Path) -> None:
    write_forest(tmp_path, {"treehouses": {"cmp": {
        "subscribes": "in", "publishes": "out",
        "code": "function process(i) if i.n > 1 then return {big = true} end return nil end"}}})
    (tmp_path / "t.test.yaml").write_text("""
tests:
  - name: a string is compared with a number
    wind: {subject: in, data: {n: x}}
  - name: the same, expected
    wind: {subject: in, data: {n: x}}
    expect:
      errors: [{component: "treehouse 'cmp'", message: attempt to compare}]
  - name: an expected error that does not happen
    wind: {subject: in, data: {n: 5}}
    expect:
      leaves: [{subject: out, data: {big: true}}]
      errors: [{component: "treehouse 'cmp'"}]
""")
    one, two, three = await run_test_file(tmp_path / "t.test.yaml")
    assert one.failures and one.failures[0].startswith("treehouse 'cmp' failed: ")
    assert "attempt to compare" in one.failures[0]
    assert two.passed
    assert three.failures == ("expected treehouse 'cmp' to fail with '', it did not",)


async def test_a_bad_test_file_is_one_error(tmp_path: Path) -> None:
    write_forest(tmp_path, {})
    (tmp_path / "bad.test.yaml").write_text("tests:\n  - name: x\n    rivr: {}\n")
    (result,) = await run_test_file(tmp_path / "bad.test.yaml")
    assert result.error and "field 'tests.0.rivr'" in result.failures[0]


async def test_http_brains_answer_from_recorded_fixtures(tmp_path: Path) -> None:
    server = await FakeLLM("openai", reply=lambda body: '{"pursue": true, "contact_id": "c-1"}'
                           ).start()
    try:
        write_forest(tmp_path, {"nims": {"ask": {
            "subscribes": "lead", "publishes": "lead.asked", "template": "Score {{ score }}?",
            "brain": {"type": "openai", "base_url": server.url + "/v1", "model": "m1"}}}})
        test_file = tmp_path / "ask.test.yaml"
        test_file.write_text("""
tests:
  - name: the model says pursue
    wind: {subject: lead, data: {contact_id: c-1, score: 80}}
    expect:
      leaves: [{subject: lead.asked, data: {pursue: true}}]
      soil: {c-1: {pursue: true}}
""")
        (missing,) = await run_test_file(test_file)
        assert "has no recorded answer of openai for this prompt" in missing.failures[0]
        assert "nimsforest test --record" in missing.failures[0] and not server.seen
        (recorded,) = await run_test_file(test_file, record=True)
        assert recorded.passed and len(server.seen) == 1
        fixtures = json.loads((tmp_path / "ask.fixtures.json").read_text())
        (entry,) = fixtures["ask"].values()
        assert entry["prompt"] == "Score 80?"
        assert json.loads(entry["answer"]) == {"pursue": True, "contact_id": "c-1"}
    finally:
        await server.stop()
    (replayed,) = await run_test_file(test_file)  # the server is gone: the fixture answers
    assert replayed.passed and len(server.seen) == 1


def test_the_cli_output_exit_codes_and_junit_xml(demo: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nimsforest", "test", *args],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)

    ok = run(str(demo))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "demo.test.yaml ....." in ok.stdout and "demo.test.yaml FF..." not in ok.stdout and " 5 passed in " in ok.stdout
    contacts = demo / "trees" / "contacts.lua"
    contacts.write_text(contacts.read_text().replace("string.lower(", "string.upper("))
    junit = tmp_path / "out.xml"
    bad = run("--junit-xml", str(junit), str(demo / "forest.yaml"))
    assert bad.returncode == 1 and " FAILURES " in bad.stdout and "3 passed, 2 failed" in bad.stdout
    assert "E   expected a leaf contact.created with data" in bad.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "5" and suite.get("failures") == "2"
    assert run(str(tmp_path / "nothing")).returncode == 2
    (tmp_path / "empty").mkdir()
    assert run(str(tmp_path / "empty")).returncode == 5


async def test_live_runs_the_same_file_against_a_real_node(demo: Path) -> None:
    """`--live`: the demo's tests pass end to end on a real node; a broken copy fails them
    there too, and a script error is reported by its component."""
    from nimsforest.forest.testing import run_test_file_live

    results = await run_test_file_live(DEMO_TESTS)
    assert [r.passed for r in results] == [True] * 5, [r.failures for r in results]
    scoring = demo / "treehouses" / "scoring.lua"
    scoring.write_text(scoring.read_text().replace(
        "local size = contact.company_size or 0", "local size = contact.company_size .. 0"
    ).replace("score = score + 40", "score = score + 4"))
    (demo / "tests" / "demo.test.yaml").write_text("""
tests:
  - name: a number is joined to a string
    river: {subject: contacts, data: {event: contact.created, contact: {id: c-9, title: VP}}}
    expect:
      errors: [{component: "treehouse 'scoring'", message: "attempt to compare"}]
      no_leaves: [lead.>]
  - name: a script error not expected
    river: {subject: contacts, data: {event: contact.created, contact: {id: c-8, title: VP}}}
""")
    expected, unexpected = await run_test_file_live(demo / "tests" / "demo.test.yaml")
    assert expected.passed, expected.failures
    assert len(unexpected.failures) == 1
    assert unexpected.failures[0].startswith("treehouse 'scoring' failed: ")


async def test_outputs_render_their_requests_which_are_recorded_never_sent(
    tmp_path: Path,
) -> None:
    write_forest(tmp_path, {
        "treehouses": {"t": {"subscribes": "in", "publishes": "lead.ok",
                             "code": "function process(i) return {id = i.id, n = 2} end"}},
        "outputs": {
            "crm": {"type": "http", "subscribes": "lead.ok", "url": "http://127.0.0.1:9/x",
                    "body": '{"contact": "{{ id }}", "n": {{ n }}}'},
            "chat": {"type": "slack", "subscribes": "lead.ok", "url": "http://127.0.0.1:9/s",
                     "text": "Lead {{ id }} is ready"},
        }})
    (tmp_path / "o.test.yaml").write_text("""
tests:
  - name: both outputs send
    wind: {subject: in, data: {id: c-1}}
    expect:
      outputs:
        - {output: crm, body: {contact: c-1, n: 2}}
        - {output: chat, body: {text: Lead c-1 is ready}}
  - name: a body that differs
    wind: {subject: in, data: {id: c-2}}
    expect:
      outputs: [{output: crm, body: {contact: c-1}}]
""")
    ok, differs = await run_test_file(tmp_path / "o.test.yaml")
    assert ok.passed, ok.failures
    assert differs.failures and differs.failures[0].startswith(
        "expected output 'crm' to send {\"contact\": \"c-1\"}; the outputs sent: crm ")
