"""Status reports between two nodes' controllers, each on its own nats-server (two routed
servers): each node's report lands in STATUS, the cluster view from either node shows
what fails on the other, with its node, an error clears once the component handles an
event after it, and a node that stops reporting is said to be silent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import nats
import pytest

from nimsforest.control import Controller, without_components
from nimsforest.control._schemas import ComponentView, ErrorState, NodeReport, Scope
from nimsforest.control.errors import NotFound
from nimsforest.forest import Forest, ForestConfig
from tests.control.test_controller import WHO, make_controller, th  # noqa: F401 - a fixture
from tests.support import EmbeddedFactory, eventually, publish_stored, routed_servers

# a component a node cannot build: failed there (or not applied, before it is built)
BROKEN = (ComponentView.FAILED, ComponentView.NOT_APPLIED)


def leaf(data: dict) -> bytes:
    return json.dumps({"subject": "in.x", "data": data, "source": "test",
                       "ts": "2026-12-01T00:00:00+00:00"}).encode()


PICKY = 'function process(i) if i.bad then error("bad input") end return i end'
HOOK = {"name": "hook", "type": "http_webhook", "path": "/webhooks/hook",
        "publishes": "river.hook", "secret": "${HOOK_SECRET}"}


@pytest.fixture
async def pair(embedded: EmbeddedFactory, monkeypatch: pytest.MonkeyPatch
               ) -> AsyncIterator[tuple[Controller, Controller]]:
    """Nodes a and b, each on its own nats-server, the two routed; only a has HOOK_SECRET
    in its environment (the process's, which the controllers also compile changes with)."""
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    servers = await routed_servers(embedded, "s", count=2)
    made: list[tuple[Controller, Forest, nats.NATS]] = []
    for node, env, server in (("a", None, servers[0]), ("b", {}, servers[1])):
        c = server.credentials
        nc = await nats.connect(server.system_url, user=c.app_user, password=c.app_password)
        forest = Forest(nc, without_components(ForestConfig.empty()), stop_grace=1.0, env=env)
        await forest.start()
        ctl = Controller(nc, forest, node=node, placement_tags=None, check_interval=0.5,
                         zone=f"zone-{node}", report_interval=0.2)
        await ctl.start()
        made.append((ctl, forest, nc))
    try:
        yield made[0][0], made[1][0]
    finally:
        for ctl, forest, nc in made:
            await ctl.stop()
            await forest.stop()
            await nc.close()


def component(ctl: Controller, name: str):  # noqa: ANN201 - a ComponentOut
    return next((c for c in ctl.cluster_status().components if c.name == name), None)


async def test_each_node_sees_what_fails_on_the_other_and_errors_clear(
    pair: tuple[Controller, Controller]
) -> None:
    a, b = pair
    nc = a.forest._nc  # a's own connection (to server s1)
    await a.add("source", HOOK, WHO)  # runs on a; b lacks the secret: broken there

    def hook_seen_failing_on_b() -> bool:
        c = component(a, "hook")
        return c is not None and c.state in BROKEN and len(c.nodes) == 2

    await eventually(hook_seen_failing_on_b, timeout=20, what="a sees hook not applied on b")
    # GET /api/v1/sources/hook speaks for the cluster (with its settings), ?node= for one
    got = a.cluster_get("source", "hook")
    assert got.state in BROKEN and got.last_error_node == "b" and len(got.nodes) == 2
    assert got.spec["path"] == "/webhooks/hook" and got.origin is not None
    assert a.cluster_get("source", "hook", "a").state is ComponentView.RUNNING
    assert b.cluster_get("source", "hook", "b").state in BROKEN
    with pytest.raises(NotFound, match="No node named .c."):
        a.cluster_get("source", "hook", "c")
    # an add's answer is the cluster view's component, and says what the others do so far
    added = await a.add("treehouse", th("picky", PICKY) | {"max_deliver": 1}, WHO)
    assert added.applied and added.component is not None
    assert "a" in {r.node for r in added.component.nodes}
    assert "of the 1 other reporting node(s) run it so far" in added.message, added.message
    hook = component(a, "hook")
    assert hook.last_error_node == "b" and "HOOK_SECRET" in (hook.last_error or "")
    assert hook.error_state is ErrorState.CURRENT
    states = {r.node: r.state for r in hook.nodes}
    assert states["a"] is ComponentView.RUNNING and states["b"] in BROKEN
    # a's own view alone looks clean: the per-node view on request
    mine = a.cluster_status("a")
    assert mine.scope is Scope.NODE
    assert next(c for c in mine.components if c.name == "hook").state is ComponentView.RUNNING
    assert next(c for c in a.cluster_status("b").components
                if c.name == "hook").state in BROKEN
    with pytest.raises(NotFound, match="'c'"):
        a.cluster_status("c")
    nodes = {n.node: n for n in b.cluster_status().nodes}
    assert set(nodes) == {"a", "b"} and nodes["a"].zone == "zone-a" and nodes["a"].reporting
    assert nodes["a"].resources.memory_bytes and nodes["a"].resources.cpus

    # a bad event fails on whichever node took it; both nodes say where and when
    js = nc.jetstream()
    await publish_stored(js, "wind.in.x", leaf({"bad": True}), msg_id="bad-1")

    def erred(ctl: Controller) -> str | None:
        c = component(ctl, "picky")
        return c.last_error_node if c and c.error_state is ErrorState.CURRENT else None

    where = await eventually(lambda: erred(b), timeout=20, what="the error seen from b")
    assert await eventually(lambda: erred(a), timeout=20, what="the error seen from a") == where
    picky = component(a, "picky")
    assert "bad input" in (picky.last_error or "")
    assert picky.last_error_node == where and picky.last_error_at is not None
    assert picky.errors == 1 and picky.state is ComponentView.RUNNING

    # good events: once the node that failed handles one, its error is cleared
    sent = 0

    async def cleared() -> bool:
        nonlocal sent
        sent += 1
        await publish_stored(js, "wind.in.x", leaf({"n": sent}),
                             msg_id=f"good-{sent}")
        c = component(a, "picky")
        return c is not None and c.error_state is ErrorState.CLEARED

    await eventually(cleared, timeout=30, what="the error cleared")
    c = component(a, "picky")
    assert c.last_error_node == where and c.errors == 1  # the count stays; the error is old
    row = next(r for r in c.nodes if r.node == where)
    assert row.last_ok_at is not None and row.last_ok_at > row.last_error_at

    # what a node published is in the STATUS bucket, readable by anyone with the credentials
    kv = await js.key_value("STATUS")
    stored = NodeReport.model_validate_json((await kv.get("b")).value)
    assert stored.node == "b" and stored.zone == "zone-b" and stored.status.node == "b"

    # a node that stops reporting is said to be silent; its counts stay, its states do not
    await b.board.stop()
    def reporting() -> dict[str, bool]:
        return {n.node: n.reporting for n in a.cluster_status().nodes}

    await eventually(lambda: reporting() == {"a": True, "b": False}, timeout=10,
                     what="b silent")
    # a removal's answer: the component where it is still reported (never on a), or none
    gone = await a.remove("treehouse", "picky", WHO)
    assert gone.applied and (gone.component is None
                             or {r.node for r in gone.component.nodes} == {"b"})
    assert not a.cluster_status().healthy
    hook = component(a, "hook")
    assert hook is not None and hook.state is ComponentView.RUNNING  # b's state no longer counts


async def test_a_consumers_lag_from_the_observer_in_status_and_metrics(
    plain_nats, make_controller  # noqa: ANN001, F811 - conftest's and test_controller's fixtures
) -> None:
    """The node's one NATS observer reads every durable consumer's lag (num_pending +
    num_ack_pending); the controller's status shows it on the component of that consumer
    and /metrics has the same number."""
    import asyncio

    from prometheus_client import generate_latest

    from nimsforest import metrics
    from nimsforest.connection import ConnectionManager
    from nimsforest.observer import NatsObserver, consumer_lag

    conn = ConnectionManager([plain_nats.url])
    await conn.connect()
    observer = NatsObserver("a", conn, interval=0.2)
    looking = asyncio.create_task(observer.run())
    try:
        ctl = await make_controller("a", lag=lambda: consumer_lag(observer.view),
                                    conn=conn.nc)
        await ctl.add("treehouse", th("lagged", subscribes="lag.x"), WHO)
        consumer = component(ctl, "lagged").consumer
        assert consumer
        # the treehouse has handled nothing: its consumer has nothing pending, and says so
        await eventually(lambda: component(ctl, "lagged").pending == 0, timeout=20,
                         what="the treehouse's lag read as 0")
        # a second durable consumer on the same stream, fed 5 leaves, 2 taken and not acked
        js = conn.nc.jetstream()
        for i in range(5):
            await publish_stored(js, "wind.lag.y", leaf({"n": i}), msg_id=f"lag-{i}")
        sub = await js.pull_subscribe("wind.lag.y", durable="by-hand", stream="WIND")
        taken = await sub.fetch(2, timeout=5)
        assert len(taken) == 2

        def by_hand() -> int | None:
            return next((c.lag for c in observer.view.consumers if c.name == "by-hand"), None)

        assert await eventually(lambda: by_hand() == 5, timeout=20, what="3 pending + 2 unacked")
        text = generate_latest(metrics.REGISTRY).decode()
        assert 'nimsforest_consumer_pending{consumer="by-hand",stream="WIND"} 5.0' in text
        assert f'nimsforest_consumer_pending{{consumer="{consumer}",stream="WIND"}} 0.0' in text
        lagged = component(ctl, "lagged")
        assert lagged.pending == 0 and lagged.pending_at is not None
        # a stream that does not answer keeps its consumers' last readings
        from nimsforest.observer import ConsumerView, StreamView, stream_consumers

        old = ConsumerView(stream="GONE", name="old", pending=4, at=1.0)
        kept = await stream_consumers(
            conn, (StreamView(name="GONE", replicas=1, leader=None, current=True, consumers=1),),
            (old,), timeout=2.0)
        assert kept == (old,)
        # a consumer gone loses its series
        await js.delete_consumer("WIND", "by-hand")
        await eventually(lambda: by_hand() is None, timeout=20, what="by-hand gone")
        await eventually(lambda: 'consumer="by-hand"' not in
                         generate_latest(metrics.REGISTRY).decode(), timeout=5,
                         what="its series gone")
    finally:
        looking.cancel()
        await asyncio.gather(looking, return_exceptions=True)
        await conn.close()
