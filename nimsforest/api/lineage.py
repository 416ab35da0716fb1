"""Where a Soil value came from, and where an input went, read back from stored headers:

    GET /api/v1/why/{key}                  the key's value -> the Humus entry that wrote it
                                           -> each component's input before it -> the River
    GET /api/v1/trace/{trace_id}?since=1h  every message of one trace (RIVER, WIND, HUMUS,
                                           DEAD) since a time, in time order

Every output a component stores names its component, node and input
(`Nimsforest-Hop: tree:contacts@n1 RIVER:7`; older stores: `Nimsforest-Input`, read too), a
River input its trace (`traceparent`; every hop's own too when tracing is on), and the
Decomposer stores the Humus sequence with each Soil write: the walk back is one direct get
a step, the trace one headers-only ordered consumer a stream, in the order the hops go
(RIVER, WIND, HUMUS, DEAD): a message is of the trace when its `traceparent` says so, or
when it carries none and answers a message of the trace. No durable consumer, nothing
changed, no collector needed. Same auth as the rest of the API. A step that is no
longer stored (a stream's limits dropped it) ends the walk with a sentence saying so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from nimsforest.api.readers import (
    RETRY,
    UNAVAILABLE,
    ReadUnavailable,
    json_value,
    key_of,
    unavailable,
)
from nimsforest.forest.handlers import SOURCE_HEADER
from nimsforest.forest.soil import humus_seq_of
from nimsforest.forest.trace import StoredHop, TraceContext
from nimsforest.settings import parse_duration
from nimsforest.streams import DEAD, HUMUS, RIVER, SOIL, WIND

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

TRACED = {s.name: s.subjects[0] for s in (RIVER, WIND, HUMUS, DEAD)}  # stream -> its subjects
READ_TIMEOUT = 5.0
MAX_STEPS = 64  # a walk back longer than this is a loop of leaves
MAX_SCANNED = 200_000  # messages one trace reads, at most


class Step(BaseModel):
    """One stored message on the way: which stream and position, when, and who stored it."""

    stream: str
    seq: int
    subject: str
    time: dt.datetime | None
    by: str | None  # the component (`tree:contacts@n1`) or the way in (`api@n1`)
    input: str | None = None  # `<stream>:<seq>` of the message this one answers
    trace_id: str | None = None  # its own traceparent's, else that of the input it answers
    span_id: str | None = None  # None: it carries no traceparent of its own
    data: Any = None


class Lineage(BaseModel):
    key: str
    revision: int
    value: Any = None
    steps: list[Step]  # newest first: the Humus entry, ..., the River input
    complete: bool  # the walk reached the River input
    gap: str | None = None  # why it stopped early


class Trace(BaseModel):
    trace_id: str
    steps: list[Step]  # oldest first
    scanned: int
    truncated: bool  # MAX_SCANNED reached: older messages of the window were not read


def _when(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def step_of(stream: str, seq: int, subject: str, when: Any, headers: dict[str, str] | None,
            data: bytes | None = None) -> Step:
    h = headers or {}
    ctx, hop = TraceContext.of(h), StoredHop.of(h)
    return Step(stream=stream, seq=seq, subject=subject, time=_when(when),
                by=hop.by or h.get(SOURCE_HEADER), input=hop.input,
                trace_id=ctx.trace_id if ctx else None, span_id=ctx.span_id if ctx else None,
                data=json_value(data) if data else None)


def _inherit_traces(steps: list[Step]) -> None:
    """Steps newest first, one way back: a step that carries no trace context of its own
    is of its input's trace."""
    trace_id = None
    for step in reversed(steps):
        if step.trace_id is None:
            step.trace_id = trace_id
        else:
            trace_id = step.trace_id


def _position(value: str) -> tuple[str, int] | None:
    stream, _, seq = value.rpartition(":")
    return (stream, int(seq)) if stream in TRACED and seq.isdigit() else None


class Lineages:
    def __init__(self, nc: Client) -> None:
        self._js = nc.jetstream(timeout=READ_TIMEOUT)

    async def _get(self, stream: str, seq: int) -> Step | None:
        try:
            raw = await self._js.get_msg(stream, seq)
        except NotFoundError:
            return None
        except UNAVAILABLE as exc:
            raise unavailable(stream, exc) from None
        return step_of(stream, int(raw.seq or seq), raw.subject or "", raw.time, raw.headers, raw.data)

    async def why(self, key: str) -> Lineage | None:
        """The key's current value and the way it came (None: no such key)."""
        try:
            raw = await self._js.get_msg(SOIL.name, subject=f"$KV.SOIL.{key}", direct=True)
        except NotFoundError:
            return None
        except UNAVAILABLE as exc:
            raise unavailable("Soil", exc) from None
        headers = raw.headers or {}
        seq = humus_seq_of(headers)
        out = Lineage(key=key, revision=int(raw.seq or 0), value=json_value(raw.data) if raw.data else None, steps=[],
                      complete=False)
        if seq is None:
            out.gap = "This value was not written by the Decomposer (no Humus entry is named)."
            return out
        at: tuple[str, int] | None = (HUMUS.name, seq)
        while at is not None and len(out.steps) < MAX_STEPS:
            step = await self._get(*at)
            if step is None:
                out.gap = f"{at[0]} #{at[1]} is no longer stored (the stream's limits dropped it)."
                _inherit_traces(out.steps)
                return out
            out.steps.append(step)
            at = _position(step.input) if step.input else None
            if step.input and at is None:
                out.gap = f"{step.stream} #{step.seq} names an input that cannot be read: {step.input}."
                _inherit_traces(out.steps)
                return out
        _inherit_traces(out.steps)
        out.complete = at is None and out.steps[-1].stream == RIVER.name
        if not out.complete and out.gap is None:
            out.gap = (f"The walk stopped after {MAX_STEPS} steps." if at is not None else
                       f"{out.steps[-1].stream} #{out.steps[-1].seq} names no input.")
        return out

    async def trace(self, trace_id: str, since: dt.datetime) -> Trace:
        """Every message of `trace_id` stored since `since` in the traced streams."""
        steps: list[Step] = []
        scanned = 0
        truncated = False
        reached: set[str] = set()  # `<stream>:<seq>` of the trace's messages found so far
        for stream in TRACED:  # in the order the hops go: an input is read before its outputs
            found, read, cut = await self._scan(stream, trace_id, since, MAX_SCANNED - scanned,
                                                reached)
            steps += found
            scanned += read
            truncated = truncated or cut
        steps.sort(key=lambda s: (s.time or dt.datetime.min.replace(tzinfo=dt.UTC), s.stream, s.seq))
        return Trace(trace_id=trace_id, steps=steps, scanned=scanned, truncated=truncated)

    async def _scan(self, stream: str, trace_id: str, since: dt.datetime, budget: int,
                    reached: set[str]) -> tuple[list[Step], int, bool]:
        try:
            state = (await self._js.stream_info(stream)).state
        except NotFoundError:
            return [], 0, False  # e.g. no DEAD stream on this forest yet
        except UNAVAILABLE as exc:
            raise unavailable(stream, exc) from None
        if not state.messages:
            return [], 0, False
        newest = await self._get(stream, state.last_seq)
        if newest is None or (newest.time is not None and newest.time < since):
            return [], 0, False  # nothing stored in the window: no consumer to wait on
        try:
            sub = await self._js.subscribe(
                TRACED[stream], stream=stream, ordered_consumer=True, headers_only=True,
                inactive_threshold=READ_TIMEOUT * 2, config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_TIME, headers_only=True,
                    opt_start_time=since),
            )
        except NotFoundError:
            return [], 0, False  # e.g. no DEAD stream on this forest yet
        except UNAVAILABLE as exc:
            raise unavailable(stream, exc) from None
        found: list[Step] = []
        read = 0
        try:
            while read < budget:
                msg: Msg = await sub.next_msg(timeout=READ_TIMEOUT)
                read += 1
                ctx = TraceContext.of(msg.headers)
                if ctx.trace_id == trace_id if ctx is not None else (
                        StoredHop.of(msg.headers).input in reached):
                    meta = msg.metadata
                    step = step_of(stream, meta.sequence.stream, msg.subject, meta.timestamp,
                                   msg.headers)
                    step.trace_id = trace_id
                    reached.add(f"{stream}:{step.seq}")
                    found.append(step)
                if msg.metadata.num_pending == 0:
                    return found, read, False
            return found, read, True
        except UNAVAILABLE as exc:
            raise unavailable(stream, exc) from None
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await sub.unsubscribe()

    def router(self, guard: Callable[..., Any]) -> APIRouter:
        api = APIRouter(prefix="/api/v1", tags=["lineage"], dependencies=[Depends(guard)])
        errors: dict[int | str, dict[str, Any]] = {
            401: {"description": "A bearer token is required"},
            404: {"description": "No such key"},
            422: {"description": "Not a trace id or a duration"},
            503: {"description": "JetStream cannot answer now (no leader, too slow)"},
        }

        @api.get("/why/{key:path}", response_model=Lineage, operation_id="why", responses=errors,
                 summary="Where a Soil key's value came from, back to the River input")
        async def why(key: str = Path(max_length=1024)) -> Any:
            try:
                found = await self.why(key_of(key))
            except ReadUnavailable as exc:
                raise HTTPException(503, str(exc), headers=RETRY) from None
            if found is None:
                raise HTTPException(404, f"Soil has no key {key}.")
            return found

        @api.get("/trace/{trace_id}", response_model=Trace, operation_id="trace", responses=errors,
                 summary="Every stored message of one trace, in time order")
        async def trace(trace_id: str = Path(pattern="^[0-9a-f]{32}$"),
                        since: str = Query("1h", description="How far back to look, e.g. 10m, 1h, 2d")) -> Any:
            try:
                window = parse_duration(since)
            except ValueError as exc:
                raise HTTPException(422, f"since: {exc}") from None
            start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=float(window))
            try:
                return await self.trace(trace_id, start)
            except ReadUnavailable as exc:
                raise HTTPException(503, str(exc), headers=RETRY) from None

        return api


__all__ = ["Lineage", "Lineages", "Step", "Trace"]
