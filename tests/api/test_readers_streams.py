"""The readers' streams on a real (plain) nats-server, in process: a tail sees what is
published once it is open, a slow reader is told what it lost, close() ends every stream."""

from __future__ import annotations

import asyncio
import json

import nats

from nimsforest.api.readers import QUEUE_SIZE, Readers, _bounded_queue, key_of
from tests.conftest import PlainNats
from tests.support import eventually


async def test_a_tail_sees_new_messages_and_ends_on_close(nc: nats.NATS, plain_nats: PlainNats) -> None:
    readers = Readers(nc)
    stream = readers.tail("wind.lead.*")
    opened = await anext(stream)
    assert (opened.event, opened.data) == ("open", "wind.lead.*")
    assert "wind.lead.*" in plain_nats.subscribed()  # "open" comes once the server has it
    await nc.publish("wind.contact.created", b'{"not": "matched"}')
    await nc.publish("wind.lead.scored", b'{"subject": "lead.scored", "data": {"score": 5}}',
                     headers={"Nats-Msg-Id": "m-1"})
    event = await asyncio.wait_for(anext(stream), 10)
    body = json.loads(event.data)
    assert event.event == "message" and body["subject"] == "lead.scored"
    assert body["data"]["data"] == {"score": 5} and body["headers"] == {"Nats-Msg-Id": "m-1"}

    waiting = asyncio.ensure_future(anext(stream, None))
    await asyncio.sleep(0)
    readers.close()
    assert await asyncio.wait_for(waiting, 10) is None  # the stream ended
    # and it unsubscribed: nothing listens on the subject any more
    await nc.flush()
    await eventually(lambda: "wind.lead.*" not in plain_nats.subscribed() or None,
                     timeout=10, what="the tail's subscription gone")


async def test_a_slow_reader_is_told_how_many_events_it_lost() -> None:
    queue, on_msg = _bounded_queue()
    for i in range(QUEUE_SIZE + 5):
        await on_msg(i)  # type: ignore[arg-type] - any message will do
    assert queue.qsize() == QUEUE_SIZE
    for _ in range(10):
        queue.get_nowait()
    await on_msg("next")  # type: ignore[arg-type]
    items = [queue.get_nowait() for _ in range(queue.qsize())]
    assert items[-2:] == [5, "next"]  # the count of the 5 dropped, then what came after


def test_a_key_is_taken_as_it_is_or_mapped_from_its_entity() -> None:
    assert key_of("c-1001") == "c-1001"
    assert key_of("lead.c-1") == "lead.c-1"
    assert key_of("jane@acme.io") == "jane=40acme.io"
    assert key_of("jane=40acme.io") == "jane=40acme.io"
    # a KV key has no empty token: an entity with ".." gets a valid key (it had none)
    assert key_of("0..0") == "0=2E.0" and key_of("a...b") == "a=2E=2E.b"


async def test_soil_readers_on_an_empty_and_a_changed_bucket(nc: nats.NATS) -> None:
    from nimsforest.streams import SOIL, ensure_streams

    js = nc.jetstream()
    await ensure_streams(js, (SOIL,), 1, None)
    readers = Readers(nc)
    assert await readers.soil_keys() == []  # a fresh forest's Soil
    assert await readers.soil_history("c-1") == []
    assert await readers.soil_value("c-1") is None

    kv = await js.key_value("SOIL")
    await kv.put("c-1", b'{"v": 1}')
    await kv.put("c-1", b'{"v": 2}')
    await kv.put("c-2", b'{"v": 1}')
    await kv.put("d-1", b'{"v": 1}')
    await kv.delete("c-2")
    keys = await readers.soil_keys("c-")
    assert [(k.key, k.revision) for k in keys] == [("c-1", 2)]  # c-2 is deleted, d-1 elsewhere
    history = await readers.soil_history("c-2")
    assert [(h.operation.value, h.value) for h in history] == [("put", {"v": 1}), ("delete", None)]
    deleted = await readers.soil_value("c-2")
    assert deleted is not None and deleted.operation.value == "delete" and deleted.revision == 5
    assert (await readers.soil_value("c-1")).value == {"v": 2}  # type: ignore[union-attr]


async def test_a_soil_watch_shows_current_values_first_then_changes_under_its_prefix(
    nc: nats.NATS,
) -> None:
    from nimsforest.streams import SOIL, ensure_streams

    js = nc.jetstream()
    await ensure_streams(js, (SOIL,), 1, None)
    kv = await js.key_value("SOIL")
    await kv.put("c-1", b'{"v": 1}')
    await kv.put("x-1", b'{"v": 1}')
    readers = Readers(nc)
    watch = readers.soil_watch("c-", current=True)
    assert (await anext(watch)).event == "open"
    first = json.loads((await asyncio.wait_for(anext(watch), 10)).data)
    assert (first["key"], first["value"]) == ("c-1", {"v": 1})  # the current value
    await kv.put("x-2", b'{"v": 2}')  # another prefix: not shown
    await kv.delete("c-1")
    change = await asyncio.wait_for(anext(watch), 10)
    body = json.loads(change.data)
    assert change.event == "change" and body["key"] == "c-1" and body["operation"] == "delete"
    readers.close()
    assert await asyncio.wait_for(anext(watch, None), 10) is None
