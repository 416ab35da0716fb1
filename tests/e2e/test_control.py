"""Changing a running forest across a real cluster: a registry and two node processes.

A change made through node 1 runs on node 2; components are added, replaced, removed and
reloaded while events flow through the demo pipeline, and still every event is handled
exactly once per hop (nothing lost, nothing done twice)."""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.js.errors
import pytest
import yaml
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from nimsforest.forest import demo_config_path
from tests.e2e.conftest import Forest
from tests.e2e.test_cluster import wait_cluster
from tests.support import NodeProcess, eventually

pytestmark = pytest.mark.e2e
ECHO = "function process(i) return i end\n"


def running(node: NodeProcess, kind: str = "treehouses") -> set[str]:
    r = httpx.get(f"{node.api_url}/api/v1/{kind}", timeout=5)
    return {c["name"] for c in r.json() if c["state"] == "running"}


def demo_copy(root: Path) -> Path:
    shutil.copytree(demo_config_path().parent, root)
    return root / "forest.yaml"


async def two_nodes(forest: Forest, tmp_path: Path) -> tuple[NodeProcess, NodeProcess, Path]:
    config = demo_copy(tmp_path / "forest")
    n1 = forest.node("n1", "127.0.0.1", extra=["--forest-config", str(config)])
    await n1.wait_healthy(90)
    n2 = forest.node("n2", "127.0.0.2")  # no forest.yaml: it runs what the cluster runs
    await n2.wait_healthy(90)
    await eventually(lambda: running(n2, "nims") == {"qualify"}, timeout=60,
                     what="n2 runs the cluster's forest")
    # the join has settled: every stream at R2 with both replicas current (a write sent
    # while a stream changes its replicas may go unanswered: the API says 503, retry)
    await wait_cluster(n1, 2, 2)
    return n1, n2, config


async def leaves(node: NodeProcess, subject: str) -> list[dict[str, Any]]:
    """Every leaf stored in WIND on wind.<subject>."""
    nc = await nats.connect(node.client_url())
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            f"wind.{subject}", stream="WIND",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE))
        out: list[dict[str, Any]] = []
        unavailable = 0
        while True:
            try:
                msgs = await sub.fetch(500, timeout=2)
            except (TimeoutError, nats.errors.TimeoutError):
                return out
            except nats.js.errors.ServiceUnavailableError:
                # the reader's new consumer has no leader yet (503): ask again, a few times
                unavailable += 1
                if unavailable > 10:
                    raise
                await asyncio.sleep(0.5)
                continue
            out += [json.loads(m.data) for m in msgs]
    finally:
        await nc.close()


async def soil_keys(node: NodeProcess) -> set[str]:
    nc = await nats.connect(node.client_url())
    try:
        kv = await nc.jetstream().key_value("SOIL")
        try:
            return set(await kv.keys())
        except nats.js.errors.NoKeysError:
            return set()
    finally:
        await nc.close()


async def test_a_change_made_on_node_1_runs_on_node_2(forest: Forest, tmp_path: Path) -> None:
    n1, n2, _ = await two_nodes(forest, tmp_path)
    r = httpx.post(f"{n1.api_url}/api/v1/treehouses", timeout=30, json={
        "name": "echo", "subscribes": "lead.qualified", "publishes": "lead.echoed",
        "script": ECHO})
    assert r.status_code == 201, r.text
    await eventually(lambda: "echo" in running(n2), timeout=30, what="n2 runs echo")
    detail = httpx.get(f"{n2.api_url}/api/v1/treehouses/echo", timeout=5).json()
    assert detail["node"] == "n1" and detail["origin"] == "api" and detail["spec"]["code"] == ECHO
    r = httpx.delete(f"{n2.api_url}/api/v1/treehouses/echo", timeout=30)
    assert r.status_code == 200, r.text
    await eventually(lambda: "echo" not in running(n1), timeout=30, what="n1 stops echo")


async def test_changes_while_events_flow_lose_nothing_and_do_nothing_twice(
    forest: Forest, tmp_path: Path
) -> None:
    n1, n2, config = await two_nodes(forest, tmp_path)
    total = 200
    ids = [f"e2e-{i}" for i in range(total)]

    async def send() -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            for i, cid in enumerate(ids):
                node = (n1, n2)[i % 2]
                body = {"event": "contact.created",
                        "contact": {"id": cid, "title": "CTO", "email": f"{cid}@x.io",
                                    "company": {"name": "X", "size": 10 + i, "industry": "tech"}}}

                async def stored(
                    node: NodeProcess = node, body: dict = body, cid: str = cid
                ) -> bool:
                    r = await http.post(f"{node.api_url}/api/v1/river/contacts", json=body,
                                        headers={"Idempotency-Key": cid})
                    return r.status_code == 202

                await eventually(stored, timeout=30, what=f"{cid} stored")
                await asyncio.sleep(0.02)

    async def change() -> None:
        async with httpx.AsyncClient(timeout=30) as http:
            steps: list[tuple[str, str, Any]] = [
                ("POST", f"{n1.api_url}/api/v1/treehouses",
                 {"name": "copier", "subscribes": "lead.qualified", "publishes": "lead.copied",
                  "script": ECHO}),
                ("PUT", f"{n2.api_url}/api/v1/treehouses/scoring", None),  # body below
                ("RELOAD", f"{n1.api_url}/-/reload", None),
                ("DELETE", f"{n2.api_url}/api/v1/treehouses/copier", None),
                ("POST", f"{n2.api_url}/api/v1/trees",
                 {"name": "contacts-too", "watches": "river.contacts",
                  "publishes": "contact.seen", "script": ECHO}),
            ]
            scoring = (config.parent / "treehouses" / "scoring.lua").read_text()
            for method, url, body in steps:
                await asyncio.sleep(0.6)
                if method == "PUT":
                    body = {"name": "scoring", "subscribes": "contact.created",
                            "publishes": "lead.scored", "script": scoring + "\n-- v2\n"}
                if method == "RELOAD":
                    doc = yaml.safe_load(config.read_text())
                    doc["nims"]["qualify"]["ack_wait"] = "45s"  # the nim restarts alone
                    config.write_text(yaml.safe_dump(doc))
                    r = await http.post(url)
                else:
                    r = await http.request(method, url, json=body)
                # 202: stored, not yet applied by the answering node (a slow machine)
                assert r.status_code in (200, 201, 202), (method, url, r.text)

    await asyncio.gather(send(), change())
    await eventually(lambda: _has_all(n1, ids), timeout=120,
                     what="every lead in Soil")

    for subject, field in (("contact.created", "id"), ("lead.scored", "contact_id"),
                           ("lead.qualified", "contact_id")):
        counts = collections.Counter(leaf["data"][field] for leaf in await leaves(n1, subject))
        assert set(counts) == set(ids), (subject, set(ids) - set(counts))
        twice = {k: v for k, v in counts.items() if v != 1}
        assert not twice, (subject, twice)
    copied = collections.Counter(
        leaf["data"]["contact_id"] for leaf in await leaves(n1, "lead.copied"))
    assert all(v == 1 for v in copied.values()), copied
    # both nodes end in the same desired state
    for node in (n1, n2):
        await eventually(lambda node=node: running(node) == {"scoring"}
                         and running(node, "trees") == {"contacts", "contacts-too"},
                         timeout=30, what=f"{node.name} runs the final desired state")
    status = httpx.get(f"{n2.api_url}/api/v1/status", timeout=5).json()
    assert status["control"]["state"] == "in step" and not status["control"]["problems"]


async def _has_all(node: NodeProcess, ids: list[str]) -> bool:
    return set(ids) <= await soil_keys(node)
