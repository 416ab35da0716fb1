"""Brains turn a nim's rendered prompt (and its input) into a JSON object.

    rules      deterministic and offline (the default): first matching rule's output
    openai     OpenAI-compatible /v1/chat/completions (OpenAI, Ollama, vLLM, llama.cpp)
    anthropic  Anthropic Messages API
    ollama     Ollama's own /api/chat (an output schema goes as its `format`)

HTTP brains have a timeout per request, retry 429, 5xx, timeouts and connection errors
with exponential backoff (honouring Retry-After), and a per-nim concurrency limit.
A brain returns None to drop the event (the rules brain when no rule matches).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nimsforest.forest.prompt import Prompt
from nimsforest.forest.specs import (
    AnthropicBrainSpec,
    OllamaBrainSpec,
    OpenAIBrainSpec,
    RateLimitSpec,
    RulesBrainSpec,
)


@dataclass(frozen=True)
class Usage:
    """Tokens an answer cost, as the server counted them (0 when it does not say)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class Reply:
    """An HTTP brain's answer: its text (the JSON object, parsed by the nim) and usage."""

    text: str
    usage: Usage = Usage()


class Brain:
    """What a nim asks. `think` answers from the rendered prompt (and the input); a brain
    with `needs_prompt` False decides from the input alone, synchronously, in `decide`.
    Either returns None to drop the event. `aclose` releases what the brain holds."""

    kind: str
    concurrency: int
    needs_prompt: bool = True
    rate_limit: RateLimitSpec | None = None  # HTTP brains: their cluster-wide quota
    limiter: Any = None  # its RateLimiter, set when the nim starts
    endpoint: str = ""  # what a rate limit is shared by

    async def think(self, prompt: str, context: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError

    def decide(self, context: dict[str, Any]) -> dict[str, Any] | None:
        raise NotImplementedError(f"the {self.kind} brain needs the rendered prompt")

    async def ask(self, messages: Sequence[tuple[str, str]],
                  schema: dict[str, Any] | None = None) -> Reply:
        """The answer to a conversation of (role, text) turns, `schema` sent to the server
        when it takes one (HTTP brains)."""
        raise NotImplementedError(f"the {self.kind} brain decides from the input alone")

    @property
    def model(self) -> str:
        return ""

    @property
    def prices(self) -> tuple[float, float]:
        """Prices per million prompt and completion tokens (for the nim's cost)."""
        return (0.0, 0.0)

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
    spec: RulesBrainSpec | OpenAIBrainSpec | AnthropicBrainSpec | OllamaBrainSpec,
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
    if isinstance(spec, OllamaBrainSpec):
        from nimsforest.forest.brains.ollama import OllamaBrain

        return OllamaBrain(spec, env, label)
    from nimsforest.forest.brains.anthropic import AnthropicBrain

    return AnthropicBrain(spec, env, label)


__all__ = ["Brain", "BrainConfigError", "MissingKey", "Reply", "Usage", "build_brain"]
