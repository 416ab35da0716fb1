"""A real demo node under `OTEL_PROPAGATORS=none`: no hop carries a trace context (the
River input, the leaves, the Humus entry), the sender's `traceparent` is not taken, and
`why` still walks a Soil value back to its River input."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest

from nimsforest.forest import demo_config_path
from tests.support import NodeProcess, eventually

PAYLOAD = json.loads((demo_config_path().parent / "payloads" / "contact_created.json").read_text())
SENT = "00-5e1f9a3c2b7d4e8f9a0b1c2d3e4f5a6b-1a2b3c4d5e6f7a8b-01"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    root: Path = tmp_path_factory.mktemp("untraced")
    proc = NodeProcess("standalone", root / "data", extra=["--demo"],
                       env={"OTEL_PROPAGATORS": "none"}).start()
    try:
        asyncio.run(proc.wait_healthy())
        yield proc
    finally:
        proc.stop()


def why(node: NodeProcess, key: str) -> dict | None:
    env = {**os.environ, "NIMSFOREST_API": f"127.0.0.1:{node.api_port}"}
    out = subprocess.run([sys.executable, "-m", "nimsforest", "why", key, "--json"],
                         capture_output=True, text=True, timeout=60, env=env)
    return json.loads(out.stdout) if out.returncode == 0 else None


async def test_no_hop_carries_a_trace_context_and_why_still_walks_back(node: NodeProcess) -> None:
    health = httpx.get(node.api_url + "/health", timeout=5).json()
    assert health["forest"]["tracing"]["carries"] == "nothing", health["forest"]["tracing"]
    assert "no trace context" in health["forest"]["tracing"]["sentence"]

    resp = httpx.post(node.api_url + "/webhooks/contacts", json=PAYLOAD, timeout=5,
                      headers={"traceparent": SENT})
    assert resp.status_code == 200 and resp.json()["trace_id"] is None, resp.text
    found = await eventually(lambda: why(node, "c-1001"), timeout=30, what="c-1001 in Soil")
    assert found["complete"] and found["gap"] is None
    by = [s["by"].split("@")[0] for s in found["steps"]]
    assert by == ["nim:qualify", "treehouse:scoring", "tree:contacts", "source:contacts"]
    assert {s["trace_id"] for s in found["steps"]} == {None}

    nc = await nats.connect(node.client_url())
    try:
        js = nc.jetstream()
        for stream in ("RIVER", "WIND", "HUMUS"):
            last = (await js.stream_info(stream)).state.last_seq
            assert last >= 1, stream
            for seq in range(1, last + 1):
                headers = (await js.get_msg(stream, seq)).headers or {}
                assert "Nimsforest-Hop" in headers, (stream, headers)
                assert not {k.lower() for k in headers} & {"traceparent", "tracestate"}, headers
    finally:
        await nc.close()
