"""Cluster-wide rate limits of a brain: requests and tokens per `per` (a minute by
default), counted in the KV bucket NIMRATE that every node shares, so that all the nodes
together respect a provider's quota.

A sliding window, so that no span of `per` seconds holds more than the limit (a fixed
window lets twice the limit through across its edge). The brain's one key, `<brain id>`
(the id hashes its kind, base URL, model and key variable: every nim on every node asking
the same endpoint shares it), holds what was taken in the last `per`, in SLOTS slots of
`per / SLOTS` seconds each: {"slots": [[slot, requests, tokens], ...]}. A slot counts
until its *end* is `per` old, so the count is never less than the true one within any
span of `per`: the limit is never exceeded, and a request waits at most one slot longer
than a request log would make it. Before each HTTP attempt a brain takes one request by
compare-and-set (a lost race reads again); when the window is full it waits until enough
slots have aged out. Tokens are added once the answer says how many it cost (requests in
flight may overshoot by their own tokens).

`decide(window, limit, now)` and `Window.add` are the pure rules; `RateLimiter` reads,
decides and writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

log = logging.getLogger("nimsforest.forest.brain")
BUCKET = "NIMRATE"
SLOTS = 60  # slots per window: a minute's window counts by the second


@dataclass(frozen=True)
class Limit:
    requests: int | None
    tokens: int | None
    per: float

    @property
    def slot_seconds(self) -> float:
        return self.per / SLOTS

    def slot_of(self, now: float) -> int:
        return math.floor(now / self.slot_seconds)

    def ages_out(self, slot: int) -> float:
        """When `slot` stops counting: its end is then `per` old."""
        return (slot + 1) * self.slot_seconds + self.per


@dataclass(frozen=True)
class Slot:
    slot: int
    requests: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class Window:
    """What was taken recently, by slot (ascending)."""

    slots: tuple[Slot, ...] = ()

    def live(self, limit: Limit, now: float) -> Window:
        """The slots that still count at `now`."""
        return Window(tuple(s for s in self.slots if limit.ages_out(s.slot) > now))

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.slots)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.slots)

    def add(self, limit: Limit, now: float, requests: int = 0, tokens: int = 0) -> Window:
        """This window at `now` (aged-out slots dropped) with `requests` and `tokens`
        added to the slot of `now`."""
        at = limit.slot_of(now)
        kept = [s for s in self.live(limit, now).slots if s.slot != at]
        mine = next((s for s in self.slots if s.slot == at), Slot(at))
        kept.append(Slot(at, mine.requests + requests, mine.tokens + tokens))
        return Window(tuple(sorted(kept, key=lambda s: s.slot)))

    def to_json(self) -> bytes:
        return json.dumps({"slots": [[s.slot, s.requests, s.tokens] for s in self.slots]},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes | None) -> Window:
        """The stored window; ValueError when the value is no window."""
        try:
            doc = json.loads(raw or b"{}")
            return cls(tuple(Slot(int(a), int(b), int(c)) for a, b, c in doc.get("slots", [])))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a rate-limit window: {exc}") from None


@dataclass(frozen=True)
class Take:
    slot: int


@dataclass(frozen=True)
class Wait:
    seconds: float  # until enough of the window has aged out


def _full(requests: int, tokens: int, limit: Limit) -> bool:
    return (limit.requests is not None and requests >= limit.requests) or (
        limit.tokens is not None and tokens >= limit.tokens)


def decide(window: Window, limit: Limit, now: float) -> Take | Wait:
    """Take one request at `now`, or wait until the oldest slots have aged out enough."""
    live = window.live(limit, now)
    requests, tokens = live.requests, live.tokens
    if not _full(requests, tokens, limit):
        return Take(limit.slot_of(now))
    for s in live.slots:  # oldest first
        requests, tokens = requests - s.requests, tokens - s.tokens
        if not _full(requests, tokens, limit):
            return Wait(limit.ages_out(s.slot) - now)
    return Wait(limit.per)  # unreachable: an empty window is never full


def brain_id(kind: str, base_url: str, model: str, key_var: str) -> str:
    return hashlib.sha256(f"{kind}\n{base_url}\n{model}\n{key_var}".encode()).hexdigest()[:24]


class RateLimiter:
    def __init__(self, kv: Any, ident: str, limit: Limit, label: str,
                 wall: Callable[[], float] = time.time) -> None:
        self._kv, self._id, self.limit, self._label, self._wall = kv, ident, limit, label, wall
        self.waits = 0  # times a request waited for room (for status and tests)
        self._bad_logged = False

    async def _read(self) -> tuple[Window, int]:
        try:
            entry = await self._kv.get(self._id)
        except KeyNotFoundError:
            return Window(), 0
        try:
            window = Window.from_json(entry.value)
        except ValueError as exc:  # counted again from now on (said once)
            if not self._bad_logged:
                log.warning("%s: the rate-limit key %s in %s is unreadable (%s); counting "
                            "starts again", self._label, self._id, BUCKET, exc)
                self._bad_logged = True
            window = Window()
        return window, int(entry.revision)

    async def _write(self, window: Window, revision: int) -> bool:
        try:
            if revision == 0:
                await self._kv.create(self._id, window.to_json())
            else:
                await self._kv.update(self._id, window.to_json(), last=revision)
        except KeyWrongLastSequenceError:  # another node took one meanwhile: read again
            return False
        return True

    async def acquire(self) -> None:
        """One request now, waiting until the window has room."""
        logged = False
        while True:
            now = self._wall()
            window, revision = await self._read()
            step = decide(window, self.limit, now)
            if isinstance(step, Wait):
                self.waits += 1
                if not logged:
                    live = window.live(self.limit, now)
                    log.info("%s: rate limit reached (%d requests, %d tokens in the last %gs), "
                             "waiting %.1fs", self._label, live.requests, live.tokens,
                             self.limit.per, step.seconds)
                    logged = True
                await asyncio.sleep(step.seconds + 0.001)
                continue
            if await self._write(window.add(self.limit, now, requests=1), revision):
                return

    async def spent(self, tokens: int) -> None:
        """Add an answer's tokens to the window."""
        if not tokens or self.limit.tokens is None:
            return
        for _ in range(16):
            window, revision = await self._read()
            if await self._write(window.add(self.limit, self._wall(), tokens=tokens), revision):
                return


__all__ = [
    "BUCKET",
    "SLOTS",
    "Limit",
    "RateLimiter",
    "Slot",
    "Take",
    "Wait",
    "Window",
    "brain_id",
    "decide",
]
