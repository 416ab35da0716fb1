"""The faults of a node's life under a steady writer, in one cluster of three real nodes.

The demo forest runs River -> Tree -> TreeHouse -> Nim (rules) -> Humus -> Soil. While a
writer keeps sending contacts (each with its own Idempotency-Key), the cluster goes through
a kill -9 of the node leading RIVER, a SIGSTOP of a peer's nats-server for 8 s and a
graceful stop; afterwards every acknowledged contact is in Soil and was handled once at
every hop, no request was answered 503 during the graceful stop, and every node's /health
says what is true. How fast (River -> Soil through each fault) is `nimsforest bench
cluster`'s business, not this test's.
"""

from __future__ import annotations

import asyncio
import collections
import signal
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import Forest
from tests.e2e.steady import SteadyWriter, lost_or_twice
from tests.e2e.test_cluster import cluster_at, wait_cluster
from tests.e2e.test_control import demo_copy, leaves, soil_keys
from tests.support import NodeProcess, eventually, freeze

pytestmark = pytest.mark.e2e


def contact(i: int) -> dict:
    cid = f"f-{i}"
    return {"event": "contact.created",
            "contact": {"id": cid, "title": "CTO", "email": f"{cid}@x.io",
                        "company": {"name": "X", "size": 10 + i, "industry": "tech"}}}


def nats_server_of(node: NodeProcess) -> psutil.Process:
    """The node's own nats-server (a child of its supervisor running its nats.conf)."""
    assert node.proc is not None
    conf = str(node.data_dir / "nats.conf")
    found = [c for c in psutil.Process(node.proc.pid).children(recursive=True)
             if "nats-server" in c.name() and conf in " ".join(c.cmdline())]
    assert len(found) == 1, found
    return found[0]


def river_leader(node: NodeProcess) -> str | None:
    return next((s["leader"] for s in node.cluster()["streams"] if s["name"] == "RIVER"), None)


def all_healthy(nodes: list[NodeProcess]) -> bool:
    for n in nodes:
        code, body = n.health()
        if code != 200 or body["status"] != "healthy" or cluster_at(n, 3, 3) is None:
            return False
    return True


async def test_kill9_pause_and_graceful_stop_under_a_steady_writer_lose_nothing_and_health_tells_the_truth(
    forest: Forest, tmp_path: Path
) -> None:
    config = demo_copy(tmp_path / "forest")
    nodes = [forest.node("n1", "127.0.0.1", extra=["--forest-config", str(config)])]
    nodes += [forest.node(f"n{i}", f"127.0.0.{i}") for i in (2, 3)]
    for n in nodes:
        await n.wait_healthy(120)
    await wait_cluster(nodes[0], 3, 3, timeout=120)
    by_name = {n.name: n for n in nodes}

    writer = SteadyWriter(nodes, "contacts", contact, prefix="f")
    async with writer:
        await writer.more(30)

        # 1. kill -9 of the node leading RIVER; the others go on; it comes back
        victim = by_name[await eventually(lambda: river_leader(nodes[0]), what="a RIVER leader")]
        victim.kill()
        await writer.more(30)
        forest.node(victim.name, victim.host)
        await victim.wait_healthy(120)
        await eventually(lambda: all_healthy(nodes), timeout=120, what="whole again after the kill")

        # 2. a peer's nats-server frozen for 8 s (SIGSTOP, then SIGCONT)
        frozen = nodes[1]
        server = nats_server_of(frozen)
        freeze(server.pid)
        try:
            await asyncio.sleep(8)  # the fault itself lasts 8 s; nothing is asserted about time
        finally:
            server.send_signal(signal.SIGCONT)
        await writer.more(30)
        await eventually(lambda: all_healthy(nodes), timeout=120, what="whole again after the pause")

        # 3. a graceful stop: no request is answered 503 (a draining node's documented
        # refusal tells the client to go elsewhere and is not a failure)
        before = len(writer.failed_503)
        stopping = nodes[2]
        assert await asyncio.to_thread(stopping.stop, 60) == 0
        await writer.more(30)
        assert writer.failed_503[before:] == [], writer.failures
        forest.node(stopping.name, stopping.host)
        await stopping.wait_healthy(120)
        await writer.more(30)

    # every node tells the truth afterwards: healthy, serving, the cluster whole at R3
    await eventually(lambda: all_healthy(nodes), timeout=120, what="every node healthy and whole")
    for n in nodes:
        code, body = n.health()
        assert code == 200 and body["status"] == "healthy" and not body.get("reasons"), body

    # every acknowledged contact reached Soil, and each hop handled it once
    acked = [f"f-{i}" for i in writer.acked]
    await eventually(lambda: _in_soil(nodes[0], acked), timeout=120, what="every acknowledged contact in Soil")
    for subject, key in (("contact.created", "id"), ("lead.scored", "contact_id"),
                         ("lead.qualified", "contact_id")):
        seen = [leaf["data"][key] for leaf in await leaves(nodes[0], subject)]
        lost, twice = lost_or_twice(acked, seen)
        assert not lost and not twice, (subject, lost[:10], twice)
    counts = collections.Counter(writer.acked.values())
    assert len(counts) == 3, counts  # every node took writes


async def _in_soil(node: NodeProcess, keys: list[str]) -> bool:
    return set(keys) <= await soil_keys(node)
