"""The rules brain: deterministic, offline. Each rule is `when` (a Jinja2 expression over
the nim's input, e.g. `score >= 70`; no `when` always matches) and `output` (a mapping
whose string values are Jinja2 templates rendered with the input). The first rule that
matches gives the output; when none matches the event is dropped.

All rules compile into one sandboxed template that renders the chosen output as JSON
(`{% if c1 %}{...}{% elif c2 %}...{% else %}null{% endif %}`), so an event costs one
render whatever the number of rules. The rules brain does not read the rendered prompt.
"""

from __future__ import annotations

import json
from typing import Any

from jinja2 import TemplateError, UndefinedError
from pydantic import ValidationError

from nimsforest.forest.brains import Brain, BrainConfigError
from nimsforest.forest.errors import EventError
from nimsforest.forest.prompt import Prompt
from nimsforest.forest.specs import Rule, RulesBrainSpec


class RulesBrain(Brain):
    kind = "rules"
    concurrency = 1024
    needs_prompt = False

    def __init__(self, spec: RulesBrainSpec, prompt: Prompt) -> None:
        rules = list(spec.rules)
        field = "brain.rules"
        if not rules:
            raw = prompt.front.get("rules")
            field = f"rules (front matter of {prompt.name})"
            if not raw:
                raise BrainConfigError(
                    "the rules brain needs rules: give brain.rules, or a rules: list in the "
                    f"front matter of {prompt.name}, or a brain (with none named, a nim asks "
                    "Anthropic when ANTHROPIC_API_KEY is set, else OpenAI with OPENAI_API_KEY)",
                    "brain.rules",
                )
            try:
                rules = [Rule.model_validate(r) for r in raw]
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                raise BrainConfigError(f"rule {where}: {err['msg']}", field) from None
        env = prompt.env
        parts: list[str] = []
        for i, rule in enumerate(rules, 1):
            try:  # compile each piece alone first, so an error names its rule
                if rule.when:
                    env.compile_expression(rule.when)
                body = self._json_template(rule.output)
                env.from_string(body)
            except TemplateError as exc:
                raise BrainConfigError(f"rule {i}: {exc}", field) from None
            keyword = "if" if not parts else "elif"
            if rule.when:
                parts.append(f"{{% {keyword} ({rule.when}) %}}{body}")
            else:
                parts.append(("{% else %}" if parts else "{% if true %}") + body)
                break  # rules after an unconditional one can never match
        source = "".join(parts) + (
            "" if any(p.startswith("{% else %}") for p in parts) else "{% else %}null"
        )
        self._template = env.from_string(source + "{% endif %}")

    @classmethod
    def _json_template(cls, value: Any) -> str:
        """A template rendering `value` as JSON; strings are templates themselves."""
        if isinstance(value, str):
            if "{{" in value or "{%" in value:
                return f"{{% filter tojson %}}{value}{{% endfilter %}}"
            return _literal(value)
        if isinstance(value, dict):
            items = [f"{_literal(str(k))}: {cls._json_template(v)}" for k, v in value.items()]
            return "{{ '{' }}" + ", ".join(items) + "{{ '}' }}"
        if isinstance(value, list):
            return "[" + ", ".join(cls._json_template(v) for v in value) + "]"
        return json.dumps(value)

    async def think(self, prompt: str, context: dict[str, Any]) -> dict[str, Any] | None:
        return self.decide(context)

    def decide(self, context: dict[str, Any]) -> dict[str, Any] | None:
        try:
            rendered = self._template.render(context)
        except UndefinedError as exc:
            raise EventError(f"rules: {exc.message}") from None
        except TemplateError as exc:
            raise EventError(f"rules: {exc}") from None
        return json.loads(rendered)

    async def aclose(self) -> None:
        return None


def _literal(text: str) -> str:
    """`text` as a JSON string literal that Jinja copies verbatim."""
    return json.dumps(text).replace("{", "{{ '{' }}").replace("}", "{{ '}' }}")
