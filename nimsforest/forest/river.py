"""The ways into the River: `flow` (CLI, POST /api/v1/river) and webhook sources.

Every input is stored in the RIVER stream on `river.<subject>` as the JSON it arrived as,
with header `Nimsforest-Source` (`api` or `source:<name>`) and, when the sender gave an
idempotency key or delivery id, `Nats-Msg-Id` (stored once within the duplicate window).
`flow` returns only after JetStream confirmed the store. While no stream answers (a
leader being elected or handed over) it waits up to HOLD seconds for one, then answers 503.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError

from nimsforest import metrics
from nimsforest.forest.errors import FlowError
from nimsforest.forest.handlers import SOURCE_HEADER
from nimsforest.forest.model import FlowReceipt
from nimsforest.forest.subjects import river_subject
from nimsforest.forest.webhooks import (
    WebhookRejected,
    delivery_id,
    parse_json_body,
    river_payload,
    verify,
)

HOLD = 2.0  # seconds an input waits for the River to have a leader again
PUBLISH_TIMEOUT = 5.0  # seconds an input waits for JetStream's answer in all
ATTEMPT = 1.0  # seconds one attempt of an input with a message id waits for its answer
DUPLICATE_IN_PROCESS = 10158  # JetStream: "duplicate message id is in process"

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from nats.js.api import PubAck

    from nimsforest.forest.component import Component


async def flow(
    nc: Client,
    js: JetStreamContext,
    subject: str,
    payload: Any,
    *,
    source: str = "api",
    msg_id: str | None = None,
) -> FlowReceipt:
    """Store one input in the River. `payload` is JSON bytes or a JSON-able value.
    Returns once JetStream has stored it; raises FlowError otherwise."""
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
    headers = {SOURCE_HEADER: source}
    if msg_id:
        headers["Nats-Msg-Id"] = msg_id
    try:
        ack = await _publish_held(js, subj, data, headers)
    except NoStreamResponseError:
        raise FlowError(
            "The River is not available (no JetStream stream answers on river.>).", 503
        ) from None
    except (TimeoutError, NatsTimeoutError):
        raise FlowError(
            "JetStream did not confirm the input in time; it may not be stored.", 503
        ) from None
    except APIError as exc:
        if exc.err_code == DUPLICATE_IN_PROCESS:
            raise FlowError(
                "An earlier request with the same idempotency key is still being stored; ask "
                "again: it will be answered as a duplicate.", 409
            ) from None
        raise FlowError(f"JetStream refused the input: {exc.description or exc}.", 503) from None
    except Exception as exc:  # noqa: BLE001 - connection closed and similar
        raise FlowError(f"NATS is not reachable: {exc or type(exc).__name__}.", 503) from None
    return FlowReceipt(stream=ack.stream, subject=subj, seq=ack.seq, duplicate=bool(ack.duplicate))


async def _publish_held(
    js: JetStreamContext, subject: str, data: bytes, headers: dict[str, str]
) -> PubAck:
    """Publish; while no stream answers (its leader is being elected or handed over: a
    drain's step-down, a lost server), ask again for up to HOLD seconds. No answer means
    nothing was stored, so asking again cannot store an input twice. An input with a
    message id is also sent again when an attempt goes unanswered for ATTEMPT seconds (a
    leader that hands over may drop what it was given; the message id keeps a second copy
    out), within PUBLISH_TIMEOUT in all."""
    idempotent = "Nats-Msg-Id" in headers
    start = time.monotonic()
    pause = 0.05
    while True:
        left = start + PUBLISH_TIMEOUT - time.monotonic()
        try:
            return await js.publish(subject, data, headers=headers,
                                    timeout=min(ATTEMPT, left) if idempotent else left)
        except (NoStreamResponseError, APIError) as exc:
            if not ask_again(exc) or time.monotonic() + pause > start + HOLD:
                raise
        except (TimeoutError, NatsTimeoutError):
            if not idempotent or time.monotonic() + 0.1 > start + PUBLISH_TIMEOUT:
                raise
            continue
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.4)


def ask_again(exc: Exception) -> bool:
    """Whether the same publish may be sent again at once: no stream answered (nothing was
    stored), or JetStream is still storing an earlier copy with the same message id (the
    next answer is then its duplicate ack)."""
    if isinstance(exc, NoStreamResponseError):
        return True
    return isinstance(exc, APIError) and exc.err_code == DUPLICATE_IN_PROCESS


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
    )
    comp.stats.events_out += 1
    metrics.component_events_out.labels("source", comp.name).inc()
    return receipt


__all__ = ["flow", "receive"]
