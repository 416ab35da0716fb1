"""A network partition of one node, made with network namespaces (needs root and `ip`).

Three nodes each live in their own namespace on a bridge; the registry listens on the
bridge. Cutting one node's link isolates it from the other two and from the registry.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import SECRET
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


async def test_partitioned_node_stops_writes_majority_serves_healed_node_catches_up(
    lab: NetLab, tmp_path: Path
) -> None:
    registry = RegistryProcess(tmp_path / "registry" / "data", host=lab.gateway).start()
    nodes: list[NodeProcess] = []
    try:
        await registry.wait_ready()
        for i in (1, 2, 3):
            ns = lab.add_host(i)
            n = NodeProcess(
                "run", tmp_path / f"n{i}" / "data", host=lab.address(i), name=f"n{i}",
                wrapper=["ip", "netns", "exec", ns], ports=(4222, 6222, 8222, 8080),
                extra=["--registry-url", registry.url, "--cluster-secret", SECRET,
                       "--peer-grace-period", "5m", "--bind", lab.address(i)],
                # the API listens off localhost here, which needs a token
                env={"REGISTRY_HEARTBEAT_INTERVAL": "1s", "CLUSTER_RECONCILE_INTERVAL": "1s",
                     "NIMSFOREST_API_TOKEN": "partition-test-token"},
            )
            nodes.append(n.start())
            await n.wait_healthy(120)
        n1, n2, n3 = nodes
        await wait_cluster(n1, 3, 3, timeout=120)
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
    finally:
        for n in nodes:
            n.signal_stop()
        for n in nodes:
            n.stop(20)
        registry.stop()
