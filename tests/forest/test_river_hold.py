"""The River holds an input while it cannot store it (real nats-server), and what each
failed publish means (classified once)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import nats
import pytest
from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError

from nimsforest.forest import FlowError
from nimsforest.forest.river import Attempt, attempt_outcome, flow
from nimsforest.streams import RIVER, ensure_stream
from tests.support import freeze


def test_each_failed_publish_is_read_once() -> None:
    assert attempt_outcome(NoStreamResponseError()) is Attempt.NOT_STORED
    assert attempt_outcome(NatsTimeoutError()) is Attempt.UNKNOWN
    assert attempt_outcome(TimeoutError()) is Attempt.UNKNOWN
    assert attempt_outcome(ConnectionClosedError()) is Attempt.CLOSED
    assert attempt_outcome(APIError(code=409, err_code=10158, description="duplicate message id is in process")) \
        is Attempt.IN_PROCESS
    assert attempt_outcome(APIError(code=429, err_code=10167, description="too many requests")) is Attempt.BUSY
    assert attempt_outcome(APIError(code=503, description="raft: not leader")) is Attempt.BUSY
    assert attempt_outcome(APIError(code=503, err_code=10023, description="insufficient resources")) \
        is Attempt.REFUSED
    assert attempt_outcome(APIError(code=400, err_code=10054, description="maximum messages exceeded")) \
        is Attempt.REFUSED


async def test_an_input_is_held_until_the_river_can_store_it_and_stored_once(nc: nats.NATS) -> None:
    js = nc.jetstream()
    held = asyncio.create_task(flow(nc, js, "orders", {"n": 1}, hold=30))
    await asyncio.sleep(0.5)  # asked (no stream answers) and asking again
    assert not held.done()
    await ensure_stream(js, RIVER, 1)
    receipt = await held
    assert receipt.seq == 1 and not receipt.duplicate  # its own retries are not duplicates
    assert (await js.stream_info("RIVER")).state.messages == 1


async def test_after_the_hold_the_answer_is_a_retryable_503(nc: nats.NATS) -> None:
    js = nc.jetstream()
    with pytest.raises(FlowError) as refused:
        await flow(nc, js, "orders", {"n": 1}, hold=0.3)
    assert refused.value.status == 503 and refused.value.retry_after == 1
    assert "no JetStream stream answers on river.>" in str(refused.value)
    with pytest.raises(FlowError) as at_once:  # hold 0: as before, at once
        await flow(nc, js, "orders", {"n": 1}, hold=0)
    assert at_once.value.status == 503


async def test_a_clients_key_still_reports_its_duplicate(nc: nats.NATS) -> None:
    js = nc.jetstream()
    await ensure_stream(js, RIVER, 1)
    first = await flow(nc, js, "orders", {"n": 1}, msg_id="api:k1")
    again = await flow(nc, js, "orders", {"n": 1}, msg_id="api:k1")
    assert not first.duplicate and again.duplicate and again.seq == first.seq


async def test_an_unanswered_attempt_stored_after_all_is_not_reported_as_a_duplicate(
        nc: nats.NATS, plain_nats: Any) -> None:
    """The server freezes past the first attempt's short wait: the attempt is stored when it
    resumes and the next attempt is answered "duplicate". That duplicate is this call's own
    store, so the answer is a first store (what the client sent before was nothing)."""
    js = nc.jetstream()
    await ensure_stream(js, RIVER, 1)
    freeze(plain_nats.proc.pid)
    try:
        storing = asyncio.create_task(flow(nc, js, "orders", {"n": 2}, msg_id="api:k2", hold=30))
        await asyncio.sleep(1.5)  # the first attempts get no answer
        assert not storing.done()
    finally:
        plain_nats.proc.send_signal(signal.SIGCONT)
    receipt = await storing
    assert not receipt.duplicate
    assert (await js.stream_info("RIVER")).state.messages == 1  # stored once


async def test_the_river_api_says_when_to_ask_again(forest_factory, nc: nats.NATS) -> None:  # type: ignore[no-untyped-def]
    import httpx
    from fastapi import FastAPI

    from nimsforest.forest.http import make_router

    forest = await forest_factory({}, river_hold=0.3)
    app = FastAPI()
    app.include_router(make_router(forest))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node") as client:
        ok = await client.post("/api/v1/river/orders", json={"n": 1})
        assert ok.status_code == 202
        await nc.jetstream().delete_stream("RIVER")  # the River gone under the node
        gone = await client.post("/api/v1/river/orders", json={"n": 2})
    assert gone.status_code == 503 and gone.headers["retry-after"] == "1"
    assert "no JetStream stream answers" in gone.json()["error"]
