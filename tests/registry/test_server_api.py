"""The registry server's HTTP API, against the real server in a subprocess."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from tests.registry.conftest import RegistryProcess
from tests.support import eventually

INDEX = "X-Registry-Index"


def body(name: str, host: str = "10.0.0.1", port: int = 6222, **extra: Any) -> dict[str, Any]:
    return {"name": name, "cluster_address": f"{host}:{port}", **extra}


@pytest.fixture
async def http(registry_server: RegistryProcess) -> Any:
    async with httpx.AsyncClient(base_url=registry_server.url, timeout=30) as client:
        yield client


def nodes_path(service: str) -> str:
    return f"/v1/services/{service}/nodes"


async def names(http: httpx.AsyncClient, service: str) -> list[str]:
    resp = await http.get(nodes_path(service))
    assert resp.status_code == 200
    return [n["name"] for n in resp.json()]


async def test_register_seed_minimal_shape_and_list(http: httpx.AsyncClient, service: str) -> None:
    resp = await http.post(
        nodes_path(service), json={"name": "node-1", "address": "192.168.1.10", "port": 6222}
    )
    assert resp.status_code == 201, resp.text
    rec = resp.json()
    assert rec["cluster_address"] == "192.168.1.10:6222"
    assert rec["registered_at"] and isinstance(rec["create_index"], int)
    listed = await http.get(nodes_path(service))
    assert listed.status_code == 200
    assert int(listed.headers[INDEX]) >= rec["create_index"]
    [node] = listed.json()
    assert (node["name"], node["address"], node["port"]) == ("node-1", "192.168.1.10", 6222)


async def test_full_record_with_ipv6_round_trips(http: httpx.AsyncClient, service: str) -> None:
    sent = {
        "name": "n6",
        "cluster_address": "[2001:DB8::1]:6222",
        "client_address": "[2001:db8::1]:4222",
        "monitor_url": "http://[2001:db8::1]:8222",
        "api_url": "http://10.0.0.6:8080",
        "node_id": "abc-123",
        "metadata": {"zone": "fsn1"},
        "ttl_seconds": 30,
    }
    rec = (await http.post(nodes_path(service), json=sent)).json()
    assert rec["cluster_address"] == "[2001:db8::1]:6222"
    got = (await http.get(f"{nodes_path(service)}/n6")).json()
    for key in ("client_address", "monitor_url", "api_url", "node_id", "metadata"):
        assert got[key] == sent[key]
    assert got["address"] == "2001:db8::1" and got["ttl_seconds"] == 30


async def test_create_index_increases_and_list_is_sorted_by_it(
    http: httpx.AsyncClient, service: str
) -> None:
    indexes = []
    for name in ("c", "a", "b"):
        indexes.append(
            (await http.post(nodes_path(service), json=body(name))).json()["create_index"]
        )
    assert indexes == sorted(indexes) and len(set(indexes)) == 3
    assert await names(http, service) == ["c", "a", "b"]


async def test_heartbeat_renews_and_unknown_node_is_404(
    http: httpx.AsyncClient, service: str
) -> None:
    await http.post(nodes_path(service), json=body("hb", node_id="id-1"))
    ok = await http.put(f"{nodes_path(service)}/hb/heartbeat", params={"node_id": "id-1"})
    assert ok.status_code == 200 and ok.json()["name"] == "hb"
    missing = await http.put(f"{nodes_path(service)}/nobody/heartbeat")
    assert missing.status_code == 404 and "not registered" in missing.json()["error"]
    other = await http.put(
        f"{nodes_path(service)}/hb/heartbeat", params={"node_id": "someone-else"}
    )
    assert other.status_code == 409


async def test_deregister_removes_only_with_matching_node_id(
    http: httpx.AsyncClient, service: str
) -> None:
    await http.post(nodes_path(service), json=body("d1", node_id="mine"))
    wrong = await http.delete(f"{nodes_path(service)}/d1", params={"node_id": "not-mine"})
    assert wrong.status_code == 409
    assert await names(http, service) == ["d1"]
    gone = await http.delete(f"{nodes_path(service)}/d1", params={"node_id": "mine"})
    assert gone.status_code == 204 and INDEX in gone.headers
    assert await names(http, service) == []
    again = await http.delete(f"{nodes_path(service)}/d1")
    assert again.status_code == 404


async def test_name_held_by_live_node_is_conflict_same_node_id_takes_over(
    http: httpx.AsyncClient, service: str
) -> None:
    first = (await http.post(nodes_path(service), json=body("n1", node_id="aaa"))).json()
    clash = await http.post(nodes_path(service), json=body("n1", host="10.0.0.2", node_id="bbb"))
    assert clash.status_code == 409
    assert clash.json()["node_id"] == "aaa"
    assert (
        "Node name 'n1' is already registered by a live node (node id aaa)" in clash.json()["error"]
    )
    again = await http.post(nodes_path(service), json=body("n1", host="10.0.0.3", node_id="aaa"))
    assert again.status_code == 200
    assert again.json()["create_index"] == first["create_index"]
    assert again.json()["cluster_address"] == "10.0.0.3:6222"


async def test_ttl_expiry_removes_silent_node_and_frees_its_name(
    http: httpx.AsyncClient, service: str
) -> None:
    await http.post(nodes_path(service), json=body("silent", node_id="s1", ttl_seconds=1))
    await http.post(nodes_path(service), json=body("chatty", node_id="c1", ttl_seconds=3))

    async def silent_gone() -> bool:
        await http.put(f"{nodes_path(service)}/chatty/heartbeat", params={"node_id": "c1"})
        return "silent" not in await names(http, service)

    await eventually(silent_gone, what="the silent node to expire", interval=0.2)
    assert "chatty" in await names(http, service)  # its heartbeats kept it
    taken = await http.post(nodes_path(service), json=body("silent", node_id="s2"))
    assert taken.status_code == 201  # an expired record never conflicts


async def test_ttl_is_bounded_by_the_server(http: httpx.AsyncClient, service: str) -> None:
    low = (await http.post(nodes_path(service), json=body("low", ttl_seconds=0.001))).json()
    high = (await http.post(nodes_path(service), json=body("high", ttl_seconds=10**9))).json()
    default = (await http.post(nodes_path(service), json=body("default"))).json()
    assert (low["ttl_seconds"], high["ttl_seconds"], default["ttl_seconds"]) == (1.0, 3600.0, 30.0)


async def test_blocking_query_returns_on_change(http: httpx.AsyncClient, service: str) -> None:
    await http.post(nodes_path(service), json=body("w1"))
    index = int((await http.get(nodes_path(service))).headers[INDEX])
    waiting = asyncio.create_task(
        http.get(nodes_path(service), params={"index": index, "wait": "120s"})
    )
    await asyncio.sleep(0.3)
    assert not waiting.done(), "the blocking query answered without a change"
    await http.post(nodes_path(service), json=body("w2"))
    resp = await asyncio.wait_for(waiting, 20)
    assert int(resp.headers[INDEX]) > index
    assert [n["name"] for n in resp.json()] == ["w1", "w2"]


async def test_blocking_query_times_out_without_change(
    http: httpx.AsyncClient, service: str
) -> None:
    await http.post(nodes_path(service), json=body("t1"))
    before = await http.get(nodes_path(service))
    index = int(before.headers[INDEX])
    resp = await http.get(nodes_path(service), params={"index": index, "wait": "500ms"})
    assert resp.status_code == 200
    assert resp.json() == before.json()


async def test_blocking_query_with_index_ahead_of_server_returns_at_once(
    http: httpx.AsyncClient, service: str
) -> None:
    current = int((await http.get(nodes_path(service))).headers[INDEX])
    resp = await asyncio.wait_for(
        http.get(nodes_path(service), params={"index": current + 1000, "wait": "120s"}), 20
    )
    # The answer carries the server's own index, not the one asked for. The index is the
    # whole registry's, and this registry is shared by the session's tests: another test's
    # node may expire between the two requests, so it can have moved on, never back.
    assert resp.status_code == 200
    assert current <= int(resp.headers[INDEX]) < current + 1000


async def test_expiry_wakes_a_blocking_query(http: httpx.AsyncClient, service: str) -> None:
    await http.post(nodes_path(service), json=body("brief", ttl_seconds=1))
    index = int((await http.get(nodes_path(service))).headers[INDEX])
    resp = await asyncio.wait_for(
        http.get(nodes_path(service), params={"index": index, "wait": "120s"}), 20
    )
    assert resp.json() == [] and int(resp.headers[INDEX]) > index


async def test_watch_true_blocks_until_next_change(http: httpx.AsyncClient, service: str) -> None:
    waiting = asyncio.create_task(
        http.get(nodes_path(service), params={"watch": "true", "wait": "120s"})
    )
    await asyncio.sleep(0.3)
    assert not waiting.done()
    await http.post(nodes_path(service), json=body("x"))
    resp = await asyncio.wait_for(waiting, 20)
    assert [n["name"] for n in resp.json()] == ["x"]


async def test_concurrent_registrations_get_distinct_create_indexes(
    http: httpx.AsyncClient, service: str
) -> None:
    resps = await asyncio.gather(
        *(
            http.post(nodes_path(service), json=body(f"n{i:02d}", port=7000 + i, node_id=f"id{i}"))
            for i in range(20)
        )
    )
    assert [r.status_code for r in resps] == [201] * 20
    indexes = [r.json()["create_index"] for r in resps]
    assert len(set(indexes)) == 20
    listed = (await http.get(nodes_path(service))).json()
    assert len(listed) == 20
    assert [n["create_index"] for n in listed] == sorted(indexes)


async def test_services_and_health(http: httpx.AsyncClient, service: str) -> None:
    await http.post(nodes_path(service), json=body("h1"))
    services = (await http.get("/v1/services")).json()
    assert {"name": service, "nodes": 1} == {
        k: v for k, v in next(s for s in services if s["name"] == service).items() if k != "index"
    }
    health = (await http.get("/v1/health")).json()
    assert health["status"] == "ok" and health["persistent"] is True and health["nodes"] >= 1


BAD_INPUT = [
    ("POST", "nodes", b'{"name": ', 400, "not valid JSON"),
    ("POST", "nodes", b"", 400, "empty"),
    ("POST", "nodes", b"[1, 2]", 422, "JSON object"),
    ("POST", "nodes", b'{"name": "ok"}', 422, "cluster_address"),
    ("POST", "nodes", b'{"name": 5, "cluster_address": "10.0.0.1:6222"}', 422, "name"),
    (
        "POST",
        "nodes",
        b'{"name": "bad name!", "cluster_address": "10.0.0.1:6222"}',
        422,
        "not a valid node name",
    ),
    ("POST", "nodes", b'{"name": "ok", "cluster_address": "10.0.0.1"}', 422, "host:port"),
    ("POST", "nodes", b'{"name": "ok", "cluster_address": "::1:6222"}', 422, "brackets"),
    ("POST", "nodes", b'{"name": "ok", "cluster_address": "10.0.0.1:99999"}', 422, "port"),
    ("POST", "nodes", b'{"name": "ok", "address": "10.0.0.1", "port": "x"}', 422, "port"),
    (
        "POST",
        "nodes",
        b'{"name": "ok", "cluster_address": "10.0.0.1:1", "metadata": {"a": 1}}',
        422,
        "metadata",
    ),
    (
        "POST",
        "nodes",
        b'{"name": "ok", "cluster_address": "10.0.0.1:1", "ttl_seconds": "long"}',
        422,
        "ttl_seconds",
    ),
    (
        "POST",
        "nodes",
        b'{"name": "ok", "cluster_address": "10.0.0.1:1", "monitor_url": "ftp://x"}',
        422,
        "monitor_url",
    ),
    (
        "POST",
        "nodes",
        b'{"name": "ok", "cluster_address": "10.0.0.1:1"}' + b" " * (65 * 1024),
        413,
        "larger than 64 KiB",
    ),
    ("GET", "nodes?index=-1", None, 400, "index"),
    ("GET", "nodes?index=1&wait=forever", None, 400, "wait"),
    ("PUT", "nodes/bad%20name/heartbeat", None, 400, "not a valid node name"),
    ("GET", "../bad%20service/nodes", None, 400, "not a valid service name"),
    ("PATCH", "nodes", None, 405, "not allowed"),
]


@pytest.mark.parametrize(
    ("method", "where", "content", "status", "needle"),
    BAD_INPUT,
    ids=[f"{m}-{s}-{n}" for m, _, _, s, n in BAD_INPUT],
)
async def test_bad_input_is_4xx_with_a_clear_message(
    http: httpx.AsyncClient,
    service: str,
    method: str,
    where: str,
    content: bytes | None,
    status: int,
    needle: str,
) -> None:
    url = f"/v1/services/{service}/{where}"
    if where.startswith("../"):
        url = f"/v1/services/{where[3:]}"
    resp = await http.request(
        method,
        url,
        content=content,
        headers={"Content-Type": "application/json"} if content is not None else None,
    )
    assert resp.status_code == status, resp.text
    message = resp.json()["error"]
    assert needle in message and message.endswith(".") and "\n" not in message


async def test_chunked_oversized_body_is_413(http: httpx.AsyncClient, service: str) -> None:
    async def chunks() -> Any:
        for _ in range(80):
            yield b" " * 1024

    resp = await http.post(nodes_path(service), content=chunks())
    assert resp.status_code == 413


async def test_token_is_required_on_every_endpoint(
    token_server: RegistryProcess, service: str
) -> None:
    async with httpx.AsyncClient(base_url=token_server.url, timeout=10) as http:
        for method, path in [
            ("GET", "/v1/health"),
            ("GET", "/v1/services"),
            ("GET", nodes_path(service)),
            ("POST", nodes_path(service)),
            ("PUT", f"{nodes_path(service)}/x/heartbeat"),
            ("DELETE", f"{nodes_path(service)}/x"),
        ]:
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "Basic s3cret-token"},
            ):
                resp = await http.request(method, path, headers=headers, json=body("x"))
                assert resp.status_code == 401, (method, path, headers)
                assert "bearer token" in resp.json()["error"]
        ok = await http.post(nodes_path(service), json=body("x"), headers=token_server.headers)
        assert ok.status_code == 201
        listed = await http.get(nodes_path(service), headers=token_server.headers)
        assert [n["name"] for n in listed.json()] == ["x"]


async def test_state_survives_restart_and_sigkill_with_a_fresh_ttl(
    own_server: RegistryProcess, service: str
) -> None:
    own_server.start()
    url = f"{own_server.url}{nodes_path(service)}"
    a = httpx.post(url, json=body("a", node_id="A", ttl_seconds=3600)).json()
    b = httpx.post(url, json=body("b", node_id="B", ttl_seconds=3600)).json()
    httpx.post(url, json=body("short", node_id="S", ttl_seconds=2))
    registered = time.monotonic()
    own_server.stop()
    time.sleep(max(0.0, 2.2 - (time.monotonic() - registered)))  # past short's TTL while down
    own_server.start()
    listed = httpx.get(url)
    assert [(n["name"], n["create_index"]) for n in listed.json()][:2] == [
        ("a", a["create_index"]),
        ("b", b["create_index"]),
    ]
    assert "short" in [n["name"] for n in listed.json()]  # a fresh TTL on load, not the old clock
    assert int(listed.headers[INDEX]) >= b["create_index"]
    c = httpx.post(url, json=body("c", node_id="C", ttl_seconds=3600)).json()
    assert c["create_index"] > b["create_index"]  # indexes continue after a restart
    await eventually(
        lambda: "short" not in [n["name"] for n in httpx.get(url).json()],
        what="the restored short-lived node to expire",
    )
    assert httpx.post(url, json=body("d", node_id="D", ttl_seconds=3600)).status_code == 201
    own_server.kill()  # at once, no chance to flush: every answered change is already on disk
    own_server.start()
    assert [n["name"] for n in httpx.get(url).json()] == ["a", "b", "c", "d"]
    clash = httpx.post(url, json=body("a", node_id="not-A"))
    assert clash.status_code == 409  # restored records still hold their names


def test_corrupt_state_file_refuses_to_start_with_a_sentence(own_server: RegistryProcess) -> None:
    own_server.data.mkdir(parents=True)
    (own_server.data / "state.json").write_text("{not json")
    with pytest.raises(RuntimeError) as err:
        own_server.start()
    assert "state file" in str(err.value) and "fix or move it away" in str(err.value)


def test_registered_record_json_is_what_the_docs_promise(
    registry_server: RegistryProcess, service: str
) -> None:
    rec = httpx.post(f"{registry_server.url}{nodes_path(service)}", json=body("doc")).json()
    assert set(rec) == {
        "name",
        "cluster_address",
        "client_address",
        "monitor_url",
        "api_url",
        "node_id",
        "registered_at",
        "create_index",
        "metadata",
        "address",
        "port",
        "ttl_seconds",
    }
    json.dumps(rec)
