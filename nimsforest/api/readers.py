"""Read-only views of what the forest holds and what goes through it, for the CLI readers
(`nimsforest soil|leaves|river ...`) and the dashboard:

    GET /api/v1/soil/keys?prefix=P&limit=N     Soil's keys (with revision and time), by prefix
    GET /api/v1/soil/value/{key}               one key's current value (404 when none)
    GET /api/v1/soil/history/{key}             every revision Soil keeps of one key
    GET /api/v1/soil/watch?prefix=P&current=B  Server-Sent Events: each change of a key
    GET /api/v1/leaves/tail?pattern=P          Server-Sent Events: each leaf on the Wind
    GET /api/v1/river/tail?pattern=P           Server-Sent Events: each River input

Same auth as the rest of the API (the bearer token when the node has one; these GET routes
also take the dashboard's cookie). Nothing here creates a durable consumer or changes a
stream: Soil is read with direct gets and ordered (ephemeral) consumers, the tails are core
subscriptions, which see every message JetStream stores on those subjects, cluster-wide.
A tail does not replay: it shows what arrives once it is open. A slow reader loses events
(reported in a `dropped` event), never slows the forest.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError, ServiceUnavailableError
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from nimsforest.forest.leaf import loads, soil_key
from nimsforest.forest.soil import humus_seq_of
from nimsforest.forest.subjects import WIND_PREFIX, river_subject, wind_subject
from nimsforest.streams import SOIL

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

SOIL_SUBJECT = SOIL.subjects[0][:-1]  # "$KV.SOIL."
KV_OPERATION = "KV-Operation"
QUEUE_SIZE = 1000  # events a slow reader may fall behind before some are dropped
READ_TIMEOUT = 5.0  # seconds one read of Soil may take
MAX_KEYS = 10_000
_KEY = re.compile(r"^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$")


class SoilOperation(StrEnum):
    PUT = "put"
    DELETE = "delete"
    PURGE = "purge"


class SoilKey(BaseModel):
    key: str
    revision: int
    updated: dt.datetime | None


class SoilValue(BaseModel):
    key: str
    value: Any = None  # None when deleted
    revision: int
    operation: SoilOperation
    updated: dt.datetime | None
    humus_seq: int | None = None  # the HUMUS entry whose Decomposer write this is


class TailEvent(BaseModel):
    subject: str  # the leaf's subject (without `wind.`) or the River subject
    data: Any  # the message's JSON (its text when it is not JSON)
    headers: dict[str, str]
    received: dt.datetime


class ReadError(BaseModel):
    error: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {401: "A bearer token is required", 404: "Soil has no such key",
            422: "An invalid key, prefix or pattern", 503: "Soil cannot answer now (no leader, too slow)"}
    return {c: {"model": ReadError, "description": text[c]} for c in codes}


class ReadUnavailable(Exception):
    """JetStream cannot answer a read now; the message is one sentence for the reader."""


# What a read meets while JetStream cannot answer it now: too slow, no server answering (a
# stream with no leader, a missing stream), the node's connection closed, the API busy.
# The readers and the lineage answer each with 503 and a sentence, never with 500.
UNAVAILABLE: tuple[type[Exception], ...] = (
    TimeoutError, NoRespondersError, ConnectionClosedError, ServiceUnavailableError)


def unavailable(what: str, exc: Exception) -> ReadUnavailable:
    """The sentence for an `UNAVAILABLE` error met while reading `what` (e.g. 'Soil')."""
    if isinstance(exc, NoRespondersError):
        return ReadUnavailable(f"{what} has no server answering right now (no leader); try again.")
    if isinstance(exc, ConnectionClosedError):
        return ReadUnavailable("NATS is not reachable: the node's connection is closed.")
    if isinstance(exc, ServiceUnavailableError):
        return ReadUnavailable(f"JetStream is not available right now ({exc.description or 503}); try again.")
    return ReadUnavailable(f"{what} did not answer in time.")


def key_of(given: str) -> str:
    """The Soil key a user means: a valid key as it is, else the entity's key (`soil_key`:
    'jane@acme.io' is stored as 'jane=40acme.io')."""
    return given if _KEY.match(given) else soil_key(given)


def _operation(headers: dict[str, str] | None) -> SoilOperation:
    op = (headers or {}).get(KV_OPERATION)
    return {"DEL": SoilOperation.DELETE, "PURGE": SoilOperation.PURGE}.get(op or "", SoilOperation.PUT)


def json_value(raw: bytes) -> Any:
    """A stored message's JSON (its text when it is not JSON)."""
    try:
        return loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def value_of(key: str, raw: bytes, seq: int, headers: dict[str, str] | None,
             when: dt.datetime | None) -> SoilValue:
    op = _operation(headers)
    return SoilValue(
        key=key, value=json_value(raw) if op is SoilOperation.PUT and raw else None, revision=seq,
        operation=op, updated=when, humus_seq=humus_seq_of(headers),
    )


def _value_from_msg(msg: Msg) -> SoilValue:
    meta = msg.metadata
    return value_of(msg.subject[len(SOIL_SUBJECT):], msg.data, meta.sequence.stream,
                    msg.headers, meta.timestamp)


def tail_event(subject: str, raw: bytes, headers: dict[str, str] | None) -> TailEvent:
    shown = subject[len(WIND_PREFIX):] if subject.startswith(WIND_PREFIX) else subject
    return TailEvent(subject=shown, data=json_value(raw), headers=dict(headers or {}),
                     received=dt.datetime.now(dt.UTC))


class Readers:
    """The read-only views, on one NATS connection. `close()` ends every open stream (the
    node calls it before it stops its API, so no reader holds the stop up)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._js: JetStreamContext = nc.jetstream(timeout=READ_TIMEOUT)
        self._open: set[asyncio.Queue[Msg | int | None]] = set()  # one per open stream
        self._closed = False

    def close(self) -> None:
        """End every open stream (each gets None, the end, even when it is full)."""
        self._closed = True
        for queue in self._open:
            with contextlib.suppress(asyncio.QueueEmpty):
                if queue.full():
                    queue.get_nowait()
            queue.put_nowait(None)

    # --- Soil ---------------------------------------------------------------------------
    async def soil_value(self, key: str) -> SoilValue | None:
        """The key's current value (a deleted key comes back with its delete), or None."""
        try:
            raw = await self._js.get_msg(SOIL.name, subject=SOIL_SUBJECT + key, direct=True)
        except NotFoundError:
            return None
        except UNAVAILABLE as exc:
            raise unavailable("Soil", exc) from None
        return value_of(key, raw.data or b"", int(raw.seq or 0), raw.headers, raw.time)

    async def soil_keys(self, prefix: str = "", limit: int = MAX_KEYS) -> list[SoilKey]:
        """Every key (not deleted) starting with `prefix`, sorted, at most `limit`."""
        latest = await self._replay(SOIL_SUBJECT + ">", DeliverPolicy.LAST_PER_SUBJECT, True)
        keys = [
            SoilKey(key=v.key, revision=v.revision, updated=v.updated) for v in latest
            if v.operation is SoilOperation.PUT and v.key.startswith(prefix)
        ]
        return sorted(keys, key=lambda k: k.key)[:limit]

    async def soil_history(self, key: str) -> list[SoilValue]:
        """Every revision of `key` that Soil keeps, oldest first."""
        return await self._replay(SOIL_SUBJECT + key, DeliverPolicy.ALL, False)

    async def _replay(self, subject: str, policy: DeliverPolicy, headers_only: bool) -> list[SoilValue]:
        """What Soil holds on `subject` now, through an ordered consumer read to its end."""
        try:
            sub = await self._js.subscribe(
                subject, stream=SOIL.name, ordered_consumer=True, deliver_policy=policy,
                headers_only=headers_only, inactive_threshold=READ_TIMEOUT * 2,
            )
        except UNAVAILABLE as exc:
            raise unavailable("Soil", exc) from None
        out: list[SoilValue] = []
        try:
            info = await sub.consumer_info()
            if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
                return out
            while True:
                msg = await sub.next_msg(timeout=READ_TIMEOUT)
                out.append(_value_from_msg(msg))
                if msg.metadata.num_pending == 0:
                    return out
        except UNAVAILABLE as exc:
            raise unavailable("Soil", exc) from None
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def soil_watch(self, prefix: str, current: bool) -> AsyncIterator[ServerSentEvent]:
        """Each change of a key starting with `prefix` (first every current value when
        `current`), as `change` events, after an `open` event once the watch is in place."""
        policy = DeliverPolicy.LAST_PER_SUBJECT if current else DeliverPolicy.NEW
        queue, on_msg = _bounded_queue()
        sub = await self._js.subscribe(
            SOIL_SUBJECT + ">", stream=SOIL.name, ordered_consumer=True, deliver_policy=policy,
            cb=on_msg,
        )
        opened = ServerSentEvent(prefix, event="open")
        async with contextlib.aclosing(self._drain(queue, sub.unsubscribe, opened)) as items:
            async for item in items:
                if isinstance(item, ServerSentEvent):
                    yield item
                elif isinstance(item, int):
                    yield _dropped(item)
                elif (value := _value_from_msg(item)).key.startswith(prefix):
                    yield ServerSentEvent(value.model_dump_json(), event="change")

    # --- tails --------------------------------------------------------------------------
    async def tail(self, subject: str) -> AsyncIterator[ServerSentEvent]:
        """Each message on `subject` (a core subscription) as a `message` event, after an
        `open` event once the subscription is in place."""
        queue, on_msg = _bounded_queue()
        sub = await self._nc.subscribe(subject, cb=on_msg)
        opened = ServerSentEvent(subject, event="open")
        async with contextlib.aclosing(self._drain(queue, sub.unsubscribe, opened, flush=True)) as items:
            async for item in items:
                if isinstance(item, ServerSentEvent):
                    yield item
                elif isinstance(item, int):
                    yield _dropped(item)
                else:
                    event = tail_event(item.subject, item.data, item.headers)
                    yield ServerSentEvent(event.model_dump_json(), event="message")

    async def _drain(self, queue: asyncio.Queue[Msg | int | None], unsubscribe: Callable[[], Any],
                     opened: ServerSentEvent, *, flush: bool = False
                     ) -> AsyncGenerator[Msg | int | ServerSentEvent, None]:
        """`opened` once the subscription is in place (`flush`: the server has it), then the
        queue's items until close() or the reader goes; then unsubscribe."""
        self._open.add(queue)
        try:
            if flush:
                await self._nc.flush(timeout=int(READ_TIMEOUT))
            yield opened
            while not self._closed:
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            self._open.discard(queue)
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await unsubscribe()

    # --- routes -------------------------------------------------------------------------
    def router(self, guard: Any) -> APIRouter:
        api = APIRouter(prefix="/api/v1", tags=["readers"], dependencies=[Depends(guard)])
        key_path = Path(description="A Soil key, or the entity it is stored for "
                                     "(jane@acme.io is the key jane=40acme.io)")
        stream_doc: dict[int | str, dict[str, Any]] = {
            200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
            **_errors(401, 422, 503)}

        @api.get("/soil/keys", response_model=list[SoilKey], operation_id="soil_keys",
                 responses=_errors(401, 422, 503),
                 summary="Soil's keys starting with a prefix, with their revision and time")
        async def keys(prefix: str = Query("", max_length=1024),
                       limit: int = Query(1000, ge=1, le=MAX_KEYS)) -> Any:
            return await _answer(self.soil_keys(prefix, limit))

        @api.get("/soil/value/{key:path}", response_model=SoilValue, operation_id="soil_value",
                 summary="One Soil key's current value", responses=_errors(401, 404, 422, 503))
        async def value(key: str = key_path) -> Any:
            key = _valid_key(key)
            found = await _answer(self.soil_value(key))
            if found is None:
                raise HTTPException(404, f"Soil has no key '{key}'.")
            return found

        @api.get("/soil/history/{key:path}", response_model=list[SoilValue],
                 operation_id="soil_history", summary="Every revision Soil keeps of one key",
                 responses=_errors(401, 404, 422, 503))
        async def history(key: str = key_path) -> Any:
            key = _valid_key(key)
            found = await _answer(self.soil_history(key))
            if not found:
                raise HTTPException(404, f"Soil has no key '{key}'.")
            return found

        @api.get("/soil/watch", response_class=EventSourceResponse, responses=stream_doc,
                 operation_id="soil_watch",
                 summary="Server-Sent Events: each change of a Soil key starting with a prefix")
        async def watch(prefix: str = Query("", max_length=1024),
                        current: bool = Query(False, description="first every current value")
                        ) -> EventSourceResponse:
            return self._events(self.soil_watch(prefix, current))

        @api.get("/leaves/tail", response_class=EventSourceResponse, responses=stream_doc,
                 operation_id="leaves_tail",
                 summary="Server-Sent Events: each leaf on the Wind matching a subject pattern")
        async def leaves(pattern: str = Query(">", description="a leaf subject pattern")
                         ) -> EventSourceResponse:
            subject = _pattern(pattern, lambda p: wind_subject(
                p.removeprefix(WIND_PREFIX), pattern=True))
            return self._events(self.tail(subject))

        @api.get("/river/tail", response_class=EventSourceResponse, responses=stream_doc,
                 operation_id="river_tail",
                 summary="Server-Sent Events: each River input matching a subject pattern")
        async def river(pattern: str = Query(">", description="a River subject pattern")
                        ) -> EventSourceResponse:
            subject = _pattern(pattern, lambda p: river_subject(p, pattern=True))
            return self._events(self.tail(subject))

        return api

    def _events(self, events: AsyncIterator[ServerSentEvent]) -> EventSourceResponse:
        return EventSourceResponse(events, ping=15, headers={"Cache-Control": "no-store"})


def _bounded_queue() -> tuple[asyncio.Queue[Msg | int | None], Callable[[Msg], Any]]:
    """A queue of messages and the subscription callback filling it; when it is full, new
    messages are dropped and their count is queued once there is room again."""
    queue: asyncio.Queue[Msg | int | None] = asyncio.Queue(QUEUE_SIZE)
    dropped = [0]

    async def on_msg(msg: Msg) -> None:
        if queue.full():
            dropped[0] += 1
            return
        if dropped[0]:
            if queue.qsize() >= QUEUE_SIZE - 1:
                dropped[0] += 1
                return
            queue.put_nowait(dropped[0])
            dropped[0] = 0
        queue.put_nowait(msg)

    return queue, on_msg


def _dropped(count: int) -> ServerSentEvent:
    return ServerSentEvent(str(count), event="dropped")


def _pattern(given: str, to_subject: Callable[[str], str]) -> str:
    try:
        return to_subject(given.strip())
    except ValueError as exc:
        raise HTTPException(422, f"The pattern is not valid: {exc}.") from None


def _valid_key(given: str) -> str:
    key = key_of(given)
    if not key or len(key) > 1024:
        raise HTTPException(422, "The Soil key must have 1 to 1024 characters.")
    return key


async def _answer(read: Any) -> Any:
    try:
        return await read
    except ReadUnavailable as exc:
        raise HTTPException(503, str(exc), headers=RETRY) from None


RETRY = {"Retry-After": "1"}  # a 503 of a read: JetStream usually answers again within a second

__all__ = ["RETRY", "UNAVAILABLE", "ReadUnavailable", "Readers", "SoilKey", "SoilOperation", "SoilValue", "TailEvent", "key_of", "tail_event",
           "value_of"]
