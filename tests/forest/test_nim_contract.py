"""The nim contract against real local OpenAI-compatible and Anthropic servers with
scripted answers: output_schema (sent, checked, an invalid answer repaired by a retry that
feeds the error back, dead with the answer kept when it is not), fallback chains with a
cool-down, token and cost accounting (status, /metrics, leaf headers), the whole-decision
timeout, the contract built from forest.yaml, Anthropic's schema as a forced tool, the
sliding-window rate limit and the answer cache's single flight."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nimsforest import metrics
from nimsforest.forest.brains import Brain, build_brain
from nimsforest.forest.decide import (
    BrainHealth,
    Contract,
    Decider,
    Decision,
    DecisionFailed,
    SchemaRejected,
    after_failure,
    after_success,
    usable,
)
from nimsforest.forest.delivery import Stats
from nimsforest.forest.prompt import Prompt
from nimsforest.forest.specs import AnthropicBrainSpec, OpenAIBrainSpec, Rule, RulesBrainSpec
from nimsforest.forest.testing import run_test_file
from tests.forest.conftest import write_forest
from tests.forest.fakellm import FakeLLM
from tests.support import free_port

PROMPT = Prompt("Qualify {{ id }}", "t")
SCHEMA = {"type": "object", "required": ["pursue"],
          "properties": {"pursue": {"type": "boolean"}}}


class Scripted:
    """Answers in order (the last one again when they run out)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)

    def __call__(self, body: Any) -> str:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
async def llm() -> AsyncIterator[FakeLLM]:
    server = await FakeLLM("openai", usage=lambda body: (10, 3)).start()
    yield server
    await server.stop()


def openai(server: FakeLLM, model: str = "m1", **kw: Any) -> Brain:
    spec = OpenAIBrainSpec(type="openai", base_url=server.url + "/v1", model=model, backoff=0,
                           **kw)
    return build_brain(spec, PROMPT, label="nim 'q'", env={})


def decider(chain: list[Brain], clock: Any = None, **contract: Any) -> tuple[Decider, Stats]:
    stats = Stats()
    kw = {"clock": clock} if clock else {}
    return Decider("q", chain, Contract(**contract), stats, **kw), stats


async def test_schema_is_sent_checked_and_an_invalid_answer_repaired(llm: FakeLLM) -> None:
    llm.reply = Scripted('{"pursue": "yes"}', "Sure! ```json\n{\"pursue\": true}\n```")
    d, stats = decider([openai(llm)], schema=SCHEMA, schema_retries=2)
    decision = await d.decide("Qualify c-1", {"id": "c-1"})
    assert decision.output == {"pursue": True}
    first, second = (s.body for s in llm.seen)
    assert first["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
    assert second["messages"][1]["content"] == '{"pursue": "yes"}'
    assert "at pursue: 'yes' is not of type 'boolean'" in second["messages"][2]["content"]
    # tokens: both answers counted, as the server said
    assert (stats.prompt_tokens, stats.completion_tokens) == (20, 6)
    assert decision.usage.prompt_tokens == 20
    assert decision.headers() == {"Nimsforest-Brain": "openai/m1", "Nimsforest-Tokens": "20/6"}
    # a brain that counts no tokens (rules, a server that does not say) gets no token header
    assert Decision({"pursue": True}, "rules").headers() == {"Nimsforest-Brain": "rules"}


async def test_an_answer_that_stays_invalid_is_dead_with_the_answer_kept(llm: FakeLLM) -> None:
    llm.reply = Scripted("not json at all", '{"pursue": 1}')
    d, _ = decider([openai(llm)], schema=SCHEMA, schema_retries=1)
    with pytest.raises(SchemaRejected, match="does not match output_schema after 2 attempts") as e:
        await d.decide("Qualify c-1", {"id": "c-1"})
    assert e.value.answer == '{"pursue": 1}' and "'{\"pursue\": 1}'" in str(e.value)
    assert len(llm.seen) == 2
    assert "did not answer with a JSON object" in llm.seen[1].body["messages"][2]["content"]


async def test_anthropic_takes_the_schema_as_a_forced_tool() -> None:
    """The schema goes as the input_schema of one tool that tool_choice forces; the
    answer is read from the tool_use block and still validated here (a call whose input
    does not match is asked again with the error, as for every brain)."""
    server = await FakeLLM("anthropic", reply=Scripted('{"pursue": "yes"}', '{"pursue": true}'),
                           usage=lambda b: (7, 2)).start()
    try:
        brain = build_brain(
            AnthropicBrainSpec(type="anthropic", base_url=server.url, model="c1", backoff=0),
            PROMPT, label="nim 'q'", env={"ANTHROPIC_API_KEY": "k"})
        d, stats = decider([brain], schema=SCHEMA, schema_retries=1)
        decision = await d.decide("Qualify c-1", {})
        assert decision.output == {"pursue": True} and stats.prompt_tokens == 14
        first, second = (x.body for x in server.seen)
        assert first["tools"] == [{"name": "output", "input_schema": SCHEMA,
                                   "description": "Give the answer: call this with it."}]
        assert first["tool_choice"] == {"type": "tool", "name": "output"}
        assert [m["role"] for m in second["messages"]] == ["user", "assistant", "user"]
        assert second["messages"][1]["content"] == '{"pursue": "yes"}'  # the call's input
        assert "at pursue: 'yes' is not of type 'boolean'" in second["messages"][2]["content"]
        # without a schema, no tool: the text blocks are the answer
        plain, _ = decider([brain])
        assert (await plain.decide("Qualify c-2", {})).output == {"pursue": True}
        assert "tools" not in server.seen[-1].body
    finally:
        await server.stop()


def test_an_anthropic_message_without_the_tool_call_or_text_is_a_brain_error() -> None:
    from nimsforest.forest.brains.anthropic import answer_text
    from nimsforest.forest.brains.httpbase import BrainError

    call = {"content": [{"type": "text", "text": "Here:"},
                        {"type": "tool_use", "name": "output", "input": {"a": 1}}]}
    assert answer_text(call, "nim 'q'") == '{"a": 1}'
    assert answer_text({"content": [{"type": "text", "text": "hi"}]}, "nim 'q'") == "hi"
    with pytest.raises(BrainError, match="no text content and no output call"):
        answer_text({"content": [{"type": "tool_use", "name": "other", "input": {}}]}, "nim 'q'")
    with pytest.raises(BrainError, match="has no content"):
        answer_text({"id": "x"}, "nim 'q'")


async def test_fallback_to_the_next_brain_and_a_cool_down(llm: FakeLLM) -> None:
    down = await FakeLLM("openai", plan=[500] * 100).start()
    anthropic = await FakeLLM("anthropic", reply=lambda b: '{"pursue": false}',
                              usage=lambda b: (7, 2)).start()
    now = [1000.0]
    try:
        primary = openai(down, retries=0)
        second = build_brain(
            AnthropicBrainSpec(type="anthropic", base_url=anthropic.url, model="c1", backoff=0,
                               price_prompt=3.0, price_completion=15.0),
            PROMPT, label="nim 'q'", env={"ANTHROPIC_API_KEY": "k"})
        rules = build_brain(RulesBrainSpec(rules=(Rule(output={"pursue": True, "by": "rules"}),)),
                            PROMPT, label="nim 'q'")
        d, stats = decider([primary, second, rules], clock=lambda: now[0],
                           fallback_after=2, cooldown=60)
        for _ in range(2):
            assert (await d.decide("x", {})).output == {"pursue": False}
        assert len(down.seen) == 2 and len(anthropic.seen) == 2
        (await d.decide("x", {}))  # the primary is cooling down: not asked
        assert len(down.seen) == 2 and len(anthropic.seen) == 3
        now[0] += 61  # cooled down: asked again
        await d.decide("x", {})
        assert len(down.seen) == 3
        await anthropic.stop()  # the second brain gone too: the rules answer
        decision = await d.decide("x", {})
        assert decision.output == {"pursue": True, "by": "rules"} and decision.brain == "rules"
        assert (stats.prompt_tokens, stats.completion_tokens) == (28, 8)
        assert stats.cost == pytest.approx((28 * 3.0 + 8 * 15.0) / 1e6)
        sample = metrics.REGISTRY.get_sample_value(
            "nimsforest_nim_tokens_total",
            {"name": "q", "brain": "anthropic", "model": "c1", "type": "prompt"})
        assert sample is not None and sample >= 28
        assert metrics.REGISTRY.get_sample_value(
            "nimsforest_nim_fallbacks_total", {"name": "q", "brain": "rules"}) >= 1
    finally:
        await down.stop()
        await anthropic.stop()


async def test_when_no_brain_answers_the_event_is_retried_later() -> None:
    gone = free_port()
    spec = OpenAIBrainSpec(type="openai", base_url=f"http://127.0.0.1:{gone}/v1", retries=0)
    d, _ = decider([build_brain(spec, PROMPT, label="nim 'q'", env={})] * 2)
    with pytest.raises(DecisionFailed, match="no brain could answer: nim 'q': cannot reach"):
        await d.decide("x", {})


async def test_the_whole_decision_has_a_timeout(llm: FakeLLM) -> None:
    llm.plan = [("hold",)]
    d, _ = decider([openai(llm, timeout=30)], timeout=0.2)
    with pytest.raises(DecisionFailed, match="no decision within decision_timeout 0.2s"):
        await d.decide("x", {})


def test_cool_down_bookkeeping_is_pure() -> None:
    h = BrainHealth()
    h = after_failure(h, 10.0, fallback_after=2, cooldown=5)
    assert h.failures == 1 and usable(h, 10.0)
    h = after_failure(h, 11.0, fallback_after=2, cooldown=5)
    assert not usable(h, 15.9) and usable(h, 16.0) and h.failures == 0
    assert after_success(after_failure(BrainHealth(), 0, 3, 1)) == BrainHealth()


async def test_the_contract_from_forest_yaml(tmp_path: Path, llm: FakeLLM) -> None:
    """A nim with a schema and a fallback, built from forest.yaml and run by the test
    runner: the primary brain is down, the fallback's answer is checked and repaired."""
    llm.reply = Scripted('{"pursue": "maybe", "id": "c-1"}', '{"pursue": true, "id": "c-1"}')
    write_forest(tmp_path, {"nims": {"q": {
        "subscribes": "lead", "publishes": "lead.q", "template": "Qualify {{ id }}",
        "brain": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1",
                  "retries": 0},
        "fallback": [{"type": "openai", "base_url": llm.url + "/v1", "model": "m2"}],
        "output_schema": SCHEMA, "decision_timeout": "20s"}}})
    (tmp_path / "q.test.yaml").write_text("""
tests:
  - name: repaired by the fallback
    wind: {subject: lead, data: {id: c-1}}
    expect:
      leaves: [{subject: lead.q, data: {pursue: true}}]
      soil: {c-1: {pursue: true}}
""")
    (result,) = await run_test_file(tmp_path / "q.test.yaml", record=True)
    assert result.passed, result.failures
    assert len(llm.seen) == 2 and llm.seen[0].body["model"] == "m2"
    fixtures = json.loads((tmp_path / "q.fixtures.json").read_text())
    assert len(fixtures["q"]) == 2  # both turns of the fallback recorded


async def test_a_running_nim_counts_tokens_and_gives_them_to_its_leaf(
    forest_factory: Any, nc: Any, llm: FakeLLM
) -> None:
    """On real NATS: the leaf's headers name the brain and its tokens; status counts them."""
    from nimsforest.forest.leaf import Leaf
    from tests.support import eventually

    llm.reply = lambda body: '{"pursue": true}'
    forest = await forest_factory({"nims": {"q": {
        "subscribes": "lead", "publishes": "lead.q", "template": "Qualify {{ id }}",
        "brain": {"type": "openai", "base_url": llm.url + "/v1", "model": "m9",
                  "price_prompt": 1.0, "price_completion": 2.0},
        "output_schema": SCHEMA}}})
    got: list[Any] = []

    async def keep(msg: Any) -> None:
        got.append(msg)

    await nc.subscribe("wind.lead.q", cb=keep)
    await nc.jetstream().publish("wind.lead", Leaf.new("lead", {"id": "c-1"}, "test").to_json())
    await eventually(lambda: got, what="the nim's leaf")
    assert got[0].headers["Nimsforest-Brain"] == "openai/m9"
    assert got[0].headers["Nimsforest-Tokens"] == "10/3"
    status = forest.get("nim", "q")
    assert (status.prompt_tokens, status.completion_tokens) == (10, 3)
    assert status.cost == pytest.approx((10 * 1.0 + 3 * 2.0) / 1e6)


async def test_the_answer_cache_skips_the_server_and_is_shared(
    forest_factory: Any, nc: Any, llm: FakeLLM
) -> None:
    """A nim asks its brain once; the same question again, by it or by a nim of another
    forest (as on another node) with the same brain, is answered from the KV bucket
    NIMCACHE without a request and without tokens."""
    from nimsforest.forest.leaf import Leaf
    from tests.support import eventually

    llm.reply = lambda body: '{"pursue": true}'

    def nim(publishes: str) -> dict[str, Any]:
        return {"subscribes": "lead", "publishes": publishes,
                "template": "Qualify {{ id }}", "humus": {"enabled": False}, "cache": "1h",
                "brain": {"type": "openai", "base_url": llm.url + "/v1", "model": "m1"}}

    js = nc.jetstream()
    one = await forest_factory({"nims": {"a": nim("lead.a")}}, subdir="one")
    await js.publish("wind.lead", Leaf.new("lead", {"id": "c-1"}, "test").to_json())
    await eventually(lambda: one.get("nim", "a").events_out == 1, what="the first answer")
    assert len(llm.seen) == 1 and one.get("nim", "a").prompt_tokens == 10
    two = await forest_factory({"nims": {"b": nim("lead.b")}}, subdir="two")
    await js.publish("wind.lead", Leaf.new("lead", {"id": "c-1"}, "test").to_json())
    await eventually(lambda: one.get("nim", "a").events_out == 2
                     and two.get("nim", "b").events_out == 1, what="both answer again")
    assert len(llm.seen) == 1  # both from the cache
    assert one.get("nim", "a").prompt_tokens == 10 and two.get("nim", "b").prompt_tokens == 0
    hits = sum(metrics.REGISTRY.get_sample_value(
        "nimsforest_nim_cache_hits_total", {"name": n, "brain": "openai/m1"}) or 0
        for n in ("a", "b"))
    assert hits >= 2
    await js.publish("wind.lead", Leaf.new("lead", {"id": "c-2"}, "test").to_json())
    await eventually(lambda: two.get("nim", "b").events_out == 2, what="a new question")
    assert len(llm.seen) >= 2  # not in the cache: asked


async def test_three_nodes_share_one_rate_limit(plain_nats: Any, tmp_path: Path,
                                                llm: FakeLLM) -> None:
    """Three nodes (three connections, each running the same forest) share the nim's
    brain's quota of 3 requests per second through the KV bucket NIMRATE: no second holds
    more than 3 (a sliding window: a request is taken at most a connect before the server
    sees it, so any 4 arrivals in a row span more than the second minus that), every
    event completed, the work shared."""
    import nats

    from nimsforest.forest import Forest, load_forest_config
    from nimsforest.forest.leaf import Leaf
    from tests.support import eventually

    llm.reply = lambda body: '{"pursue": true}'
    path = write_forest(tmp_path / "f", {"nims": {"q": {
        "subscribes": "lead", "publishes": "lead.q", "template": "Qualify {{ id }}",
        "humus": {"enabled": False},
        "brain": {"type": "openai", "base_url": llm.url + "/v1", "model": "m1",
                  "rate_limit": {"requests": 3, "per": "1s"}}}}})
    conns = [await nats.connect(plain_nats.url) for _ in range(3)]
    forests = [Forest(nc, load_forest_config(path), stop_grace=1.0) for nc in conns]
    try:
        for f in forests:
            await f.start()
        js = conns[0].jetstream()
        for i in range(9):
            await js.publish("wind.lead", Leaf.new("lead", {"id": f"c-{i}"}, "t").to_json())
        await eventually(lambda: sum(f.get("nim", "q").events_out for f in forests) == 9,
                         timeout=30, what="every event answered")
        assert len(llm.seen) == 9
        at = sorted(s.at for s in llm.seen)
        assert min(b - a for a, b in zip(at, at[3:], strict=False)) > 0.5, at
        kv = await js.key_value("NIMRATE")
        assert len(await kv.keys()) == 1  # one sliding window for the brain
        assert sum(1 for f in forests if f.get("nim", "q").events_out) >= 2  # shared work
    finally:
        for f in forests:
            await f.stop()
        for nc in conns:
            await nc.close()


def test_the_rate_limit_rule_is_pure() -> None:
    from nimsforest.forest.brains.ratelimit import Limit, Slot, Take, Wait, Window, decide

    lim = Limit(requests=2, tokens=100, per=60.0)  # 60 slots of 1 s
    one = Window().add(lim, 125.5, requests=1, tokens=10)
    assert one == Window((Slot(125, 1, 10),))
    assert decide(one, lim, 126.0) == Take(slot=126)
    two = one.add(lim, 130.2, requests=1)
    # full until the slot of 125.5 has aged out: its end (126) a minute old
    assert decide(two, lim, 150.0) == Wait(seconds=pytest.approx(36.0))
    assert decide(two, lim, 186.0) == Take(slot=186)
    assert two.add(lim, 186.0).slots == (Slot(130, 1, 0), Slot(186, 0, 0))  # aged out, gone
    spent = Window((Slot(100, 0, 60), Slot(110, 0, 40)))  # tokens full
    assert decide(spent, lim, 150.0) == Wait(seconds=pytest.approx(11.0))  # slot 100 goes
    assert decide(Window((Slot(3, 5, 0),)), Limit(None, 10, 1.0), 3.2) == Take(slot=192)
    assert Window.from_json(two.to_json()) == two
    with pytest.raises(ValueError, match="not a rate-limit window"):
        Window.from_json(b'{"requests": 3}x')


def test_no_span_of_per_seconds_holds_more_than_the_limit() -> None:
    """Many clients asking at random times, taking when told to and coming back when told
    to wait: in no span of `per` are more than `requests` taken (a fixed window lets up to
    twice through across its edge), and the window keeps taking (no starvation)."""
    import random

    from nimsforest.forest.brains.ratelimit import Limit, Take, Window, decide

    lim = Limit(requests=5, tokens=None, per=60.0)
    rng = random.Random(16)
    asks = sorted(rng.uniform(0, 600) for _ in range(400))
    window, taken = Window(), []
    while asks:
        now = asks.pop(0)
        step = decide(window, lim, now)
        if isinstance(step, Take):
            window = window.add(lim, now, requests=1)
            taken.append(now)
        else:
            asks.append(now + step.seconds)
            asks.sort()
    assert len(taken) == 400
    assert max(sum(1 for t in taken if end - 60.0 < t <= end) for end in taken) == 5
    assert len(taken) / ((taken[-1] - taken[0]) / 60.0) > 4.5  # the quota is used


async def test_a_token_limit_waits_until_the_window_has_room(forest_factory: Any, nc: Any,
                                                             llm: FakeLLM) -> None:
    from nimsforest.forest.leaf import Leaf
    from tests.support import eventually

    llm.reply = lambda body: '{"pursue": true}'  # 10 + 3 tokens each (the fixture's usage)
    forest = await forest_factory({"nims": {"q": {
        "subscribes": "lead", "publishes": "lead.q", "template": "Qualify {{ id }}",
        "humus": {"enabled": False},
        "brain": {"type": "openai", "base_url": llm.url + "/v1", "model": "m1",
                  "rate_limit": {"tokens": 13, "per": "1s"}}}}})
    js = nc.jetstream()
    for i in range(2):  # one after the other (tokens are known once an answer came)
        await js.publish("wind.lead", Leaf.new("lead", {"id": f"c-{i}"}, "t").to_json())
        await eventually(lambda n=i: forest.get("nim", "q").events_out == n + 1, timeout=20,
                         what="answered")
        if i == 0:
            kv = await js.key_value("NIMRATE")
            (key,) = await kv.keys()
            assert json.loads((await kv.get(key)).value)["slots"][-1][2] == 13
    # the second asked only once the first's 13 tokens (spent after it arrived) aged out
    first, second = (s.at for s in llm.seen)
    assert second - first >= 1.0 - 1 / 60


async def test_ollama_takes_the_schema_as_its_format() -> None:
    from nimsforest.forest.specs import OllamaBrainSpec

    server = await FakeLLM("ollama", reply=Scripted('{"pursue": 2}', '{"pursue": false}'),
                           usage=lambda body: (30, 4)).start()
    try:
        brain = build_brain(OllamaBrainSpec(type="ollama", temperature=0, backoff=0),
                            PROMPT, label="nim 'q'", env={"OLLAMA_HOST": f"127.0.0.1:{server.port}",
                                                          "OLLAMA_MODEL": "llama3.2"})
        d, stats = decider([brain], schema=SCHEMA)
        decision = await d.decide("Qualify c-1", {})
        assert decision.output == {"pursue": False} and decision.brain == "ollama/llama3.2"
        first = server.seen[0]
        assert first.path == "/api/chat"
        assert first.body["format"] == SCHEMA and first.body["stream"] is False
        assert first.body["options"] == {"temperature": 0}
        assert (stats.prompt_tokens, stats.completion_tokens) == (60, 8)
    finally:
        await server.stop()


async def test_an_answer_never_valid_is_a_dead_letter_with_the_answer_kept(
    forest_factory: Any, nc: Any, llm: FakeLLM
) -> None:
    from nimsforest.forest.leaf import Leaf
    from tests.support import eventually

    llm.reply = lambda body: '{"pursue": "perhaps"}'
    forest = await forest_factory({"nims": {"q": {
        "subscribes": "lead", "publishes": "lead.q", "template": "Qualify {{ id }}",
        "brain": {"type": "openai", "base_url": llm.url + "/v1", "model": "m1"},
        "output_schema": SCHEMA, "schema_retries": 1}}})
    await nc.jetstream().publish("wind.lead", Leaf.new("lead", {"id": "c-1"}, "t").to_json())
    await eventually(lambda: forest.get("nim", "q").dead == 1, what="the event given up")

    async def letters() -> list[Any]:
        return list(await forest.dead.list())

    (entry,) = await eventually(letters, what="the dead letter")
    letter = entry.letter
    assert letter.reason.value == "malformed" and letter.attempts == 1  # not redelivered
    assert "does not match output_schema after 2 attempts" in letter.error
    assert '{"pursue": "perhaps"}' in letter.error  # the answer kept
    assert len(llm.seen) == 2


def test_the_single_flight_rule_is_pure() -> None:
    from nimsforest.forest.decide import (
        CacheLook,
        ClaimState,
        LookStep,
        claim_state,
        next_look_step,
    )

    assert next_look_step(CacheLook(True, ClaimState.HELD)) is LookStep.HIT
    assert next_look_step(CacheLook(False, ClaimState.NONE)) is LookStep.CLAIM
    assert next_look_step(CacheLook(False, ClaimState.HELD)) is LookStep.WAIT
    assert next_look_step(CacheLook(False, ClaimState.STALE)) is LookStep.TAKE_OVER
    assert claim_state(None, 5.0) is ClaimState.NONE
    assert claim_state(6.0, 5.0) is ClaimState.HELD and claim_state(5.0, 5.0) is ClaimState.STALE


async def test_a_new_question_asked_at_once_makes_one_brain_call(plain_nats: Any) -> None:
    """Three askers of one new question at once, on two nodes (two connections, each with
    its own cache handle) and twice on one of them: one request, three answers. A claimer
    that died (its lease ran out) is taken over; one that failed lets a waiter ask."""
    import time

    import nats

    from nimsforest.forest.decide import AnswerCache, cache_key
    from nimsforest.streams import NIM_CACHE, ensure_stream
    from tests.support import eventually

    server = await FakeLLM("openai", usage=lambda body: (10, 3), latency=0.3).start()
    server.reply = lambda body: '{"pursue": true}'
    conns = [await nats.connect(plain_nats.url) for _ in range(2)]
    try:
        await ensure_stream(conns[0].jetstream(), NIM_CACHE, 1, None)
        kvs = [await c.jetstream().key_value("NIMCACHE") for c in conns]

        def asker(node: int, **brain: Any) -> Decider:
            d, _ = decider([openai(server, **brain)], schema=SCHEMA)
            d.cache = AnswerCache(kvs[node], 3600.0)
            return d

        a, b, c = asker(0), asker(1), asker(1)
        got = await asyncio.gather(*(d.decide("Qualify c-1", {}) for d in (a, b, c)))
        assert [g.output for g in got] == [{"pursue": True}] * 3
        assert server.requests == 1
        assert sum(g.usage.prompt_tokens for g in got) == 10  # one asked, two waited
        key = cache_key(a.chain[0], "Qualify c-1", SCHEMA)
        assert f"{key}.claim" not in await kvs[0].keys()  # released once answered

        # a claimer that died: its claim's lease is over, the next asker takes it over
        key2 = cache_key(a.chain[0], "Qualify c-2", SCHEMA)
        await kvs[0].put(f"{key2}.claim", json.dumps({"until": time.time() + 0.3}).encode())
        assert (await b.decide("Qualify c-2", {})).output == {"pursue": True}
        assert server.requests == 2

        # a claimer whose brain fails releases the question: a waiter then asks it
        server.reply = Scripted('{"pursue": "no"}', '{"pursue": true}')
        failing, _ = decider([openai(server)], schema=SCHEMA, schema_retries=0)
        failing.cache = AnswerCache(kvs[0], 3600.0)
        first = asyncio.ensure_future(failing.decide("Qualify c-3", {}))
        key3 = cache_key(a.chain[0], "Qualify c-3", SCHEMA)
        await eventually(lambda: kvs[1].get(f"{key3}.claim"), what="the first claims it")
        second = await asker(1).decide("Qualify c-3", {})
        with pytest.raises(SchemaRejected):
            await first
        assert second.output == {"pursue": True} and server.requests == 4
    finally:
        await server.stop()
        for nc in conns:
            await nc.close()
