"""A broken component never stops a node: `nimsforest standalone` with a forest.yaml whose
one script does not compile and one component's settings are invalid starts, reports
those components FAILED with their sentences (in /health, the control status and the
log) and runs the others; a reload of a file with a broken component applies the good
ones and names the broken one (`nimsforest reload` exits 1, SIGHUP logs it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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

        # a reload: 'broken' fixed, 'typo' gone, a new good one and a new broken one
        write_forest(tmp_path / "forest", {"trees": {
            "good": {"watches": "river.in", "publishes": "got.it", "script": "good.lua"},
            "broken": {"watches": "river.in", "publishes": "never", "script": "good.lua"},
            "fresh": {"watches": "river.in", "publishes": "got.too", "script": "good.lua"},
            "worse": {"watches": "river.in", "publishes": "x", "script": "missing.lua"},
        }})
        out = subprocess.run(
            [sys.executable, "-m", "nimsforest", "reload"], capture_output=True, text=True,
            timeout=60, env={**os.environ, "NIMSFOREST_API": f"127.0.0.1:{node.api_port}"})
        assert out.returncode == 1, out.stdout + out.stderr
        assert "FAILED 1." in out.stdout and "tree 'worse', field 'script'" in out.stdout
        assert "missing.lua" in out.stdout
        body = (await node.wait_healthy())
        assert [f.split(":")[0] for f in body["forest"]["failed"]] == ["tree 'worse'"]
        status = httpx.get(node.api_url + "/api/v1/status", timeout=5).json()
        comps = {c["name"]: c["state"] for c in status["components"]}
        assert comps == {"good": "running", "broken": "running", "fresh": "running",
                         "worse": "failed"}
        # SIGHUP takes the same path and logs the FAILED component
        node.signal(signal.SIGHUP)
        try:
            await eventually(lambda: "Forest reload: Reloaded" in node.log()
                             and "FAILED on node" in node.log(), timeout=30,
                             what="the SIGHUP reload is logged")
        except AssertionError as exc:  # once seen in CI, cause unknown: keep what the node said
            tail = "\n".join(node.log().splitlines()[-40:])
            raise AssertionError(f"{exc}; the node's log ends with:\n{tail}") from None
    finally:
        node.stop()
