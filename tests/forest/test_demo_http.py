"""The demo forest end to end through the HTTP router and the `flow` CLI, against real
NATS and a real HTTP server (uvicorn)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from nimsforest.forest import (
    Carry,
    ComponentKind,
    Forest,
    Tracing,
    demo_config_path,
    load_demo_config,
    load_forest_config,
)
from nimsforest.forest.http import make_router
from nimsforest.forest.soil import humus_seq_of
from nimsforest.forest.webhooks import sign_sha256
from tests.forest.conftest import Wind, write_forest
from tests.support import eventually, free_port

PAYLOAD = json.loads((demo_config_path().parent / "payloads" / "contact_created.json").read_text())


class Api:
    def __init__(self, forest: Forest, port: int) -> None:
        self.forest, self.port = forest, port
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
async def demo_api(nc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                   request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    """The demo forest behind its HTTP router; parametrized indirectly: what the trace
    context is carried on (Carry; tracing off by default)."""
    monkeypatch.setenv("NF_TEST_GH_SECRET", "gh-secret")
    demo = load_demo_config()
    # the demo forest plus a signed GitHub-style source, to exercise verification over HTTP
    path = write_forest(
        tmp_path / "signed",
        {
            "sources": {
                "gh": {
                    "type": "http_webhook",
                    "path": "/webhooks/github",
                    "publishes": "river.github",
                    "secret": "${NF_TEST_GH_SECRET}",
                    "signature": "github",
                }
            }
        },
    )
    cfg = demo.with_spec(ComponentKind.SOURCE, "gh", load_forest_config(path).sources["gh"])
    forest = Forest(nc, cfg, stop_grace=1.0,
                    tracing=Tracing(getattr(request, "param", Carry.RIVER)))
    await forest.start()
    app = FastAPI()
    app.include_router(make_router(forest))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="uvicorn")
    try:
        yield Api(forest, port)
    finally:
        server.should_exit = True
        await task
        await forest.stop()


async def soil_value(forest: Forest, entity: str) -> Any:
    entry = await forest.soil.dig(entity)
    return entry.value


async def test_demo_webhook_to_soil(demo_api: Api, wind: Wind) -> None:
    async with httpx.AsyncClient(base_url=demo_api.url) as http:
        resp = await http.post("/webhooks/contacts", json=PAYLOAD, headers={"X-Request-Id": "r-1"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "ok" and resp.json()["subject"] == "river.contacts"
    await eventually(lambda: wind.on("lead.qualified"), what="lead.qualified")
    (created,) = wind.on("contact.created")
    assert created["data"]["id"] == "c-1001" and created["source"] == "tree:contacts"
    (scored,) = wind.on("lead.scored")
    assert scored["data"]["score"] == 85
    (qualified,) = wind.on("lead.qualified")
    assert qualified["data"]["pursue"] is True and qualified["data"]["priority"] == "medium"
    value = await eventually(lambda: soil_value(demo_api.forest, "c-1001"), what="Soil c-1001")
    assert value == qualified["data"]


async def run_cli(*args: str, api: str) -> tuple[int, str]:
    env = {**os.environ, "NIMSFOREST_API": api}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nimsforest",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode().strip()


@pytest.mark.parametrize(
    ("title", "size", "industry", "pursue", "priority"),
    [
        ("CTO", 800, "Technology", True, "high"),  # 50 + 40 + 15 = 105
        ("VP Engineering", 200, "finance", True, "medium"),  # 30 + 40 + 15 = 85
        ("Engineer", 10, "retail", False, "none"),
    ],  # 0
)
async def test_flow_cli_qualifies_leads(
    demo_api: Api, title: str, size: int, industry: str, pursue: bool, priority: str
) -> None:
    cid = f"cli-{size}"
    payload = {
        "event": "contact.created",
        "contact": {"id": cid, "title": title, "company": {"size": size, "industry": industry}},
    }
    code, out = await run_cli(
        "flow", "contacts", json.dumps(payload), api=f"127.0.0.1:{demo_api.port}"
    )
    assert code == 0 and out.startswith("Stored in the River on river.contacts as RIVER #"), out
    value = await eventually(lambda: soil_value(demo_api.forest, cid), what=f"Soil {cid}")
    assert (value["pursue"], value["priority"]) == (pursue, priority)


async def test_flow_cli_errors() -> None:
    code, out = await run_cli("flow", "contacts", '{"a": ', api=f"127.0.0.1:{free_port()}")
    assert (
        code == 2 and out.startswith("Error: JSON is not valid JSON") and len(out.splitlines()) == 1
    )
    port = free_port()
    code, out = await run_cli("flow", "contacts", "{}", api=f"127.0.0.1:{port}")
    assert (code, out) == (1, f"Error: No NimsForest daemon is running at http://127.0.0.1:{port}.")


async def test_router_errors_are_json_sentences(demo_api: Api) -> None:
    async with httpx.AsyncClient(base_url=demo_api.url) as http:
        cases = [
            (await http.post("/api/v1/river/contacts", content=b"{nope"), 400, "not valid JSON"),
            (await http.post("/api/v1/river/contacts", content=b""), 400, "empty"),
            (
                await http.post("/api/v1/river/bad subject", content=b"{}"),
                400,
                "Invalid River subject",
            ),
            (await http.post("/webhooks/nothing-here", content=b"{}"), 404, "No webhook source"),
            (await http.post("/webhooks/contacts", content=b"[1,"), 400, "not valid JSON"),
            (await http.post("/webhooks/github", content=b"{}"), 401, "X-Hub-Signature-256"),
            (
                await http.post(
                    "/webhooks/github",
                    content=b"{}",
                    headers={"X-Hub-Signature-256": sign_sha256("wrong", b"{}")},
                ),
                401,
                "does not match",
            ),
        ]
        for resp, status, text in cases:
            assert resp.status_code == status, resp.text
            assert set(resp.json()) == {"error"} and text in resp.json()["error"]
        ok = await http.post(
            "/api/v1/river/contacts", content=b'{"x": 1}', headers={"Idempotency-Key": "k1"}
        )
        again = await http.post(
            "/api/v1/river/contacts", content=b'{"x": 1}', headers={"Idempotency-Key": "k1"}
        )
        assert ok.status_code == 202 and again.json()["duplicate"] is True
        body = json.dumps({"zen": "Keep it logically awesome."}).encode()
        signed = await http.post(
            "/webhooks/github",
            content=body,
            headers={
                "X-Hub-Signature-256": sign_sha256("gh-secret", body),
                "X-GitHub-Delivery": "d-1",
            },
        )
        assert signed.status_code == 200, signed.text
    source = demo_api.forest.get("source", "gh")
    assert (source.events_in, source.events_out, source.errors) == (3, 1, 2)


async def _stored(nc: Any, stream: str) -> list[Any]:
    js = nc.jetstream()
    last = (await js.stream_info(stream)).state.last_seq
    return [await js.get_msg(stream, seq) for seq in range(1, last + 1)]


@pytest.mark.parametrize("demo_api", [Carry.EVERY_HOP], indirect=True)
async def test_one_trace_through_every_hop_of_the_demo(demo_api: Api, wind: Wind, nc: Any) -> None:
    """Under an exporter or OTEL_PROPAGATORS=tracecontext: every hop's outputs carry it."""
    from nimsforest.forest.trace import (
        HOP_HEADER,
        INPUT_HEADER,
        TRACEPARENT,
        StoredHop,
        TraceContext,
    )

    sender = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with httpx.AsyncClient(base_url=demo_api.url) as http:
        resp = await http.post("/webhooks/contacts", json=PAYLOAD, headers={TRACEPARENT: sender})
    assert resp.status_code == 200 and resp.json()["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    await eventually(lambda: soil_value(demo_api.forest, "c-1001"), what="Soil c-1001")
    hops: dict[str, list[Any]] = {s: await _stored(nc, s) for s in ("RIVER", "WIND", "HUMUS")}
    spans: dict[str, set[str]] = {}  # span -> the inputs of the hop it is
    for stream, msgs in hops.items():
        assert msgs, stream
        for m in msgs:
            ctx = TraceContext.of(m.headers)
            assert ctx is not None and ctx.trace_id == "0af7651916cd43dd8448eb211c80319c", (stream, m.headers)
            hop = StoredHop.of(m.headers)
            spans.setdefault(ctx.span_id, set()).add(hop.input or "sender")
            assert INPUT_HEADER not in m.headers  # the input is named in Nimsforest-Hop
            if stream != "RIVER":  # a component's output names its component, node and input
                assert hop.by is not None and hop.by.split("@")[0] in (
                    "tree:contacts", "treehouse:scoring", "nim:qualify"), m.headers
                assert hop.input is not None, m.headers
                src, seq = hop.input.split(":")
                assert src in ("RIVER", "WIND") and int(seq) >= 1
    # each hop is its own span: the River input's, the tree's, the treehouse's and the nim's
    # (whose leaf and Humus entry are two outputs of one hop)
    assert len(spans) == 4 and all(len(inputs) == 1 for inputs in spans.values())
    assert hops["RIVER"][0].headers[HOP_HEADER] == "source:contacts"  # a Forest without a node name
    await _soil_names_its_humus_entry(nc)


async def test_tracing_off_puts_the_trace_on_the_river_input_and_the_hops_lead_from_it(
        demo_api: Api, wind: Wind, nc: Any) -> None:
    """Tracing off (the default): the River input carries the sender's trace context, the
    components' outputs name only their hop and input, and the trace read back from the
    stored headers still has every hop, in the sender's trace."""
    from nimsforest.api.lineage import Lineages
    from nimsforest.forest.trace import HOP_HEADER, TRACEPARENT, StoredHop, TraceContext

    trace_id = "0af7651916cd43dd8448eb211c80319c"
    async with httpx.AsyncClient(base_url=demo_api.url) as http:
        resp = await http.post("/webhooks/contacts", json=PAYLOAD,
                               headers={TRACEPARENT: f"00-{trace_id}-b7ad6b7169203331-01"})
        other = await http.post("/webhooks/contacts", json={
            **PAYLOAD, "contact": {**PAYLOAD["contact"], "id": "c-other"}})
    assert resp.status_code == 200 and resp.json()["trace_id"] == trace_id
    assert other.status_code == 200 and other.json()["trace_id"] not in (None, trace_id)
    for key in ("c-1001", "c-other"):
        await eventually(lambda k=key: soil_value(demo_api.forest, k), what=f"Soil {key}")
    (river, second) = await _stored(nc, "RIVER")
    river_ctx = TraceContext.of(river.headers)
    assert river_ctx is not None and river_ctx.trace_id == trace_id
    assert TraceContext.of(second.headers) is not None  # every River input gets one
    outputs = [*await _stored(nc, "WIND"), *await _stored(nc, "HUMUS")]
    assert len(outputs) == 8  # per event 3 leaves and a Humus entry
    for m in outputs:
        assert TRACEPARENT not in m.headers and set(m.headers) >= {HOP_HEADER}, m.headers
        assert StoredHop.of(m.headers).input is not None, m.headers

    found = await Lineages(nc).trace(trace_id, datetime.now(UTC) - timedelta(minutes=5))
    assert found.steps[0].stream == "RIVER" and sorted((s.stream, s.by) for s in found.steps) == [
        ("HUMUS", "nim:qualify"), ("RIVER", "source:contacts"), ("WIND", "nim:qualify"),
        ("WIND", "tree:contacts"), ("WIND", "treehouse:scoring")]
    assert {s.trace_id for s in found.steps} == {trace_id}
    assert [s.span_id for s in found.steps if s.stream != "RIVER"] == [None] * 4
    assert all(s.seq != second.seq for s in found.steps if s.stream == "RIVER")
    await _soil_names_its_humus_entry(nc)


async def _soil_names_its_humus_entry(nc: Any) -> None:
    from nimsforest.forest.trace import HOP_HEADER, TRACEPARENT

    # the Soil write names the Humus entry it applied (lineage's way back), no hop headers
    soil = await nc.jetstream().get_msg("KV_SOIL", subject="$KV.SOIL.c-1001")
    assert TRACEPARENT not in (soil.headers or {}) and HOP_HEADER not in (soil.headers or {})
    assert soil.headers["Nats-Msg-Id"].startswith("soil:")
    assert (humus_seq_of(soil.headers) or 0) >= 1
