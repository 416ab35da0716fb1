"""The Anthropic Messages API: POST {base_url}/v1/messages with x-api-key and
anthropic-version headers.

base_url: brain.base_url, else ANTHROPIC_BASE_URL, else https://api.anthropic.com.
model: brain.model, else ANTHROPIC_MODEL, else claude-3-5-haiku-latest. Key: the variable
named by brain.api_key_env (default ANTHROPIC_API_KEY); required."""

from __future__ import annotations

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
        """POST /v1/messages. The Messages API takes no output schema: the nim checks it."""
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
        answer = await self.post(self.url, self._headers, body)
        try:
            text = "".join(b.get("text", "") for b in answer["content"] if b.get("type") == "text")
        except (KeyError, TypeError, AttributeError):
            raise BrainError(f"{self._label}: the message has no text content") from None
        usage = answer.get("usage") if isinstance(answer, dict) else None
        counted = usage_of(usage, "input_tokens", "output_tokens")
        await self.spent(counted)
        return Reply(text, counted)
