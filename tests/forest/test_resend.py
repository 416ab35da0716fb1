"""An output sent to a stream leader that then freezes (SIGSTOP: never answered) is sent
again under its message id (every RESEND_AFTER, and as soon as the stream elects a
leader), so it is stored by the newly elected leader, once, without waiting for the
publish timeout. The same for Soil's compare-and-set writes, on the
decomposer's fast path (an output) and its slow path (`Soil.bury`)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import nats
import pytest

from natsembed import NODE_TAG
from nimsforest.forest import Forest, delivery, load_forest_config
from nimsforest.forest import consumer as consumer_module
from nimsforest.forest.leaf import Compost, CompostAction
from nimsforest.forest.soil import STREAM as SOIL_STREAM
from nimsforest.forest.soil import Soil
from tests.forest.conftest import holds, stored_leaves, write_forest
from tests.support import EmbeddedFactory, eventually, freeze, routed_servers

ECHO = "function process(input) return input end"


@pytest.mark.parametrize("by", ["timer", "election"])
async def test_an_unanswered_output_is_resent_to_the_new_leader_and_stored_once(
        by: str, embedded: EmbeddedFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resent every RESEND_AFTER, and at once when JetStream says the stream elected a
    leader (`election`: the timer is out of the way)."""
    monkeypatch.setattr(consumer_module, "PUBLISH_TIMEOUT", 3600.0)  # only a resend can help
    if by == "election":
        monkeypatch.setattr(consumer_module, "RESEND_AFTER", 3600.0)
    servers = await routed_servers(embedded, "rs" if by == "timer" else "re", count=3)
    nc = await nats.connect(servers[0].client_url)
    js = nc.jetstream()
    forest = Forest(nc, load_forest_config(write_forest(tmp_path / "forest", {"trees": {"t": {
        "watches": "river.in.>", "publishes": "got.it", "code": ECHO}}})),
        replicas=3, placement_tags=(NODE_TAG,), stop_grace=1.0)
    frozen = None

    async def wind_leader() -> str | None:
        info = await js.stream_info("WIND")
        return info.cluster.leader if info.cluster else None

    try:
        await forest.start()
        await forest.flow("in.a", {"n": 1})
        await eventually(lambda: holds(stored_leaves(js), 1), what="the first leaf")
        for _ in range(10):  # WIND led by a server other than the one this client uses
            leader = await eventually(wind_leader, what="WIND's leader")
            if leader != servers[0].name:
                break
            await nc.request("$JS.API.STREAM.LEADER.STEPDOWN.WIND", b"", timeout=5)
        assert leader != servers[0].name
        frozen = next(s for s in servers if s.name == leader)
        assert frozen.node.pid is not None
        freeze(frozen.node.pid)
        await forest.flow("in.b", {"n": 2})  # the tree's output goes to the frozen leader
        await eventually(lambda: holds(stored_leaves(js), 2), timeout=40,
                         what="the second leaf stored by WIND's new leader")
        os.kill(frozen.node.pid, signal.SIGCONT)
        frozen = None

        async def caught_up() -> bool:
            info = await js.stream_info("WIND")
            return bool(info.cluster and info.cluster.replicas) and all(
                r.current for r in info.cluster.replicas or [])

        await eventually(caught_up, timeout=30, what="every WIND replica current again")
        assert await stored_leaves(js) == 2  # the first send and its resend: stored once
    finally:
        if frozen is not None and frozen.node.pid is not None:
            os.kill(frozen.node.pid, signal.SIGCONT)
        await forest.stop()
        await nc.close()


async def test_an_unanswered_soil_write_is_resent_to_the_new_leader_and_stored_once(
        embedded: EmbeddedFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "PUBLISH_TIMEOUT", 3600.0)  # only a resend can help
    monkeypatch.setattr(delivery, "PUBLISH_TIMEOUT", 3600.0)
    servers = await routed_servers(embedded, "ss", count=3)
    nc = await nats.connect(servers[0].client_url)
    js = nc.jetstream()
    forest = Forest(nc, load_forest_config(write_forest(tmp_path / "forest", {})),
                    replicas=3, placement_tags=(NODE_TAG,), stop_grace=1.0)
    frozen, resumed = servers[1], True

    async def lead(api: str, name: str, on: str) -> bool:
        """Ask for `name`'s leader to be `on` until it is."""
        info = await js.stream_info(name) if api == "STREAM" else None
        if info is not None and info.cluster and info.cluster.leader == on:
            return True
        if api == "CONSUMER":
            c = await js.consumer_info("HUMUS", name)
            if c.cluster and c.cluster.leader == on:
                return True
            subject = f"$JS.API.CONSUMER.LEADER.STEPDOWN.HUMUS.{name}"
        else:
            subject = f"$JS.API.STREAM.LEADER.STEPDOWN.{name}"
        await nc.request(subject, b'{"placement": {"preferred": "%s"}}' % on.encode(), timeout=5)
        return False

    async def history(key: str) -> int | None:
        """How many revisions of `key` KV_SOIL holds."""
        subject = f"$KV.SOIL.{key}"
        try:
            info = await js.stream_info(SOIL_STREAM, subjects_filter=subject)
        except Exception:  # noqa: BLE001 - no leader yet: ask again
            return None
        return (info.state.subjects or {}).get(subject, 0)

    def entry(entity: str) -> bytes:
        return Compost(entity, CompostAction.CREATE, {"n": 1}, "n", "2026-01-01T00:00:00Z").to_json()

    try:
        await forest.start()
        await js.publish("humus.n.create", entry("warm"))  # the decomposer's consumer exists
        await eventually(lambda: holds(history("warm"), 1), what="the first Soil write")
        # Soil led by the server about to freeze; Humus and its consumer elsewhere
        await eventually(lambda: lead("STREAM", SOIL_STREAM, frozen.name), what="KV_SOIL's leader")
        await eventually(lambda: lead("STREAM", "HUMUS", servers[0].name), what="HUMUS's leader")
        await eventually(lambda: lead("CONSUMER", "decomposer", servers[0].name),
                         what="the decomposer's leader")
        assert frozen.node.pid is not None
        freeze(frozen.node.pid)
        resumed = False
        await js.publish("humus.n.create", entry("fast"))  # its write goes to the frozen leader
        slow = asyncio.ensure_future(Soil(js).bury("slow", {"n": 1}, expected_revision=0,
                                                   humus_seq=10**9))
        await eventually(lambda: holds(history("fast"), 1), timeout=40,
                         what="the decomposer's Soil write stored by KV_SOIL's new leader")
        revision = await asyncio.wait_for(slow, 40)
        os.kill(frozen.node.pid, signal.SIGCONT)
        resumed = True

        async def caught_up() -> bool:
            info = await js.stream_info(SOIL_STREAM)
            return bool(info.cluster and info.cluster.replicas) and all(
                r.current for r in info.cluster.replicas or [])

        await eventually(caught_up, timeout=30, what="every KV_SOIL replica current again")
        # the first sends and their resends: each stored once
        assert await history("fast") == 1
        assert await history("slow") == 1
        got = await js.get_msg(SOIL_STREAM, subject="$KV.SOIL.slow", direct=True)
        assert got.seq == revision
    finally:
        if not resumed and frozen.node.pid is not None:
            os.kill(frozen.node.pid, signal.SIGCONT)
        await forest.stop()
        await nc.close()
