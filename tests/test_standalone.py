"""`nimsforest standalone` as a user runs it: a real process, real nats-server, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import psutil
import pytest

from tests.support import NodeProcess, eventually, nats_children


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    n = NodeProcess("standalone", tmp_path / "data")
    n.start()
    try:
        yield n
    finally:
        n.stop()


async def test_standalone_serves_health_and_r1_streams(node: NodeProcess) -> None:
    body = await node.wait_healthy()
    assert body["status"] == "healthy"
    assert body["node"] == "n1"
    assert body["mode"] == "standalone"
    assert body["cluster"] == {"name": "nimsforest", "size": 1, "peers": [], "replication_factor": 1}
    assert set(body["jetstream"]["streams"]) >= {"RIVER", "HUMUS"}
    assert "SOIL" in body["jetstream"]["kv_buckets"]

    nc = await nats.connect(node.client_url())
    try:
        js = nc.jetstream()
        for name in ("RIVER", "HUMUS", "KV_SOIL"):
            info = await js.stream_info(name)
            assert info.config.num_replicas == 1
            assert info.config.placement is not None and info.config.placement.tags == ["role:node"]
            assert info.cluster is not None and info.cluster.leader == "n1"
        ack = await js.publish("river.test", b"{}")
        assert ack.stream == "RIVER"
        kv = await js.key_value("SOIL")
        await kv.put("k", b"v")
        assert (await kv.get("k")).value == b"v"
    finally:
        await nc.close()
    log = node.log()
    for line in ("Starting NimsForest", "NATS server n1 ready", "JetStream initialized with replication factor 1",
                 "Management API at", "nimsforest is ready"):
        assert line in log


async def test_sigterm_stops_cleanly_and_leaves_no_nats_server(node: NodeProcess) -> None:
    await node.wait_healthy()
    assert node.proc is not None
    children = nats_children(node.proc.pid)
    assert len(children) == 2  # the node's server and its witness
    node.signal(signal.SIGTERM)
    assert node.wait(30) == 0
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert "Node n1 stopped" in node.log()


async def test_sigint_stops_cleanly(node: NodeProcess) -> None:
    await node.wait_healthy()
    node.signal(signal.SIGINT)
    assert node.wait(30) == 0


async def test_sighup_does_not_stop_the_node(node: NodeProcess) -> None:
    await node.wait_healthy()
    node.signal(signal.SIGHUP)
    await eventually(lambda: "SIGHUP" in node.log(), what="SIGHUP logged")
    code, _ = node.health()
    assert code == 200 and node.proc is not None and node.proc.poll() is None


async def test_sigkill_of_the_supervisor_leaves_no_orphans(node: NodeProcess) -> None:
    await node.wait_healthy()
    assert node.proc is not None
    children = nats_children(node.proc.pid)
    assert len(children) == 2
    node.proc.kill()
    node.wait(10)

    def all_gone() -> bool:
        return all(not c.is_running() or c.status() == psutil.STATUS_ZOMBIE for c in children)

    await eventually(all_gone, what="nats-server children gone")


async def test_a_restart_on_its_data_asks_the_pair_to_elect_and_keeps_the_data(node: NodeProcess) -> None:
    """Restarted on its data directory, after SIGTERM and after kill -9, the node is
    healthy again with what it stored; its meta pair was asked to elect (not left to
    raft's 4-9 s election timeout: natsembed._election)."""
    await node.wait_healthy()

    async def river_messages() -> int:
        nc = await nats.connect(node.client_url())
        try:
            js = nc.jetstream()
            assert (await js.get_last_msg("RIVER", "river.kept")).data == b"{}"
            return (await js.stream_info("RIVER")).state.messages
        finally:
            await nc.close()

    nc = await nats.connect(node.client_url())
    try:
        await nc.jetstream().publish("river.kept", b"{}")
    finally:
        await nc.close()
    stored = await river_messages()
    assert stored >= 1
    for stop in (node.stop, node.kill):
        stop()
        node.start()
        await node.wait_healthy()
        assert await river_messages() >= stored
    asked = node.log().count("recovered their JetStream meta log without a leader: asking both")
    assert asked == 2, node.log()


async def test_health_answers_503_quickly_when_nats_is_stuck(node: NodeProcess) -> None:
    await node.wait_healthy()
    assert node.proc is not None
    server = next(c for c in nats_children(node.proc.pid) if "witness" not in " ".join(c.cmdline()))
    server.suspend()  # SIGSTOP: the child hangs, its monitoring port stops answering
    try:
        async def unhealthy() -> bool:
            started = time.monotonic()
            r = httpx.get(node.api_url + "/health", timeout=5)
            assert time.monotonic() - started < 5  # answered, not hung
            return r.status_code == 503 and r.json()["status"] == "unhealthy"

        await eventually(unhealthy, timeout=30, what="/health 503 while nats-server is stopped")
    finally:
        server.resume()
    await node.wait_healthy()


async def test_killed_nats_server_is_restarted_and_health_recovers(node: NodeProcess) -> None:
    await node.wait_healthy()
    assert node.proc is not None
    server = next(c for c in nats_children(node.proc.pid) if "witness" not in " ".join(c.cmdline()))
    server.kill()

    def restarted_and_healthy() -> dict | None:
        code, body = node.health()
        return body if code == 200 and body["nats"]["restarts"] == 1 else None

    body = await eventually(restarted_and_healthy, timeout=60, what="restart observed and healthy")
    assert body["nats"]["pid"] != server.pid
    assert "restarting in" in node.log()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nimsforest", *args],
        capture_output=True, text=True, timeout=30, env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["standalone", "--client-port", "abc"], {}, "NATS_CLIENT_PORT"),
        (["standalone", "--monitor-port", "70000"], {}, "NATS_MONITOR_PORT"),
        (["standalone"], {"NATS_NODE_NAME": "bad name"}, "NATS_NODE_NAME"),
        (["standalone", "--config", "/nonexistent/node.yaml"], {}, "does not exist"),
        (["standalone", "--api", "nonsense"], {}, "NIMSFOREST_API"),
        (["standalone", "--no-such-flag"], {}, "No such option"),
    ],
)
def test_bad_settings_exit_2_with_one_sentence(args: list[str], env: dict[str, str], needle: str) -> None:
    result = _cli(*args, env=env)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    if "No such option" not in needle:
        assert result.stderr.strip().count("\n") == 0, result.stderr


def test_busy_management_address_is_one_sentence(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = _cli("standalone", "--data-dir", str(tmp_path), "--api", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "Cannot listen on 127.0.0.1" in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr


def test_every_command_has_help() -> None:
    for args in (["--help"], ["standalone", "--help"], ["run", "--help"], ["bench", "--help"]):
        result = _cli(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert "Usage:" in result.stdout
