"""Sidecar mode, connection resilience, /metrics and sd_notify, with real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PlainNats
from tests.support import NodeProcess, eventually, free_port


@pytest.fixture
def sidecar(tmp_path: Path, plain_nats: PlainNats) -> Iterator[NodeProcess]:
    node = NodeProcess("run", tmp_path / "data", extra=["--nats-url", plain_nats.url],
                       env={"NATS_RECONNECT_WAIT": "0.2s"})
    node.start()
    try:
        yield node
    finally:
        node.stop()


def metrics(node: NodeProcess) -> dict[str, float]:
    text = httpx.get(node.api_url + "/metrics", timeout=3).text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                out[sample.name] = sample.value
    return out


async def test_sidecar_mode_uses_an_existing_nats(sidecar: NodeProcess, plain_nats: PlainNats) -> None:
    body = await sidecar.wait_healthy()
    assert body["mode"] == "sidecar"
    assert body["nats"]["url"] == plain_nats.url and body["nats"]["connected"] is True
    assert body["nats"]["state"] is None  # no nats-server of our own
    assert body["cluster"]["replication_factor"] == 1  # a non-clustered JetStream accepts R1 only
    assert set(body["jetstream"]["streams"]) >= {"RIVER", "HUMUS"} and "SOIL" in body["jetstream"]["kv_buckets"]
    assert not (sidecar.data_dir / "nats.conf").exists()
    assert "sidecar mode" in sidecar.log()


async def test_nats_restarted_under_a_running_node_reconnects_and_keeps_data(
    sidecar: NodeProcess, plain_nats: PlainNats
) -> None:
    await sidecar.wait_healthy()
    nc = await nats.connect(plain_nats.url)
    js = nc.jetstream()
    for i in range(10):
        await js.publish("river.before", str(i).encode())
    await nc.close()

    plain_nats.stop()
    await eventually(lambda: sidecar.health()[0] == 503, what="/health 503 while NATS is down")
    assert "NATS connection lost" in sidecar.log(), sidecar.log()
    plain_nats.start()  # same ports, same store
    await eventually(lambda: sidecar.health()[0] == 200, timeout=60, what="/health 200 after NATS is back")
    assert "NATS connection re-established" in sidecar.log(), sidecar.log()
    assert metrics(sidecar)["nats_reconnect_total"] >= 1, sidecar.log()

    nc = await nats.connect(plain_nats.url)
    try:
        info = await nc.jetstream().stream_info("RIVER")
        assert info.state.messages == 10
    finally:
        await nc.close()


def test_connection_retries_then_a_clear_failure(tmp_path: Path) -> None:
    dead = f"nats://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "-m", "nimsforest", "run", "--nats-url", dead, "--data-dir", str(tmp_path),
         "--api", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "NATS_RETRY_ATTEMPTS": "3", "NATS_RETRY_INTERVAL": "0.1s"},
    )
    assert result.returncode == 1
    assert result.stderr.count("Cannot connect to NATS at") == 3  # two retries logged, then the failure
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("nimsforest: Cannot connect to NATS at") and "after 3 attempt(s)" in last


async def test_metrics_parse_with_a_prometheus_parser(tmp_path: Path) -> None:
    node = NodeProcess("standalone", tmp_path / "data").start()
    try:
        await node.wait_healthy()
        values = await eventually(lambda: (m := metrics(node)) and m.get("nimsforest_cluster_size") and m,
                                  what="cluster gauges set")
        assert values["nats_connection_status"] == 1
        assert values["nats_reconnect_total"] == 0
        assert values["nats_cluster_peers"] == 0  # the witness is not a peer
        assert values["nimsforest_replication_factor"] == 1
        assert values["nimsforest_cluster_size"] == 1
    finally:
        node.stop()


async def test_sd_notify_ready_and_stopping(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    node = NodeProcess("standalone", tmp_path / "data", env={"NOTIFY_SOCKET": str(path)}).start()
    received: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                received.append(sock.recv(4096).decode())
            except BlockingIOError:
                return received

    try:
        await eventually(lambda: any("READY=1" in m for m in drain()), timeout=60, what="READY=1")
        code, _ = node.health()
        assert code == 200  # READY is sent only once the node serves
        node.signal(signal.SIGTERM)
        assert node.wait(30) == 0
        await eventually(lambda: any("STOPPING=1" in m for m in drain()), what="STOPPING=1")
    finally:
        node.stop()
        sock.close()
