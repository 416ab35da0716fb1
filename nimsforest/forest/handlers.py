"""What each component does with one event (the runner does delivery; see consumer.py).

Tree        RIVER message -> Lua process(input) -> a leaf on `publishes`, or nothing
TreeHouse   leaf -> Lua process(leaf.data) -> a leaf on `publishes`, or nothing
Nim         leaf -> prompt -> brain -> a leaf on `publishes` (placeholders filled from
            the output) and a state change into Humus
Decomposer  Humus entry -> Soil, exactly once per entry
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from nats.js.errors import APIError

from nimsforest.forest.brains.ratelimit import Limit, RateLimiter
from nimsforest.forest.decide import AnswerCache, Decider, Decision
from nimsforest.forest.delivery import Delivery, Handler, Handoff, Output, Stats
from nimsforest.forest.errors import BadEvent
from nimsforest.forest.leaf import Compost, CompostAction, Leaf, loads, soil_key
from nimsforest.forest.prompt import Prompt, context_for, fill_subject, placeholders
from nimsforest.forest.sandbox import LuaSandbox
from nimsforest.forest.soil import WRONG_LAST_SEQUENCE, Soil, SoilConflict, SoilEntry
from nimsforest.forest.specs import HumusSpec
from nimsforest.forest.subjects import WIND_PREFIX, humus_subject, wind_subject
from nimsforest.streams import NIM_CACHE, NIM_RATE

SOURCE_HEADER = "Nimsforest-Source"
log = logging.getLogger("nimsforest.forest.nim")


class TreeHandler(Handler):
    """River data -> leaf. The script's input is the River JSON; an object gets `_subject`
    (the River subject) and `_source` (who flowed it) added, anything else arrives as
    {value = ..., _subject = ..., _source = ...}."""

    def __init__(
        self, name: str, durable: str, publishes: str, sandbox: LuaSandbox, stats: Stats
    ) -> None:
        self._source = f"tree:{name}"
        self._durable, self._publishes, self._wind = durable, publishes, wind_subject(publishes)
        self._lua, self._stats = sandbox, stats

    def handle_sync(self, d: Delivery) -> Sequence[Output]:
        try:
            value = loads(d.data)
        except ValueError:
            raise BadEvent(f"River message {d.subject} #{d.stream_seq} is not JSON") from None
        meta = {"_subject": d.subject, "_source": d.headers.get(SOURCE_HEADER, "river")}
        value = {**value, **meta} if isinstance(value, dict) else {**meta, "value": value}
        result = self._lua.call(value)
        if result is None:
            self._stats.dropped += 1
            return ()
        leaf = Leaf.new(self._publishes, result, self._source, trusted=True)
        return (Output(self._wind, leaf.to_json(), f"{self._durable}:{d.stream_seq}"),)


class TreeHouseHandler(Handler):
    """Leaf -> leaf. The script's input is the leaf's data."""

    def __init__(
        self, name: str, durable: str, publishes: str, sandbox: LuaSandbox, stats: Stats
    ) -> None:
        self._source = f"treehouse:{name}"
        self._durable, self._publishes, self._wind = durable, publishes, wind_subject(publishes)
        self._lua, self._stats = sandbox, stats

    def handle_sync(self, d: Delivery) -> Sequence[Output]:
        leaf = Leaf.from_json(d.data)
        result = self._lua.call(leaf.data)
        if result is None:
            self._stats.dropped += 1
            return ()
        out = Leaf.new(self._publishes, result, self._source, trusted=True)
        return (Output(self._wind, out.to_json(), f"{self._durable}:{d.stream_seq}"),)


class NimHandler(Handler):
    """Leaf -> prompt -> decision (brains, schema, fallback: decide.py) -> leaf (+ Humus
    entry). With a lone brain that needs no prompt (rules) the whole nim runs
    synchronously, in order, like a treehouse; otherwise each event is a task and the
    brains' concurrency limit applies."""

    def __init__(
        self,
        name: str,
        durable: str,
        publishes: str,
        prompt: Prompt,
        decider: Decider,
        humus: HumusSpec,
        stats: Stats,
    ) -> None:
        self._name, self._source = name, f"nim:{name}"
        self._durable, self._publishes = durable, publishes
        self._static_subject = None if placeholders(publishes) else publishes
        self._prompt, self._decider, self._humus, self._stats = prompt, decider, humus, stats
        self._sem = asyncio.Semaphore(max(b.concurrency for b in decider.chain))
        self.is_async = decider.needs_prompt or len(decider.chain) > 1

    @property
    def prompt(self) -> Prompt:
        return self._prompt

    @property
    def decider(self) -> Decider:
        return self._decider

    async def attach(self, js: Any) -> None:
        """Open the answer cache when the nim has one (a bucket that cannot be opened is
        logged: the nim then asks its brains every time)."""
        ttl = self._decider.contract.cache_ttl
        if ttl is not None and self._decider.cache is None:
            try:
                kv = await js.key_value(NIM_CACHE.kv_bucket)
            except Exception as exc:  # noqa: BLE001 - runs without the cache
                log.warning("nim '%s': the answer cache cannot be opened: %s", self._name, exc)
            else:
                self._decider.cache = AnswerCache(kv, ttl)
        for brain in self._decider.chain:
            limit = brain.rate_limit
            if limit is None or brain.limiter is not None:
                continue
            try:  # without its bucket a limit cannot be shared: the attempt fails, retried
                kv = await js.key_value(NIM_RATE.kv_bucket)
            except Exception as exc:
                raise RuntimeError(f"nim '{self._name}': the rate-limit bucket cannot be "
                                   f"opened: {exc}") from exc
            brain.limiter = RateLimiter(kv, brain.endpoint, Limit(limit.requests, limit.tokens,
                                                                   limit.per),
                                        f"nim '{self._name}' ({brain.kind})")

    def handle_sync(self, d: Delivery) -> Sequence[Output]:
        leaf = Leaf.from_json(d.data)
        return self._outputs(d, leaf, self._decider.decide_sync(context_for(leaf)))

    async def handle_async(self, d: Delivery) -> Sequence[Output]:
        leaf = Leaf.from_json(d.data)
        ctx = context_for(leaf)
        prompt = self._prompt.render(ctx) if self._decider.needs_prompt else ""
        async with self._sem:
            decision = await self._decider.decide(prompt, ctx)
        return self._outputs(d, leaf, decision)

    def _outputs(self, d: Delivery, leaf: Leaf, decision: Decision) -> Sequence[Output]:
        output = decision.output
        if output is None:
            self._stats.dropped += 1
            return ()
        subject = self._static_subject or fill_subject(self._publishes, output)
        out = Leaf.new(subject, output, self._source, trusted=True)
        outputs = [Output(WIND_PREFIX + subject, out.to_json(), f"{self._durable}:{d.stream_seq}",
                          headers=decision.headers())]
        entity = self._entity(leaf.data, output) if self._humus.enabled else None
        if entity:
            action = CompostAction(self._humus.action)
            compost = Compost(
                entity=entity,
                action=action,
                data=None if action is CompostAction.DELETE else output,
                nim=self._name,
                ts=out.ts,
            )
            outputs.append(
                Output(
                    humus_subject(self._name, action.value),
                    compost.to_json(),
                    f"{self._durable}:{d.stream_seq}:humus",
                )
            )
        return outputs

    def _entity(self, data: Any, output: dict[str, Any]) -> str | None:
        for source in (data, output):
            if isinstance(source, dict):
                for f in self._humus.entity_fields:
                    v = source.get(f)
                    if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v):
                        return str(v)
        return None


class DecomposerHandler(Handler):
    """Applies Humus to Soil exactly once per entry, even when redelivered or applied by
    several nodes at once: a key records the last HUMUS sequence applied to it, and every
    write is a compare-and-set on the key's revision (see soil.py).

    create  writes the data when the key is missing or deleted; an existing key is left
            alone (reported as a dropped entry)
    update  writes the data (creating the key when missing)
    delete  deletes the key; a missing key is left alone
    An entry older than the key's last applied one is skipped, so Soil converges on the
    newest entry per key even when entries are handled out of order.

    Fast path (synchronous, pipelined like any output): write from what this node last saw
    of the key (a never-seen key is guessed missing). A lost compare-and-set, a retry, or a
    skip that needs confirming takes the slow path: read the key, decide, write, repeat.
    """

    # Soil writes carry no hop headers: lineage reaches them by the Humus sequence each
    # write stores, and a trace ends at the Humus entry (two headers fewer per event)
    hop_headers = False

    def __init__(self, soil: Soil, stats: Stats, cache_size: int = 10_000) -> None:
        self._soil, self._stats = soil, stats
        self._cache: OrderedDict[str, SoilEntry] = OrderedDict()
        self._cache_size = cache_size
        self._log = logging.getLogger("nimsforest.forest.decomposer")

    def handle_sync(self, d: Delivery) -> Sequence[Output] | Handoff:
        entry = Compost.from_json(d.data)
        if d.num_delivered > 1:
            return Handoff.ASYNC  # a retry: decide from a fresh read
        key = soil_key(entry.entity)
        cur = self._cache.get(key) or SoilEntry(key=key, value=None, revision=0, humus_seq=0)
        if cur.humus_seq >= d.stream_seq:
            return ()  # applied already
        if self._skip(entry, cur):
            return Handoff.ASYNC  # confirm against the stored key before skipping
        deleting = entry.action is CompostAction.DELETE
        return (Soil.write(key, entry.data, cur.revision, d.stream_seq, delete=deleting),)

    def stored(self, d: Delivery, acks: Sequence[Any]) -> None:
        entry = Compost.from_json(d.data)
        self._remember(
            SoilEntry(
                key=soil_key(entry.entity),
                value=None,
                revision=int(acks[0].seq),
                humus_seq=d.stream_seq,
                deleted=entry.action is CompostAction.DELETE,
            )
        )

    def retry_async(self, d: Delivery, exc: BaseException) -> bool:
        """A lost compare-and-set goes to the slow path at once (no nak, no delay)."""
        return isinstance(exc, APIError) and exc.err_code == WRONG_LAST_SEQUENCE

    async def handle_async(self, d: Delivery) -> Sequence[Output]:
        entry = Compost.from_json(d.data)
        seq = d.stream_seq
        for _ in range(16):
            cur = await self._soil.dig(entry.entity)
            self._remember(cur)
            if cur.humus_seq >= seq:
                return ()
            if self._skip(entry, cur):
                if entry.action is CompostAction.CREATE:
                    self._stats.dropped += 1
                    self._log.info(
                        "humus #%d: create of %s skipped, the key already exists", seq, cur.key
                    )
                return ()
            try:
                rev = await self._soil.bury(
                    entry.entity,
                    entry.data,
                    expected_revision=cur.revision,
                    humus_seq=seq,
                    delete=entry.action is CompostAction.DELETE,
                )
            except SoilConflict:
                continue
            self._remember(
                SoilEntry(
                    key=cur.key,
                    value=None,
                    revision=rev,
                    humus_seq=seq,
                    deleted=entry.action is CompostAction.DELETE,
                )
            )
            return ()
        raise SoilConflict(
            f"soil key {soil_key(entry.entity)} kept changing; the entry will be retried"
        )

    @staticmethod
    def _skip(entry: Compost, cur: SoilEntry) -> bool:
        exists = cur.revision > 0 and not cur.deleted
        return (entry.action is CompostAction.CREATE and exists) or (
            entry.action is CompostAction.DELETE and not exists
        )

    def _remember(self, e: SoilEntry) -> None:
        self._cache[e.key] = e
        self._cache.move_to_end(e.key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


__all__ = ["SOURCE_HEADER", "DecomposerHandler", "NimHandler", "TreeHandler", "TreeHouseHandler"]
