"""The ways into the River: `flow` (CLI, POST /api/v1/river) and webhook sources.

Every input is stored in the RIVER stream on `river.<subject>` as the JSON it arrived as,
with header `Nimsforest-Source` (`api` or `source:<name>`) and `Nats-Msg-Id`: the sender's
idempotency key or delivery id when it gave one (stored once within the duplicate window),
else one made for this input. `flow` returns only after JetStream confirmed the store.

While the River's leader is being elected (seconds after the server leading it died) a
publish gets no answer, or no stream answers at all. `flow` holds the input for up to
`hold` seconds, asking again (attempts of 0.25 s, 0.5 s, then ATTEMPT_TIMEOUT) under the same message
id, so an attempt that was stored although its answer was lost is not stored twice: a
client sees a slower 2xx instead of a 503 it must retry. A 2xx still means stored, once.
What is a decision of the server (limits, a bad subject) is answered at once; after
`hold`, the answer is 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError

from nimsforest import metrics
from nimsforest.forest.errors import FlowError
from nimsforest.forest.handlers import SOURCE_HEADER
from nimsforest.forest.model import FlowReceipt
from nimsforest.forest.subjects import river_subject
from nimsforest.forest.trace import TraceContext
from nimsforest.forest.webhooks import (
    WebhookRejected,
    delivery_id,
    parse_json_body,
    river_payload,
    verify,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from nimsforest.forest.component import Component


RIVER_HOLD = 15.0  # seconds an input is held while the River cannot store it
# an attempt unanswered this long is sent again: a leader handing over (a drain's step-down)
# may drop what it was given, and the client would wait the whole attempt for nothing
ATTEMPT_TIMEOUT = 1.0
# An attempt's wait for its answer, growing to ATTEMPT_TIMEOUT: a publish that went to a
# leader just stepping down (a drain, a rolling restart) is never answered, so the first
# attempts are short; a stored answer takes milliseconds, and asking again is safe.
_ATTEMPT_TIMEOUTS = (0.25, 0.5, ATTEMPT_TIMEOUT)
_PAUSES = (0.05, 0.1, 0.2, 0.4)  # between attempts (then the last, repeated)
# JetStream's error codes for an answer that is not a decision about the input
_IN_PROCESS = 10158  # "duplicate message id is in process": this id is being stored
_TOO_MANY_REQUESTS = 10167  # the stream's ingest queue is full
_INSUFFICIENT_RESOURCES = 10023


class Attempt(enum.Enum):
    """What one failed publish says about the input (read once, here)."""

    NOT_STORED = "no stream answered"  # no leader (yet): nothing was stored
    UNKNOWN = "no answer in time"  # maybe stored: asking again under the same id is safe
    IN_PROCESS = "being stored"  # this id's first attempt is still being stored
    BUSY = "busy"  # a full ingest queue, a leader changing
    CLOSED = "connection closed"  # the node's NATS connection is closed (it is stopping)
    REFUSED = "refused"  # a decision of the server: asking again would not change it


def attempt_outcome(exc: BaseException) -> Attempt:
    if isinstance(exc, NoStreamResponseError):
        return Attempt.NOT_STORED
    if isinstance(exc, (TimeoutError, NatsTimeoutError)):
        return Attempt.UNKNOWN
    if isinstance(exc, ConnectionClosedError):
        return Attempt.CLOSED
    if isinstance(exc, APIError):
        if exc.err_code == _IN_PROCESS:
            return Attempt.IN_PROCESS
        if exc.err_code == _TOO_MANY_REQUESTS or (exc.code == 503 and exc.err_code != _INSUFFICIENT_RESOURCES):
            return Attempt.BUSY
        return Attempt.REFUSED
    return Attempt.UNKNOWN  # a reconnecting connection and the like: the client recovers


def _given_up(outcome: Attempt, exc: BaseException, held: float) -> FlowError:
    waited = f" (held {held:.1f}s)" if held >= 0.5 else ""
    if outcome is Attempt.REFUSED:
        assert isinstance(exc, APIError)
        return FlowError(f"JetStream refused the input: {exc.description or exc}.", 503)
    if outcome is Attempt.CLOSED:
        return FlowError("NATS is not reachable: the node's connection is closed.", 503)
    if outcome is Attempt.NOT_STORED:
        return FlowError("The River is not available (no JetStream stream answers on river.>)"
                         f"{waited}; try again.", 503, retry_after=1)
    if outcome is Attempt.IN_PROCESS:
        return FlowError("JetStream is still storing this input's first attempt; it may yet be "
                         f"stored: try again with the same Idempotency-Key{waited}.", 503, retry_after=1)
    if outcome is Attempt.BUSY:
        return FlowError(f"The River is busy ({exc}){waited}; try again.", 503, retry_after=1)
    return FlowError(f"JetStream did not confirm the input in time{waited}; it may not be stored: "
                     "try again with the same Idempotency-Key.", 503, retry_after=1)


async def flow(
    nc: Client,
    js: JetStreamContext,
    subject: str,
    payload: Any,
    *,
    source: str = "api",
    msg_id: str | None = None,
    hold: float = RIVER_HOLD,
    headers: Mapping[str, str] | None = None,
) -> FlowReceipt:
    """Store one input in the River. `payload` is JSON bytes or a JSON-able value.
    Returns once JetStream has stored it (holding it up to `hold` seconds while the River
    cannot store it); raises FlowError otherwise. `headers` go with it (the trace context)."""
    try:
        subj = river_subject(subject)
    except ValueError as exc:
        raise FlowError(f"Invalid River subject: {exc}.") from None
    if isinstance(payload, (bytes, bytearray)):
        data = bytes(payload)
        try:
            json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise FlowError("The payload is not valid JSON.") from None
    else:
        try:
            data = json.dumps(
                payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode()
        except (TypeError, ValueError) as exc:
            raise FlowError(f"The payload cannot be encoded as JSON: {exc}.") from None
    if len(data) > (nc.max_payload or 1_048_576) - 512:
        raise FlowError("The payload is larger than the NATS maximum payload.", 413)
    ours = not msg_id  # an id made here: a duplicate is only our own retry
    sent = {**(headers or {}), SOURCE_HEADER: source,
            "Nats-Msg-Id": msg_id or f"river:{uuid.uuid4().hex}"}
    started = time.monotonic()
    deadline = started + max(0.0, hold)
    attempt = 0
    maybe_stored = False  # an attempt of this call may have been stored without an answer
    while True:
        left = deadline - time.monotonic()
        wait = _ATTEMPT_TIMEOUTS[min(attempt, len(_ATTEMPT_TIMEOUTS) - 1)]
        try:
            ack = await js.publish(subj, data, headers=sent,
                                   timeout=max(0.2, min(wait, left)) if hold else 5.0)
        except Exception as exc:  # noqa: BLE001 - classified below
            outcome = attempt_outcome(exc)
            maybe_stored = maybe_stored or outcome in (Attempt.UNKNOWN, Attempt.IN_PROCESS)
            pause = _PAUSES[min(attempt, len(_PAUSES) - 1)]
            if outcome in (Attempt.REFUSED, Attempt.CLOSED) or time.monotonic() + pause >= deadline:
                raise _given_up(outcome, exc, time.monotonic() - started) from None
            await asyncio.sleep(pause)
            attempt += 1
            continue
        trace = TraceContext.of(sent)
        # a duplicate is an input stored by an earlier request, not by this call's own
        # unanswered attempt
        return FlowReceipt(stream=ack.stream, subject=subj, seq=ack.seq,
                           duplicate=bool(ack.duplicate) and not ours and not maybe_stored,
                           trace_id=trace.trace_id if trace else None)


async def receive(
    comp: Component,
    headers: Mapping[str, str],
    body: bytes,
    flow_fn: Callable[..., Awaitable[FlowReceipt]],
) -> FlowReceipt:
    """Verify a delivery for the webhook source `comp` and flow it into the River."""
    spec = comp.spec
    comp.stats.events_in += 1
    metrics.component_events_in.labels("source", comp.name).inc()
    try:
        verify(spec, headers, body)
        value = parse_json_body(body)
    except WebhookRejected as exc:
        comp.stats.error(str(exc))
        metrics.component_errors.labels("source", comp.name).inc()
        raise FlowError(str(exc), exc.status) from None
    receipt = await flow_fn(
        spec.publishes,
        river_payload(comp.name, spec, headers, value),
        source=f"source:{comp.name}",
        msg_id=delivery_id(comp.name, spec, headers, value),
        trace=TraceContext.of(headers),
    )
    comp.stats.events_out += 1
    metrics.component_events_out.labels("source", comp.name).inc()
    return receipt


__all__ = ["flow", "receive"]
