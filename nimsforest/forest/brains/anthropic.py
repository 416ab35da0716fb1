"""The Anthropic Messages API: POST {base_url}/v1/messages with x-api-key and
anthropic-version headers.

base_url: brain.base_url, else ANTHROPIC_BASE_URL, else https://api.anthropic.com.
model: brain.model, else ANTHROPIC_MODEL, else claude-3-5-haiku-latest. Key: the variable
named by brain.api_key_env (default ANTHROPIC_API_KEY); required.

An output schema is sent the way the Messages API takes one: as the `input_schema` of one
tool, `output`, that `tool_choice` forces the model to call; the answer is that call's
`input` (the tool_use block), which the nim still validates against the schema."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from nimsforest.forest.brains import Reply
from nimsforest.forest.brains.httpbase import BrainError, HttpBrain, api_key, resolve, usage_of
from nimsforest.forest.specs import AnthropicBrainSpec


class AnthropicBrain(HttpBrain):
    kind = "anthropic"

    def __init__(self, spec: AnthropicBrainSpec, env: Mapping[str, str], label: str) -> None:
        super().__init__(spec, label)
        base = resolve(env, spec.base_url, "ANTHROPIC_BASE_URL", "https://api.anthropic.com") or ""
        self.url = base.rstrip("/") + "/v1/messages"
        self._model = resolve(env, spec.model, "ANTHROPIC_MODEL", "claude-3-5-haiku-latest") or ""
        key = api_key(env, spec, "ANTHROPIC_API_KEY", required=True)
        self._headers = {"x-api-key": key or "", "anthropic-version": spec.version}
        self._shared_by(self.url)
        self._aspec = spec

    async def ask(self, messages: Sequence[tuple[str, str]],
                  schema: dict[str, Any] | None = None) -> Reply:
        """POST /v1/messages; with a schema, as a forced tool call (see the module)."""
        s = self._aspec
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": s.max_tokens or 1024,
            "messages": [{"role": role, "content": text} for role, text in messages],
        }
        if s.system:
            body["system"] = s.system
        if s.temperature is not None:
            body["temperature"] = s.temperature
        if schema is not None:
            body["tools"] = [{"name": OUTPUT_TOOL, "input_schema": schema,
                              "description": "Give the answer: call this with it."}]
            body["tool_choice"] = {"type": "tool", "name": OUTPUT_TOOL}
        answer = await self.post(self.url, self._headers, body)
        text = answer_text(answer, self._label)
        usage = answer.get("usage") if isinstance(answer, dict) else None
        counted = usage_of(usage, "input_tokens", "output_tokens")
        await self.spent(counted)
        return Reply(text, counted)


OUTPUT_TOOL = "output"


def answer_text(answer: Any, label: str) -> str:
    """The answer of a message: the `output` tool call's input as JSON when there is one,
    else its text blocks."""
    try:
        blocks = [b for b in answer["content"] if isinstance(b, dict)]
    except (KeyError, TypeError):
        raise BrainError(f"{label}: the message has no content") from None
    for b in blocks:
        if b.get("type") == "tool_use" and b.get("name") == OUTPUT_TOOL:
            return json.dumps(b.get("input"))
    if not any(b.get("type") == "text" for b in blocks):
        raise BrainError(f"{label}: the message has no text content and no {OUTPUT_TOOL} call")
    return "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
