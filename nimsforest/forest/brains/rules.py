"""The rules brain: deterministic, offline. Each rule is `when` (a Jinja2 expression over
the nim's input, e.g. `score >= 70`; no `when` always matches) and `output` (a mapping
whose string values are Jinja2 templates rendered with the input). The first rule that
matches gives the output; when none matches the event is dropped."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError, UndefinedError
from pydantic import ValidationError

from nimsforest.forest.brains import BrainConfigError
from nimsforest.forest.config import Rule, RulesBrainSpec
from nimsforest.forest.errors import EventError
from nimsforest.forest.prompt import Prompt


class RulesBrain:
    kind = "rules"
    concurrency = 1024

    def __init__(self, spec: RulesBrainSpec, prompt: Prompt) -> None:
        rules = list(spec.rules)
        field = "brain.rules"
        if not rules:
            raw = prompt.front.get("rules")
            field = f"rules (front matter of {prompt.name})"
            if not raw:
                raise BrainConfigError(
                    f"the rules brain needs rules: give brain.rules, or a rules: list in the front matter of {prompt.name}",
                    "brain.rules",
                )
            try:
                rules = [Rule.model_validate(r) for r in raw]
            except ValidationError as exc:
                err = exc.errors()[0]
                raise BrainConfigError(f"rule {err['loc'][0] if err['loc'] else ''}: {err['msg']}", field) from None
        env = prompt.env
        self._rules: list[tuple[Any, Any]] = []
        for i, rule in enumerate(rules, 1):
            try:
                cond = env.compile_expression(rule.when, undefined_to_none=False) if rule.when else None
                out = self._compile(env, rule.output)
            except TemplateError as exc:
                raise BrainConfigError(f"rule {i}: {exc}", field) from None
            self._rules.append((cond, out))

    @classmethod
    def _compile(cls, env: Any, value: Any) -> Any:
        if isinstance(value, str):
            return env.from_string(value) if ("{{" in value or "{%" in value) else value
        if isinstance(value, dict):
            return {k: cls._compile(env, v) for k, v in value.items()}
        if isinstance(value, list):
            return [cls._compile(env, v) for v in value]
        return value

    @classmethod
    def _render(cls, value: Any, ctx: dict[str, Any]) -> Any:
        if hasattr(value, "render"):
            return value.render(ctx)
        if isinstance(value, dict):
            return {k: cls._render(v, ctx) for k, v in value.items()}
        if isinstance(value, list):
            return [cls._render(v, ctx) for v in value]
        return value

    async def think(self, prompt: str, context: dict[str, Any]) -> dict[str, Any] | None:
        return self.decide(context)

    def decide(self, context: dict[str, Any]) -> dict[str, Any] | None:
        try:
            for i, (cond, out) in enumerate(self._rules, 1):
                if cond is None or cond(**context):
                    return self._render(out, context)
        except UndefinedError as exc:
            raise EventError(f"rule {i}: {exc.message}") from None
        except TemplateError as exc:
            raise EventError(f"rule {i}: {exc}") from None
        return None

    async def aclose(self) -> None:
        return None
