"""OpenAI-compatible chat completions: POST {base_url}/chat/completions.

base_url: brain.base_url, else OPENAI_BASE_URL, else https://api.openai.com/v1 (Ollama:
http://localhost:11434/v1; vLLM and llama.cpp servers: http://host:port/v1).
model: brain.model, else OPENAI_MODEL, else gpt-4o-mini. Key: the variable named by
brain.api_key_env (default OPENAI_API_KEY), sent as a Bearer token when set."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nimsforest.forest.brains import Reply
from nimsforest.forest.brains.httpbase import BrainError, HttpBrain, api_key, resolve, usage_of
from nimsforest.forest.specs import OpenAIBrainSpec


class OpenAIBrain(HttpBrain):
    kind = "openai"

    def __init__(self, spec: OpenAIBrainSpec, env: Mapping[str, str], label: str) -> None:
        super().__init__(spec, label)
        base = resolve(env, spec.base_url, "OPENAI_BASE_URL", "https://api.openai.com/v1") or ""
        self.url = base.rstrip("/") + "/chat/completions"
        self._model = resolve(env, spec.model, "OPENAI_MODEL", "gpt-4o-mini") or ""
        key = api_key(env, spec, "OPENAI_API_KEY", required=False)
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._shared_by(self.url)
        self._ospec = spec

    async def ask(self, messages: Sequence[tuple[str, str]],
                  schema: dict[str, Any] | None = None) -> Reply:
        """POST /chat/completions; a schema goes as `response_format: json_schema` (OpenAI,
        vLLM, llama.cpp and Ollama's OpenAI endpoint take it)."""
        s = self._ospec
        turns = [{"role": "system", "content": s.system}] if s.system else []
        turns += [{"role": role, "content": text} for role, text in messages]
        body: dict[str, Any] = {"model": self.model, "messages": turns}
        if s.temperature is not None:
            body["temperature"] = s.temperature
        if s.max_tokens is not None:
            body["max_tokens"] = s.max_tokens
        if schema is not None:
            body["response_format"] = {
                "type": "json_schema", "json_schema": {"name": "output", "schema": schema},
            }
        elif s.json_mode:
            body["response_format"] = {"type": "json_object"}
        answer = await self.post(self.url, self._headers, body)
        try:
            text = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise BrainError(
                f"{self._label}: the chat completion has no choices[0].message.content"
            ) from None
        usage = answer.get("usage") if isinstance(answer, dict) else None
        counted = usage_of(usage, "prompt_tokens", "completion_tokens")
        await self.spent(counted)
        return Reply(str(text), counted)

