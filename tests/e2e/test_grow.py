"""`nimsforest grow` on a live forest: a registry and two real nodes under synthetic load get a third."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from nimsforest.grow.provisioners.local import local_nodes
from tests.e2e.conftest import NODE_ENV, SECRET, Forest
from tests.e2e.test_cluster import wait_cluster
from tests.grow.support import Load, grow_cli, grow_json_until, schema_errors
from tests.support import free_port

pytestmark = pytest.mark.e2e
LOW = "2"  # percent of a machine: idle nodes show almost nothing, one publisher much more


@pytest.fixture
def grow_dir(tmp_path: Path, forest: Forest) -> Iterator[Path]:
    """Where grow keeps its state and its local nodes; every local node is stopped afterwards
    (before the forest's own nodes and the registry, which `forest` stops)."""
    path = tmp_path / "grow"
    try:
        yield path
    finally:
        for node in local_nodes(path):
            _stop_pid(node.pid)


def _stop_pid(pid: int) -> None:
    """Kill the local node's process group (a test's end: no graceful stop needed) and wait
    until it is gone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return  # dead, waiting for its parent (not this test) to reap it
        except psutil.NoSuchProcess:
            return
        time.sleep(0.2)


async def test_grow_adds_a_local_node_that_joins_then_respects_its_limits(
    forest: Forest, grow_dir: Path, load: Load
) -> None:
    n1 = forest.node("n1", "127.0.0.1")
    await n1.wait_healthy()
    n2 = forest.node("n2", "127.0.0.2")
    await n2.wait_healthy()
    await wait_cluster(n1, 2, 2)
    # The local node inherits grow's environment: the forest's secret and its short intervals.
    env = {"NATS_CLUSTER_SECRET": SECRET, **NODE_ENV}
    state = str(grow_dir / "grow.json")
    common = ("--registry-url", forest.registry.url, "--threshold", LOW, "--state", state)

    # Idle: nothing to do. Nodes, machines and memory shares come from the registry.
    _, doc = await grow_json_until("within_limits", *common, "--dry-run", env=env)
    assert [n["name"] for n in doc["nodes"]] == ["n1", "n2"]
    for n in doc["nodes"]:
        assert n["healthy"] and n["ram_bytes"] > 0 and n["cpus"] >= 1 and n["memory_percent"] is not None
    assert doc["forest"] == {"id": f"{forest.registry.url}#nimsforest", "source": "registry",
                             "registry_url": forest.registry.url, "service": "nimsforest"}

    # Under load, a node is recommended.
    load.start(n1.client_url(), n2.client_url())
    _, doc = await grow_json_until("grow", *common, "--dry-run", env=env)
    assert doc["decision"]["suggestion"] == 1 and doc["action"]["status"] == "dry_run"
    assert doc["action"]["node"] == "n3"
    assert any("CPU above 2% on" in w for w in doc["decision"]["warnings"])

    # --auto with the local provisioner: a third node starts, outlives grow, and joins.
    r, doc = await grow_json_until("grow", *common, "--auto", "--provisioner", "local", env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert schema_errors(doc) == []
    action = doc["action"]
    assert (action["status"], action["provisioner"], action["node"]) == ("provisioned", "local", "n3"), action
    assert "healthy and in the cluster" in action["detail"]
    [n3] = local_nodes(grow_dir)
    assert n3.name == "n3" and n3.host == "127.0.0.3"  # the next free loopback address
    body = await wait_cluster(n1, 3, 3, timeout=120)
    assert sorted(p["name"] for p in body["peers"]) == ["n2", "n3"]
    verify = subprocess.run([sys.executable, "-m", "nimsforest.cli.verify", "--api", f"{n3.host}:{n3.api_port}",
                             "--min-size", "3", "--timeout", "60s"], capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "in a cluster of 3" in verify.stdout, verify.stderr

    # Again within the cooldown: due, but not now, and it says why.
    r, doc = await grow_json_until("blocked", *common, "--auto", "--provisioner", "local", env=env)
    assert r.returncode == 0
    assert doc["decision"]["blocked_by"] == ["cooldown"] and doc["action"]["status"] == "blocked"
    assert "the cooldown is 15m" in doc["decision"]["sentence"]
    assert len(doc["nodes"]) == 3 and len(local_nodes(grow_dir)) == 1

    # max_nodes (remembered per forest): with a fresh state and --max-nodes 3, never a fourth node.
    other = ("--registry-url", forest.registry.url, "--threshold", LOW, "--state", str(grow_dir / "other.json"),
             "--auto", "--provisioner", "local")
    _, doc = await grow_json_until("blocked", *other, "--max-nodes", "3", env=env)
    assert doc["decision"]["blocked_by"] == ["max_nodes"]
    _, doc = await grow_json_until("blocked", *other, env=env)
    assert doc["limits"]["max_nodes"] == 3 and doc["decision"]["blocked_by"] == ["max_nodes"]
    assert len(local_nodes(grow_dir)) == 1
    load.stop()

    # An unreachable node among --nodes is a row; the others are still read.
    dead = f"127.0.0.1:{free_port()}"
    urls = ",".join([f"http://127.0.0.1:{n1.monitor_port}", f"http://127.0.0.2:{n2.monitor_port}", dead])
    r = grow_cli("--nodes", urls, "--json", "--dry-run", "--state", state)
    assert r.returncode == 0, r.stderr
    import json

    rows = {n["name"]: n for n in json.loads(r.stdout)["nodes"]}
    assert rows["n1"]["healthy"] and rows["n2"]["healthy"] and not rows[dead]["reachable"]
    assert httpx.get(f"{n3.api_url}/health", timeout=3).status_code == 200  # the grown node still serves
