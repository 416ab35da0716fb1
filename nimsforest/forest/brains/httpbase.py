"""Shared HTTP plumbing for LLM brains: one httpx client per nim, a concurrency limit,
timeouts, and retries with exponential backoff for 429, 5xx, timeouts and connection
errors (Retry-After is honoured, capped at 30 s). Other 4xx answers are not retried."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from typing import Any

import httpx

from nimsforest.forest.brains import Brain, MissingKey, Usage
from nimsforest.forest.brains.ratelimit import RateLimiter, brain_id
from nimsforest.forest.errors import EventError
from nimsforest.forest.prompt import parse_json_object
from nimsforest.forest.specs import _HttpBrain

log = logging.getLogger("nimsforest.forest.brain")
MAX_DELAY = 30.0


class BrainError(EventError):
    """The brain could not answer (after retries); the event is retried later."""


def resolve(
    env: Mapping[str, str], explicit: str | None, var: str, default: str | None
) -> str | None:
    return explicit or env.get(var) or default


def api_key(
    env: Mapping[str, str], spec: _HttpBrain, default_var: str, *, required: bool
) -> str | None:
    var = spec.api_key_env or default_var
    key = env.get(var)
    if not key and (required or spec.api_key_env):
        raise MissingKey(var, "brain.api_key_env")
    return key


class HttpBrain(Brain):
    kind = "http"
    needs_prompt = True

    def __init__(self, spec: _HttpBrain, label: str) -> None:
        self.spec = spec
        self.concurrency = spec.concurrency
        self._label = label
        self._client: httpx.AsyncClient | None = None
        self.rate_limit = spec.rate_limit
        self.limiter: RateLimiter | None = None  # set when the nim starts (rate_limit)

    _model = ""  # set by each kind from its spec or environment

    @property
    def model(self) -> str:
        return self._model

    async def think(self, prompt: str, context: dict[str, Any]) -> dict[str, Any] | None:
        """The prompt as one user turn; the answer parsed as a JSON object."""
        reply = await self.ask([("user", prompt)])
        return parse_json_object(reply.text, self._label)

    def _shared_by(self, url: str) -> None:
        """Subclasses call this once `url` and the model are known."""
        self.endpoint = brain_id(self.kind, url, self.model, self.spec.api_key_env or "")

    async def spent(self, usage: Usage) -> None:
        if self.limiter is not None:
            await self.limiter.spent(usage.prompt_tokens + usage.completion_tokens)

    @property
    def prices(self) -> tuple[float, float]:
        return (self.spec.price_prompt, self.spec.price_completion)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.spec.timeout),
                # every connection kept alive (httpx keeps 20 by default: a brain with a
                # higher concurrency would otherwise reconnect for most requests)
                limits=httpx.Limits(max_connections=self.spec.concurrency,
                                    max_keepalive_connections=self.spec.concurrency),
                trust_env=False,
            )
        return self._client

    async def post(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> Any:
        retries, backoff = self.spec.retries, self.spec.backoff
        last = ""
        for attempt in range(retries + 1):
            delay = min(MAX_DELAY, backoff * 2**attempt) * (0.8 + 0.4 * random.random())
            if self.limiter is not None:
                await self.limiter.acquire()
            try:
                resp = await self._http().post(url, headers=headers, json=body)
            except httpx.TimeoutException:
                last = f"no answer from {url} within {self.spec.timeout:g}s"
            except httpx.TransportError as exc:
                last = f"cannot reach {url}: {exc.__class__.__name__}"
            else:
                if resp.status_code < 300:
                    try:
                        return resp.json()
                    except ValueError:
                        raise BrainError(
                            f"{self._label}: {url} answered with something that is not JSON"
                        ) from None
                snippet = resp.text[:200].strip()
                last = f"{url} answered {resp.status_code}: {snippet}"
                if resp.status_code != 429 and resp.status_code < 500:
                    raise BrainError(f"{self._label}: {last}")
                retry_after = resp.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    delay = min(MAX_DELAY, float(retry_after))
            if attempt < retries:
                log.info(
                    "%s: %s; retry %d of %d in %.2fs",
                    self._label,
                    last,
                    attempt + 1,
                    retries,
                    delay,
                )
                await asyncio.sleep(delay)
        raise BrainError(f"{self._label}: {last} (after {retries + 1} attempts)")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def usage_of(usage: Any, prompt: str, completion: str) -> Usage:
    """The token counts of an answer's `usage` object (0 for what it lacks)."""
    if not isinstance(usage, dict):
        return Usage()

    def count(key: str) -> int:
        v = usage.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0

    return Usage(count(prompt), count(completion))
