"""Sources that run, against a real nats-server and real local servers: a schedule on three
nodes fires each tick once, catch_up fires the missed tick, an http_poll source follows
its cursor and a killed poller (kill -9) is taken over from the stored cursor, the nats
bridge and the telegram webhook."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
import uvicorn
from nats.js.errors import NotFoundError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from nimsforest.forest import FlowError, Forest, load_forest_config
from nimsforest.forest.delivery import Stats
from nimsforest.forest.model import FlowReceipt
from nimsforest.forest.sources import (
    extract,
    item_id,
    last_tick,
    missed_tick,
    next_cursor,
    next_tick,
    source_loop,
)
from nimsforest.forest.specs import SourceSpec
from nimsforest.streams import SOURCES, ensure_streams
from tests.forest.conftest import write_forest
from tests.support import eventually, free_port

T0 = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)


def _spec(**kw: Any) -> SourceSpec:
    return SourceSpec.model_validate({"publishes": "river.x", **kw})


# --- pure -----------------------------------------------------------------------------------------
def test_ticks_are_the_same_instants_on_every_node() -> None:
    every = _spec(type="schedule", interval="1m")
    assert next_tick(every, T0) == datetime(2026, 3, 1, 12, 1, tzinfo=UTC)
    assert next_tick(every, datetime(2026, 3, 1, 12, 1, tzinfo=UTC)) == datetime(
        2026, 3, 1, 12, 2, tzinfo=UTC)
    assert last_tick(every, T0) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    hourly = _spec(type="ceremony", cron="15 * * * *")  # the Go original's name
    assert next_tick(hourly, T0) == datetime(2026, 3, 1, 12, 15, tzinfo=UTC)
    assert last_tick(hourly, T0) == datetime(2026, 3, 1, 11, 15, tzinfo=UTC)


def test_catch_up_fires_the_last_missed_tick_or_skips() -> None:
    fire = _spec(type="schedule", interval="1h", catch_up="fire_one")
    two_hours_ago = T0 - timedelta(hours=2)
    assert missed_tick(fire, two_hours_ago, T0) == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert missed_tick(fire, datetime(2026, 3, 1, 12, tzinfo=UTC), T0) is None  # fired already
    assert missed_tick(fire, None, T0) is None  # a new schedule waits for its next tick
    assert missed_tick(_spec(type="schedule", interval="1h"), two_hours_ago, T0) is None


def test_bad_schedules_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="not a cron expression"):
        _spec(type="schedule", cron="every day")
    with pytest.raises(ValueError, match="exactly one of 'interval' or 'cron'"):
        _spec(type="schedule", interval="1m", cron="* * * * *")
    with pytest.raises(ValueError, match="'url' is not a setting of a schedule source"):
        _spec(type="schedule", interval="1m", url="http://x")
    with pytest.raises(ValueError, match="an http_poll source needs 'url'"):
        _spec(type="http_poll", interval="1m")


def test_cursor_and_items_are_read_from_the_page() -> None:
    spec = _spec(type="http_poll", url="http://h/x", interval="1s", items="data.items",
                 cursor={"param": "after", "extract": "$.meta.next"})
    page = {"data": {"items": [{"id": 1}, {"id": 2}]}, "meta": {"next": 2}}
    assert extract(page, "data.items[1].id") == 2
    assert next_cursor(spec, page, page["data"]["items"]) == "2"
    last = spec.model_copy(update={"cursor": spec.cursor.model_copy(  # type: ignore[union-attr]
        update={"extract": "last.id"})})
    assert next_cursor(last, page, page["data"]["items"]) == "2"
    assert next_cursor(last, page, []) is None
    assert item_id("p", spec, {"id": 7}) == "poll:p:7"
    assert item_id("p", spec, {"x": 1}) == item_id("p", spec, {"x": 1}) != item_id("p", spec, {"x": 2})


# --- helpers --------------------------------------------------------------------------------------
async def river(js: Any, subject: str) -> list[dict[str, Any]]:
    """The River messages stored on `subject`, oldest first."""
    out, seq = [], 1
    while True:
        try:
            raw = await js.get_msg("RIVER", seq, subject=subject, next=True)
        except NotFoundError:
            return out
        out.append(json.loads(raw.data))
        seq = raw.seq + 1


@contextlib.asynccontextmanager
async def forests(url: str, tmp_path: Path, config: dict[str, Any], names: tuple[str, ...],
                  ) -> AsyncIterator[list[Forest]]:
    path = write_forest(tmp_path / "forest", config)
    conns = [await nats.connect(url) for _ in names]
    made = [Forest(c, load_forest_config(path), stop_grace=1.0, node=n)
            for c, n in zip(conns, names, strict=True)]
    try:
        for f in made:
            await f.start()
        yield made
    finally:
        for f in made:
            await f.stop()
        for c in conns:
            await c.close()


# --- schedule -------------------------------------------------------------------------------------
async def test_a_schedule_on_three_nodes_fires_each_tick_once(plain_nats, nc, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = {"sources": {"beat": {"type": "schedule", "interval": "1s", "publishes": "tick",
                                   "payload": {"kind": "heartbeat"}}}}
    async with forests(plain_nats.url, tmp_path, config, ("n1", "n2", "n3")) as three:
        js = nc.jetstream()
        msgs = await eventually(lambda: _at_least(river(js, "river.tick"), 3), what="3 ticks")
        ticks = [m["tick"] for m in msgs]
        assert len(ticks) == len(set(ticks)), ticks
        assert all(m["payload"] == {"kind": "heartbeat"} and m["source"] == "beat" for m in msgs)
        # every node fired (events_in), the River kept one message per tick (events_out)
        assert all(f.get("source", "beat").events_in >= 1 for f in three)
        assert sum(f.get("source", "beat").events_out for f in three) >= len(ticks)
        assert "next tick at" in (three[0].get("source", "beat").activity or "")
        kv = await js.key_value("SOURCES")
        assert (await kv.get("schedule.beat")).value.decode() in ticks  # type: ignore[union-attr]


async def _at_least(aw: Any, n: int) -> Any:
    got = await aw
    return got if len(got) >= n else None


async def test_catch_up_fires_the_missed_tick_once(plain_nats, nc, tmp_path) -> None:  # type: ignore[no-untyped-def]
    js = nc.jetstream()
    config = {"sources": {
        "hourly": {"type": "schedule", "interval": "1h", "publishes": "sync", "catch_up": "fire_one"},
        "quiet": {"type": "schedule", "interval": "1h", "publishes": "quiet"},
    }}
    async with forests(plain_nats.url, tmp_path, config, ("n1",)):
        pass  # creates the bucket
    kv = await js.key_value("SOURCES")
    long_ago = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    await kv.put("schedule.hourly", long_ago.encode())
    await kv.put("schedule.quiet", long_ago.encode())
    async with forests(plain_nats.url, tmp_path, config, ("n1", "n2")):
        [msg] = await eventually(lambda: river(js, "river.sync"), what="the missed tick")
        assert msg["caught_up"] is True
        assert datetime.fromisoformat(msg["tick"]) > datetime.fromisoformat(long_ago)
        assert await river(js, "river.quiet") == []
        assert len(await river(js, "river.sync")) == 1


# --- http_poll ------------------------------------------------------------------------------------
class PagedApi:
    """GET /items?after=N -> {"items": up to 2 items with id > N, "next": last id}."""

    def __init__(self, n: int) -> None:
        self.ids = list(range(1, n + 1))
        self.calls: list[str | None] = []
        self.port = free_port()

    async def items(self, request: Request) -> JSONResponse:
        after = request.query_params.get("after")
        self.calls.append(after)
        page = [i for i in self.ids if i > int(after or 0)][:2]
        return JSONResponse({"items": [{"id": i, "name": f"item {i}"} for i in page],
                             "next": page[-1] if page else None})


@contextlib.asynccontextmanager
async def paged_api(n: int) -> AsyncIterator[PagedApi]:
    api = PagedApi(n)
    app = Starlette(routes=[Route("/items", api.items)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=api.port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield api
    finally:
        server.should_exit = True
        await task


def _poll(port: int) -> dict[str, Any]:
    return {"sources": {"crm": {
        "type": "http_poll", "url": f"http://127.0.0.1:{port}/items", "interval": "300ms",
        "publishes": "crm.items", "items": "items", "lease": "2s",
        "cursor": {"param": "after", "extract": "next"},
    }}}


async def test_a_killed_poller_is_taken_over_from_the_stored_cursor(  # type: ignore[no-untyped-def]
    plain_nats, nc, tmp_path
) -> None:
    js = nc.jetstream()
    async with paged_api(5) as api:
        path = write_forest(tmp_path / "proc", _poll(api.port))
        status = tmp_path / "proc.json"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.forest.forest_proc", plain_nats.url, str(path),
            str(status), cwd=str(Path(__file__).resolve().parents[2]),
            env={**os.environ, "FOREST_PROC_NODE": "doomed"},
        )
        try:
            got = await eventually(lambda: _at_least(river(js, "river.crm.items"), 5),
                                   what="the first five items")
            kv = await js.key_value("SOURCES")
            assert json.loads((await kv.get("lease.crm")).value)["node"] == "doomed"  # type: ignore[arg-type]
            async with forests(plain_nats.url, tmp_path, _poll(api.port), ("n2",)) as [other]:
                await eventually(lambda: "standing by: node doomed polls"
                                 in (other.get("source", "crm").activity or ""), what="stand-by")
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                calls_before = len(api.calls)
                api.ids += [6, 7, 8]
                got = await eventually(lambda: _at_least(river(js, "river.crm.items"), 8),
                                       what="the items added after the kill")
                assert sorted(m["item"]["id"] for m in got) == [1, 2, 3, 4, 5, 6, 7, 8]
                assert other.get("source", "crm").events_out == 3  # 6, 7, 8: nothing twice
                # it resumed from the stored cursor, not from the start
                assert None not in api.calls[calls_before:]
                assert (await kv.get("cursor.crm")).value == b"8"
                assert json.loads((await kv.get("lease.crm")).value)["node"] == "n2"  # type: ignore[arg-type]
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


# --- nats bridge and telegram ---------------------------------------------------------------------
async def test_a_core_subject_is_bridged_into_the_river(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory({"sources": {"app": {"type": "nats", "subject": "app.events.>",
                                                       "publishes": "app"}}})
    await eventually(lambda: forest.get("source", "app").activity == "bridging app.events.> into the River")
    reply = await nc.request("app.events.signup", b'{"user": "u1"}', timeout=5)
    receipt = json.loads(reply.data)
    assert receipt["stream"] == "RIVER" and receipt["subject"] == "river.app"
    await nc.publish("app.events.note", b"plain words")
    msgs = await eventually(lambda: _at_least(river(nc.jetstream(), "river.app"), 2), what="both")
    assert msgs[0] == {"user": "u1"}
    assert msgs[1] == {"subject": "app.events.note", "text": "plain words"}


async def test_a_telegram_webhook_needs_its_secret_token(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    forest = await forest_factory({"sources": {"tg": {
        "type": "telegram", "path": "/webhooks/telegram", "publishes": "telegram.messages",
        "secret": "tok-1", "bot_token": "123:ABC",
    }}})
    update = json.dumps({"update_id": 99, "message": {"chat": {"id": 42}, "text": "hi"}}).encode()
    with pytest.raises(FlowError) as err:
        await forest.receive_webhook("/webhooks/telegram", {}, update)
    assert err.value.status == 401 and "X-Telegram-Bot-Api-Secret-Token" in str(err.value)
    headers = {"X-Telegram-Bot-Api-Secret-Token": "tok-1"}
    first = await forest.receive_webhook("/webhooks/telegram", headers, update)
    again = await forest.receive_webhook("/webhooks/telegram", headers, update)
    assert not first.duplicate and again.duplicate  # Telegram's retry is stored once
    [msg] = await river(nc.jetstream(), "river.telegram.messages")
    assert msg["body"]["message"]["text"] == "hi" and msg["source"] == "tg"


async def test_a_page_fetched_again_is_stored_once(forest_factory, nc) -> None:  # type: ignore[no-untyped-def]
    async with paged_api(3) as api:
        url = f"http://127.0.0.1:{api.port}/items"
        forest = await forest_factory({"sources": {
            "pages": {"type": "http_poll", "url": url, "interval": "100ms", "split": "page",
                      "publishes": "pages"},
            "items": {"type": "http_poll", "url": url, "interval": "100ms", "items": "items",
                      "publishes": "items"},
        }})
        # no cursor: every poll fetches the same first page
        await eventually(lambda: forest.get("source", "items").events_in >= 4
                         and forest.get("source", "pages").events_in >= 2,
                         what="several polls of each")
        js = nc.jetstream()
        [page] = await river(js, "river.pages")
        assert [i["id"] for i in page["body"]["items"]] == [1, 2] and page["status"] == 200
        assert [m["item"]["id"] for m in await river(js, "river.items")] == [1, 2]
        assert forest.get("source", "items").events_out == 2
        # each was offered again (events_in) and stored once (events_out)
        assert forest.get("source", "pages").events_out == 1


# --- stopping -------------------------------------------------------------------------------------
class AnsweredWithTheCancel:
    """A flow whose answer the test gives in the very loop tick the stop's cancel lands in,
    awaited through asyncio.wait_for as nats-py awaits every reply (each KV read and
    JetStream publish a poller makes). On Python 3.11 wait_for then returns the answer and
    loses the cancel (cpython#86296): the poller goes on polling. This is what hung the
    teardown of test_a_page_fetched_again_is_stored_once (a kv.get in poll_once)."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.answer: asyncio.Future[None] | None = None

    async def __call__(self, subject: str, payload: Any, **kw: Any) -> FlowReceipt:
        self.answer = asyncio.get_running_loop().create_future()
        self.asked.set()
        await asyncio.wait_for(self.answer, 5)
        return FlowReceipt(stream="RIVER", subject=f"river.{subject}", seq=1)


async def test_a_poller_stops_although_a_reply_came_with_its_cancel(plain_nats, nc) -> None:  # type: ignore[no-untyped-def]
    async with paged_api(3) as api:
        spec = _spec(type="http_poll", url=f"http://127.0.0.1:{api.port}/items",
                     interval="100ms", items="items")
        loop = source_loop("crm", spec, Stats())
        assert loop is not None
        flow = AnsweredWithTheCancel()
        await ensure_streams(nc.jetstream(), (SOURCES,), 1, None)
        await loop.start(nc, nc.jetstream(), "n1", flow)
        await asyncio.wait_for(flow.asked.wait(), 20)
        assert flow.answer is not None
        flow.answer.set_result(None)  # the reply arrives, and in the same tick the stop's cancel
        async with asyncio.timeout(20):  # a stop that loses its cancel never returns
            await loop.stop()
        assert loop.activity == "stopped"
        assert [t for t in asyncio.all_tasks() if t.get_name().startswith("source-crm")] == []
        kv = await nc.jetstream().key_value("SOURCES")  # it let its lease go on the way out
        assert json.loads((await kv.get("lease.crm")).value)["until"] == 0  # type: ignore[arg-type]
