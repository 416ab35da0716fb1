"""A broken component never stops a node: `nimsforest standalone` with a forest.yaml whose
one script does not compile and one component's settings are invalid starts, reports
those components FAILED with their sentences (in /health, the control status and the
log) and runs the others."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.forest.conftest import write_forest
from tests.support import NodeProcess, eventually

ECHO = "function process(i) return {seen = i.id} end"


async def test_a_node_runs_with_one_broken_script_and_reports_it(tmp_path: Path) -> None:
    path = write_forest(
        tmp_path / "forest",
        {
            "trees": {
                "good": {"watches": "river.in", "publishes": "got.it", "script": "good.lua"},
                "broken": {"watches": "river.in", "publishes": "never", "script": "broken.lua"},
                "typo": {"watches": "river.in", "publishs": "x", "script": "good.lua"},
            }
        },
        {"good.lua": ECHO, "broken.lua": "function process(i) return { end"},
    )
    node = NodeProcess("standalone", tmp_path / "data", extra=["--forest-config", str(path)])
    node.start()
    try:
        body = await node.wait_healthy()  # started (exit 2 before)
        assert body["forest"]["components"] == 3
        broken, typo = sorted(body["forest"]["failed"])
        assert broken.startswith("tree 'broken': ") and "line 1: unexpected symbol" in broken
        assert typo.startswith("tree 'typo': ") and "field 'publishes': is required" in typo

        status = httpx.get(node.api_url + "/api/v1/status", timeout=5).json()
        comps = {c["name"]: c for c in status["components"]}
        assert comps["broken"]["state"] == "failed"
        assert "line 1: unexpected symbol" in comps["broken"]["last_error"]
        assert comps["good"]["state"] == "running"
        assert comps["typo"]["state"] == "failed" and "is required" in comps["typo"]["last_error"]

        r = httpx.post(node.api_url + "/api/v1/river/in", json={"id": "x1"}, timeout=5)
        assert r.status_code == 202, r.text

        def good_done() -> bool:
            st = httpx.get(node.api_url + "/api/v1/status", timeout=5).json()
            return any(c["name"] == "good" and c["events_out"] == 1 for c in st["components"])

        await eventually(good_done, timeout=30, what="the good tree handles the event")
        assert "tree 'broken' failed" in node.log() and "line 1: unexpected symbol" in node.log()
        # started again on the same data dir (its state already there, as under systemd's
        # Restart=always): it starts, with the same two components failed
        assert node.stop() == 0
        node.start()
        body = await node.wait_healthy()
        assert sorted(f.split(":")[0] for f in body["forest"]["failed"]) == [
            "tree 'broken'", "tree 'typo'"]
    finally:
        node.stop()
