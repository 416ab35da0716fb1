"""Brains against local fake servers speaking each protocol over real HTTP."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from nimsforest.forest.brains import BrainConfigError, build_brain
from nimsforest.forest.brains.httpbase import BrainError
from nimsforest.forest.config import AnthropicBrainSpec, OpenAIBrainSpec, RulesBrainSpec
from nimsforest.forest.errors import EventError
from nimsforest.forest.prompt import Prompt
from tests.forest.fakellm import FakeLLM

PROMPT = Prompt("Score {{ score }}", "p")


@pytest.fixture
async def openai_server():  # type: ignore[no-untyped-def]
    server = await FakeLLM(
        "openai", reply=lambda body: '```json\n{"pursue": true, "n": 1}\n```'
    ).start()
    yield server
    await server.stop()


@pytest.fixture
async def anthropic_server():  # type: ignore[no-untyped-def]
    server = await FakeLLM("anthropic", reply=lambda body: 'Sure: {"pursue": false}').start()
    yield server
    await server.stop()


def openai(server: FakeLLM, env: dict[str, str] | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    spec = OpenAIBrainSpec(type="openai", base_url=f"{server.url}/v1", backoff=0.01, **kw)
    return build_brain(spec, PROMPT, label="nim 'q'", env=env or {})


async def test_openai_request_and_answer(openai_server: FakeLLM) -> None:
    brain = openai(
        openai_server,
        {"OPENAI_API_KEY": "sk-test", "OPENAI_MODEL": "llama3"},
        system="Be terse.",
        temperature=0.0,
        json_mode=True,
    )
    try:
        assert await brain.think("Score 85", {}) == {"pursue": True, "n": 1}
    finally:
        await brain.aclose()
    req = openai_server.seen[0]
    assert (req.method, req.path) == ("POST", "/v1/chat/completions")
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.body["model"] == "llama3"
    assert req.body["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Score 85"},
    ]
    assert req.body["temperature"] == 0.0 and req.body["response_format"] == {"type": "json_object"}


async def test_openai_base_url_and_model_from_environment(openai_server: FakeLLM) -> None:
    spec = OpenAIBrainSpec(type="openai")
    brain = build_brain(
        spec,
        PROMPT,
        label="nim 'q'",
        env={"OPENAI_BASE_URL": f"{openai_server.url}/v1/", "OPENAI_MODEL": "qwen"},
    )
    try:
        await brain.think("hi", {})
    finally:
        await brain.aclose()
    assert openai_server.seen[0].body["model"] == "qwen"
    assert "authorization" not in openai_server.seen[0].headers  # local servers need no key


async def test_anthropic_request_and_answer(anthropic_server: FakeLLM) -> None:
    spec = AnthropicBrainSpec(
        type="anthropic",
        base_url=anthropic_server.url,
        model="claude-test",
        system="S",
        backoff=0.01,
    )
    brain = build_brain(spec, PROMPT, label="nim 'q'", env={"ANTHROPIC_API_KEY": "ak-test"})
    try:
        assert await brain.think("Score 12", {}) == {"pursue": False}
    finally:
        await brain.aclose()
    req = anthropic_server.seen[0]
    assert req.path == "/v1/messages"
    assert (
        req.headers["x-api-key"] == "ak-test" and req.headers["anthropic-version"] == "2023-06-01"
    )
    assert req.body == {
        "model": "claude-test",
        "max_tokens": 1024,
        "system": "S",
        "messages": [{"role": "user", "content": "Score 12"}],
    }


def test_anthropic_needs_a_key() -> None:
    with pytest.raises(BrainConfigError, match="ANTHROPIC_API_KEY is not set") as err:
        build_brain(AnthropicBrainSpec(type="anthropic"), PROMPT, label="nim 'q'", env={})
    assert err.value.field == "brain.api_key_env"


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_retries_with_backoff_on_429_and_5xx(protocol: str) -> None:
    server = await FakeLLM(protocol, reply=lambda b: '{"ok": 1}', plan=[503, 429, 500]).start()
    if protocol == "openai":
        brain = openai(server, retries=3)
    else:
        brain = build_brain(
            AnthropicBrainSpec(type="anthropic", base_url=server.url, backoff=0.01, retries=3),
            PROMPT,
            label="nim 'q'",
            env={"ANTHROPIC_API_KEY": "k"},
        )
    try:
        assert await brain.think("x", {}) == {"ok": 1}
        assert len(server.seen) == 4
    finally:
        await brain.aclose()
        await server.stop()


async def test_gives_up_after_retries_and_does_not_retry_4xx(openai_server: FakeLLM) -> None:
    openai_server.plan = [500, 500, 500]
    brain = openai(openai_server, retries=2)
    with pytest.raises(BrainError, match="after 3 attempts"):
        await brain.think("x", {})
    openai_server.plan = [400]
    with pytest.raises(BrainError, match="400"):
        await brain.think("x", {})
    assert len(openai_server.seen) == 4
    await brain.aclose()


async def test_timeout_is_retried(openai_server: FakeLLM) -> None:
    openai_server.plan = [("sleep", 1.0)]
    brain = openai(openai_server, timeout=0.2, retries=1)
    try:
        assert await brain.think("x", {}) == {"pursue": True, "n": 1}
        assert len(openai_server.seen) == 2
    finally:
        await brain.aclose()


async def test_connection_refused_is_an_event_error() -> None:
    server = await FakeLLM("openai").start()
    await server.stop()
    brain = openai(server, retries=1)
    with pytest.raises(BrainError, match="cannot reach"):
        await brain.think("x", {})
    await brain.aclose()


async def test_non_json_answer_is_an_event_error() -> None:
    server = await FakeLLM("openai", reply=lambda b: "I think you should pursue it.").start()
    brain = openai(server)
    with pytest.raises(EventError, match="JSON object"):
        await brain.think("x", {})
    await brain.aclose()
    await server.stop()


async def test_concurrency_limit_per_nim(openai_server: FakeLLM) -> None:
    """The nim's semaphore is sized from the brain; the HTTP pool never exceeds it."""
    from nimsforest.forest.decide import Contract, Decider
    from nimsforest.forest.delivery import Stats
    from nimsforest.forest.handlers import NimHandler  # the semaphore lives in the handler

    openai_server.plan = [("sleep", 0.1)] * 12
    brain = openai(openai_server, concurrency=3)
    decider = Decider("q", [brain], Contract(), Stats())
    handler = NimHandler("q", "nim-q", "out", PROMPT, decider, None, None)  # type: ignore[arg-type]

    async def one() -> None:
        async with handler._sem:
            await brain.think("x", {})

    await asyncio.gather(*(one() for _ in range(12)))
    await brain.aclose()
    assert openai_server.max_active == 3


async def test_rules_brain_first_match_and_templates() -> None:
    prompt = Prompt(
        "---\nrules:\n  - when: score >= 70\n    output: {pursue: true, why: 'score {{ score }}'}\n"
        "  - when: score >= 40\n    output: {pursue: false}\n---\nbody {{ score }}\n",
        "q.md.j2",
    )
    brain = build_brain(RulesBrainSpec(), prompt, label="nim 'q'")
    assert await brain.think("", {"score": 85}) == {"pursue": True, "why": "score 85"}
    assert await brain.think("", {"score": 50}) == {"pursue": False}
    assert await brain.think("", {"score": 10}) is None  # no rule: dropped
    with pytest.raises(EventError, match="undefined"):
        await brain.think("", {})
    assert json.loads(json.dumps(prompt.front))["rules"][0]["when"] == "score >= 70"
