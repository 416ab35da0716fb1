"""The CLI readers (`soil`, `leaves tail`, `river tail`) against one real demo node with an
API token, as a user runs them: through the management API, printing JSON."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import pytest
import pytest_asyncio

from nimsforest.control import TOKEN_COOKIE
from nimsforest.forest import demo_config_path
from tests.support import NodeProcess, eventually

TOKEN = "readers-token"
PAYLOAD = json.loads((demo_config_path().parent / "payloads" / "contact_created.json").read_text())
CONTACT = {"event": "contact.created",
           "contact": {"id": "c-7", "email": "kim@corp.io", "title": "CTO",
                       "company": {"name": "Corp", "size": 900, "industry": "technology"}}}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    root: Path = tmp_path_factory.mktemp("readers")
    proc = NodeProcess("standalone", root / "data", extra=["--demo"],
                       env={"NIMSFOREST_API_TOKEN": TOKEN}).start()
    try:
        asyncio.run(proc.wait_healthy())
        resp = httpx.post(proc.api_url + "/webhooks/contacts", json=PAYLOAD, timeout=5)
        assert resp.status_code == 200, resp.text
        yield proc
    finally:
        proc.stop()


def env_for(node: NodeProcess, token: str | None = TOKEN) -> dict[str, str]:
    env = {**os.environ, "NIMSFOREST_API": f"127.0.0.1:{node.api_port}"}
    env.pop("NIMSFOREST_API_TOKEN", None)
    if token:
        env["NIMSFOREST_API_TOKEN"] = token
    return env


def cli(node: NodeProcess, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nimsforest", *args], capture_output=True,
                          text=True, timeout=60, env=env_for(node, token))


@pytest_asyncio.fixture
async def js(node: NodeProcess) -> AsyncIterator[nats.js.JetStreamContext]:
    nc = await nats.connect(node.client_url())
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def test_soil_get_ls_and_history_show_what_the_nim_decided(node: NodeProcess) -> None:
    def listed() -> list[dict] | None:
        out = cli(node, "soil", "ls", "--json")
        assert out.returncode == 0, out.stderr
        keys = json.loads(out.stdout)
        return keys if any(k["key"] == "c-1001" for k in keys) else None

    keys = await eventually(listed, timeout=30, what="c-1001 listed in Soil")
    assert keys[0]["revision"] >= 1 and keys[0]["updated"]

    out = cli(node, "soil", "get", "c-1001")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["pursue"] is True  # the value itself, as JSON

    out = cli(node, "soil", "get", "c-1001", "--json")
    entry = json.loads(out.stdout)
    assert entry["key"] == "c-1001" and entry["operation"] == "put"
    assert entry["humus_seq"] >= 1  # the Humus entry the Decomposer applied

    out = cli(node, "soil", "history", "c-1001", "--json")
    history = json.loads(out.stdout)
    assert [h["revision"] for h in history] == [entry["revision"]]
    assert history[0]["value"] == entry["value"]

    table = cli(node, "soil", "ls", "c-")
    assert table.returncode == 0 and "c-1001" in table.stdout and "REVISION" in table.stdout
    assert "Soil has no key starting with 'zz'." in cli(node, "soil", "ls", "zz").stdout

    missing = cli(node, "soil", "get", "no-such-key")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "nimsforest: Soil has no key 'no-such-key'."


class Stream:
    """A streaming reader run as a process; `ready()` once it says it is listening."""

    def __init__(self, node: NodeProcess, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "nimsforest", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env_for(node))

    async def ready(self) -> str:
        assert self.proc.stderr is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stderr.readline), 30)
        assert "Ctrl-C" in line, line
        return line

    async def output(self) -> list[dict]:
        out, err = await asyncio.to_thread(self.proc.communicate, timeout=30)
        assert self.proc.returncode == 0, err
        return [json.loads(line) for line in out.splitlines()]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


async def durable_consumers(js: nats.js.JetStreamContext) -> dict[str, set[str]]:
    out = {}
    for stream in ("RIVER", "WIND", "KV_SOIL"):
        out[stream] = {c.name for c in await js.consumers_info(stream)
                       if c.config.durable_name}
    return out


async def test_tails_and_watch_see_a_new_event_and_leave_no_durable_consumer(
    node: NodeProcess, js: nats.js.JetStreamContext
) -> None:
    before = await durable_consumers(js)
    streams = {
        "leaves": Stream(node, "leaves", "tail", "lead.*", "--json", "--count", "2"),
        "river": Stream(node, "river", "tail", "contacts", "--json", "--count", "1"),
        "watch": Stream(node, "soil", "watch", "c-", "--json", "--count", "1"),
    }
    try:
        for s in streams.values():
            await s.ready()
        # while they run, only ephemeral consumers (the watch's ordered one) were added
        assert await durable_consumers(js) == before
        out = cli(node, "flow", "contacts", json.dumps(CONTACT))
        assert out.returncode == 0, out.stderr
        leaves, river, watch = [await s.output() for s in streams.values()]
    finally:
        for s in streams.values():
            s.kill()

    assert [e["subject"] for e in leaves] == ["lead.scored", "lead.qualified"]
    assert leaves[1]["data"]["source"] == "nim:qualify"
    assert leaves[1]["data"]["data"]["contact_id"] == "c-7"
    assert river[0]["subject"] == "river.contacts" and river[0]["data"] == CONTACT
    assert watch[0]["key"] == "c-7" and watch[0]["value"]["pursue"] is True
    assert await durable_consumers(js) == before


def test_readers_need_the_token_and_refuse_a_bad_pattern(node: NodeProcess) -> None:
    out = cli(node, "soil", "ls", token=None)
    assert out.returncode == 1 and "NIMSFOREST_API_TOKEN" in out.stderr
    assert httpx.get(node.api_url + "/api/v1/soil/keys", timeout=5).status_code == 401
    # the dashboard's cookie opens the read-only routes (never the changes)
    cookies = {TOKEN_COOKIE: TOKEN}
    assert httpx.get(node.api_url + "/api/v1/soil/keys", cookies=cookies, timeout=5).status_code == 200
    assert httpx.post(node.api_url + "/-/reload", cookies=cookies, timeout=5).status_code == 401

    bad = cli(node, "leaves", "tail", "a.>.b")
    assert bad.returncode == 2
    assert bad.stderr.startswith("nimsforest: The pattern is not valid:") and "'>'" in bad.stderr


# every field of the nats CLI's context file (jsm.go natscontext settings, as `nats context
# save` writes them); the Windows certificate store's fields are omitted, as nats writes
# them only on Windows
NATS_CONTEXT_FIELDS = {
    "description", "url", "socks_proxy", "token", "user", "password", "creds", "nkey", "cert",
    "key", "ca", "nsc", "jetstream_domain", "jetstream_api_prefix", "jetstream_event_prefix",
    "inbox_prefix", "user_jwt", "color_scheme", "tls_first",
}


async def test_nats_context_holds_what_a_nats_client_needs(node: NodeProcess, tmp_path: Path) -> None:
    contexts = tmp_path / "nats" / "context"
    out = cli(node, "nats-context", "--data-dir", str(node.data_dir), "--client-port",
              str(node.client_port), "--context-dir", str(contexts), "--select")
    assert out.returncode == 0, out.stderr
    assert "nats --context nimsforest stream ls" in out.stdout and "nats.connect(" in out.stdout
    path = contexts / "nimsforest.json"
    assert (path.stat().st_mode & 0o777) == 0o600  # it holds a password
    assert (tmp_path / "nats" / "context.txt").read_text() == "nimsforest"
    context = json.loads(path.read_text())
    assert set(context) == NATS_CONTEXT_FIELDS
    assert context["tls_first"] is False
    assert all(isinstance(v, str) for k, v in context.items() if k != "tls_first")

    nc = await nats.connect(context["url"].split(","), user=context["user"],
                            password=context["password"])
    try:
        names = {s.config.name for s in await nc.jetstream().streams_info()}
        assert {"RIVER", "WIND", "HUMUS", "KV_SOIL"} <= names
    finally:
        await nc.close()

    missing = cli(node, "nats-context", "--data-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "credentials" in missing.stderr


async def test_why_walks_a_soil_value_back_to_its_river_input_and_trace_shows_every_hop(
    node: NodeProcess,
) -> None:
    sent = "00-5e1f9a3c2b7d4e8f9a0b1c2d3e4f5a6b-1a2b3c4d5e6f7a8b-01"
    contact = {**PAYLOAD, "contact": {**PAYLOAD["contact"], "id": "c-why"}}
    resp = httpx.post(node.api_url + "/webhooks/contacts", json=contact, timeout=5,
                      headers={"traceparent": sent})
    assert resp.status_code == 200 and resp.json()["trace_id"] == "5e1f9a3c2b7d4e8f9a0b1c2d3e4f5a6b"

    def walked() -> dict | None:
        out = cli(node, "why", "c-why", "--json")
        return json.loads(out.stdout) if out.returncode == 0 else None

    found = await eventually(walked, timeout=30, what="c-why in Soil")
    assert found["complete"] and found["gap"] is None
    streams = [s["stream"] for s in found["steps"]]
    assert streams[0] == "HUMUS" and streams[-1] == "RIVER" and streams.count("WIND") == 2, streams
    by = [s["by"].split("@")[0] for s in found["steps"]]
    assert by == ["nim:qualify", "treehouse:scoring", "tree:contacts", "source:contacts"]
    assert all(s["by"].endswith("@n1") for s in found["steps"])
    assert {s["trace_id"] for s in found["steps"]} == {"5e1f9a3c2b7d4e8f9a0b1c2d3e4f5a6b"}
    # tracing off: the River input carries the trace context, the others are of its trace
    assert [s["span_id"] is None for s in found["steps"]] == [True, True, True, False]
    assert found["steps"][-1]["data"]["body"]["contact"]["id"] == "c-why"  # the River input itself
    text = cli(node, "why", "c-why")
    assert text.returncode == 0 and "source:contacts@n1" in text.stdout and "trace: 5e1f9a3c" in text.stdout

    out = cli(node, "trace", "5e1f9a3c2b7d4e8f9a0b1c2d3e4f5a6b", "--json")
    assert out.returncode == 0, out.stderr
    hops = json.loads(out.stdout)["steps"]
    assert [h["stream"] for h in hops][0] == "RIVER" and len(hops) == 5  # river, 3 leaves, humus
    assert [h["time"] for h in hops] == sorted(h["time"] for h in hops)
    assert cli(node, "why", "no-such-key").returncode == 1
    assert cli(node, "trace", "not-hex").returncode == 2
