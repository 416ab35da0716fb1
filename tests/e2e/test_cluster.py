"""A forest that grows, loses nodes and heals: real registry, real nodes, real NATS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys

import nats
import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy

from tests.e2e.conftest import Forest
from tests.support import NodeProcess, eventually

pytestmark = pytest.mark.e2e
CORE = ("AUDIT", "DEAD", "HUMUS", "KV_FOREST", "KV_SOIL", "KV_SOURCES", "KV_STATUS", "RIVER", "WIND")  # every stream a node owns


def cluster_at(node: NodeProcess, size: int, rf: int) -> dict | None:
    code, body = node.health("/health/cluster")
    streams = {s["name"]: s for s in body["streams"]}
    ok = (
        code == 200  # healthy: no peer offline, no witness left in a multi-node group
        and body["size"] == size
        and body["replication_factor"] == rf
        and all(n in streams and streams[n]["replicas"] == rf and streams[n]["current"] for n in CORE)
    )
    return body if ok else None


async def wait_cluster(node: NodeProcess, size: int, rf: int, timeout: float = 90) -> dict:
    return await eventually(lambda: cluster_at(node, size, rf), timeout=timeout,
                            what=f"{node.name} sees size {size} at R{rf}")


async def publish(node: NodeProcess, count: int, subject: str = "river.e2e") -> None:
    """Publish 0..count-1, each retried until JetStream acknowledges it (a stream may be
    electing a leader right after a node died)."""
    nc = await nats.connect(node.client_url())
    try:
        js = nc.jetstream()
        for i in range(count):
            async def acked(i: int = i) -> bool:
                await js.publish(subject, str(i).encode(), timeout=2)
                return True

            await eventually(acked, timeout=30, what=f"message {i} acknowledged")
    finally:
        await nc.close()


async def stored(node: NodeProcess, subject: str = "river.e2e") -> list[int]:
    """Every payload on `subject`, read back through `node` (retried while a stream or
    its consumer is changing leader)."""

    async def read() -> tuple[list[int]]:
        nc = await nats.connect(node.client_url())
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(subject, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
            out: list[int] = []
            while True:
                try:
                    msgs = await sub.fetch(500, timeout=2)
                except (TimeoutError, nats.errors.TimeoutError):
                    return (out,)
                out += [int(m.data) for m in msgs]
        finally:
            await nc.close()

    return (await eventually(read, timeout=30, what=f"read back {subject} through {node.name}"))[0]


async def test_one_node_serves_alone(forest: Forest) -> None:
    n1 = forest.node("n1", "127.0.0.1")
    body = await n1.wait_healthy()
    assert body["mode"] == "cluster" and body["registry"]["connected"] is True
    cluster = await wait_cluster(n1, 1, 1)
    assert cluster["witness"] and cluster["peers"] == []
    await publish(n1, 5)
    assert await stored(n1) == [0, 1, 2, 3, 4]
    log = n1.log()
    for line in ("Starting as cluster node n1", "Registered in registry at",
                 "No existing peers found - starting as cluster of 1", "nimsforest is ready"):
        assert line in log, line


async def test_grows_to_r2_then_r3_keeping_data(forest: Forest) -> None:
    n1 = forest.node("n1", "127.0.0.1")
    await n1.wait_healthy()
    await publish(n1, 100)

    n2 = forest.node("n2", "127.0.0.2")
    await n2.wait_healthy()
    await wait_cluster(n1, 2, 2)
    # retired by the reconcile loop once n2 is a routed meta member (a cycle may come
    # after the streams reach R2)
    await eventually(lambda: n1.cluster()["witness"] is None, timeout=60, what="witness retired")
    assert "Peer n2 joined cluster (size now 2)" in n1.log() or "Peer n2 joined cluster" in n1.log()

    n3 = forest.node("n3", "127.0.0.3")
    await n3.wait_healthy()
    await asyncio.gather(*(wait_cluster(node, 3, 3) for node in (n1, n2, n3)))
    assert "Replication factor adjusted to 3" in n1.log()
    # read back through each node at once (each read ends with a 2 s wait for more)
    for got in await asyncio.gather(*(stored(node) for node in (n1, n2, n3))):
        assert got == list(range(100))
    check_cluster_status_cli(n1)


def check_cluster_status_cli(node: NodeProcess) -> None:
    import json

    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "nimsforest", "cluster", "status", "--api", f"{node.host}:{node.api_port}", *a],
        capture_output=True, text=True, timeout=60,
    )
    table = run()
    assert table.returncode == 0, table.stderr
    for word in ("MEMBERS", "STREAMS", "n1", "n2", "n3", "RIVER", "KV_SOIL", "current"):
        assert word in table.stdout, word
    doc = json.loads(run("--json").stdout)
    assert doc["cluster"]["size"] == 3
    assert {n["name"] for n in doc["nodes"]} == {"n1", "n2", "n3"}
    assert all(n.get("jetstream_ok") for n in doc["nodes"]), doc["nodes"]
    assert {s["name"]: s["replicas"] for s in doc["cluster"]["streams"]} == dict.fromkeys(CORE, 3)


async def test_three_nodes_started_at_once_form_one_cluster(forest: Forest) -> None:
    nodes = [forest.node(f"n{i}", f"127.0.0.{i}") for i in (1, 2, 3)]
    for n in nodes:
        await n.wait_healthy(120)
    await asyncio.gather(*(wait_cluster(n, 3, 3, timeout=120) for n in nodes))

    def settled(n: NodeProcess) -> dict | None:
        # every owned stream (the forest control adds two) at R3 and the witness retired
        body = cluster_at(n, 3, 3)
        if body is None or body["witness"] is not None:
            return None
        return body if all(s["replicas"] == 3 and s["current"] for s in body["streams"]) else None

    bodies = [await eventually(lambda n=n: settled(n), timeout=120, what=f"{n.name} settled")
              for n in nodes]
    leaders = {b["meta_leader"] for b in bodies}
    assert len(leaders) == 1 and leaders <= {"n1", "n2", "n3"}
    for n, b in zip(nodes, bodies, strict=True):  # one meta group: everyone sees the other two
        assert sorted(p["name"] for p in b["peers"]) == sorted(m.name for m in nodes if m is not n)
        assert b["witness"] is None
    founders = [n.name for n in nodes if "starting as cluster of 1" in n.log() or "founding the cluster" in n.log()]
    assert len(founders) == 1, founders
    await publish(nodes[2], 10)
    assert await stored(nodes[0]) == list(range(10))


async def test_kill9_while_writes_flow_loses_nothing_acknowledged(forest: Forest) -> None:
    nodes = [forest.node(f"n{i}", f"127.0.0.{i}") for i in (1, 2, 3)]
    for n in nodes:
        await n.wait_healthy(120)
    body = await wait_cluster(nodes[0], 3, 3, timeout=120)
    river = next(s for s in body["streams"] if s["name"] == "RIVER")
    victim = next(n for n in nodes if n.name == river["leader"])
    writer_node = next(n for n in nodes if n is not victim)

    acked: list[int] = []
    failures = 0
    stop = asyncio.Event()

    async def writer() -> None:
        nonlocal failures
        nc = await nats.connect(writer_node.client_url())
        js = nc.jetstream()
        i = 0
        try:
            while not stop.is_set():
                try:
                    await js.publish("river.e2e", str(i).encode(), timeout=1)
                    acked.append(i)
                except Exception:  # noqa: BLE001 - counted; the stream is electing a leader
                    failures += 1
                    await asyncio.sleep(0.05)
                i += 1
        finally:
            await nc.close()

    task = asyncio.create_task(writer())
    await eventually(lambda: len(acked) >= 50, what="writes flowing")
    victim.kill()
    at_kill = len(acked)
    await eventually(lambda: len(acked) >= at_kill + 100, timeout=60, what="writes resumed on the survivors")
    stop.set()
    await task
    got = set(await stored(writer_node))
    missing = [i for i in acked if i not in got]
    assert not missing, f"{len(missing)} acknowledged messages lost"


async def test_node_that_leaves_a_forest_of_four_is_removed_after_grace(forest: Forest) -> None:
    # four: removing one leaves three, the default quorum floor (a forest of three keeps
    # its three voters: tests/e2e/test_autopilot.py)
    nodes = [forest.node(f"n{i}", f"127.0.0.{i}") for i in (1, 2, 3, 4)]
    for n in nodes:
        await n.wait_healthy(120)
    await wait_cluster(nodes[0], 4, 3, timeout=120)
    n4 = nodes[3]
    assert n4.stop() == 0  # SIGTERM: deregisters, stops in order
    body = await wait_cluster(nodes[0], 3, 3, timeout=90)
    assert [p["name"] for p in body["peers"]] == ["n2", "n3"]
    assert "Peer n4 left cluster (size now 3)" in "".join(n.log() for n in nodes[:3])
    await publish(nodes[1], 3)
    assert await stored(nodes[0]) == [0, 1, 2]


async def test_registry_killed_cluster_keeps_serving(forest: Forest) -> None:
    n1 = forest.node("n1", "127.0.0.1")
    await n1.wait_healthy()
    n2 = forest.node("n2", "127.0.0.2")
    await n2.wait_healthy()
    await wait_cluster(n1, 2, 2)
    forest.registry.kill()

    def registry_down() -> bool:
        code, body = n1.health("/health/registry")
        return code == 503 and body["connected"] is False

    await eventually(registry_down, what="/health/registry 503")
    code, _ = n1.health()
    assert code == 200
    await publish(n2, 20)
    assert await stored(n1) == list(range(20))
    body = await wait_cluster(n1, 2, 2)
    assert body["registry_ok"] is False


async def test_node_restarted_with_same_name_and_data_rejoins(forest: Forest) -> None:
    nodes = [forest.node(f"n{i}", f"127.0.0.{i}") for i in (1, 2, 3)]
    for n in nodes:
        await n.wait_healthy(120)
    await wait_cluster(nodes[0], 3, 3, timeout=120)
    n2 = nodes[1]
    n2.kill()
    await publish(nodes[0], 10)
    forest.node("n2", "127.0.0.2")  # same name, same data dir, same ports
    await n2.wait_healthy(120)
    await wait_cluster(nodes[0], 3, 3, timeout=120)
    assert await stored(n2) == list(range(10))
    assert "Rejoining with" in n2.log()


async def test_a_second_node_with_a_taken_name_refuses_to_start(forest: Forest) -> None:
    n1 = forest.node("n1", "127.0.0.1")
    await n1.wait_healthy()
    twin = NodeProcess(
        "run", forest.root / "twin" / "data", host="127.0.0.2", name="n1",
        extra=["--registry-url", forest.registry.url, "--bind", "127.0.0.2"],
    )
    with contextlib.ExitStack():
        result = subprocess.run(twin.args, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 1
    assert "already registered" in result.stderr


async def test_a_forest_of_two_keeps_a_lost_node_and_heals_when_it_returns(forest: Forest) -> None:
    """The default quorum floor (3) keeps a forest of two from shrinking to one by itself:
    the lost node stays a member past the grace period, nothing is removed or rescued (with
    NIMSFOREST_MIN_QUORUM=1 the survivor would rescue the quorum and go on alone: the
    rescue itself is tested in tests/cluster/test_rescue.py), and the forest is whole again
    when the node returns with its data."""
    n1 = forest.node("n1", "127.0.0.1")
    await n1.wait_healthy()
    n2 = forest.node("n2", "127.0.0.2")
    await n2.wait_healthy()
    await wait_cluster(n1, 2, 2)
    await publish(n1, 10)
    n2.kill()

    def kept() -> bool:
        peers = n1.cluster()["peers"]
        return [(p["name"], p["state"]) for p in peers] == [("n2", "kept")]

    await eventually(kept, timeout=120, what="n1 keeps n2 past the grace period")
    log = n1.log()
    assert "quorum rescued" not in log and "peer n2 removed" not in log
    assert "below the quorum floor of 3" in n1.cluster()["last_sentence"]
    forest.node("n2", "127.0.0.2")
    await n2.wait_healthy(120)
    await wait_cluster(n1, 2, 2, timeout=120)
    assert await stored(n2) == list(range(10))


async def test_registry_down_at_start_node_rejoins_from_its_peer_cache(forest: Forest) -> None:
    nodes = [forest.node(f"n{i}", f"127.0.0.{i}") for i in (1, 2, 3)]
    for n in nodes:
        await n.wait_healthy(120)
    await wait_cluster(nodes[0], 3, 3, timeout=120)
    n1, n3 = nodes[0], nodes[2]
    assert (n3.data_dir / "peers.json").exists()
    n3.kill()
    forest.registry.kill()
    await publish(n1, 10)  # two of three keep serving, registry or not

    forest.node("n3", "127.0.0.3")  # restarts while the registry is down
    await n3.wait_healthy(120)
    assert "Registry unreachable" in n3.log() and "cached peer(s)" in n3.log()
    code, body = n3.health("/health/registry")
    assert code == 503 and body["connected"] is False
    await eventually(lambda: n3.cluster()["size"] == 3, timeout=60, what="n3 back in the cluster")
    assert await stored(n3) == list(range(10))
