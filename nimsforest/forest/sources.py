"""Sources that run: schedule (the Go original's ceremony), http_poll and nats. Webhook
sources (http_webhook, telegram) are requests the API hands to the forest (river.py).

Every node runs every source; what keeps the River from getting a tick, a page or a
message once per node:

schedule   Ticks are fixed instants (an interval's multiples of the Unix epoch, or the
           cron expression's instants, UTC), so every node computes the same ticks. Each
           node fires each tick with `Nats-Msg-Id = schedule:<name>:<tick>`; JetStream's
           duplicate window (2 minutes) stores one. The last tick fired is kept in the KV
           bucket SOURCES (`schedule.<name>`); at start, `catch_up: fire_one` fires the last
           tick missed while the whole cluster was down, once (a revision-checked update of
           that key decides which node), `skip` does not.
http_poll  One node polls at a time: it holds a lease in SOURCES (`lease.<name>`: node and
           expiry, renewed every lease/3 with a revision-checked update). When it stops
           renewing (its node died), another node takes the lease once it expires; a node
           that stops releases it at once. The cursor (`cursor.<name>`) is stored after the
           page's items are stored in the River, so polling resumes where it stopped on any
           node. Each item (or page) is one River message with an idempotency key
           (`poll:<name>:<item id>`, or a hash of the item), so a page fetched twice within
           the duplicate window is stored once.
nats       A queue subscription (`nimsforest-source-<name>`) on a core subject: each message
           reaches one node, which stores it in the River (its Nats-Msg-Id kept). Core NATS
           is at most once: a message published while no node listens is lost.

Each loop keeps going through errors (one sentence logged when its state changes) and
says what it is doing in `activity` (shown in /health).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from nimsforest import metrics
from nimsforest.forest.delivery import Stats
from nimsforest.forest.errors import FlowError
from nimsforest.forest.leaf import dumps, loads, utc_now
from nimsforest.forest.model import FlowReceipt
from nimsforest.forest.specs import CatchUp, SourceSpec, SourceType, SplitMode
from nimsforest.streams import SOURCES
from nimsforest.tasks import cancel_and_wait

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

# flow(subject, payload, source=..., msg_id=...) -> FlowReceipt (river.flow, bound)
FlowFn = Callable[..., Awaitable[FlowReceipt]]
MAX_PAGES = 100  # pages one poll follows before it waits for the next interval


# --- pure: ticks --------------------------------------------------------------------------------
def next_tick(spec: SourceSpec, after: datetime) -> datetime:
    """The first tick strictly after `after` (UTC)."""
    if spec.cron is not None:
        from croniter import croniter  # only for the sources with a cron (import cost)

        return croniter(spec.cron, after.astimezone(UTC)).get_next(datetime)
    assert spec.interval is not None
    n = math.floor(after.timestamp() / spec.interval) + 1
    return datetime.fromtimestamp(n * spec.interval, UTC)


def last_tick(spec: SourceSpec, now: datetime) -> datetime:
    """The latest tick at or before `now`."""
    if spec.cron is not None:
        from croniter import croniter

        it = croniter(spec.cron, now.astimezone(UTC))
        nxt = it.get_next(datetime)
        return nxt if nxt <= now else croniter(spec.cron, now.astimezone(UTC)).get_prev(datetime)
    assert spec.interval is not None
    return datetime.fromtimestamp(math.floor(now.timestamp() / spec.interval) * spec.interval, UTC)


def missed_tick(spec: SourceSpec, last_fired: datetime | None, now: datetime) -> datetime | None:
    """The tick `catch_up: fire_one` fires at start: the latest one after `last_fired`
    (None when nothing was missed, or nothing was ever fired: a new schedule starts
    with its next tick)."""
    if last_fired is None or spec.catch_up is CatchUp.SKIP:
        return None
    t = last_tick(spec, now)
    return t if t > last_fired else None


def tick_id(name: str, tick: datetime) -> str:
    return f"schedule:{name}:{int(tick.timestamp() * 1000)}"


# --- pure: extracting from a polled document -----------------------------------------------------
class Missing(LookupError):
    pass


def extract(doc: Any, path: str) -> Any:
    """`a.b.0.c` (or `$.a.b[0].c`) in `doc`; Missing when a step is not there."""
    p = path.strip().removeprefix("$").removeprefix(".")
    cur = doc
    for step in [s for s in p.replace("[", ".").replace("]", "").split(".") if s]:
        if isinstance(cur, dict) and step in cur:
            cur = cur[step]
        elif isinstance(cur, list) and step.lstrip("-").isdigit() and -len(cur) <= int(step) < len(cur):
            cur = cur[int(step)]
        else:
            raise Missing(f"the response has no '{path}'")
    return cur


def page_items(spec: SourceSpec, doc: Any) -> list[Any]:
    if spec.items is not None:
        items = extract(doc, spec.items)
        if not isinstance(items, list):
            raise Missing(f"'{spec.items}' in the response is not a list")
        return items
    return doc if isinstance(doc, list) else [doc]


def next_cursor(spec: SourceSpec, doc: Any, items: list[Any]) -> str | None:
    """The cursor to store after this page (None: the page gives none)."""
    if spec.cursor is None:
        return None
    path = spec.cursor.extract.strip().removeprefix("$").removeprefix(".")
    try:
        if path.startswith("last.") or path == "last":
            if not items:
                return None
            value = extract(items[-1], path.removeprefix("last").removeprefix("."))
        else:
            value = extract(doc, path)
    except Missing:
        return None
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else json.dumps(value)


def item_id(name: str, spec: SourceSpec, item: Any) -> str:
    if isinstance(item, dict):
        ident = item.get(spec.id_field)
        if isinstance(ident, (str, int)) and not isinstance(ident, bool) and str(ident):
            return f"poll:{name}:{ident}"
    return f"poll:{name}:{hashlib.sha256(dumps(item)).hexdigest()[:32]}"


# --- the loops ---------------------------------------------------------------------------------
class SourceLoop:
    """A source that runs: started with the component, stopped with it; every task it
    starts is awaited on stop."""

    def __init__(self, name: str, spec: SourceSpec, stats: Stats) -> None:
        self.name, self.spec, self.stats = name, spec, stats
        self.activity = "not started"
        self._log = logging.getLogger("nimsforest.forest.source")
        self._tasks: list[asyncio.Task[None]] = []
        self._flow: FlowFn | None = None
        self._node = ""
        self._m_out = metrics.component_events_out.labels("source", name)
        self._m_err = metrics.component_errors.labels("source", name)

    @property
    def label(self) -> str:
        return f"source '{self.name}'"

    async def start(self, nc: Client, js: JetStreamContext, node: str, flow: FlowFn) -> None:
        self._flow, self._node = flow, node
        await self._open(nc, js)
        self._tasks = [asyncio.create_task(self._guard(run), name=f"source-{self.name}-{i}")
                       for i, run in enumerate(self._runs())]

    async def stop(self) -> None:
        # a cancel can be lost (a KV reply landing in its tick: nimsforest.tasks), so one
        # that goes on is cancelled again, and the stop is bounded
        await cancel_and_wait(self._tasks, owner=self.label)
        self._tasks = []
        await self._close()
        self._state("stopped")

    # hooks
    async def _open(self, nc: Client, js: JetStreamContext) -> None: ...

    async def _close(self) -> None: ...

    def _runs(self) -> list[Callable[[], Awaitable[None]]]:
        return []

    # helpers
    async def _guard(self, run: Callable[[], Awaitable[None]]) -> None:
        """Run `run` until the loop stops; an error it did not expect is said and the run
        starts again a second later."""
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never expected: say so, go on
                self._failed(f"failed ({exc or type(exc).__name__}); starting again in 1s")
                await asyncio.sleep(1.0)

    def _state(self, sentence: str) -> None:
        if sentence != self.activity:
            self.activity = sentence
            self._log.info("%s: %s", self.label, sentence)

    def _failed(self, sentence: str) -> None:
        self.stats.error(sentence)
        self._m_err.inc()
        if sentence != self.activity:
            self.activity = sentence
            self._log.warning("%s: %s", self.label, sentence)

    async def _store(self, payload: Any, msg_id: str) -> FlowReceipt:
        assert self._flow is not None
        receipt = await self._flow(self.spec.publishes, payload, source=f"source:{self.name}",
                                   msg_id=msg_id)
        self.stats.events_in += 1
        if not receipt.duplicate:
            self.stats.events_out += 1
            self._m_out.inc()
        return receipt


async def _kv(js: JetStreamContext) -> KeyValue:
    return await js.key_value(SOURCES.kv_bucket or "SOURCES")


def _now() -> datetime:
    return datetime.now(UTC)


class ScheduleLoop(SourceLoop):
    _kv: KeyValue | None = None

    async def _open(self, nc: Client, js: JetStreamContext) -> None:
        self._js = js

    def _runs(self) -> list[Callable[[], Awaitable[None]]]:
        return [self._run]

    @property
    def _key(self) -> str:
        return f"schedule.{self.name}"

    async def _run(self) -> None:
        last = await self._catch_up()
        every = f"cron '{self.spec.cron}'" if self.spec.cron else f"every {self.spec.interval:g}s"
        self._state(f"firing {every}")
        while True:
            now = _now()
            tick = next_tick(self.spec, max(now, last) if last else now)
            self.activity = f"{every}: next tick at {tick.isoformat()}"  # shown, not logged
            await asyncio.sleep(max(0.0, (tick - now).total_seconds()))
            while _now() < tick:  # woken a little early
                await asyncio.sleep(max(0.001, (tick - _now()).total_seconds()))
            if await self._fire(tick):
                last = tick
                await self._remember(tick)
            else:
                last = tick  # missed: the next tick is fired as usual

    async def _catch_up(self) -> datetime | None:
        """Fire the tick missed while the whole cluster was down (catch_up: fire_one)."""
        for _ in range(10):
            try:
                kv = self._kv = self._kv or await _kv(self._js)
                try:
                    entry = await kv.get(self._key)
                except KeyNotFoundError:
                    return None
                last = datetime.fromisoformat((entry.value or b"").decode())
                tick = missed_tick(self.spec, last, _now())
                if tick is None:
                    return last
                try:  # one node wins the missed tick
                    await kv.update(self._key, tick.isoformat().encode(), last=entry.revision)
                except KeyWrongLastSequenceError:
                    return tick
                self._log.info("%s: firing the tick of %s missed while the cluster was down",
                               self.label, tick.isoformat())
                await self._fire(tick, caught_up=True)
                return tick
            except (ValueError, KeyWrongLastSequenceError):
                return None
            except Exception as exc:  # noqa: BLE001 - JetStream busy: try again
                self._failed(f"cannot read its last tick yet: {exc}")
                await asyncio.sleep(1.0)
        return None

    async def _fire(self, tick: datetime, caught_up: bool = False) -> bool:
        payload = {"source": self.name, "tick": tick.isoformat(), "fired_at": utc_now(),
                   "interval": self.spec.interval, "cron": self.spec.cron,
                   "caught_up": caught_up, "payload": self.spec.payload}
        try:
            await self._store(payload, tick_id(self.name, tick))
            return True
        except FlowError as exc:
            self._failed(f"could not fire the tick of {tick.isoformat()}: {exc}")
            return False

    async def _remember(self, tick: datetime) -> None:
        try:
            kv = self._kv = self._kv or await _kv(self._js)
            await kv.put(self._key, tick.isoformat().encode())
        except Exception as exc:  # noqa: BLE001 - only catch-up needs it; the next tick writes again
            self._failed(f"could not record the tick of {tick.isoformat()}: {exc}")


@dataclass(frozen=True)
class Lease:
    node: str
    until: float  # Unix time

    def to_bytes(self) -> bytes:
        return dumps({"node": self.node, "until": self.until})

    @classmethod
    def parse(cls, raw: bytes | None) -> Lease | None:
        try:
            doc = loads(raw or b"")
            return cls(node=str(doc["node"]), until=float(doc["until"]))
        except (ValueError, KeyError, TypeError):
            return None


class PollFailed(Exception):
    """One poll did not work: one sentence."""


class HttpPollLoop(SourceLoop):
    _kv: KeyValue | None = None
    _client: httpx.AsyncClient | None = None
    _rev: int | None = None  # the lease's revision while this node holds it

    async def _open(self, nc: Client, js: JetStreamContext) -> None:
        self._js = js
        self._client = httpx.AsyncClient(timeout=self.spec.timeout, follow_redirects=True)
        self._held = asyncio.Event()

    async def _close(self) -> None:
        await self._release()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _runs(self) -> list[Callable[[], Awaitable[None]]]:
        return [self._lease_loop, self._poll_loop]

    @property
    def holding(self) -> bool:
        return self._rev is not None

    # the lease -----------------------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        while True:
            try:
                await self._renew()
            except Exception as exc:  # noqa: BLE001 - cannot confirm the lease: let it go
                self._drop()
                self._failed(f"cannot reach its lease in KV SOURCES: {exc}")
            await asyncio.sleep(self.spec.lease / 3)

    async def _renew(self) -> None:
        kv = self._kv = self._kv or await _kv(self._js)
        key = f"lease.{self.name}"
        mine = Lease(self._node, time.time() + self.spec.lease).to_bytes()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            entry = None
        try:
            if entry is None:
                self._take(await kv.create(key, mine), None)
                return
            cur = Lease.parse(entry.value)
            if cur is not None and cur.node == self._node and self._rev == entry.revision:
                self._rev = await kv.update(key, mine, last=entry.revision)
            elif cur is None or cur.node == self._node or cur.until < time.time():
                # free, expired, or held by this node's previous run
                self._take(await kv.update(key, mine, last=entry.revision), cur)
            else:
                self._drop()
                self._state(f"standing by: node {cur.node} polls")
        except KeyWrongLastSequenceError:
            self._drop()  # another node changed it first

    def _take(self, rev: int, was: Lease | None) -> None:
        self._rev = rev
        self._held.set()
        took = f" (took over from node {was.node})" if was and was.node != self._node else ""
        self._state(f"polling {self.spec.url} every {self.spec.every:g}s{took}")

    def _drop(self) -> None:
        self._rev = None
        self._held.clear()

    async def _release(self) -> None:
        """A node that stops lets another take over at once."""
        rev, self._rev = self._rev, None
        if rev is None or self._kv is None:
            return
        try:
            await self._kv.update(f"lease.{self.name}", Lease(self._node, 0.0).to_bytes(),
                                  last=rev)
        except Exception:  # noqa: BLE001, S110 - it expires anyway
            pass

    # polling -------------------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        while True:
            await self._held.wait()
            started = time.monotonic()
            try:
                n = await self.poll_once()
                if self.holding:  # shown, not logged: the count changes every poll
                    self.activity = (f"polling {self.spec.url} every {self.spec.every:g}s "
                                     f"(last poll: {n} new)")
            except PollFailed as exc:
                self._failed(str(exc))
            except Exception as exc:  # noqa: BLE001 - KV or NATS trouble: the next poll tries again
                self._failed(f"could not poll: {exc or type(exc).__name__}")
            await asyncio.sleep(max(0.0, self.spec.every - (time.monotonic() - started)))

    async def poll_once(self) -> int:
        """Fetch pages from the stored cursor on; store each page's items in the River,
        then the cursor. Returns how many items were new to the River."""
        kv = self._kv = self._kv or await _kv(self._js)
        key = f"cursor.{self.name}"
        try:
            entry = await kv.get(key)
            cursor: str | None = (entry.value or b"").decode() or None
            rev: int | None = entry.revision
        except KeyNotFoundError:
            cursor, rev = (self.spec.cursor.initial if self.spec.cursor else None), None
        new = 0
        for _ in range(MAX_PAGES):
            if not self.holding:
                break
            doc, status = await self._fetch(cursor)
            try:
                items = page_items(self.spec, doc)
            except Missing as exc:
                raise PollFailed(f"polled {self.spec.url}: {exc}") from None
            new += await self._flow_page(doc, status, items, cursor)
            after = next_cursor(self.spec, doc, items)
            if after is None or after == cursor:
                break
            try:
                rev = (await kv.update(key, after.encode(), last=rev) if rev is not None
                       else await kv.create(key, after.encode()))
            except KeyWrongLastSequenceError:
                raise PollFailed("another node moved the cursor meanwhile; polling again "
                                 "from the stored cursor") from None
            cursor = after
            if not items:
                break
        return new

    async def _fetch(self, cursor: str | None) -> tuple[Any, int]:
        assert self._client is not None and self.spec.url is not None
        params = {self.spec.cursor.param: cursor} if self.spec.cursor and cursor else None
        try:
            resp = await self._client.request(
                self.spec.method, self.spec.url, params=params,
                headers=self.spec.request_headers or None,
                content=dumps(self.spec.body) if self.spec.body is not None else None,
            )
        except httpx.HTTPError as exc:
            raise PollFailed(f"cannot poll {self.spec.url}: {exc or type(exc).__name__}") from None
        if resp.status_code >= 300:
            raise PollFailed(f"polling {self.spec.url} answered HTTP {resp.status_code}")
        try:
            return resp.json(), resp.status_code
        except ValueError:
            raise PollFailed(f"polling {self.spec.url} answered something that is not JSON") from None

    async def _flow_page(self, doc: Any, status: int, items: list[Any], cursor: str | None) -> int:
        new = 0
        try:
            if self.spec.split is SplitMode.PAGE:
                payload = {"source": self.name, "url": self.spec.url, "status": status,
                           "cursor": cursor, "body": doc, "polled_at": utc_now()}
                digest = hashlib.sha256(dumps(doc)).hexdigest()[:32]
                return 0 if (await self._store(payload, f"poll:{self.name}:{digest}")).duplicate else 1
            for item in items:
                payload = {"source": self.name, "url": self.spec.url, "cursor": cursor,
                           "item": item, "polled_at": utc_now()}
                if not (await self._store(payload, item_id(self.name, self.spec, item))).duplicate:
                    new += 1
        except FlowError as exc:
            raise PollFailed(f"could not store what {self.spec.url} gave: {exc}") from None
        return new


class NatsBridgeLoop(SourceLoop):
    _sub: Any = None

    async def _open(self, nc: Client, js: JetStreamContext) -> None:
        assert self.spec.subject is not None
        self._sub = await nc.subscribe(self.spec.subject, queue=f"nimsforest-source-{self.name}",
                                       cb=self._on_msg)
        self._state(f"bridging {self.spec.subject} into the River")

    async def _close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001, S110 - the connection may be gone
                pass
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers or {}
        try:
            loads(msg.data)
            payload: Any = msg.data
        except ValueError:
            try:
                payload = {"subject": msg.subject, "text": msg.data.decode()}
            except UnicodeDecodeError:
                self._failed(f"a message on {msg.subject} is neither JSON nor text; dropped")
                return
        msg_id = headers.get("Nats-Msg-Id")
        try:
            receipt = await self._store(payload, f"nats:{self.name}:{msg_id}" if msg_id else "")
        except FlowError as exc:
            self._failed(f"could not store a message of {msg.subject}: {exc}")
            if msg.reply:
                await msg.respond(dumps({"error": str(exc)}))
            return
        if msg.reply:
            await msg.respond(receipt.model_dump_json().encode())


LOOPS: dict[SourceType, type[SourceLoop]] = {
    SourceType.SCHEDULE: ScheduleLoop,
    SourceType.HTTP_POLL: HttpPollLoop,
    SourceType.NATS: NatsBridgeLoop,
}


def source_loop(name: str, spec: SourceSpec, stats: Stats) -> SourceLoop | None:
    """The loop a source of this type runs (None: webhooks are requests)."""
    cls = LOOPS.get(spec.type)
    return cls(name, spec, stats) if cls is not None else None


__all__ = [
    "MAX_PAGES",
    "HttpPollLoop",
    "Lease",
    "NatsBridgeLoop",
    "ScheduleLoop",
    "SourceLoop",
    "extract",
    "item_id",
    "last_tick",
    "missed_tick",
    "next_cursor",
    "next_tick",
    "page_items",
    "source_loop",
    "tick_id",
]
