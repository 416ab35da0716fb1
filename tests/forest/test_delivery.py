"""Delivery mechanics against real NATS: publish acks that the server refuses, slow
handlers kept alive with in-progress acks, failures retried then reported dead."""

from __future__ import annotations

import json
from typing import Any

import pytest
from nats.js.errors import APIError, NoStreamResponseError

from nimsforest.forest import ComponentState
from nimsforest.forest.leaf import Leaf
from nimsforest.forest.publisher import Publisher
from nimsforest.streams import SOIL, ensure_stream
from tests.forest.conftest import Wind
from tests.forest.fakellm import FakeLLM
from tests.support import eventually, freeze


async def test_publisher_completes_every_future(nc) -> None:  # type: ignore[no-untyped-def]
    await ensure_stream(nc.jetstream(), SOIL, 1, None)
    pub = Publisher(nc)
    ok = await pub.publish("$KV.SOIL.k", b"1", {"Nats-Expected-Last-Subject-Sequence": "0"})
    assert (await ok).seq == 1
    refused = await pub.publish("$KV.SOIL.k", b"2", {"Nats-Expected-Last-Subject-Sequence": "0"})
    with pytest.raises(APIError) as err:  # nats-py's publish_async would never complete this
        await refused
    assert err.value.err_code == 10071
    nowhere = await pub.publish("not.a.stream", b"x")
    with pytest.raises(NoStreamResponseError):
        await nowhere
    await pub.close()


def _leaf(subject: str, data: dict[str, Any]) -> bytes:
    return Leaf.new(subject, data, "test").to_json()


async def test_slow_brain_is_kept_alive_not_redelivered(forest_factory, nc, wind: Wind) -> None:  # type: ignore[no-untyped-def]
    """A brain call longer than ack_wait: in-progress acks keep the leaf with this node."""
    llm = await FakeLLM(
        "openai", reply=lambda b: '{"id": "s-1", "ok": true}', plan=[("sleep", 2.5)]
    ).start()
    try:
        forest = await forest_factory(
            {
                "nims": {
                    "slow": {
                        "subscribes": "ask",
                        "publishes": "answered",
                        "template": "{{ q }}",
                        "ack_wait": "1s",
                        "brain": {"type": "openai", "base_url": f"{llm.url}/v1", "timeout": "10s"},
                    }
                }
            }
        )
        await nc.jetstream().publish("wind.ask", _leaf("ask", {"q": "?"}))
        await eventually(lambda: wind.on("answered"), what="the answer")
        status = forest.get("nim", "slow")
        assert (status.events_in, status.errors) == (1, 0)
        assert len(llm.seen) == 1
    finally:
        await llm.stop()


async def test_failing_brain_is_retried_then_reported_dead(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    llm = await FakeLLM("openai", plan=[500] * 10).start()
    try:
        forest = await forest_factory(
            {
                "nims": {
                    "down": {
                        "subscribes": "ask",
                        "publishes": "answered",
                        "template": "{{ q }}",
                        "max_deliver": 2,
                        "brain": {"type": "openai", "base_url": f"{llm.url}/v1", "retries": 0},
                    }
                }
            }
        )
        await nc.jetstream().publish("wind.ask", _leaf("ask", {"q": "?"}))
        status = await eventually(lambda: (s := forest.get("nim", "down")).dead == 1 and s)
        assert status.errors == 2 and "500" in (status.last_error or "")
        assert status.state is ComponentState.RUNNING
        assert len(llm.seen) == 2
    finally:
        await llm.stop()


async def test_prompt_missing_variable_errors_the_event(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    llm = await FakeLLM("openai").start()
    try:
        forest = await forest_factory(
            {
                "nims": {
                    "strict": {
                        "subscribes": "ask",
                        "publishes": "answered",
                        "template": "{{ missing }}",
                        "max_deliver": 1,
                        "brain": {"type": "openai", "base_url": f"{llm.url}/v1"},
                    }
                }
            }
        )
        await nc.jetstream().publish("wind.ask", _leaf("ask", {"q": "?"}))
        status = await eventually(lambda: (s := forest.get("nim", "strict")).dead == 1 and s)
        assert "'missing' is undefined" in (status.last_error or "")
        assert not llm.seen
    finally:
        await llm.stop()


async def test_output_ids_deduplicate_a_redelivered_event(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    """The same output message id twice (as after a redelivery) is stored once."""
    forest = await forest_factory({})
    js = nc.jetstream()
    first = await js.publish("wind.x", _leaf("x", {}), headers={"Nats-Msg-Id": "treehouse-t:7"})
    again = await js.publish("wind.x", _leaf("x", {}), headers={"Nats-Msg-Id": "treehouse-t:7"})
    assert again.duplicate and again.seq == first.seq
    assert (
        forest.running and json.loads((await js.get_msg("WIND", first.seq)).data)["subject"] == "x"
    )


async def test_stop_with_outputs_never_confirmed_cancels_every_task(  # type: ignore[no-untyped-def]
    forest_factory, nc, plain_nats, caplog
) -> None:
    """JetStream stops answering (the server is frozen) after a nim published its outputs:
    stopping the forest must still end every task of the component, not leave one
    waiting forever (which held the forest's lock and froze every later change)."""
    import asyncio
    import logging
    import signal

    llm = await FakeLLM("openai", reply=lambda b: '{"id": "f-1"}', plan=[("hold",)]).start()
    try:
        forest = await forest_factory(
            {
                "nims": {
                    "frozen": {
                        "subscribes": "ask",
                        "publishes": "answered",
                        "template": "{{ q }}",
                        "brain": {"type": "openai", "base_url": f"{llm.url}/v1"},
                    }
                }
            }
        )
        await nc.jetstream().publish("wind.ask", _leaf("ask", {"q": "?"}))
        await eventually(lambda: llm.seen, what="the brain asked")
        freeze(plain_nats.proc.pid)
        try:
            llm.release()  # the nim publishes its outputs; no publish ack can come now
            await asyncio.sleep(0.5)
            with caplog.at_level(logging.ERROR, logger="nimsforest"):
                await asyncio.wait_for(forest.stop(), 30)
            assert "did not stop within" not in caplog.text
        finally:
            plain_nats.proc.send_signal(signal.SIGCONT)
    finally:
        await llm.stop()
