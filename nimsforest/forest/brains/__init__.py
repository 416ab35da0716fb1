"""Brains turn a nim's rendered prompt (and its input) into a JSON object.

    rules      deterministic and offline (the default): first matching rule's output
    openai     OpenAI-compatible /v1/chat/completions (OpenAI, Ollama, vLLM, llama.cpp)
    anthropic  Anthropic Messages API

HTTP brains have a timeout per request, retry 429, 5xx, timeouts and connection errors
with exponential backoff (honouring Retry-After), and a per-nim concurrency limit.
A brain returns None to drop the event (the rules brain when no rule matches).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from nimsforest.forest.prompt import Prompt
from nimsforest.forest.specs import AnthropicBrainSpec, OpenAIBrainSpec, RulesBrainSpec


class Brain:
    """What a nim asks. `think` answers from the rendered prompt (and the input); a brain
    with `needs_prompt` False decides from the input alone, synchronously, in `decide`.
    Either returns None to drop the event. `aclose` releases what the brain holds."""

    kind: str
    concurrency: int
    needs_prompt: bool = True

    async def think(self, prompt: str, context: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    def decide(self, context: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError(f"the {self.kind} brain needs the rendered prompt")

    async def aclose(self) -> None:
        """Nothing to release by default."""


class BrainConfigError(ValueError):
    """`field` is the brain setting at fault (e.g. 'brain.api_key_env')."""

    def __init__(self, message: str, field: str) -> None:
        self.field = field
        super().__init__(message)


class MissingKey(BrainConfigError):
    """The environment variable holding the brain's key is not set."""

    def __init__(self, variable: str, field: str) -> None:
        self.variable = variable
        super().__init__(f"environment variable {variable} is not set", field)


def build_brain(
    spec: RulesBrainSpec | OpenAIBrainSpec | AnthropicBrainSpec,
    prompt: Prompt,
    *,
    label: str,
    env: Mapping[str, str] | None = None,
) -> Brain:
    env = os.environ if env is None else env
    if isinstance(spec, RulesBrainSpec):
        from nimsforest.forest.brains.rules import RulesBrain

        return RulesBrain(spec, prompt)
    if isinstance(spec, OpenAIBrainSpec):
        from nimsforest.forest.brains.openai import OpenAIBrain

        return OpenAIBrain(spec, env, label)
    from nimsforest.forest.brains.anthropic import AnthropicBrain

    return AnthropicBrain(spec, env, label)


__all__ = ["Brain", "BrainConfigError", "MissingKey", "build_brain"]
