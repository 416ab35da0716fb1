"""The memory:// backend, and the client behaviour every backend shares (on memory://)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from registry import (
    NodeInfo,
    PeerEvent,
    PeerEventType,
    Registry,
    RegistryConflict,
    RegistryState,
    RegistryUnreachable,
    memory_store,
    open_registry,
)
from registry._memory import MemoryRegistry
from registry._timing import plan_timing
from tests.support import eventually


@pytest.fixture
def url() -> str:
    return f"memory://{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def opened() -> AsyncIterator[Any]:
    made: list[Registry] = []

    def make(url: str, **kw: Any) -> Registry:
        kw.setdefault("heartbeat_interval", 2.0)  # TTL 6 s: nothing expires by accident
        reg = open_registry(url, **kw)
        made.append(reg)
        return reg

    yield make
    for reg in made:
        await reg.close()


def node(name: str, node_id: str | None = None) -> NodeInfo:
    return NodeInfo(name=name, cluster_address="10.2.0.1:6222", node_id=node_id or f"id-{name}")


async def test_shared_by_name_and_isolated_between_names(url: str, opened: Any) -> None:
    await opened(url).register(node("a"))
    await opened(url).register(node("b"))
    assert [n.name for n in await opened(url).list_nodes()] == ["a", "b"]
    assert await opened(f"{url}-other").list_nodes() == []
    assert await opened(url, service="another").list_nodes() == []


async def test_same_rules_as_the_server(url: str, opened: Any) -> None:
    first = await opened(url).register(node("n", "A"))
    second = await opened(url).register(node("m", "M"))
    assert second.create_index > first.create_index
    with pytest.raises(RegistryConflict):
        await opened(url).register(node("n", "B"))
    assert (await opened(url).register(node("n", "A"))).create_index == first.create_index
    short = await opened(url, heartbeat_interval=0.1).register(node("e", "E"))  # TTL 0.3 s
    store = memory_store(url.removeprefix("memory://"))
    await eventually(
        lambda: "e" not in [n.name for n, _ in store.nodes("nimsforest")],
        what="the silent record to expire",
    )
    taken = await opened(url).register(node("e", "F"))  # expired: no conflict, a new index
    assert taken.create_index > short.create_index


async def test_watch_blocks_and_reports_join_leave_and_expiry(url: str, opened: Any) -> None:
    me = opened(url)
    await me.register(node("me"))
    loop = asyncio.create_task(me.run_heartbeat())  # every 2 s: me never expires here
    events: list[PeerEvent] = []

    async def watch() -> None:
        async for event in me.watch_peers(wait=60.0):
            events.append(event)

    task = asyncio.create_task(watch())
    other = opened(url, heartbeat_interval=0.1)  # TTL 0.3 s and no heartbeats: it expires
    await other.register(node("other"))
    await eventually(
        lambda: (PeerEventType.ADDED, "other") in [(e.type, e.node.name) for e in events]
    )
    await eventually(
        lambda: (PeerEventType.REMOVED, "other") in [(e.type, e.node.name) for e in events],
        what="the silent peer to expire",
    )
    assert me.status().state is RegistryState.REGISTERED  # its own heartbeats kept it
    await me.close()
    await asyncio.wait_for(task, 10)
    await asyncio.wait_for(loop, 10)  # close() ends run_heartbeat() too


async def test_outage_logs_one_line_each_way_and_loop_lives_on(
    url: str, opened: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="registry")
    store = memory_store(url.removeprefix("memory://"))
    reg = opened(url, heartbeat_interval=0.1)
    await reg.register(node("n"))
    loop = asyncio.create_task(reg.run_heartbeat())
    store.reachable = False
    await eventually(lambda: reg.status().state is RegistryState.UNREACHABLE)
    with pytest.raises(RegistryUnreachable):
        await reg.list_peers()
    await asyncio.sleep(0.35)  # more failed heartbeats: still one line
    store.reachable = True
    await eventually(lambda: reg.status().state is RegistryState.REGISTERED)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert lines[:2] == [
        f"Registry unreachable at {url}: it is switched off.",
        f"Registry reachable again at {url}.",
    ]
    assert all(
        "had forgotten node n" in line for line in lines[2:]
    )  # if the outage outlived the TTL
    assert not loop.done()
    loop.cancel()


async def test_forgotten_node_registers_again(
    url: str, opened: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="registry")
    reg = opened(url, heartbeat_interval=30.0)
    first = await reg.register(node("n"))
    memory_store(url.removeprefix("memory://")).deregister(
        "nimsforest", "n"
    )  # the registry forgets
    again = await reg.heartbeat()
    assert again.create_index > first.create_index
    assert f"Registry at {url} had forgotten node n; registered it again" in caplog.text


async def test_deregister_stops_the_loop_from_registering_again(
    url: str, opened: Any, caplog: pytest.LogCaptureFixture
) -> None:
    reg = opened(url, heartbeat_interval=0.1)
    await reg.register(node("n"))
    loop = asyncio.create_task(reg.run_heartbeat())
    await reg.deregister()
    await asyncio.sleep(0.3)  # three intervals: a loop that ignored deregister would be back
    assert await opened(url).list_nodes() == []
    assert reg.status().state is RegistryState.NOT_REGISTERED
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # quietly idle, no "bug"
    loop.cancel()


async def test_misuse_is_a_runtime_error(url: str, opened: Any) -> None:
    reg = opened(url)
    with pytest.raises(RuntimeError):
        await reg.heartbeat()
    with pytest.raises(RuntimeError):
        await reg.run_heartbeat()
    await reg.close()
    with pytest.raises(RuntimeError):
        await reg.register(node("n"))
    assert reg.status().state is RegistryState.CLOSED


class _BuggyRegistry(MemoryRegistry):
    """A backend with a bug in its heartbeat, to see the loop survive it."""

    calls = 0

    async def _heartbeat(self, record: NodeInfo) -> NodeInfo | None:
        self.calls += 1
        raise ZeroDivisionError("bug")


async def test_a_bug_is_logged_once_and_the_loop_lives_on(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    reg = _BuggyRegistry(url, service="nimsforest", timing=plan_timing(0.1))
    await reg.register(node("n"))
    loop = asyncio.create_task(reg.run_heartbeat())
    await eventually(lambda: reg.calls >= 3, what="three heartbeats")
    assert not loop.done()
    bugs = [r for r in caplog.records if "a bug" in r.getMessage()]
    assert len(bugs) == 1 and bugs[0].exc_info is not None
    await reg.close()
    await asyncio.wait_for(loop, 10)
