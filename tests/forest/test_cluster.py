"""Several nodes on one NATS: work is shared without duplicates, and a node killed
mid-flow loses nothing (its un-acked events are redelivered to the survivor)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from nimsforest.forest import Forest, demo_config_path, load_forest_config
from tests.forest.conftest import write_forest
from tests.forest.fakellm import FakeLLM
from tests.support import eventually

DEMO = demo_config_path().parent
N_SHARED = 200
N_KILLED = 40


def contact(n: int) -> bytes:
    return json.dumps(
        {
            "event": "contact.created",
            "contact": {
                "id": f"c-{n}",
                "title": "VP Sales" if n % 2 else "Engineer",
                "company": {"size": 50 * n, "industry": "technology"},
            },
        }
    ).encode()


def pipeline(nim_brain: dict[str, Any], **delivery: Any) -> dict[str, Any]:
    return {
        "trees": {
            "contacts": {
                "watches": "river.contacts",
                "publishes": "contact.created",
                "script": str(DEMO / "trees" / "contacts.lua"),
                **delivery,
            }
        },
        "treehouses": {
            "scoring": {
                "subscribes": "contact.created",
                "publishes": "lead.scored",
                "script": str(DEMO / "treehouses" / "scoring.lua"),
                **delivery,
            }
        },
        "nims": {
            "qualify": {
                "subscribes": "lead.scored",
                "publishes": "lead.qualified",
                "prompt": str(DEMO / "nims" / "qualify.md.j2"),
                "brain": nim_brain,
                **delivery,
            }
        },
        "decomposer": {k: v for k, v in delivery.items() if k != "max_inflight"},
    }


class Node:
    """A forest in its own OS process (tests/forest/forest_proc.py)."""

    def __init__(self, url: str, config: Path, status: Path) -> None:
        self.url, self.config, self.status_file = url, config, status
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Node:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.forest.forest_proc",
            self.url,
            str(self.config),
            str(self.status_file),
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        await eventually(
            lambda: self.status() and all(c["state"] == "running" for c in self.status()),
            what="node running",
        )
        return self

    def status(self) -> list[dict[str, Any]]:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return []

    def handled(self, kind: str, name: str) -> int:
        return next(
            (c["events_in"] for c in self.status() if c["kind"] == kind and c["name"] == name), 0
        )

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.send_signal(sig)
            await self.proc.wait()


@pytest.fixture
async def nodes(plain_nats, tmp_path: Path) -> AsyncIterator[list[Node]]:  # type: ignore[no-untyped-def]
    made: list[Node] = []
    yield made
    await asyncio.gather(*(n.stop() for n in made))


async def soil_count(nc: nats.NATS, prefix: str = "c-") -> int:
    info = await nc.jetstream().stream_info("KV_SOIL", subjects_filter=f"$KV.SOIL.{prefix}>")
    return len(info.state.subjects or {})


async def test_two_nodes_share_work_without_duplicates(
    plain_nats, nc, nodes, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cfg = write_forest(tmp_path / "f", pipeline("rules", max_inflight=4))
    for name in ("a", "b"):
        nodes.append(await Node(plain_nats.url, cfg, tmp_path / f"{name}.json").start())
    js = nc.jetstream()
    for n in range(N_SHARED):
        await js.publish("river.contacts", contact(n))
    await eventually(lambda: soil_count(nc), timeout=60, what="first Soil keys")
    await eventually(
        lambda: _equals(soil_count(nc), N_SHARED), timeout=60, what=f"{N_SHARED} Soil keys"
    )
    # Each event was handled exactly once per component across both nodes...
    for kind, name in (
        ("tree", "contacts"),
        ("treehouse", "scoring"),
        ("nim", "qualify"),
        ("decomposer", "decomposer"),
    ):
        await eventually(
            lambda k=kind, n=name: sum(node.handled(k, n) for node in nodes) == N_SHARED,
            what=f"{kind} {name} totals",
        )
        per_node = [node.handled(kind, name) for node in nodes]
        assert all(count > 0 for count in per_node), (
            f"{kind} {name} work was not shared: {per_node}"
        )
    # ...and every leaf is in the Wind exactly once.
    wind = await js.stream_info("WIND", subjects_filter="wind.>")
    assert wind.state.subjects == {
        "wind.contact.created": N_SHARED,
        "wind.lead.scored": N_SHARED,
        "wind.lead.qualified": N_SHARED,
    }


async def _equals(aw: Any, expected: int) -> bool:
    return (await aw) == expected


async def test_a_node_killed_mid_flow_loses_nothing(plain_nats, nc, nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    def answer(body: Any) -> str:
        prompt = body["messages"][-1]["content"]
        lead = re.search(r"Lead (\S+)", prompt).group(1)  # type: ignore[union-attr]
        return json.dumps({"contact_id": lead, "pursue": True, "by": "llm"})

    llm = await FakeLLM("openai", reply=answer, plan=[("hold",)] * 1000).start()
    try:
        brain = {"type": "openai", "base_url": f"{llm.url}/v1", "concurrency": 4, "timeout": "30s"}
        cfg_path = write_forest(tmp_path / "f", pipeline(brain, ack_wait="2s", max_deliver=20))
        doomed = await Node(plain_nats.url, cfg_path, tmp_path / "doomed.json").start()
        nodes.append(doomed)
        js = nc.jetstream()
        for n in range(N_KILLED):
            await js.publish("river.contacts", contact(n))
        # The doomed node is mid-way: its nim holds 4 leaves in brain calls, un-acked.
        await eventually(lambda: llm.active == 4, what="four brain calls in flight")
        assert await soil_count(nc) == 0
        await doomed.stop(signal.SIGKILL)

        survivor = Forest(nc, load_forest_config(cfg_path), stop_grace=1.0)
        await survivor.start()
        llm.release()
        try:
            await eventually(
                lambda: _equals(soil_count(nc), N_KILLED), timeout=60, what=f"{N_KILLED} Soil keys"
            )
            for n in range(N_KILLED):
                entry = await survivor.soil.dig(f"c-{n}")
                assert entry.value == {"contact_id": f"c-{n}", "pursue": True, "by": "llm"}
            # the leaves the killed node held were asked again: nothing was lost with it
            assert survivor.get("nim", "qualify").events_in >= N_KILLED
            assert len(llm.seen) >= N_KILLED + 4
        finally:
            await survivor.stop()
    finally:
        await llm.stop()
