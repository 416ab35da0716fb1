"""Go templates (the Go original's prompts) rendered with Go's meaning through Jinja2."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nimsforest.forest.gotemplate import GoTemplateError, go_environment, looks_like_go, translate
from nimsforest.forest.leaf import Leaf
from nimsforest.forest.prompt import Prompt, context_for
from tests.forest.conftest import Wind
from tests.support import eventually


def render(text: str, data: Any) -> str:
    leaf = Leaf.new("lead.scored", data, "test")
    return Prompt(translate(text), "t", go_environment()).render(context_for(leaf))


LEAD = {"name": "Ada", "score": 85, "ratio": 0.5, "signals": ["cto", "budget"],
        "company": {"name": "Acme", "size": 120}, "tags": {}, "empty": []}


@pytest.mark.parametrize(("go", "want"), [
    ("Lead {{.name}} scored {{ .score }}.", "Lead Ada scored 85."),
    ("{{.company.name}} ({{.company.size}})", "Acme (120)"),
    ("{{range .signals}}- {{.}}\n{{end}}", "- cto\n- budget\n"),
    ("{{range $i, $s := .signals}}{{$i}}={{$s}} {{end}}", "0=cto 1=budget "),
    ("{{range .empty}}x{{else}}none{{end}}", "none"),
    ("{{if gt .score 70}}hot{{else if gt .score 40}}warm{{else}}cold{{end}}", "hot"),
    ("{{if .missing}}yes{{else}}no{{end}}", "no"),
    ("{{if .missing.deeper}}yes{{else}}no{{end}}", "no"),
    ("{{if and .name (ge .score 85)}}ok{{end}}", "ok"),
    ("{{if not .tags}}no tags{{end}}", "no tags"),
    ("{{with .company}}{{.name}} has {{.size}}{{end}}", "Acme has 120"),
    ("{{with .missing}}x{{else}}{{.name}}{{end}}", "Ada"),
    ("{{len .signals}} signals, first {{index .signals 0}}", "2 signals, first cto"),
    ('{{printf "%.1f%%" .ratio}} {{.score | printf "%05d"}}', "0.5% 00085"),
    ("{{/* a comment */}}a {{- \" b \" -}} c", "a b c"),
    ("{{$.name}} {{range .signals}}{{$.name}}:{{.}} {{end}}", "Ada Ada:cto Ada:budget "),
    ("{{eq .name \"Ada\"}} {{ne .score 85}}", "true false"),
    ("{{json .company}}", '{"name": "Acme", "size": 120}'),
    ("plain {% raw %} text", "plain {% raw %} text"),
])
def test_go_means_what_it_means_in_go(go: str, want: str) -> None:
    assert render(go, LEAD) == want


def test_detection_and_errors() -> None:
    assert looks_like_go("Score: {{.score}}") and looks_like_go("{{ range .xs }}{{ end }}")
    assert looks_like_go('{{eq .name "Ada"}}') and looks_like_go("{{if gt .score 70}}")
    assert not looks_like_go("Score: {{ score }} {{ lead.name }} {% if x %}{% endif %}")
    with pytest.raises(GoTemplateError, match="line 2: .*if.* has no"):
        translate("a\n{{if .x}}b")
    with pytest.raises(GoTemplateError, match=r"\$nope is not declared"):
        translate("{{$nope}}")
    # a missing field prints as Go prints it, and is false and empty where Go's is
    assert render("[{{.missing}}] [{{.company.missing}}]", LEAD) == "[<no value>] [<no value>]"
    assert render("{{if .missing}}yes{{else}}no{{end}}{{range .missing}}x{{end}}", LEAD) == "no"


async def test_a_go_prompt_runs_in_a_nim(forest_factory, nc, wind: Wind, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.forest.fakellm import FakeLLM

    llm = await FakeLLM("openai", reply=lambda body: '{"ok": true}').start()
    try:
        await forest_factory({"nims": {"qualify": {
            "subscribes": "lead.scored", "publishes": "lead.qualified", "prompt": "q.md",
            "brain": {"type": "openai", "base_url": f"{llm.url}/v1", "model": "m"},
        }}}, {"q.md": "Qualify {{.name}}:\n{{range .signals}}* {{.}}\n{{end}}"})
        leaf = Leaf.new("lead.scored", {"name": "Ada", "signals": ["cto"]}, "t").to_json()
        await nc.jetstream().publish("wind.lead.scored", leaf)
        await eventually(lambda: wind.on("lead.qualified"), what="the answer")
        prompt = json.dumps(llm.seen[0].body)
        assert "Qualify Ada:\\n* cto\\n" in prompt
    finally:
        await llm.stop()
