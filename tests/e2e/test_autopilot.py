"""Autopilot with real nodes: the quorum floor, zones, a removed node that heals itself.

The forest fixture (tests/e2e/conftest.py) runs nodes with a 6 s peer grace period, so
"longer than the grace period" is a few seconds here.
"""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import Placement, StreamConfig

from tests.e2e.conftest import Forest
from tests.e2e.test_cluster import publish, stored, wait_cluster
from tests.support import NodeProcess, eventually, publish_stored

pytestmark = pytest.mark.e2e


def peer(node: NodeProcess, name: str) -> dict:
    return next(p for p in node.cluster()["peers"] if p["name"] == name)


def kept_by_the_floor(node: NodeProcess, name: str) -> bool:
    """`name` is still a member of `node`'s meta group, gone past the grace period."""
    return peer(node, name)["state"] == "kept"


async def test_quorum_floor_holds_when_two_of_three_are_stopped(forest: Forest) -> None:
    nodes = [forest.node(f"n{i}", f"127.0.0.{i}") for i in (1, 2, 3)]
    for n in nodes:
        await n.wait_healthy(120)
    await wait_cluster(nodes[0], 3, 3, timeout=120)
    n1, n2, n3 = nodes
    await publish(n1, 10)

    # One stopped for longer than the grace period: kept, the forest stays at three voters
    # and the two others keep serving.
    assert n3.stop() == 0
    await eventually(lambda: kept_by_the_floor(n1, "n3"), timeout=60, what="n1 keeps n3 (quorum floor)")
    await eventually(lambda: "below the quorum floor of 3" in n1.cluster()["last_sentence"]
                     or "below the quorum floor of 3" in n2.cluster()["last_sentence"],
                     timeout=30, what="the floor named in the cluster sentence")
    assert n1.cluster()["size"] == 3
    await publish(n2, 20)

    # A second one stopped: n1 alone has no quorum; nothing is removed or rescued, however
    # long it waits past the grace period.
    assert n2.stop() == 0
    await eventually(lambda: n1.cluster()["meta_leader"] is None, timeout=60, what="n1 without a meta leader")
    await eventually(lambda: "no meta leader" in n1.cluster()["last_sentence"], timeout=60,
                     what="n1 says it has no meta leader")
    # n1 keeps both as members, gone past the grace period and past the time after which
    # a leaderless node considers a rescue (10 s), by a few 1 s cycles
    await eventually(lambda: kept_by_the_floor(n1, "n2") and peer(n1, "n2")["gone_for"] > 14,
                     timeout=90, what="n1 keeps n2 too, well past the grace period")
    body = n1.cluster()
    assert body["size"] == 3 and body["witness"] is None
    assert {p["name"]: p["state"] for p in body["peers"]} == {"n2": "kept", "n3": "kept"}
    assert "below the quorum floor of 3" in body["last_sentence"]
    log = n1.log()
    assert "peer n2 removed" not in log and "peer n3 removed" not in log and "quorum rescued" not in log

    # Both come back with their data: one forest of three again, nothing lost.
    forest.node("n2", "127.0.0.2")
    forest.node("n3", "127.0.0.3")
    for n in nodes:
        await n.wait_healthy(120)
    body = await wait_cluster(n1, 3, 3, timeout=120)
    assert {p["name"] for p in body["peers"]} == {"n2", "n3"}
    # read back through each node at once (each read ends with a 2 s wait for more)
    for got in await asyncio.gather(*(stored(n) for n in nodes)):
        assert got == list(range(10)) + list(range(20))
    log = n1.log() + n2.log()
    assert "Peer n3 left cluster" not in log and "Peer n2 left cluster" not in log
    assert "peer n3 removed from the cluster" not in log and "peer n2 removed from the cluster" not in log


async def test_three_zones_spread_every_r3_stream(forest: Forest) -> None:
    # four nodes, two of them in zone-a: without unique_tag about half the R3 streams would
    # have two replicas there
    zones = {"n1": "zone-a", "n2": "zone-b", "n3": "zone-c", "n4": "zone-a"}
    nodes = []
    for i, (name, zone) in enumerate(zones.items(), 1):
        n = forest.node(name, f"127.0.0.{i}", start=False)
        n.env["NIMSFOREST_ZONE"] = zone
        nodes.append(n.start())
    for n in nodes:
        await n.wait_healthy(120)
    body = await wait_cluster(nodes[0], 4, 3, timeout=120)
    assert 'unique_tag: "zone:"' in (nodes[0].data_dir / "nats.conf").read_text()

    nc = await nats.connect(nodes[1].client_url())
    try:
        js = nc.jetstream()
        for stream in body["streams"]:
            info = await js.stream_info(stream["name"])
            assert info.cluster is not None
            peers = [info.cluster.leader, *(r.name for r in info.cluster.replicas or [])]
            assert sorted(zones[p] for p in peers) == ["zone-a", "zone-b", "zone-c"], (stream["name"], peers)
        assert len(body["streams"]) >= 6
    finally:
        await nc.close()


async def test_a_removed_node_holding_the_only_copy_of_a_stream_refuses_to_heal(forest: Forest) -> None:
    # four nodes: removing one leaves three, the default quorum floor
    nodes = [forest.node(f"n{i}", f"127.0.0.{i}") for i in (1, 2, 3, 4)]
    for n in nodes:
        await n.wait_healthy(120)
    await wait_cluster(nodes[0], 4, 3, timeout=120)
    n1, n4 = nodes[0], nodes[3]
    nc = await nats.connect(n4.client_url())
    try:
        js = nc.jetstream()
        only = StreamConfig(name="ONLY", subjects=["only.>"], num_replicas=1, placement=Placement(tags=["node:n4"]))
        await eventually(lambda: js.add_stream(only), timeout=30, what="an R1 stream on n4")
        await publish_stored(js, "only.x", b"precious", msg_id="precious")
    finally:
        await nc.close()
    assert n4.stop() == 0  # deregisters; removed after the grace period
    # (ONLY, whose one replica was on n4, has no leader from now on: /health/cluster is 503)
    await eventually(lambda: n1.cluster()["size"] == 3, timeout=90, what="n4 removed")

    forest.node("n4", "127.0.0.4")  # back, on its old store

    def refused() -> dict | None:
        body = n4.cluster()
        return body if "its copy of ONLY might be the only one" in body["last_sentence"] else None

    body = await eventually(refused, timeout=120, what="n4 refuses to set its store aside")
    assert "mv store removed-by-hand" in body["last_sentence"]
    assert any("removed from the cluster" in p for p in body["problems"])
    assert not [p for p in n4.data_dir.iterdir() if p.name.startswith("removed-")]
    assert any("WARNING" in line and "might be the only one" in line for line in n4.log().splitlines())
