"""Pulling through a frozen nats-server (SIGSTOP: its connections stay open, nothing is
answered).

A pull request lives only on its consumer's leader. When that leader freezes the consumer
elects a new one, which knows none of the forest's requests: the forest asks it again as
soon as JetStream says a leader was elected, so events flow again while the old leader is
still frozen, without waiting for the heartbeat watch.

When a node's own server freezes, the requests its forest left on a healthy leader would
be handed messages that reach nobody until the server resumes: they expire within
`EXPIRES`, after which every event goes to the nodes that can take it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import nats
import pytest

from natsembed import NODE_TAG
from nimsforest.forest import Forest, load_forest_config
from nimsforest.forest import pull as pull_module
from tests.forest.conftest import holds, stored_leaves, write_forest
from tests.support import EmbeddedFactory, eventually, freeze, routed_servers

ECHO = "function process(input) return input end"
FROZEN_FOR = 4.0  # seconds before events are sent: longer than a pull request lives


async def led(nc: nats.NATS, kind: str, name: str, ok: Callable[[str], bool],
              preferred: str) -> bool:
    """Whether stream `name` (`kind` STREAM) or RIVER's consumer `name` (CONSUMER) has a
    leader that is `ok`; if not, ask its leader to step down in favour of `preferred`."""
    js = nc.jetstream()
    if kind == "CONSUMER":
        info = (await js.consumer_info("RIVER", name)).cluster
        subject = f"$JS.API.CONSUMER.LEADER.STEPDOWN.RIVER.{name}"
    else:
        info = (await js.stream_info(name)).cluster
        subject = f"$JS.API.STREAM.LEADER.STEPDOWN.{name}"
    if info is not None and info.leader and ok(info.leader):
        return True
    await nc.request(subject, json.dumps({"placement": {"preferred": preferred}}).encode(), timeout=5)
    return False


async def test_a_new_consumer_leader_is_asked_for_messages_at_once(
        embedded: EmbeddedFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pull_module, "STALLED_AFTER", 3600.0)  # only the election can help
    servers = await routed_servers(embedded, "pl", count=3)
    nc = await nats.connect(servers[0].client_url)
    js = nc.jetstream()
    forest = Forest(nc, load_forest_config(write_forest(tmp_path / "forest", {"trees": {"t": {
        "watches": "river.in.>", "publishes": "got.it", "code": ECHO}}})),
        replicas=3, placement_tags=(NODE_TAG,), stop_grace=1.0)
    frozen, resumed = servers[1], True

    try:
        await forest.start()
        await forest.flow("in.a", {"n": 1})
        await eventually(lambda: holds(stored_leaves(js), 1), what="the first leaf")
        durable = next(c.name for c in await js.consumers_info("RIVER"))
        # the tree's consumer led by the server about to freeze; its streams elsewhere
        await eventually(lambda: led(nc, "CONSUMER", durable, lambda x: x == frozen.name, frozen.name),
                         what="the consumer's leader")
        for stream in ("RIVER", "WIND"):
            await eventually(lambda s=stream: led(  # type: ignore[misc]
                nc, "STREAM", s, lambda x: x == servers[0].name, servers[0].name),
                             what=f"{stream}'s leader")
        assert frozen.node.pid is not None
        freeze(frozen.node.pid)
        resumed = False
        await forest.flow("in.b", {"n": 2})  # stored; the only pull request is on the frozen leader
        await eventually(lambda: holds(stored_leaves(js), 2), timeout=40,
                         what="the second leaf, pulled from the consumer's new leader")
        os.kill(frozen.node.pid, signal.SIGCONT)
        resumed = True
        await forest.flow("in.c", {"n": 3})
        await eventually(lambda: holds(stored_leaves(js), 3), timeout=30, what="the third leaf after SIGCONT")
    finally:
        if not resumed and frozen.node.pid is not None:
            os.kill(frozen.node.pid, signal.SIGCONT)
        await forest.stop()
        await nc.close()


async def test_a_frozen_nodes_pull_requests_expire_and_take_no_more_events(
        embedded: EmbeddedFactory, tmp_path: Path) -> None:
    assert pull_module.EXPIRES < FROZEN_FOR - 1
    servers = await routed_servers(embedded, "pe", count=3)
    ncs = [await nats.connect(s.client_url) for s in servers[:2]]
    js = ncs[0].jetstream()
    # no redelivery can help within the test: an event handed to the frozen node stays there
    config = load_forest_config(write_forest(tmp_path / "forest", {"trees": {"t": {
        "watches": "river.in.>", "publishes": "got.it", "code": ECHO, "ack_wait": "1h"}}}))
    forests = [Forest(nc, config, replicas=3, placement_tags=(NODE_TAG,), stop_grace=1.0)
               for nc in ncs]
    frozen, resumed = servers[1], True

    try:
        for forest in forests:
            await forest.start()
        await forests[0].flow("in.a", {"n": 0})
        await eventually(lambda: holds(stored_leaves(js), 1), what="the first leaf")
        durable = next(c.name for c in await js.consumers_info("RIVER"))
        for kind, name in (("CONSUMER", durable), ("STREAM", "RIVER"), ("STREAM", "WIND")):
            await eventually(lambda k=kind, n=name: led(  # type: ignore[misc]
                ncs[0], k, n, lambda x: x != frozen.name, servers[2].name),
                             what=f"{name}'s leader off the server to freeze")
        assert frozen.node.pid is not None
        freeze(frozen.node.pid)
        resumed = False
        await asyncio.sleep(FROZEN_FOR)  # the frozen node's requests expired meanwhile
        for i in range(1, 21):
            await forests[0].flow(f"in.{i}", {"n": i})
        await eventually(lambda: holds(stored_leaves(js), 21), timeout=30,
                         what="every event handled by the node that can, none by the frozen one")
    finally:
        if not resumed and frozen.node.pid is not None:
            os.kill(frozen.node.pid, signal.SIGCONT)
        for forest in forests:
            await forest.stop()
        for nc in ncs:
            await nc.close()
