"""Ollama's own chat API: POST {base_url}/api/chat with `stream: false`.

base_url: brain.base_url, else OLLAMA_HOST, else http://localhost:11434. model:
brain.model, else OLLAMA_MODEL, else llama3.2. No key (a key variable, when named, is
sent as a Bearer token, for an Ollama behind a proxy). A nim's output_schema is sent as
`format` (Ollama constrains the answer to it); without one, `json_mode` sends
`format: "json"`. Tokens: `prompt_eval_count` and `eval_count`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from nimsforest.forest.brains import Reply
from nimsforest.forest.brains.httpbase import BrainError, HttpBrain, api_key, resolve, usage_of
from nimsforest.forest.specs import OllamaBrainSpec


class OllamaBrain(HttpBrain):
    kind = "ollama"

    def __init__(self, spec: OllamaBrainSpec, env: Mapping[str, str], label: str) -> None:
        super().__init__(spec, label)
        base = resolve(env, spec.base_url, "OLLAMA_HOST", "http://localhost:11434") or ""
        if "://" not in base:  # OLLAMA_HOST is often host:port
            base = "http://" + base
        self.url = base.rstrip("/") + "/api/chat"
        self._model = resolve(env, spec.model, "OLLAMA_MODEL", "llama3.2") or ""
        key = api_key(env, spec, "OLLAMA_API_KEY", required=False) if spec.api_key_env else None
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._shared_by(self.url)
        self._lspec = spec

    async def ask(self, messages: Sequence[tuple[str, str]],
                  schema: dict[str, Any] | None = None) -> Reply:
        s = self._lspec
        turns = [{"role": "system", "content": s.system}] if s.system else []
        turns += [{"role": role, "content": text} for role, text in messages]
        body: dict[str, Any] = {"model": self.model, "messages": turns, "stream": False}
        if schema is not None:
            body["format"] = schema
        elif s.json_mode:
            body["format"] = "json"
        options: dict[str, Any] = {}
        if s.temperature is not None:
            options["temperature"] = s.temperature
        if s.max_tokens is not None:
            options["num_predict"] = s.max_tokens
        if options:
            body["options"] = options
        answer = await self.post(self.url, self._headers, body)
        try:
            text = answer["message"]["content"]
        except (KeyError, TypeError):
            raise BrainError(f"{self._label}: the chat answer has no message.content") from None
        counted = usage_of(answer if isinstance(answer, dict) else None, "prompt_eval_count",
                           "eval_count")
        await self.spent(counted)
        return Reply(str(text), counted)
