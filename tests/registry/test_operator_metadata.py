"""An operator's metadata of a node: the one merge rule, the server's routes (a real
`registry serve` process), the client methods on every backend, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from nimsforest.cli import main
from registry import (
    NodeInfo,
    RegistryRejected,
    check_metadata,
    merge_metadata,
    open_registry,
)
from registry._model import edit_metadata
from tests.registry.conftest import RegistryProcess

INDEX = "X-Registry-Index"


def meta_path(service: str, name: str) -> str:
    return f"/v1/services/{service}/nodes/{name}/metadata"


def node(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "cluster_address": "10.9.0.1:6222", **extra}


@pytest.fixture
async def http(registry_server: RegistryProcess) -> Any:
    async with httpx.AsyncClient(base_url=registry_server.url, timeout=30) as client:
        yield client


# --- the rules (pure) --------------------------------------------------------------------------
def test_the_nodes_own_keys_win_except_an_empty_value() -> None:
    operator = {"zone": "eu-1b", "rack": "7"}
    own = {"zone": "", "cpus": "4", "rack": "9", "note": ""}
    assert merge_metadata(operator, own) == {"zone": "eu-1b", "rack": "9", "cpus": "4", "note": ""}
    assert merge_metadata({}, own) == own and merge_metadata(operator, {}) == operator


def test_an_edit_merges_and_an_empty_value_removes_a_key() -> None:
    assert edit_metadata({"zone": "a", "rack": "7"}, {"rack": "", "x": "y", "gone": ""}) == {
        "zone": "a",
        "x": "y",
    }


def test_one_rule_for_keys_serves_node_records_and_operator_metadata() -> None:
    for bad in ({"": "x"}, {"k" * 129: "x"}):
        with pytest.raises(ValueError, match="1 to 128 characters"):
            check_metadata(bad)
        with pytest.raises(ValueError, match="1 to 128 characters"):
            NodeInfo(name="n1", cluster_address="10.0.0.1:6222", metadata=bad)
    assert check_metadata({"k" * 128: ""}) == {"k" * 128: ""}


# --- the server --------------------------------------------------------------------------------
async def test_metadata_set_before_the_node_registers_is_in_its_record(
    http: httpx.AsyncClient, service: str
) -> None:
    put = await http.put(
        meta_path(service, "m1"), json={"metadata": {"zone": "eu-1b", "rack": "7"}}
    )
    assert put.status_code == 200, put.text
    assert put.json() == {
        "service": service,
        "name": "m1",
        "metadata": {"zone": "eu-1b", "rack": "7"},
    }
    assert (await http.get(f"/v1/services/{service}/nodes")).json() == []  # not a node yet

    reg = await http.post(
        f"/v1/services/{service}/nodes", json=node("m1", metadata={"rack": "9", "zone": ""})
    )
    assert reg.status_code == 201, reg.text
    assert reg.json()["metadata"] == {"zone": "eu-1b", "rack": "9"}
    [listed] = (await http.get(f"/v1/services/{service}/nodes")).json()
    assert listed["metadata"] == {"zone": "eu-1b", "rack": "9"}
    one = (await http.get(f"/v1/services/{service}/nodes/m1")).json()
    assert one["metadata"] == {"zone": "eu-1b", "rack": "9"}
    beat = await http.put(f"/v1/services/{service}/nodes/m1/heartbeat")
    assert beat.json()["metadata"] == {"zone": "eu-1b", "rack": "9"}
    # the operator's own metadata stays apart from what the node registered
    assert (await http.get(meta_path(service, "m1"))).json()["metadata"] == {
        "zone": "eu-1b",
        "rack": "7",
    }


async def test_patch_merges_delete_clears_and_a_change_after_registration_shows(
    http: httpx.AsyncClient, service: str
) -> None:
    await http.post(f"/v1/services/{service}/nodes", json=node("m2", metadata={"cpus": "4"}))
    before = int((await http.get(f"/v1/services/{service}/nodes")).headers[INDEX])
    patched = await http.patch(meta_path(service, "m2"), json={"metadata": {"zone": "eu-1a"}})
    assert patched.status_code == 200 and patched.json()["metadata"] == {"zone": "eu-1a"}
    listed = await http.get(f"/v1/services/{service}/nodes")
    assert int(listed.headers[INDEX]) > before  # a change: blocking queries wake on it
    assert listed.json()[0]["metadata"] == {"zone": "eu-1a", "cpus": "4"}

    again = await http.patch(meta_path(service, "m2"), json={"metadata": {"rack": "3", "zone": ""}})
    assert again.json()["metadata"] == {"rack": "3"}
    replaced = await http.put(
        meta_path(service, "m2"), json={"metadata": {"zone": "eu-1c", "x": ""}}
    )
    assert replaced.json()["metadata"] == {"zone": "eu-1c"}
    gone = await http.delete(meta_path(service, "m2"))
    assert gone.status_code == 204
    assert (await http.get(meta_path(service, "m2"))).json()["metadata"] == {}
    assert (await http.get(f"/v1/services/{service}/nodes/m2")).json()["metadata"] == {"cpus": "4"}


async def test_metadata_outlives_deregistration_and_comes_back_with_the_node(
    http: httpx.AsyncClient, service: str
) -> None:
    await http.post(f"/v1/services/{service}/nodes", json=node("m3", node_id="id-3"))
    await http.put(meta_path(service, "m3"), json={"metadata": {"zone": "eu-1b"}})
    assert (await http.delete(f"/v1/services/{service}/nodes/m3")).status_code == 204
    assert (await http.get(meta_path(service, "m3"))).json()["metadata"] == {"zone": "eu-1b"}
    back = await http.post(f"/v1/services/{service}/nodes", json=node("m3", node_id="id-3"))
    assert back.status_code == 201 and back.json()["metadata"] == {"zone": "eu-1b"}


@pytest.mark.parametrize(
    ("method", "sent", "status", "needle"),
    [
        ("PUT", {"zone": "eu-1b"}, 422, "metadata: Field required"),
        ("PATCH", {"metadata": {"zone": 3}}, 422, "metadata.zone: Input should be a valid string"),
        ("PUT", {"metadata": {"": "x"}}, 422, "metadata keys must be 1 to 128 characters long"),
        ("PATCH", {"metadata": {}, "extra": 1}, 422, "extra: Extra inputs are not permitted"),
        ("PUT", [1, 2], 422, "Invalid metadata"),
    ],
)
async def test_a_bad_body_is_one_sentence_and_changes_nothing(
    http: httpx.AsyncClient, service: str, method: str, sent: Any, status: int, needle: str
) -> None:
    await http.put(meta_path(service, "m4"), json={"metadata": {"zone": "keep"}})
    resp = await http.request(method, meta_path(service, "m4"), json=sent)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert needle in error and error.endswith(".") and "\n" not in error
    assert (await http.get(meta_path(service, "m4"))).json()["metadata"] == {"zone": "keep"}


async def test_bad_names_and_empty_bodies_are_400(http: httpx.AsyncClient, service: str) -> None:
    bad = await http.put(meta_path(service, "no%20way"), json={"metadata": {}})
    assert bad.status_code == 400 and "not a valid node name" in bad.json()["error"]
    empty = await http.patch(meta_path(service, "m5"), content=b"")
    assert empty.status_code == 400 and "empty" in empty.json()["error"]


async def test_the_metadata_routes_need_the_token(token_server: RegistryProcess) -> None:
    async with httpx.AsyncClient(base_url=token_server.url, timeout=30) as http:
        for method in ("GET", "PUT", "PATCH", "DELETE"):
            resp = await http.request(
                method, meta_path("tok", "m6"), json={"metadata": {"zone": "z"}}
            )
            assert resp.status_code == 401, (method, resp.text)
        ok = await http.put(
            meta_path("tok", "m6"),
            json={"metadata": {"zone": "z"}},
            headers=token_server.headers,
        )
        assert ok.status_code == 200 and ok.json()["metadata"] == {"zone": "z"}


async def test_metadata_survives_a_registry_restart(
    own_server: RegistryProcess, service: str
) -> None:
    own_server.start()
    httpx.put(f"{own_server.url}{meta_path(service, 'm7')}", json={"metadata": {"zone": "eu-1b"}})
    own_server.kill()  # no chance to flush: an answered change is already on disk
    own_server.start()
    got = httpx.get(f"{own_server.url}{meta_path(service, 'm7')}").json()
    assert got["metadata"] == {"zone": "eu-1b"}
    reg = httpx.post(f"{own_server.url}/v1/services/{service}/nodes", json=node("m7"))
    assert reg.json()["metadata"] == {"zone": "eu-1b"}
    assert "Operator metadata of node m7 in service" in own_server.log()


# --- the client --------------------------------------------------------------------------------
async def test_the_http_client_reads_sets_merges_and_clears(
    registry_server: RegistryProcess, service: str
) -> None:
    async with open_registry(registry_server.url, service=service) as reg:
        assert (await reg.node_metadata("c1")).metadata == {}
        set_ = await reg.set_node_metadata("c1", {"zone": "eu-1a", "rack": "7"})
        assert (set_.service, set_.name, set_.metadata) == (
            service,
            "c1",
            {"zone": "eu-1a", "rack": "7"},
        )
        merged = await reg.set_node_metadata("c1", {"rack": "", "x": "y"}, merge=True)
        assert merged.metadata == {"zone": "eu-1a", "x": "y"}
        record = await reg.register(NodeInfo(name="c1", cluster_address="10.9.0.2:6222"))
        assert record.metadata == {"zone": "eu-1a", "x": "y"}
        await reg.clear_node_metadata("c1")
        assert (await reg.node_metadata("c1")).metadata == {}
        with pytest.raises(ValueError, match="1 to 128"):
            await reg.set_node_metadata("c1", {"": "x"})
        with pytest.raises(ValueError, match="not a valid node name"):
            await reg.node_metadata("bad name")
        await reg.deregister()


async def test_the_http_client_without_the_token_is_rejected(token_server: RegistryProcess) -> None:
    async with open_registry(token_server.url, service="tok") as reg:
        with pytest.raises(RegistryRejected, match="needs REGISTRY_TOKEN"):
            await reg.set_node_metadata("c2", {"zone": "z"})


async def test_the_memory_backend_has_the_servers_rules() -> None:
    async with open_registry("memory://operator-metadata", service="s") as reg:
        await reg.set_node_metadata("c3", {"zone": "eu-1b"})
        record = await reg.register(
            NodeInfo(name="c3", cluster_address="10.9.0.3:6222", metadata={"zone": ""})
        )
        assert record.metadata == {"zone": "eu-1b"}
        await reg.deregister()
        assert (await reg.node_metadata("c3")).metadata == {"zone": "eu-1b"}


def morpheus_file(tmp_path: Path) -> Path:
    path = tmp_path / "registry.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "nodes": {
                    "f": [
                        {
                            "id": "f1",
                            "ip": "10.9.1.1",
                            "forest_id": "f",
                            "metadata": {"managed-by": "morpheus", "count": 3},
                        }
                    ]
                },
            }
        )
    )
    return path


async def test_the_file_backend_edits_the_entry_and_registration_merges_the_same_way(
    tmp_path: Path,
) -> None:
    path = morpheus_file(tmp_path)
    async with open_registry(f"file://{path}?forest=f", service="s") as reg:
        got = await reg.set_node_metadata("f1", {"zone": "eu-1b", "rack": "7"}, merge=True)
        assert got.metadata == {"managed-by": "morpheus", "zone": "eu-1b", "rack": "7"}
        entry = json.loads(path.read_text())["nodes"]["f"][0]
        assert entry["metadata"]["count"] == 3 and entry["ip"] == "10.9.1.1"  # kept as it was
        record = await reg.register(
            NodeInfo(name="f1", cluster_address="10.9.1.1:6222", metadata={"zone": "", "rack": "9"})
        )
        assert record.metadata == {"managed-by": "morpheus", "zone": "eu-1b", "rack": "9"}
        with pytest.raises(RegistryRejected, match="has no entry for node 'f9'"):
            await reg.set_node_metadata("f9", {"zone": "eu-1b"})
        assert "f9" not in path.read_text()
        await reg.clear_node_metadata("f1")
        assert "metadata" not in json.loads(path.read_text())["nodes"]["f"][0]


# --- the CLI -----------------------------------------------------------------------------------
def cli(url: str, service: str, *args: str) -> Any:
    return CliRunner().invoke(
        main,
        ["registry", "metadata", *args, "--registry-url", url, "--registry-service", service],
        env={"REGISTRY_TOKEN": None},
    )


def test_the_cli_sets_shows_removes_and_clears(
    registry_server: RegistryProcess, service: str
) -> None:
    url = registry_server.url
    empty = cli(url, service, "k1")
    assert empty.exit_code == 0 and "Node k1 has no operator metadata" in empty.output
    set_ = cli(url, service, "k1", "zone=eu-1b", "rack=7", "note=a=b")
    assert set_.exit_code == 0, set_.output
    assert set_.stdout.splitlines() == ["note=a=b", "rack=7", "zone=eu-1b"]
    assert "restart it" in set_.stderr
    removed = cli(url, service, "k1", "rack=", "--json")
    assert json.loads(removed.stdout) == {
        "service": service,
        "name": "k1",
        "metadata": {"zone": "eu-1b", "note": "a=b"},
    }
    replaced = cli(url, service, "k1", "--clear", "x=1")
    assert replaced.stdout.splitlines() == ["x=1"]
    cleared = cli(url, service, "k1", "--clear")
    assert cleared.exit_code == 0 and "no operator metadata" in cleared.stdout
    got = httpx.get(f"{url}{meta_path(service, 'k1')}").json()
    assert got["metadata"] == {}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["k2", "zone"], "'zone' is not KEY=VALUE (or KEY= to remove the key)."),
        (["k2", "=x"], "'=x' is not KEY=VALUE: metadata keys must be 1 to 128 characters long."),
        (["k2", "a=1", "a=2"], "The key 'a' is given twice."),
        (["bad name"], "'bad name' is not a valid node name"),
    ],
)
def test_the_cli_refuses_bad_arguments_with_exit_2(
    registry_server: RegistryProcess, service: str, args: list[str], needle: str
) -> None:
    result = cli(registry_server.url, service, *args)
    assert result.exit_code == 2 and needle in result.output, result.output
    assert httpx.get(f"{registry_server.url}{meta_path(service, 'k2')}").json()["metadata"] == {}


def test_the_cli_edits_a_morpheus_file_and_says_when_the_entry_is_missing(tmp_path: Path) -> None:
    path = morpheus_file(tmp_path)
    url = f"file://{path}?forest=f"
    ok = cli(url, "s", "f1", "zone=eu-1b")
    assert ok.exit_code == 0 and "zone=eu-1b" in ok.stdout
    assert json.loads(path.read_text())["nodes"]["f"][0]["metadata"]["zone"] == "eu-1b"
    missing = cli(url, "s", "f9", "zone=eu-1b")
    assert missing.exit_code == 1 and "has no entry for node 'f9'" in missing.output


def test_the_cli_says_which_keys_the_node_registers_itself(
    registry_server: RegistryProcess, service: str
) -> None:
    url = registry_server.url
    httpx.post(
        f"{url}/v1/services/{service}/nodes",
        json=node("k3", metadata={"zone": "eu-1a", "rack": ""}),
    )
    result = cli(url, service, "k3", "zone=eu-1b", "rack=7")
    assert result.exit_code == 0 and result.stdout.splitlines() == ["rack=7", "zone=eu-1b"]
    # its empty rack gives way to the operator's; its zone wins
    assert "Node k3 registers its own zone: its record carries the node's value" in result.stderr
    record = httpx.get(f"{url}/v1/services/{service}/nodes/k3").json()
    assert record["metadata"] == {"zone": "eu-1a", "rack": "7"}
