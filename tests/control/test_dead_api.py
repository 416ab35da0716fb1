"""A real `nimsforest standalone` process whose output's receiver (a real local HTTP
server) keeps failing: the event lands in DEAD, shows in status, /health and /metrics,
`nimsforest dead replay` delivers it once the receiver is fixed, and the replay is audited."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import nats
import yaml

from tests.receiver import receiver
from tests.support import NodeProcess, eventually


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nimsforest", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "NIMSFOREST_API": f"127.0.0.1:{node.api_port}"},
    )


async def acli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, node, *args)  # the receiver runs in this loop


async def test_dead_letters_through_the_cli_and_the_api(tmp_path: Path) -> None:
    async with receiver(status=503) as rx:
        forest = tmp_path / "forest.yaml"
        forest.write_text(yaml.safe_dump({
            "trees": {"leads": {"watches": "river.leads", "publishes": "lead.qualified",
                                "code": "function process(i) return {id = i.id} end"}},
            "songbirds": {"hook": {"subscribes": "lead.qualified", "url": f"{rx.url}/hook",
                                   "max_deliver": 2, "backoff": "10ms"}},
        }))
        node = NodeProcess("standalone", tmp_path / "data", extra=["--forest-config", str(forest)])
        node.start()
        try:
            await node.wait_healthy()
            out = await acli(node, "flow", "leads", '{"id": "c9"}')
            assert out.returncode == 0, out.stderr

            async def listed() -> dict | None:  # type: ignore[type-arg]
                out = await acli(node, "dead", "list", "--json")
                doc = json.loads(out.stdout) if out.returncode == 0 else None
                return doc if doc and doc["letters"] else None

            doc = await eventually(listed, what="the dead letter")
            assert doc["counts"] == [{"kind": "output", "name": "hook", "count": 1}]
            [letter] = doc["letters"]
            assert letter["reason"] == "max deliveries" and letter["attempts"] == 2
            assert letter["node"] == "n1" and "HTTP 503" in letter["error"]
            assert json.loads(letter["data"])["data"] == {"id": "c9"}
            seq = letter["seq"]

            nc = await nats.connect(node.client_url())
            try:  # the same over NATS control
                reply = await nc.request("forest.control.dead.list",
                                         b'{"kind": "output", "name": "hook"}', timeout=10)
                listed = json.loads(reply.data)
                assert listed["status"] == 200 and [d["seq"] for d in listed["letters"]] == [seq]
                reply = await nc.request("forest.control.dead.show", b'{"seq": 999}', timeout=10)
                assert json.loads(reply.data) == {"error": "There is no dead letter #999.",
                                                  "status": 404}
            finally:
                await nc.close()
            table = (await acli(node, "dead", "list", "output", "hook")).stdout
            assert "max deliveries" in table and "output 'hook'" in table
            status = json.loads((await acli(node, "status", "--json")).stdout)
            [hook] = [c for c in status["components"] if c["name"] == "hook"]
            assert hook["dead"] == 1 and hook["kind"] == "output"
            code, health = node.health()
            assert code == 200 and health["forest"]["dead"] == {"output 'hook'": 1}
            metrics = httpx.get(node.api_url + "/metrics", timeout=5).text
            assert 'nimsforest_component_dead_total{kind="output",name="hook"} 1.0' in metrics

            rx.fix()
            out = await acli(node, "dead", "replay", str(seq))
            assert out.returncode == 0 and f"Dead letter #{seq} replayed to output 'hook'" in out.stdout
            [got] = await eventually(lambda: rx.delivered(), what="the replayed delivery")
            assert json.loads(got.body)["data"] == {"id": "c9"}
            assert {r.headers["idempotency-key"] for r in rx.seen[:2]} != {
                got.headers["idempotency-key"]}

            # replay from the input stream: that output only, as a new event
            out = await acli(node, "replay", "output", "hook", "--from-seq", "1")
            assert out.returncode == 0, out.stderr
            assert "Replayed 1 event(s) of WIND (#1 to #1) to output 'hook' only." in out.stdout
            await eventually(lambda: len(rx.delivered()) == 2, what="the second delivery")
            keys = {r.headers["idempotency-key"] for r in rx.delivered()}
            assert len(keys) == 2
            status = json.loads((await acli(node, "status", "--json")).stdout)
            [tree] = [c for c in status["components"] if c["name"] == "leads"]
            assert tree["events_in"] == 1
            out = await acli(node, "replay", "output", "hook")
            assert out.returncode == 2 and "--from-seq N or --since TIME" in out.stderr
            out = await acli(node, "dead", "replay", "output", "hook")  # all of its letters
            assert out.returncode == 1 and "output 'hook' has no dead letters." in out.stderr
            out = await acli(node, "dead", "replay", "output")
            assert out.returncode == 2 and "KIND NAME" in out.stderr
            out = await acli(node, "replay", "tree", "nope", "--from-seq", "1")
            assert out.returncode == 1 and "There is no tree 'nope'." in out.stderr

            out = await acli(node, "dead", "show", str(seq))
            assert out.returncode == 1 and f"There is no dead letter #{seq}." in out.stderr
            out = await acli(node, "dead", "purge")
            assert out.returncode == 2 and "Give SEQ, KIND NAME, or --all." in out.stderr
            out = await acli(node, "dead", "purge", "--all")
            assert out.returncode == 0 and "0 deleted" in out.stdout
            records = json.loads((await acli(node, "audit", "--json")).stdout)
            replays = [r for r in records if r["action"] == "replay"]
            assert [(r["ok"], r["name"]) for r in replays] == [
                (True, "hook"), (True, "hook"), (False, "hook"), (False, "nope")]
            # dead replay SEQ, replay, dead replay KIND NAME with none left, refused
            assert any(r["action"] == "purge" for r in records)
            # outputs and sources of every type from the CLI
            (tmp_path / "tick.yaml").write_text("interval: 1h\npayload: {kind: tick}\n")
            out = await acli(node, "add", "source", "tick", "--type", "schedule", "--publishes",
                             "river.tick", "--config", str(tmp_path / "tick.yaml"))
            assert out.returncode == 0 and "Added source 'tick'" in out.stdout, out.stderr
            out = await acli(node, "add", "songbird", "chat", "--type", "slack", "--subscribes",
                             "lead.>", "--url", f"{rx.url}/slack")
            assert out.returncode == 0 and "Added output 'chat'" in out.stdout, out.stderr
            out = await acli(node, "add", "output", "bad", "--subscribes", "x", "--type", "email")
            assert out.returncode == 2 and "an email output needs 'smtp_host'" in out.stderr
            r = httpx.delete(node.api_url + "/api/v1/dead", timeout=5)
            assert r.status_code == 422 and "kind and name, or all=true" in r.json()["error"]
        finally:
            node.stop()


async def test_a_dead_letter_of_a_component_gone_is_kept_not_replayed(nc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from nimsforest.control._audit import Actor, AuditLog, Via
    from nimsforest.control._dead import DeadDesk
    from nimsforest.control.errors import Conflict
    from nimsforest.forest import ComponentKind, ComponentRef, DeadReason, Forest, ForestConfig
    from nimsforest.forest.dead import new_letter

    forest = Forest(nc, ForestConfig.empty(tmp_path), node="n1")
    await forest.start()
    try:
        gone = ComponentRef(kind=ComponentKind.TREE, name="gone")
        seq = await forest.dead.bury(new_letter(
            ref=gone, consumer="tree-gone", node="n1", reason=DeadReason.MALFORMED, error="bad.",
            attempts=1, stream="RIVER", stream_seq=1, subject="river.x", headers={}, data=b"x"))
        audit = AuditLog(nc)
        await audit.open()
        desk = DeadDesk(forest.dead, audit, "n1", exists=lambda ref: ref != gone)
        with pytest.raises(Conflict, match="which this forest no longer has"):
            await desk.replay(seq, Actor(via=Via.HTTP))
        assert (await forest.dead.show(seq)).letter.component == gone
    finally:
        await forest.stop()
