"""A real `nimsforest standalone` process changed through its management API, the CLI,
SIGHUP and restarts; the token rule and the rate limit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import NodeProcess, eventually, free_port, freeze, nats_children

LUA = "function process(i) i.seen = true return i end\n"


def cli(node: NodeProcess, *args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nimsforest", *args], capture_output=True, text=True, timeout=60,
        cwd=cwd, env={**os.environ, "NIMSFOREST_API": f"127.0.0.1:{node.api_port}", **(env or {})},
    )


def names(node: NodeProcess, kind: str = "treehouses") -> set[str]:
    r = httpx.get(f"{node.api_url}/api/v1/{kind}", timeout=5)
    return {c["name"] for c in r.json() if c["state"] == "running"}


def write_yaml(path: Path, treehouses: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump({"treehouses": treehouses}))


async def test_cli_sighup_and_restart(tmp_path: Path) -> None:
    forest = tmp_path / "forest"
    forest.mkdir()
    (forest / "a.lua").write_text(LUA)
    config = forest / "forest.yaml"
    write_yaml(config, {"from-file": {"subscribes": "x.in", "publishes": "x.out",
                                      "script": "a.lua"}})
    node = NodeProcess("standalone", tmp_path / "data", extra=["--forest-config", str(config)])
    node.start()
    try:
        await node.wait_healthy()
        assert names(node) == {"from-file"}
        work = tmp_path / "client"
        work.mkdir()
        (work / "mine.lua").write_text(LUA)
        out = cli(node, "add", "th", "mine", "--subscribes", "x.in", "--publishes", "x.mine",
                  "--script", "mine.lua", cwd=work)  # read here, relative to the client
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "Added treehouse 'mine' (running on node n1)."
        out = cli(node, "add", "treehouse", "nofile", "--subscribes", "x.in", "--publishes",
                  "x.y", "--script", "missing.lua", cwd=work)
        assert out.returncode == 2 and out.stderr.strip().count("\n") == 0
        assert "missing.lua does not exist" in out.stderr
        out = cli(node, "add", "th", "bad", "--subscribes", "x.in", "--publishes", "x.y",
                  "--script", "mine.lua", "--max-deliver", "0", cwd=work)
        assert out.returncode == 2 and "max_deliver" in out.stderr, out.stderr  # a 422
        listed = json.loads(cli(node, "list", "th", "--json").stdout)
        assert {c["name"]: c["origin"] for c in listed} == {"from-file": "file", "mine": "api"}
        table = cli(node, "ls").stdout
        assert "mine" in table and "from-file" in table and "ORIGIN" in table
        status = json.loads(cli(node, "status", "--json").stdout)
        assert status["control"]["state"] == "in step" and status["healthy"] is True
        assert status["scope"] == "cluster" and [n["node"] for n in status["nodes"]] == ["n1"]
        shown = cli(node, "status").stdout  # the nodes table: every node's report
        assert "Forest on 1 node(s) reporting: healthy" in shown and "MiB" in shown, shown
        one = cli(node, "ls", "--node", "n1", "--json")
        assert {c["name"] for c in json.loads(one.stdout)} == {"from-file", "mine"}
        await eventually(lambda: node.health()[1]["status_reports"]["state"] == "reporting",
                         what="the status-report loop in /health")
        missing = cli(node, "status", "--node", "n9")
        assert missing.returncode == 1 and "No node named 'n9'" in missing.stderr

        # SIGHUP: the file's components follow the file, the API one stays
        write_yaml(config, {"second": {"subscribes": "x.in", "publishes": "x.two",
                                       "code": LUA}})
        node.signal(signal.SIGHUP)
        try:
            await eventually(lambda: names(node) == {"second", "mine"}, what="SIGHUP applied")
        except AssertionError as exc:  # seen once in a full run: keep what the node said
            tail = "\n".join(node.log().splitlines()[-40:])
            raise AssertionError(f"{exc}; the node's log ends with:\n{tail}") from None
        out = cli(node, "reload")
        assert out.returncode == 0 and "no change" in out.stdout, out.stdout + out.stderr
        out = cli(node, "rm", "th", "second")
        assert out.returncode == 0 and "next reload adds it again" in out.stdout

        # a restart keeps what was added at runtime (and what was removed stays removed)
        assert node.stop() == 0
        node.start()
        await node.wait_healthy()
        assert names(node) == {"mine"}
        audit = json.loads(cli(node, "audit", "--json", "--limit", "50").stdout)
        actions = [(r["action"], r["who"]["via"], r["ok"]) for r in audit]
        assert actions[0] == ("seed", "startup", True)
        assert ("add", "http", True) in actions and ("reload", "signal", True) in actions
        assert ("add", "http", False) in actions  # the refused --max-deliver 0
        assert "seed" in cli(node, "audit").stdout
    finally:
        node.stop()
    out = cli(node, "status")
    assert out.returncode == 1 and "No NimsForest daemon is running" in out.stderr
    assert out.stderr.strip().count("\n") == 0


async def test_a_sighup_while_nats_is_frozen_is_applied_once_it_answers(tmp_path: Path) -> None:
    """A signal has nobody to answer: a reload that cannot reach the desired-state bucket
    (the node's nats-server frozen) says it tries again, and applies the file once NATS
    answers; nothing is lost in between."""
    config = tmp_path / "forest.yaml"
    write_yaml(config, {"first": {"subscribes": "x.in", "publishes": "x.one", "code": LUA}})
    node = NodeProcess("standalone", tmp_path / "data", extra=["--forest-config", str(config)])
    node.start()
    try:
        await node.wait_healthy()
        assert names(node) == {"first"}
        write_yaml(config, {"later": {"subscribes": "x.in", "publishes": "x.two", "code": LUA}})
        assert node.proc is not None
        server = next(c for c in nats_children(node.proc.pid)
                      if "witness" not in " ".join(c.cmdline()))
        freeze(server.pid)
        try:
            node.signal(signal.SIGHUP)
            await eventually(lambda: "Forest reload tries again" in node.log(), timeout=60,
                             what="the reload says it tries again")
        finally:
            server.resume()
        await eventually(lambda: names(node) == {"later"}, timeout=60, what="SIGHUP applied")
        assert "Forest reload: Reloaded" in node.log()
        assert "Forest reload refused" not in node.log() and "given up" not in node.log()
    finally:
        node.stop()


def test_the_api_leaves_localhost_only_with_a_token(tmp_path: Path) -> None:
    port = free_port()
    out = subprocess.run(
        [sys.executable, "-m", "nimsforest", "standalone", "--data-dir", str(tmp_path / "d"),
         "--api", f"0.0.0.0:{port}"], capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if k != "NIMSFOREST_API_TOKEN"},
    )
    assert out.returncode == 2, out.stderr
    assert "set NIMSFOREST_API_TOKEN" in out.stderr and out.stderr.strip().count("\n") == 0


async def test_token_rate_limit_and_audit_off_localhost(tmp_path: Path) -> None:
    token = "t0k3n-for-tests"
    node = NodeProcess("standalone", tmp_path / "data",
                       env={"NIMSFOREST_API_TOKEN": token, "NIMSFOREST_API_RATE_LIMIT": "3/minute"})
    node.args += ["--api", f"0.0.0.0:{node.api_port}"]  # the last --api wins
    node.start()
    auth = {"Authorization": f"Bearer {token}"}
    try:
        await node.wait_healthy()  # /health and /metrics stay open
        assert httpx.get(node.api_url + "/metrics", timeout=5).status_code == 200
        r = httpx.get(node.api_url + "/api/v1/status", timeout=5)
        assert r.status_code == 401 and "Bearer" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.get(node.api_url + "/api/v1/status", timeout=5,
                      headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert httpx.post(node.api_url + "/api/v1/river/x", json={}, timeout=5).status_code == 401
        assert httpx.post(node.api_url + "/api/v1/node/drain", timeout=5).status_code == 401
        assert httpx.post(node.api_url + "/api/v1/river/x", json={}, timeout=5,
                          headers=auth).status_code == 202
        assert httpx.post(node.api_url + "/-/reload", timeout=5).status_code == 401
        r = httpx.get(node.api_url + "/api/v1/status", headers=auth, timeout=5)
        assert r.status_code == 200

        # the CLI sends NIMSFOREST_API_TOKEN
        env = {"NIMSFOREST_API_TOKEN": token}
        assert cli(node, "status", env=env).returncode == 0
        denied = cli(node, "status", env={"NIMSFOREST_API_TOKEN": "nope"})
        assert denied.returncode == 1 and "Bearer" in denied.stderr

        body = {"name": "t", "subscribes": "a", "publishes": "b", "script": LUA}
        codes = []
        for i in range(4):
            r = httpx.post(node.api_url + "/api/v1/treehouses", timeout=15, headers=auth,
                           json={**body, "name": f"t{i}"})
            codes.append(r.status_code)
        assert codes == [201, 201, 201, 429], codes
        assert 1 <= int(r.headers["retry-after"]) <= 60 and "3/minute" in r.json()["error"]
        r = httpx.get(node.api_url + "/api/v1/treehouses", headers=auth, timeout=5)
        assert r.status_code == 200 and len(r.json()) == 3  # reads are not limited

        audit = httpx.get(node.api_url + "/api/v1/audit?limit=20", headers=auth, timeout=5).json()
        refused = [(r["action"], r["refusal"], r["result"]) for r in audit if not r["ok"]]
        assert any(a == "reload" and why == "unauthorized" and "Authorization" in res
                   for a, why, res in refused)
        assert any(a == "add" and why == "rate limited" and "Too many changes" in res
                   for a, why, res in refused)
        ok = [r for r in audit if r["ok"] and r["action"] == "add"]
        assert len(ok) == 3 and all(r["who"]["token"] for r in ok)
    finally:
        node.stop()
