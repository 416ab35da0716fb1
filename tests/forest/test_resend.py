"""An output sent to a stream leader that then freezes (SIGSTOP: never answered) is sent
again under its message id, so it is stored by the newly elected leader, once, without
waiting for the publish timeout."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import nats
import pytest

from natsembed import NODE_TAG
from nimsforest.forest import Forest, load_forest_config
from nimsforest.forest import consumer as consumer_module
from tests.forest.conftest import write_forest
from tests.support import EmbeddedFactory, eventually, routed_servers

ECHO = "function process(input) return input end"


async def test_an_unanswered_output_is_resent_to_the_new_leader_and_stored_once(
        embedded: EmbeddedFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "PUBLISH_TIMEOUT", 3600.0)  # only a resend can help
    servers = await routed_servers(embedded, "rs", count=3)
    nc = await nats.connect(servers[0].client_url)
    js = nc.jetstream()
    forest = Forest(nc, load_forest_config(write_forest(tmp_path / "forest", {"trees": {"t": {
        "watches": "river.in.>", "publishes": "got.it", "code": ECHO}}})),
        replicas=3, placement_tags=(NODE_TAG,), stop_grace=1.0)
    frozen = None

    async def wind_leader() -> str | None:
        info = await js.stream_info("WIND")
        return info.cluster.leader if info.cluster else None

    async def stored_leaves() -> int | None:
        try:
            return (await js.stream_info("WIND", subjects_filter="wind.got.it")).state.messages
        except Exception:  # noqa: BLE001 - no leader yet: ask again
            return None

    try:
        await forest.start()
        await forest.flow("in.a", {"n": 1})
        await eventually(lambda: _is(stored_leaves(), 1), what="the first leaf")
        for _ in range(10):  # WIND led by a server other than the one this client uses
            leader = await eventually(wind_leader, what="WIND's leader")
            if leader != servers[0].name:
                break
            await nc.request("$JS.API.STREAM.LEADER.STEPDOWN.WIND", b"", timeout=5)
        assert leader != servers[0].name
        frozen = next(s for s in servers if s.name == leader)
        assert frozen.node.pid is not None
        os.kill(frozen.node.pid, signal.SIGSTOP)
        await forest.flow("in.b", {"n": 2})  # the tree's output goes to the frozen leader
        await eventually(lambda: _is(stored_leaves(), 2), timeout=40,
                         what="the second leaf stored by WIND's new leader")
        os.kill(frozen.node.pid, signal.SIGCONT)
        frozen = None

        async def caught_up() -> bool:
            info = await js.stream_info("WIND")
            return bool(info.cluster and info.cluster.replicas) and all(
                r.current for r in info.cluster.replicas or [])

        await eventually(caught_up, timeout=30, what="every WIND replica current again")
        assert await stored_leaves() == 2  # the first send and its resend: stored once
    finally:
        if frozen is not None and frozen.node.pid is not None:
            os.kill(frozen.node.pid, signal.SIGCONT)
        await forest.stop()
        await nc.close()


async def _is(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]
