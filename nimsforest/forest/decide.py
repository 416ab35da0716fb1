"""A nim's decision: the contract between a nim and its brains.

    chain     `brain`, then `fallback`, asked in order until one answers; a brain that
              failed `fallback_after` decisions in a row is skipped for `cooldown`
              seconds (when every brain is cooling down, all are tried anyway)
    schema    `output_schema`: sent to the brain when it takes one, always checked here
              (jsonschema); an answer that is not JSON or does not match is asked again
              with the validation error fed back, up to `schema_retries` times, then the
              next brain is asked; when none gives a valid answer the event is dead
              (SchemaRejected, terminated at once) with the last answer in its sentence
    cache     `cache` (a TTL): a valid answer of an HTTP brain is kept in the KV bucket
              NIMCACHE, shared by the cluster, keyed by brain, model, rendered prompt and
              schema; the same question within the TTL is answered from it (no request,
              no tokens); off by default. Single flight: the first asker of a new
              question claims it in the bucket, the others (on any node) wait for its
              answer (AnswerCache.look; the rule is `next_look_step`)
    timeout   `decision_timeout` bounds the whole decision: every brain, HTTP retry and
              schema retry together (the event then fails and is redelivered later)
    limits    a brain's `rate_limit` is the brain's own (brains/ratelimit.py): shared by
              every node through the KV bucket NIMRATE
    tokens    each answer's usage (prompt and completion tokens, as the server counted
              them) and its cost (the brain's prices per million tokens) are counted per
              nim, brain and model in /metrics and in the component's status, and given
              to the leaf as headers (Nimsforest-Brain, Nimsforest-Tokens)

The cool-down bookkeeping is pure (`after_success`, `after_failure`, `usable`) on a
frozen `BrainHealth`; `Decider` only asks, checks and records.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from nimsforest import metrics
from nimsforest.forest.brains import Brain, Usage
from nimsforest.forest.delivery import Stats
from nimsforest.forest.errors import BadEvent, EventError
from nimsforest.forest.prompt import parse_json_object

log = logging.getLogger("nimsforest.forest.nim")


class SchemaRejected(BadEvent):
    """No brain gave an answer matching the output schema; `answer` is the last one."""

    def __init__(self, message: str, answer: str) -> None:
        self.answer = answer
        super().__init__(message)


class DecisionFailed(EventError):
    """No brain could answer (each one's reason is in the sentence); retried later."""


# --- cool-down: pure ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BrainHealth:
    failures: int = 0  # decisions failed in a row
    skipped_until: float = 0.0  # monotonic time


def usable(h: BrainHealth, now: float) -> bool:
    return now >= h.skipped_until


def after_success(h: BrainHealth) -> BrainHealth:
    return BrainHealth()


def after_failure(h: BrainHealth, now: float, fallback_after: int, cooldown: float) -> BrainHealth:
    failures = h.failures + 1
    if failures >= fallback_after:
        return BrainHealth(failures=0, skipped_until=now + cooldown)
    return replace(h, failures=failures)


# --- the decision ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    output: dict[str, Any] | None
    brain: str  # "openai/gpt-4o-mini", "rules"
    usage: Usage = Usage()

    def headers(self) -> dict[str, str]:
        """The leaf's headers: the brain, and the tokens when its server counted any (the
        rules brain and servers that do not say have no token header)."""
        if not (self.usage.prompt_tokens or self.usage.completion_tokens):
            return {"Nimsforest-Brain": self.brain}
        return {"Nimsforest-Brain": self.brain,
                "Nimsforest-Tokens": f"{self.usage.prompt_tokens}/{self.usage.completion_tokens}"}


@dataclass(frozen=True)
class Contract:
    """What a nim's spec asks of its decisions."""

    schema: dict[str, Any] | None = None
    schema_retries: int = 2
    timeout: float | None = None
    fallback_after: int = 3
    cooldown: float = 60.0
    cache_ttl: float | None = None  # seconds; None: no answer cache


# --- the answer cache's single flight: pure ------------------------------------------------------
class ClaimState(Enum):
    NONE = "none"  # nobody is asking this question
    HELD = "held"  # someone is asking it, within their lease
    STALE = "stale"  # someone claimed it and did not answer within their lease (died?)


class LookStep(Enum):
    HIT = "hit"  # the answer is there
    CLAIM = "claim"  # ask the brain, after claiming the question (create)
    TAKE_OVER = "take over"  # ask it, after taking the stale claim over (compare-and-set)
    WAIT = "wait"  # another asker has it: look again shortly


@dataclass(frozen=True)
class CacheLook:
    """What the cache holds for one question, seen at once."""

    answer: bool  # a usable answer is stored
    claim: ClaimState


def next_look_step(look: CacheLook) -> LookStep:
    if look.answer:
        return LookStep.HIT
    return {ClaimState.NONE: LookStep.CLAIM, ClaimState.STALE: LookStep.TAKE_OVER,
            ClaimState.HELD: LookStep.WAIT}[look.claim]


def claim_state(until: float | None, now: float) -> ClaimState:
    if until is None:
        return ClaimState.NONE
    return ClaimState.HELD if now < until else ClaimState.STALE


@dataclass(frozen=True)
class Claim:
    """This asker's claim of a question: the key to delete once answered (or failed)."""

    key: str


class AnswerCache:
    """Valid answers of HTTP brains in the KV bucket NIMCACHE, by `cache_key`; shared by
    every node. Never fails a decision: a bucket that cannot be read or written is a miss.

    Single flight: the first asker of a new question claims it (creates `<key>.claim`
    holding the end of its lease); the others, on any node, wait for the answer key,
    looking again every 20 ms to 250 ms, until the claim is gone (answered, or failed:
    then one of them claims it) or its lease has run out (the claimer died: one of them
    takes the claim over by compare-and-set). One brain call per question and TTL."""

    def __init__(self, kv: Any, ttl: float, wall: Callable[[], float] = time.time,
                 lease: float = 60.0) -> None:
        self._kv, self._ttl, self._wall, self.lease = kv, ttl, wall, lease

    async def get(self, key: str) -> str | None:
        try:
            entry = await self._kv.get(key)
            value = json.loads(entry.value or b"null")
        except Exception:  # noqa: BLE001 - missing, unreadable or bucket away: a miss
            return None
        if not isinstance(value, dict) or self._wall() - float(value.get("at", 0)) > self._ttl:
            return None
        text = value.get("text")
        return text if isinstance(text, str) else None

    async def put(self, key: str, text: str) -> None:
        try:
            await self._kv.put(key, json.dumps({"at": self._wall(), "text": text}).encode())
        except Exception as exc:  # noqa: BLE001 - the answer was given; only the cache is lost
            log.debug("the answer cache cannot be written: %s", exc)

    async def look(self, key: str, valid: Callable[[str], bool]) -> tuple[str | None, Claim | None]:
        """The stored answer (usable by the asker), or None and this asker's claim of the
        question (None when the bucket cannot be used: ask without one)."""
        pause = 0.02
        while True:
            text = await self.get(key)
            if text is not None and valid(text):
                return text, None
            until, revision = await self._claim_of(key)
            step = next_look_step(CacheLook(False, claim_state(until, self._wall())))
            if step is LookStep.WAIT:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.25)
                continue
            try:
                return None, await self._claim(key, revision if step is LookStep.TAKE_OVER
                                               else None)
            except KeyWrongLastSequenceError:  # another asker claimed it first: wait for it
                continue
            except Exception as exc:  # noqa: BLE001 - the bucket is away: ask without a claim
                log.debug("the answer cache cannot be claimed: %s", exc)
                return None, None

    async def release(self, claim: Claim) -> None:
        try:
            await self._kv.delete(claim.key)
        except Exception as exc:  # noqa: BLE001 - its lease runs out instead
            log.debug("the answer cache's claim cannot be deleted: %s", exc)

    async def _claim_of(self, key: str) -> tuple[float | None, int]:
        try:
            entry = await self._kv.get(f"{key}.claim")
            return float(json.loads(entry.value or b"{}")["until"]), int(entry.revision)
        except KeyNotFoundError:  # never claimed, or deleted (answered or failed)
            return None, 0
        except Exception:  # noqa: BLE001 - unreadable: as good as stale
            return float("-inf"), -1

    async def _claim(self, key: str, revision: int | None) -> Claim:
        value = json.dumps({"until": self._wall() + self.lease}).encode()
        claim = Claim(f"{key}.claim")
        if revision is None:
            await self._kv.create(claim.key, value)
        elif revision < 0:  # an unreadable claim: replaced
            await self._kv.put(claim.key, value)
        else:
            await self._kv.update(claim.key, value, last=revision)
        return claim


def cache_key(brain: Brain, prompt: str, schema: dict[str, Any] | None) -> str:
    """The brain, its model, the rendered prompt and the schema, hashed (a KV key)."""
    text = json.dumps([brain.kind, brain.model, prompt, schema], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class _Member:
    brain: Brain
    label: str
    price: tuple[float, float]
    health: BrainHealth = field(default_factory=BrainHealth)


class Decider:
    def __init__(self, nim: str, chain: Sequence[Brain], contract: Contract, stats: Stats,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nim, self.contract, self._stats, self._clock = nim, contract, stats, clock
        self.members = [_Member(b, _brain_label(b), b.prices) for b in chain]
        self.cache: AnswerCache | None = None  # set when the nim starts (NimHandler.attach)
        self._validator: Any = None
        if contract.schema is not None:
            import jsonschema  # only nims with a schema pay for the import

            self._validator = jsonschema.validators.validator_for(contract.schema)(
                contract.schema)

    @property
    def chain(self) -> tuple[Brain, ...]:
        return tuple(m.brain for m in self.members)

    def with_chain(self, chain: Sequence[Brain]) -> Decider:
        """The same contract over other brains (the test runner's recorded ones)."""
        return Decider(self.nim, chain, self.contract, self._stats, self._clock)

    @property
    def needs_prompt(self) -> bool:
        return any(m.brain.needs_prompt for m in self.members)

    def decide_sync(self, context: dict[str, Any]) -> Decision:
        """A lone rules brain: no I/O, no retry (it is deterministic)."""
        (m,) = self.members
        output = m.brain.decide(context)
        if output is not None:
            problem = self._problem(output)
            if problem is not None:
                raise SchemaRejected(f"nim '{self.nim}': the {m.label} output does not match "
                                     f"output_schema: {problem}", json.dumps(output))
        return Decision(output, m.label)

    async def decide(self, prompt: str, context: dict[str, Any]) -> Decision:
        timeout = self.contract.timeout
        if timeout is None:
            return await self._decide(prompt, context)
        try:
            async with asyncio.timeout(timeout):
                return await self._decide(prompt, context)
        except TimeoutError:
            raise DecisionFailed(
                f"nim '{self.nim}': no decision within decision_timeout {timeout:g}s"
            ) from None

    async def _decide(self, prompt: str, context: dict[str, Any]) -> Decision:
        now = self._clock()
        members = [m for m in self.members if usable(m.health, now)] or self.members
        reasons: list[str] = []
        rejected: SchemaRejected | None = None
        other_failures = 0
        for m in members:
            try:
                decision = await self._ask(m, prompt, context)
            except SchemaRejected as exc:
                rejected, reason = exc, str(exc)
            except EventError as exc:
                reason = str(exc)
                other_failures += 1
            else:
                m.health = after_success(m.health)
                if m is not self.members[0]:
                    metrics.nim_fallbacks.labels(self.nim, m.label).inc()
                return decision
            reasons.append(reason)
            was = m.health
            m.health = after_failure(was, self._clock(), self.contract.fallback_after,
                                     self.contract.cooldown)
            if m.health.skipped_until > was.skipped_until and len(self.members) > 1:
                log.warning("nim '%s': brain %s failed %d decisions in a row; skipped for %gs",
                            self.nim, m.label, self.contract.fallback_after,
                            self.contract.cooldown)
        if rejected is not None and other_failures == 0:  # every brain answered, wrongly
            if len(reasons) == 1:
                raise rejected
            raise SchemaRejected("; ".join(reasons), rejected.answer)
        raise DecisionFailed(reasons[0] if len(reasons) == 1 else
                             f"nim '{self.nim}': no brain could answer: " + "; ".join(reasons))

    async def _ask(self, m: _Member, prompt: str, context: dict[str, Any]) -> Decision:
        if not m.brain.needs_prompt:
            output = m.brain.decide(context)
            problem = self._problem(output) if output is not None else None
            if problem is not None:
                raise SchemaRejected(f"nim '{self.nim}': the {m.label} output does not match "
                                     f"output_schema: {problem}", json.dumps(output))
            return Decision(output, m.label)
        if self.cache is None:
            return (await self._ask_brain(m, prompt))[0]
        key = cache_key(m.brain, prompt, self.contract.schema)
        cached, claim = await self.cache.look(key, lambda t: self._cached(m, t) is not None)
        if cached is not None and (output := self._cached(m, cached)) is not None:
            metrics.nim_cache_hits.labels(self.nim, m.label).inc()
            return Decision(output, m.label)
        try:
            decision, text = await self._ask_brain(m, prompt)
            await self.cache.put(key, text)
            return decision
        finally:
            if claim is not None:
                await self.cache.release(claim)

    def _cached(self, m: _Member, text: str) -> dict[str, Any] | None:
        """A stored answer as an output, None when it is no longer valid (a changed schema)."""
        try:
            output = parse_json_object(text, f"nim '{self.nim}' ({m.label})")
        except EventError:
            return None
        return output if output is not None and self._problem(output) is None else None

    async def _ask_brain(self, m: _Member, prompt: str) -> tuple[Decision, str]:
        """The brain's valid answer (schema retries included), and its text."""
        schema = self.contract.schema
        messages: list[tuple[str, str]] = [("user", prompt)]
        total = Usage()
        attempts = (self.contract.schema_retries if schema is not None else 0) + 1
        text, problem = "", ""
        for _ in range(attempts):
            reply = await m.brain.ask(messages, schema)
            self._account(m, reply.usage)
            total = Usage(total.prompt_tokens + reply.usage.prompt_tokens,
                          total.completion_tokens + reply.usage.completion_tokens)
            text = reply.text
            try:
                output = parse_json_object(text, f"nim '{self.nim}' ({m.label})")
            except EventError as exc:
                if schema is None:
                    raise
                problem = str(exc)
            else:
                found = self._problem(output)
                if found is None:
                    return Decision(output, m.label, total), text
                problem = found
            metrics.nim_schema_retries.labels(self.nim, m.label).inc()
            messages += [("assistant", text), ("user", (
                f"Your answer does not match the required JSON Schema: {problem}. Answer "
                "again with only the corrected JSON object."))]
        shown = text if len(text) <= 500 else text[:497] + "..."
        raise SchemaRejected(
            f"nim '{self.nim}': the answer of {m.label} does not match output_schema after "
            f"{attempts} attempt{'s' if attempts > 1 else ''} ({problem}); the answer was: "
            f"{shown!r}", text)

    def _problem(self, output: dict[str, Any]) -> str | None:
        if self._validator is None:
            return None
        try:
            err = next(iter(sorted(self._validator.iter_errors(output),
                                   key=lambda e: list(map(str, e.path)))), None)
        except Exception as exc:  # noqa: BLE001 - e.g. a $ref the schema cannot resolve
            return f"the output_schema cannot be applied: {exc}"
        if err is None:
            return None
        where = "/".join(str(p) for p in err.absolute_path)
        return f"{'at ' + where + ': ' if where else ''}{err.message}"

    def _account(self, m: _Member, usage: Usage) -> None:
        p, c = usage.prompt_tokens, usage.completion_tokens
        cost = (p * m.price[0] + c * m.price[1]) / 1_000_000
        s = self._stats
        s.prompt_tokens += p
        s.completion_tokens += c
        s.cost += cost
        model = m.brain.model
        metrics.nim_tokens.labels(self.nim, m.brain.kind, model, "prompt").inc(p)
        metrics.nim_tokens.labels(self.nim, m.brain.kind, model, "completion").inc(c)
        if cost:
            metrics.nim_cost.labels(self.nim, m.brain.kind, model).inc(cost)


def _brain_label(b: Brain) -> str:
    return f"{b.kind}/{b.model}" if b.model else b.kind


__all__ = [
    "AnswerCache",
    "BrainHealth",
    "Contract",
    "Decider",
    "Decision",
    "DecisionFailed",
    "SchemaRejected",
    "after_failure",
    "after_success",
    "cache_key",
    "usable",
]
