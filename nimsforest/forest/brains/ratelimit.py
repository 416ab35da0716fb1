"""Cluster-wide rate limits of a brain: requests and tokens per window (a minute by
default), counted in the KV bucket NIMRATE that every node shares, so that all the nodes
together respect a provider's quota.

Each window is one key, `<brain id>.<window number>` (the brain id hashes its kind, base
URL, model and key variable: every nim on every node asking the same endpoint shares it),
holding {"requests", "tokens"}. Before each HTTP attempt a brain takes one request from
the current window by compare-and-set (a lost race reads again); a full window (requests,
or tokens already spent) waits for the next one. Tokens are added once the answer says
how many it cost. Fixed windows: at a window's edge up to twice the limit may pass within
one `per`, never more than the limit within one window.

`decide(counts, limit, now)` is the pure rule; `RateLimiter` reads, decides and writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

log = logging.getLogger("nimsforest.forest.brain")
BUCKET = "NIMRATE"


@dataclass(frozen=True)
class Limit:
    requests: int | None
    tokens: int | None
    per: float


@dataclass(frozen=True)
class Counts:
    requests: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class Take:
    window: int


@dataclass(frozen=True)
class Wait:
    seconds: float  # until the next window


def window_of(now: float, per: float) -> int:
    return int(now // per)


def decide(counts: Counts, limit: Limit, now: float) -> Take | Wait:
    """Take one request from the window of `now`, or wait for the next window."""
    window = window_of(now, limit.per)
    full = (limit.requests is not None and counts.requests >= limit.requests) or (
        limit.tokens is not None and counts.tokens >= limit.tokens)
    if full:
        return Wait((window + 1) * limit.per - now)
    return Take(window)


def brain_id(kind: str, base_url: str, model: str, key_var: str) -> str:
    return hashlib.sha256(f"{kind}\n{base_url}\n{model}\n{key_var}".encode()).hexdigest()[:24]


class RateLimiter:
    def __init__(self, kv: Any, ident: str, limit: Limit, label: str,
                 wall: Callable[[], float] = time.time) -> None:
        self._kv, self._id, self.limit, self._label, self._wall = kv, ident, limit, label, wall
        self.waits = 0  # times a request waited for a window (for status and tests)

    def _key(self, window: int) -> str:
        return f"{self._id}.{window}"

    async def _read(self, window: int) -> tuple[Counts, int]:
        try:
            entry = await self._kv.get(self._key(window))
        except KeyNotFoundError:
            return Counts(), 0
        raw = json.loads(entry.value or b"{}")
        return Counts(int(raw.get("requests", 0)), int(raw.get("tokens", 0))), int(entry.revision)

    async def _write(self, window: int, counts: Counts, revision: int) -> bool:
        value = json.dumps({"requests": counts.requests, "tokens": counts.tokens}).encode()
        try:
            if revision == 0:
                await self._kv.create(self._key(window), value)
            else:
                await self._kv.update(self._key(window), value, last=revision)
        except KeyWrongLastSequenceError:  # another node took one meanwhile: read again
            return False
        return True

    async def acquire(self) -> None:
        """One request of the current window, waiting for a window with room."""
        logged = False
        while True:
            now = self._wall()
            window = window_of(now, self.limit.per)
            counts, revision = await self._read(window)
            step = decide(counts, self.limit, now)
            if isinstance(step, Wait):
                self.waits += 1
                if not logged:
                    log.info("%s: rate limit reached (%s per %gs), waiting %.1fs", self._label,
                             counts, self.limit.per, step.seconds)
                    logged = True
                await asyncio.sleep(step.seconds + 0.01)
                continue
            if await self._write(step.window, Counts(counts.requests + 1, counts.tokens),
                                 revision):
                return

    async def spent(self, tokens: int) -> None:
        """Add an answer's tokens to the current window."""
        if not tokens or self.limit.tokens is None:
            return
        for _ in range(16):
            window = window_of(self._wall(), self.limit.per)
            counts, revision = await self._read(window)
            if await self._write(window, Counts(counts.requests, counts.tokens + tokens),
                                 revision):
                return


__all__ = [
    "BUCKET",
    "Counts",
    "Limit",
    "RateLimiter",
    "Take",
    "Wait",
    "brain_id",
    "decide",
    "window_of",
]
