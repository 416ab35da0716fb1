"""The http(s):// client against the real registry server in a subprocess."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry import (
    NodeInfo,
    PeerEvent,
    PeerEventType,
    Registry,
    RegistryConflict,
    RegistryRejected,
    RegistryState,
    RegistryUnreachable,
    open_registry,
)
from tests.registry.conftest import RegistryProcess, http_answer
from tests.support import eventually

INTERVAL = 0.5  # for heartbeat-loop tests: request timeout 0.25 s, TTL 1.5 s


def node(name: str, node_id: str | None = None, port: int = 6222) -> NodeInfo:
    return NodeInfo(name=name, cluster_address=f"10.1.0.1:{port}", node_id=node_id or f"id-{name}")


@pytest.fixture
async def clients() -> AsyncIterator[Any]:
    """`make(url, service, **kw)` opens registries that are all closed after the test."""
    made: list[Registry] = []

    def make(url: str, service: str, **kw: Any) -> Registry:
        kw.setdefault("heartbeat_interval", 5.0)  # TTL 15 s: nothing expires by accident
        reg = open_registry(url, service=service, **kw)
        made.append(reg)
        return reg

    yield make
    for reg in made:
        await reg.close()


class Collector:
    """Runs watch_peers() in a task and keeps every event."""

    def __init__(self, reg: Registry, **kw: Any) -> None:
        self.events: list[PeerEvent] = []
        self.task = asyncio.create_task(self._run(reg, kw))

    async def _run(self, reg: Registry, kw: dict[str, Any]) -> None:
        async for event in reg.watch_peers(**kw):
            self.events.append(event)

    def seen(self, kind: PeerEventType, name: str) -> bool:
        return any(e.type is kind and e.node.name == name for e in self.events)


async def test_register_list_heartbeat_deregister(
    registry_server: RegistryProcess, service: str, clients: Any
) -> None:
    a, b = clients(registry_server.url, service), clients(registry_server.url, service)
    rec_a = await a.register(node("a"))
    rec_b = await b.register(node("b", port=7222))
    assert rec_a.create_index is not None and rec_b.create_index > rec_a.create_index
    assert rec_a.registered_at is not None
    assert [n.name for n in await a.list_nodes()] == ["a", "b"]
    assert [n.name for n in await a.list_peers()] == ["b"]
    assert (await a.heartbeat()).create_index == rec_a.create_index
    status = a.status()
    assert status.state is RegistryState.REGISTERED and status.connected and status.last_heartbeat
    assert status.create_index == rec_a.create_index and status.node == "a"
    await b.deregister()
    assert await a.list_peers() == []
    assert b.status().state is RegistryState.NOT_REGISTERED


async def test_client_sends_ttl_of_three_intervals(
    registry_server: RegistryProcess, service: str, clients: Any
) -> None:
    reg = clients(registry_server.url, service, heartbeat_interval=2.0)
    await reg.register(node("ttl"))
    raw = httpx.get(f"{registry_server.url}/v1/services/{service}/nodes/ttl").json()
    assert raw["ttl_seconds"] == 6.0 and reg.status().ttl_seconds == 6.0


async def test_conflict_and_takeover(
    registry_server: RegistryProcess, service: str, clients: Any
) -> None:
    first = await clients(registry_server.url, service).register(node("n1", node_id="aaa"))
    intruder = clients(registry_server.url, service)
    with pytest.raises(RegistryConflict) as err:
        await intruder.register(node("n1", node_id="bbb"))
    assert str(err.value) == (
        "Node name 'n1' is already registered by a live node (node id aaa); "
        "choose another NATS_NODE_NAME or stop that node."
    )
    assert intruder.status().state is RegistryState.CONFLICT and intruder.status().connected
    restarted = clients(registry_server.url, service)  # same data dir, same node id
    again = await restarted.register(node("n1", node_id="aaa"))
    assert again.create_index == first.create_index


async def test_watch_yields_added_and_removed(
    registry_server: RegistryProcess, service: str, clients: Any
) -> None:
    me = clients(registry_server.url, service)
    await me.register(node("me"))
    watch = Collector(me)
    other = clients(registry_server.url, service)
    await other.register(node("other"))
    await eventually(lambda: watch.seen(PeerEventType.ADDED, "other"), what="ADDED other")
    await other.deregister()
    await eventually(lambda: watch.seen(PeerEventType.REMOVED, "other"), what="REMOVED other")
    silent = clients(
        registry_server.url, service, heartbeat_interval=0.1
    )  # TTL: the server's 1 s floor
    await silent.register(node("silent"))
    await eventually(
        lambda: watch.seen(PeerEventType.REMOVED, "silent"), what="the silent node to expire"
    )
    assert not any(e.node.name == "me" for e in watch.events)  # never about self
    watch.task.cancel()


async def test_watch_from_known_peers_and_close_ends_it(
    registry_server: RegistryProcess, service: str, clients: Any
) -> None:
    me, old = clients(registry_server.url, service), clients(registry_server.url, service)
    await me.register(node("me"))
    await old.register(node("old"))
    known = await me.list_peers()
    watch = Collector(me, known=known, wait=30.0)
    new = clients(registry_server.url, service)
    await new.register(node("new"))
    await eventually(lambda: watch.seen(PeerEventType.ADDED, "new"), what="ADDED new")
    assert not watch.seen(PeerEventType.ADDED, "old")
    await me.close()
    await asyncio.wait_for(watch.task, 10)  # the blocking query is abandoned on close()


async def test_heartbeat_loop_survives_restart_and_data_loss(
    own_server: RegistryProcess, service: str, clients: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="registry")
    own_server.start()
    reg = clients(own_server.url, service, heartbeat_interval=INTERVAL)
    first = await reg.register(node("hb"))
    loop = asyncio.create_task(reg.run_heartbeat())
    await asyncio.to_thread(own_server.stop)
    await eventually(lambda: reg.status().state is RegistryState.UNREACHABLE, what="UNREACHABLE")
    assert not reg.status().connected
    assert reg.status().last_error.startswith(f"Registry unreachable at {own_server.url}")
    await asyncio.to_thread(own_server.start)  # state kept: same record
    await eventually(
        lambda: reg.status().state is RegistryState.REGISTERED, what="REGISTERED again"
    )
    assert reg.status().create_index == first.create_index
    await asyncio.to_thread(own_server.stop)
    shutil.rmtree(own_server.data)  # the registry loses everything
    await eventually(
        lambda: reg.status().state is RegistryState.UNREACHABLE, what="UNREACHABLE again"
    )
    await asyncio.to_thread(own_server.start)

    def listed() -> list[str]:
        answer = httpx.get(f"{own_server.url}/v1/services/{service}/nodes")
        return [n["name"] for n in answer.json()]

    await eventually(lambda: listed() == ["hb"], what="the node to register again after data loss")
    await eventually(
        lambda: any("had forgotten node hb" in r.getMessage() for r in caplog.records),
        what="the log line about registering again",
    )
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("Registry unreachable at") for m in messages) == 2  # one per outage
    assert sum(m.startswith("Registry reachable again") for m in messages) == 2
    assert not loop.done()
    loop.cancel()


async def test_registry_down_at_start_then_up(
    registry_server: RegistryProcess,
    own_server: RegistryProcess,
    service: str,
    clients: Any,
    tmp_path: Path,
) -> None:
    cache = tmp_path / "peers.json"
    peer = clients(registry_server.url, service, heartbeat_interval=30.0)
    await peer.register(node("peer"))
    before = clients(registry_server.url, service, cache_path=cache)
    await before.list_nodes()  # a successful answer fills the cache
    await before.close()

    # a node restarting while its registry (own_server, not started yet) is down
    reg = clients(own_server.url, service, cache_path=cache, heartbeat_interval=INTERVAL)
    with pytest.raises(RegistryUnreachable):
        await reg.register(node("me"))
    with pytest.raises(RegistryUnreachable):
        await reg.list_peers()
    assert [n.name for n in reg.cached_peers()] == ["peer"]
    assert reg.status().peers_cached and not reg.status().connected
    loop = asyncio.create_task(reg.run_heartbeat())
    await asyncio.sleep(INTERVAL * 1.5)  # failed attempts meanwhile: the loop must live on
    assert not loop.done() and reg.status().state is RegistryState.UNREACHABLE
    await asyncio.to_thread(own_server.start)
    await eventually(
        lambda: reg.status().state is RegistryState.REGISTERED, what="registered once up"
    )
    assert [n.name for n in await reg.list_nodes()] == ["me"]
    loop.cancel()


async def test_frozen_registry_is_unreachable_and_watch_invents_no_removals(
    own_server: RegistryProcess, service: str, clients: Any
) -> None:
    own_server.start()
    me = clients(own_server.url, service, heartbeat_interval=INTERVAL)
    peer = clients(own_server.url, service, heartbeat_interval=30.0)
    await peer.register(node("peer"))
    await me.register(node("me"))
    watch = Collector(me, known=await me.list_peers(), wait=1.0)
    loop = asyncio.create_task(me.run_heartbeat())
    own_server.pause()  # SIGSTOP: connections hang, nothing answers
    try:
        await eventually(lambda: me.status().state is RegistryState.UNREACHABLE, what="UNREACHABLE")
        await asyncio.sleep(1.5)  # watch rounds fail meanwhile
    finally:
        own_server.resume()
    await eventually(
        lambda: me.status().state is RegistryState.REGISTERED, what="REGISTERED after SIGCONT"
    )
    assert not any(e.type is PeerEventType.REMOVED for e in watch.events)
    loop.cancel()
    watch.task.cancel()


async def test_token(token_server: RegistryProcess, service: str, clients: Any) -> None:
    good = clients(token_server.url, service, token="s3cret-token")
    assert (await good.register(node("t"))).name == "t"
    wrong = clients(token_server.url, service, token="nope")
    with pytest.raises(RegistryRejected, match="REGISTRY_TOKEN is wrong"):
        await wrong.register(node("u"))
    assert wrong.status().state is RegistryState.REJECTED
    missing = clients(token_server.url, service)
    with pytest.raises(RegistryRejected, match="needs REGISTRY_TOKEN"):
        await missing.list_nodes()


GARBAGE = {
    "not-json": lambda m, t, b: http_answer(200, "<html>hello</html>"),
    "wrong-shape": lambda m, t, b: http_answer(200, {"nodes": "none"}),
    "list-of-junk": lambda m, t, b: http_answer(200, [{"name": 5}] if m == "GET" else {"name": 5}),
    "other-name": lambda m, t, b: http_answer(200, {"name": "zz", "cluster_address": "1.2.3.4:5"}),
    "http-500": lambda m, t, b: http_answer(500, {"error": "boom."}),
    "http-404-html": lambda m, t, b: http_answer(404, "<h1>Not found</h1>"),
    "http-400-no-message": lambda m, t, b: http_answer(400, "bad"),
    "not-http": lambda m, t, b: b"SSH-2.0-OpenSSH\r\n\r\n",
    "hangs": lambda m, t, b: None,
    "closes": lambda m, t, b: b"",
}


@pytest.mark.parametrize("kind", list(GARBAGE))
async def test_malformed_answers_are_unreachable(
    kind: str, fake_http: Any, service: str, clients: Any
) -> None:
    server = await fake_http(GARBAGE[kind])
    reg = clients(server.url, service, heartbeat_interval=0.1)
    for call in (lambda: reg.register(node("g")), reg.list_nodes, reg.list_peers, reg.heartbeat):
        with pytest.raises(RegistryUnreachable) as err:
            await call()
        assert str(err.value).startswith(f"Registry unreachable at {server.url}: ")
    before = len(server.requests)
    loop = asyncio.create_task(reg.run_heartbeat())
    await eventually(
        lambda: len(server.requests) >= before + 3, what="the heartbeat loop to keep trying"
    )
    assert not loop.done() and reg.status().state is RegistryState.UNREACHABLE
    loop.cancel()


async def test_watch_falls_back_to_polling_without_blocking_support(
    fake_http: Any, service: str, clients: Any
) -> None:
    names = ["a"]

    def answer(method: str, target: str, body: bytes) -> bytes:
        if "index=" in target:
            return http_answer(503, {"error": "no blocking here."})
        nodes = [
            {"name": n, "cluster_address": f"10.0.0.{i + 1}:6222", "create_index": i + 1}
            for i, n in enumerate(names)
        ]
        return http_answer(200, nodes, {"X-Registry-Index": str(len(names))})

    server = await fake_http(answer)
    reg = clients(server.url, service, heartbeat_interval=0.2)
    watch = Collector(reg, wait=5.0)
    await eventually(lambda: watch.seen(PeerEventType.ADDED, "a"), what="ADDED a")
    names.append("b")
    await eventually(lambda: watch.seen(PeerEventType.ADDED, "b"), what="ADDED b by polling")
    names.remove("a")
    await eventually(lambda: watch.seen(PeerEventType.REMOVED, "a"), what="REMOVED a by polling")
    assert any("index=" in target for _, target in server.requests)  # it did try blocking first
    watch.task.cancel()


async def test_retries_5xx_within_the_interval_but_never_4xx(
    fake_http: Any, service: str, clients: Any
) -> None:
    def flaky(method: str, target: str, body: bytes) -> bytes:
        if len(flaky_server.requests) <= 2:
            return http_answer(503, {"error": "busy."})
        return http_answer(201, {**json.loads(body), "create_index": 7})

    flaky_server = await fake_http(flaky)
    rec = await clients(flaky_server.url, service, heartbeat_interval=2.0).register(node("r"))
    assert rec.create_index == 7 and len(flaky_server.requests) == 3

    refusing = await fake_http(
        lambda m, t, b: http_answer(422, {"error": "Invalid registration: name: no."})
    )
    with pytest.raises(RegistryRejected, match="Invalid registration: name: no."):
        await clients(refusing.url, service, heartbeat_interval=2.0).register(node("r"))
    assert len(refusing.requests) == 1
