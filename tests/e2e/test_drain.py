"""Drain and the rolling restart with real nodes under a steady writer: the node leading
RIVER hands everything over, then every node is restarted one at a time by
`nimsforest cluster restart --rolling`: two nodes by `--command CMD` (CMD stops the node; a
supervisor in the test starts it again, as systemd would), the meta leader through its own
API (it exits 75 and its supervisor starts it), while writes keep being stored; none fails
and none is lost or stored twice."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from nimsforest.api.drain import DRAINING_HEADER
from nimsforest.drain import RESTART_EXIT_STATUS
from tests.e2e.conftest import Forest
from tests.e2e.steady import SteadyWriter
from tests.e2e.test_cluster import wait_cluster
from tests.support import NodeProcess, eventually
from tests.test_drain import Supervisor

pytestmark = pytest.mark.e2e
SUBJECT = "drain"


async def stored_counts(node: NodeProcess) -> collections.Counter[int]:
    async def read() -> tuple[collections.Counter[int]]:
        nc = await nats.connect(node.client_url())
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(f"river.{SUBJECT}",
                                          config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL,
                                                                ack_policy=AckPolicy.NONE))
            out: collections.Counter[int] = collections.Counter()
            while True:
                try:
                    msgs = await sub.fetch(500, timeout=2)
                except (TimeoutError, nats.errors.TimeoutError):
                    return (out,)
                out.update(json.loads(m.data)["i"] for m in msgs)
        finally:
            await nc.close()

    return (await eventually(read, timeout=30, what="read back the River"))[0]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nimsforest", *args], capture_output=True,
                          text=True, timeout=120)


async def test_drain_of_the_river_leader_then_a_rolling_restart_under_writes_fail_none_lose_none(
    forest: Forest,
) -> None:
    nodes = [forest.node(f"n{i}", f"127.0.0.{i}", start=False) for i in (1, 2, 3)]
    pids = forest.root / "pids"
    pids.mkdir()
    async with contextlib.AsyncExitStack() as stack:
        # each node under a supervisor that starts it again whenever it exits (systemd's
        # Restart=always), so `--command` only has to stop it, as `systemctl restart` would
        by_supervisor = {n.name: await stack.enter_async_context(
            Supervisor(n, None, pids / f"{n.name}.pid")) for n in nodes}
        await _drain_then_roll(forest, nodes, pids, by_supervisor)


async def _drain_then_roll(forest: Forest, nodes: list[NodeProcess], pids: Path,
                           by_supervisor: dict[str, Supervisor]) -> None:
    for n in nodes:
        await n.wait_healthy(120)
    body = await wait_cluster(nodes[0], 3, 3, timeout=120)
    leader = next(s for s in body["streams"] if s["name"] == "RIVER")["leader"]
    victim = next(n for n in nodes if n.name == leader)
    others = [n for n in nodes if n is not victim]

    writer = SteadyWriter(nodes, SUBJECT, lambda i: {"i": i}).start()
    try:
        await eventually(lambda: len(writer.acked) >= 50, what="writes flowing")
        done = cli("drain", victim.name, "--registry-url", forest.registry.url, "--json")
        assert done.returncode == 0, done.stderr
        drained = json.loads(done.stdout)
        assert drained["state"] == "drained" and drained["leads"] == [], drained
        code, health = victim.health()
        assert code == 503 and health["status"] == "drained"
        # every stream and the meta group are led elsewhere (as soon as the survivors look again)
        def led_elsewhere() -> bool:
            view = others[0].cluster()
            return view["meta_leader"] not in (None, victim.name) and all(
                s["leader"] not in (None, victim.name) for s in view["streams"])

        await eventually(led_elsewhere, timeout=10, what=f"everything led away from {victim.name}")
        at_drain = len(writer.acked)
        await eventually(lambda: len(writer.acked) >= at_drain + 50, what="writes flowing while drained")
        # a client that still reaches the drained node is told to go elsewhere
        refused = httpx.post(f"{victim.api_url}/api/v1/river/{SUBJECT}", json={"i": -1}, timeout=10)
        assert refused.status_code == 503 and refused.headers[DRAINING_HEADER] == victim.name

        back = cli("undrain", victim.name, "--registry-url", forest.registry.url)
        assert back.returncode == 0, back.stderr
        await victim.wait_healthy(30)
        await wait_cluster(nodes[0], 3, 3, timeout=60)

        # a rolling restart of all three through the CLI: the two other nodes by --command,
        # which stops the node (SIGTERM, then waits until it is gone) for its supervisor to
        # start it again; then the meta leader through its own API (no --command): it
        # drains, exits 75, and its supervisor starts it again
        before = {n.name: n.proc.pid for n in nodes if n.proc}
        stop = (f"pid=$(cat {pids}/{{node}}.pid) && kill -TERM $pid && "
                "while kill -0 $pid 2>/dev/null; do sleep 0.1; done")
        meta_leader = nodes[0].cluster()["meta_leader"]
        first = sorted(n.name for n in nodes if n.name != meta_leader)
        roll = ("cluster", "restart", "--rolling", "--registry-url", forest.registry.url,
                "--timeout", "120")
        by_command = await asyncio.to_thread(
            cli, *roll, *(a for name in first for a in ("--node", name)), "--command", stop)
        said = by_command.stderr.splitlines()
        assert by_command.returncode == 0, by_command.stderr
        assert by_command.stdout.startswith("done: every node restarted"), by_command.stdout
        # (after "waiting for the cluster to be whole: ..." if a replica was a moment behind)
        assert f"restarting one at a time: {', '.join(first)}" in said, said
        assert sum(line.startswith("$ pid=") for line in said) == 2, said
        by_api = await asyncio.to_thread(cli, *roll, "--node", meta_leader)
        assert by_api.returncode == 0, by_api.stderr
        assert not any(line.startswith("$ ") for line in by_api.stderr.splitlines())
        assert by_supervisor[meta_leader].exits == [RESTART_EXIT_STATUS], by_supervisor[meta_leader].exits
        assert all(n.proc and n.proc.pid != before[n.name] for n in nodes)
        at_roll = len(writer.acked)
        await eventually(lambda: len(writer.acked) >= at_roll + 30, what="writes after the restart")
    finally:
        await writer.stop()
    assert writer.failures == [], writer.failures
    counts = await stored_counts(others[0])
    missing = [i for i in writer.acked if counts[i] == 0]
    twice = {i: c for i, c in counts.items() if c > 1}
    assert not missing and not twice, (missing[:10], twice)
