"""A network partition of one node, made with network namespaces (needs root and `ip`).

Three nodes each live in their own namespace on a bridge; the registry listens on the
bridge. Cutting one node's link isolates it from the other two and from the registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from natsembed import REMOVED_PREFIX
from tests.e2e.conftest import NODE_ENV, SECRET, kill_all
from tests.e2e.steady import SteadyWriter, lost_or_twice
from tests.e2e.test_cluster import publish, stored, wait_cluster
from tests.support import NodeProcess, RegistryProcess, eventually

pytestmark = pytest.mark.e2e


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class NetLab:
    """A bridge with one namespace per host; hosts can be cut off and healed."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 1000}{random.randint(0, 99)}"
        self.bridge = f"nfb{tag}"
        self.net = f"10.{random.randint(64, 127)}.{random.randint(0, 255)}"
        self.hosts: dict[int, tuple[str, str]] = {}  # i -> (namespace, root-side veth)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    @property
    def gateway(self) -> str:
        return f"{self.net}.254"

    def address(self, i: int) -> str:
        return f"{self.net}.{i}"

    def add_host(self, i: int) -> str:
        ns, veth = f"{self.bridge}n{i}", f"{self.bridge}v{i}"
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        _ip("link", "set", f"{veth}p", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", f"{veth}p")
        _ip("-n", ns, "link", "set", f"{veth}p", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        self.hosts[i] = (ns, veth)
        return ns

    def cut(self, i: int) -> None:
        _ip("link", "set", self.hosts[i][1], "down")

    def heal(self, i: int) -> None:
        _ip("link", "set", self.hosts[i][1], "up")

    def close(self) -> None:
        for ns, veth in self.hosts.values():
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


@pytest.fixture
def lab() -> Iterator[NetLab]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    try:
        net = NetLab()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a bridge here: {exc.stderr.decode().strip()}")
    try:
        yield net
    finally:
        net.close()


PROBE = textwrap.dedent("""
    import asyncio, sys, nats
    async def main():
        try:
            nc = await nats.connect(sys.argv[1], connect_timeout=2, max_reconnect_attempts=0)
            await nc.jetstream().publish("river.e2e", b"-1", timeout=3)
            print("accepted")
        except Exception as exc:
            print("refused", type(exc).__name__)
    asyncio.run(main())
""")


def publish_inside(ns: str, url: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, url],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


TOKEN = "partition-test-token"


def lab_node(lab: NetLab, i: int, root: Path, registry: RegistryProcess, grace: str,
             env: dict[str, str] | None = None) -> NodeProcess:
    """Node n<i> in its own namespace (default ports: the network stack is its own)."""
    ns = lab.add_host(i)
    return NodeProcess(
        "run", root / f"n{i}" / "data", host=lab.address(i), name=f"n{i}",
        wrapper=["ip", "netns", "exec", ns], ports=(4222, 6222, 8222, 8080),
        extra=["--registry-url", registry.url, "--cluster-secret", SECRET,
               "--peer-grace-period", grace, "--bind", lab.address(i)],
        # the API listens off localhost here, which needs a token
        env={**NODE_ENV, "NIMSFOREST_API_TOKEN": TOKEN, **(env or {})},
    )


@contextlib.asynccontextmanager
async def lab_forest(lab: NetLab, root: Path, grace: str,
                     env: dict[str, str] | None = None) -> AsyncIterator[list[NodeProcess]]:
    """A registry on the bridge and three nodes, each in its own namespace, healthy and
    whole at R3; every node and the registry stopped at the end (nodes at once)."""
    registry = RegistryProcess(root / "registry" / "data", host=lab.gateway).start()
    nodes: list[NodeProcess] = []
    try:
        await registry.wait_ready()
        nodes = [lab_node(lab, i, root, registry, grace, env).start() for i in (1, 2, 3)]
        for n in nodes:
            await n.wait_healthy(120)
        await wait_cluster(nodes[0], 3, 3, timeout=120)
        yield nodes
    finally:
        kill_all(nodes)
        registry.stop()


async def test_partitioned_node_stops_writes_majority_serves_healed_node_catches_up(
    lab: NetLab, tmp_path: Path
) -> None:
    async with lab_forest(lab, tmp_path, "5m") as nodes:
        n1, n2, n3 = nodes
        await publish(n1, 50)

        lab.cut(3)
        # The majority keeps serving: writes through n1 are acknowledged (after at most a
        # stream leader election, if n3 led).
        nc_url = n1.client_url()
        await publish(n1, 100)  # messages 0..99 again: 50 new ids are acknowledged as well
        # The minority stops accepting writes.
        ns3 = lab.hosts[3][0]
        await eventually(lambda: publish_inside(ns3, n3.client_url()).startswith("refused"),
                         timeout=60, what="n3 refuses writes while cut off")
        assert publish_inside(lab.hosts[1][0], nc_url) == "accepted"

        lab.heal(3)
        body = await wait_cluster(n1, 3, 3, timeout=120)
        assert {p["name"] for p in body["peers"]} == {"n2", "n3"}
        await eventually(lambda: n3.health()[0] == 200, timeout=60, what="n3 healthy again")
        got = await stored(n3)
        assert sorted(x for x in got if x >= 0) == sorted(list(range(50)) + list(range(100)))


async def river_keys(node: NodeProcess, subject: str) -> list[str]:
    """The "key" of every River input on river.<subject>, read through `node`."""

    async def read() -> tuple[list[str]]:
        nc = await nats.connect(node.client_url())
        try:
            sub = await nc.jetstream().pull_subscribe(
                f"river.{subject}", config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL,
                                                          ack_policy=AckPolicy.NONE))
            out: list[str] = []
            while True:
                try:
                    msgs = await sub.fetch(500, timeout=2)
                except (TimeoutError, nats.errors.TimeoutError):
                    return (out,)
                out += [json.loads(m.data)["key"] for m in msgs]
        finally:
            await nc.close()

    return (await eventually(read, timeout=30, what=f"read back river.{subject} through {node.name}"))[0]


async def test_a_node_partitioned_past_the_grace_period_is_removed_and_heals_itself_on_return(
    lab: NetLab, tmp_path: Path
) -> None:
    """Cut off past the grace period, n3 is removed (a quorum floor of 2 lets the two others
    do it); back on the network it notices, sets its store aside (kept) and starts afresh,
    once, under its next server name (n3-gen-1: nats-server refuses the removed name for
    5 minutes, a new one it adds at once), while the two others keep serving at R2 and lose
    nothing acknowledged; then the forest is back at three nodes and R3, n3 named n3."""
    async with lab_forest(lab, tmp_path, "4s", {"NIMSFOREST_MIN_QUORUM": "2"}) as nodes:
        n1, n2, n3 = nodes
        writer = SteadyWriter(nodes, "heal", lambda i: {"key": f"heal-{i}"}, prefix="heal", token=TOKEN)
        async with writer:
            await writer.more(30)
            lab.cut(3)
            # the majority removes n3 and goes on at R2, writes still acknowledged
            await wait_cluster(n1, 2, 2, timeout=120)
            assert "peer n3 removed" in n1.log() + n2.log()
            await writer.more(30)

            lab.heal(3)
            # n3 learns it was removed, sets its store aside and starts afresh as a new peer
            await eventually(lambda: "set aside and it rejoins as a new peer" in n3.log(),
                             timeout=120, what="n3 starts afresh")
            healed_at = time.monotonic()
            await writer.more(30)
            # admitted at once under its new server name, and given its replicas back (after
            # the stabilisation time): three nodes at R3, each named by its node
            body = await wait_cluster(n1, 3, 3, timeout=90)
            print(f"n3 started afresh to R3 back: {time.monotonic() - healed_at:.1f}s")
            assert {p["name"] for p in body["peers"]} == {"n2", "n3"}
            assert {p["server"] for p in body["peers"]} == {"n2", "n3-gen-1"}
            assert n3.cluster()["server"] == "n3-gen-1"
            await writer.more(30)
        # started afresh once, the old store kept beside the new one, not deleted
        assert n3.log().count("set aside and it rejoins as a new peer") == 1
        aside = [p for p in n3.data_dir.iterdir() if p.name.startswith(REMOVED_PREFIX)]
        assert len(aside) == 1 and any(p.is_file() for p in aside[0].rglob("*")), aside
        lost, twice = lost_or_twice((writer.key(i) for i in writer.acked), await river_keys(n1, "heal"))
        assert not lost and not twice, (lost[:10], twice)
