"""Nim prompts: Jinja2 templates rendered in a sandboxed environment.

- Variables: every top-level field of the input leaf's data (`{{ score }}`), plus `data`
  (the whole data) and `leaf` (subject, source, ts).
- Missing variables are errors (StrictUndefined): `{{ email }}` with no `email` fails the
  event with "'email' is undefined". Test optional fields with `{% if x is defined %}`.
- A template may start with YAML front matter between `---` lines; its `rules:` list is
  used by the `rules` brain when the nim's brain spec has no rules of its own, so one
  file serves both the offline rules and an LLM.
- The `tojson` filter is available for embedding values as JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from jinja2 import (
    ChainableUndefined,
    StrictUndefined,
    TemplateError,
    TemplateSyntaxError,
    UndefinedError,
    meta,
)
from jinja2.sandbox import SandboxedEnvironment

from nimsforest.forest.errors import EventError
from nimsforest.forest.leaf import Leaf

_FRONT = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*(?:\n|\Z)", re.DOTALL)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOKEN_OK = re.compile(r"^[A-Za-z0-9_\-:@$+=~]+$")


class PromptError(Exception):
    """The template cannot be used; one sentence naming the file and line (`line`)."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(message)


def environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )


class Prompt:
    def __init__(self, text: str, name: str, env: SandboxedEnvironment | None = None) -> None:
        self.name = name
        self.env = env or environment()
        self.front: dict[str, Any] = {}
        body = text
        m = _FRONT.match(text)
        offset = 0
        if m:
            try:
                front = yaml.safe_load(m.group(1)) or {}
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                at = mark.line + 2 if mark else None
                line = f" line {at}" if at else ""
                raise PromptError(f"{name}{line}: the front matter is not valid YAML", at) from None
            if not isinstance(front, dict):
                raise PromptError(f"{name}: the front matter must be a mapping")
            self.front = front
            body = text[m.end() :]
            offset = text[: m.end()].count("\n")
        self.body, self.body_line = body, offset + 1  # the body starts at this line
        try:
            self._template = self.env.from_string(body)
        except TemplateSyntaxError as exc:
            at = (exc.lineno or 0) + offset
            raise PromptError(f"{name} line {at}: {exc.message}", at) from None

    def render(self, context: dict[str, Any]) -> str:
        try:
            return self._template.render(context)
        except UndefinedError as exc:
            raise EventError(f"prompt {self.name}: {exc.message}") from None
        except TemplateError as exc:
            raise EventError(f"prompt {self.name}: {exc}") from None


    def variables(self) -> frozenset[str]:
        """The top-level variables the template reads (the leaf's fields, `data`, `leaf`)."""
        return frozenset(meta.find_undeclared_variables(self.env.parse(self.body)))

    def render_sample(self, context: dict[str, Any]) -> str:
        """Render with `context` where any variable it lacks is an empty value that any
        attribute, item or filter accepts: what lint uses to render a template with sample
        inputs (its strict rendering of real events stays `render`). Raises PromptError."""
        lenient = SandboxedEnvironment(undefined=ChainableUndefined, autoescape=False,
                                       keep_trailing_newline=True)
        lenient.filters.update(self.env.filters)
        lenient.globals.update(self.env.globals)  # e.g. a Go template's functions
        try:
            return lenient.from_string(self.body).render(context)
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            at = line + self.body_line - 1 if line else None
            where = f" line {at}" if at else ""
            raise PromptError(f"{self.name}{where}: {exc}", at) from None
        except Exception as exc:  # noqa: BLE001 - e.g. a division by zero in the template
            # Jinja rewrites the traceback so that its frames carry the template's lines
            tb, line = exc.__traceback__, None
            while tb is not None:
                if tb.tb_frame.f_code.co_filename == "<template>":
                    line = tb.tb_lineno
                tb = tb.tb_next
            at = line + self.body_line - 1 if line else None
            where = f" line {at}" if at else ""
            raise PromptError(f"{self.name}{where}: rendering fails: {exc}", at) from None


def context_for(leaf: Leaf) -> dict[str, Any]:
    ctx: dict[str, Any] = dict(leaf.data) if isinstance(leaf.data, dict) else {}
    ctx["data"] = leaf.data
    ctx["leaf"] = {"subject": leaf.subject, "source": leaf.source, "ts": leaf.ts}
    return ctx


def placeholders(subject_template: str) -> list[str]:
    return _PLACEHOLDER.findall(subject_template)


def fill_subject(subject_template: str, output: dict[str, Any]) -> str:
    """`song.telegram.{chat_id}` + {"chat_id": 42} -> `song.telegram.42`."""

    def sub(m: re.Match[str]) -> str:
        field = m.group(1)
        if field not in output or output[field] is None:
            raise EventError(
                f"the output has no field '{field}' for the subject {subject_template}"
            )
        value = output[field]
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        if not _TOKEN_OK.match(text):
            raise EventError(f"field '{field}' = {text!r} cannot be a subject token")
        return text

    return _PLACEHOLDER.sub(sub, subject_template)


def parse_json_object(text: str, who: str) -> dict[str, Any]:
    """A brain's answer as a JSON object; ```json fences and prose around it are tolerated."""
    t = text.strip()
    fenced = re.search(r"```(?:json)?\s*\n?(.*?)```", t, re.DOTALL)
    candidates = [t]
    if fenced:
        candidates.insert(0, fenced.group(1).strip())
    if "{" in t and "}" in t:
        candidates.append(t[t.index("{") : t.rindex("}") + 1])
    for c in candidates:
        try:
            value = json.loads(c)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    shown = t[:80] + ("..." if len(t) > 80 else "")
    raise EventError(f"{who} did not answer with a JSON object: {shown!r}")


__all__ = [
    "Prompt",
    "PromptError",
    "context_for",
    "environment",
    "fill_subject",
    "parse_json_object",
    "placeholders",
]
