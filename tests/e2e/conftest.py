"""A real registry server and real node processes on 127.0.0.1, 127.0.0.2, 127.0.0.3."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import pytest

from tests.support import NodeProcess, RegistryProcess

SECRET = "e2e-forest-secret"
GRACE = "6s"
# Short intervals for every node of these tests: a 1 s registry heartbeat and reconcile
# cycle, and a 2 s stabilisation time (the default 10 s would delay every join's step up in
# replicas; what it is for is tested purely in tests/cluster/test_plan.py).
NODE_ENV = {"REGISTRY_HEARTBEAT_INTERVAL": "1s", "CLUSTER_RECONCILE_INTERVAL": "1s",
            "CLUSTER_STABILISATION_TIME": "2s"}


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[RegistryProcess]:
    reg = RegistryProcess(tmp_path / "registry" / "data").start()
    try:
        await reg.wait_ready()
        yield reg
    finally:
        reg.stop()


class Forest:
    """Starts cluster nodes against one registry; stops them all at the end."""

    def __init__(self, root: Path, registry: RegistryProcess) -> None:
        self.root = root
        self.registry = registry
        self.nodes: dict[str, NodeProcess] = {}

    def node(self, name: str, host: str, *, start: bool = True, extra: list[str] | None = None) -> NodeProcess:
        if name in self.nodes:
            n = self.nodes[name]
        else:
            n = NodeProcess(
                "run", self.root / name / "data", host=host, name=name,
                extra=[
                    "--registry-url", self.registry.url, "--cluster-secret", SECRET,
                    "--peer-grace-period", GRACE, "--bind", host, *(extra or []),
                ],
                env=dict(NODE_ENV),
            )
            self.nodes[name] = n
        if start:
            n.start()
        return n

    def stop_all(self) -> None:
        """Every node killed at once (a test's end, not what it tests: a graceful stop of
        all three, each draining towards the others, took 5-10 s a test; the tests that
        stop a node gracefully do it themselves and check it)."""
        kill_all(self.nodes.values())


def kill_all(nodes: Iterable[NodeProcess]) -> None:
    """SIGKILL every running node, then reap them (their nats-servers die with them)."""
    running = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
    for n in running:
        n.signal(signal.SIGKILL)
    for n in running:
        n.wait(20)


@pytest.fixture
def forest(tmp_path: Path, registry: RegistryProcess) -> Iterator[Forest]:
    f = Forest(tmp_path, registry)
    try:
        yield f
    finally:
        f.stop_all()
