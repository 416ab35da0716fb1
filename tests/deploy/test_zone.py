"""A node's zone: NIMSFOREST_ZONE, else its registry entry's metadata `zone`; either way it
becomes the server tag zone:<zone> (and nats-server's unique_tag)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from nimsforest.node_setup import embedded_config, machine_metadata
from nimsforest.settings import Settings, ZoneSource, choose_zone, with_zone
from registry import merge_metadata
from tests.registry.conftest import RegistryProcess
from tests.support import NodeProcess, eventually


def test_the_setting_wins_the_registry_fills_in_a_bad_registry_zone_is_said_and_ignored() -> None:
    assert choose_zone("eu-1a", {"zone": "eu-1a"}).source is ZoneSource.SETTING
    over = choose_zone("eu-1a", {"zone": "eu-1b"})
    assert (over.zone, over.source) == ("eu-1a", ZoneSource.SETTING)
    assert over.note is not None and "'eu-1b'" in over.note and "not used" in over.note
    given = choose_zone(None, {"zone": "eu-1b", "cpus": "4"})
    assert (given.zone, given.source, given.note) == ("eu-1b", ZoneSource.REGISTRY, None)
    assert choose_zone(None, {"cpus": "4"}) == choose_zone(None, {})
    bad = choose_zone(None, {"zone": "Rack 7!"})
    assert (bad.zone, bad.source) == (None, ZoneSource.NONE)
    assert bad.note is not None and "'Rack 7!'" in bad.note and "metadata 'zone'" in bad.note


def test_a_zone_from_the_registry_becomes_the_server_tag_as_the_setting_does(tmp_path: Path) -> None:
    base = Settings(node_name="n1", data_dir=tmp_path, server_tags=["ssd"])
    from_registry = with_zone(base, "eu-1b")
    from_env = Settings(node_name="n1", data_dir=tmp_path, server_tags=["ssd"], zone="eu-1b")
    assert from_registry.zone == "eu-1b" and from_registry.server_tags == from_env.server_tags
    assert embedded_config(from_registry, witness=False).extra_tags == ("ssd", "zone:eu-1b")
    assert machine_metadata("c", "eu-1b")["zone"] == "eu-1b" and "zone" not in machine_metadata("c")


async def test_a_node_takes_its_zone_from_its_morpheus_registry_entry(tmp_path: Path) -> None:
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"nodes": {"f": [
        {"id": "z1", "ip": "127.0.0.1", "forest_id": "f", "metadata": {"zone": "eu-1b"}},
    ]}}))
    node = NodeProcess("run", tmp_path / "z1" / "data", name="z1",
                       extra=["--registry-url", f"file://{registry}?forest=f",
                              "--cluster-secret", "zone-secret"],
                       env={"REGISTRY_HEARTBEAT_INTERVAL": "1s"})
    node.start()
    try:
        await node.wait_healthy(90)
        varz = httpx.get(f"http://127.0.0.1:{node.monitor_port}/varz", timeout=5).json()
        assert "zone:eu-1b" in varz["tags"], varz["tags"]
        assert varz["jetstream"]["config"].get("unique_tag") == "zone:", varz["jetstream"]["config"]
        assert "Zone eu-1b, from this node's registry entry" in node.log()
        entry = json.loads(registry.read_text())["nodes"]["f"][0]
        assert entry["metadata"]["zone"] == "eu-1b" and entry["node_id"]  # kept, taken over
        await eventually(lambda: node.health()[1]["status"] == "healthy", what="healthy")
    finally:
        node.stop()


async def test_a_node_takes_its_zone_from_operator_metadata_in_the_registry_server(
    tmp_path: Path,
) -> None:
    server = RegistryProcess(tmp_path / "registry-data", tmp_path / "registry.log", token="zt0k")
    server.start()
    try:
        set_zone = subprocess.run(
            [sys.executable, "-m", "nimsforest", "registry", "metadata", "z2", "zone=eu-1c",
             "--registry-url", server.url, "--registry-service", "zoned"],
            env={**os.environ, "REGISTRY_TOKEN": "zt0k"}, capture_output=True, text=True,
            timeout=60,
        )
        assert set_zone.returncode == 0 and "zone=eu-1c" in set_zone.stdout, set_zone.stderr
        node = NodeProcess("run", tmp_path / "z2" / "data", name="z2",
                           extra=["--registry-url", server.url, "--cluster-secret", "zone-secret"],
                           env={"REGISTRY_TOKEN": "zt0k", "REGISTRY_SERVICE_NAME": "zoned",
                                "REGISTRY_HEARTBEAT_INTERVAL": "1s"})
        node.start()
        try:
            await node.wait_healthy(90)
            varz = httpx.get(f"http://127.0.0.1:{node.monitor_port}/varz", timeout=5).json()
            assert "zone:eu-1c" in varz["tags"], varz["tags"]
            assert varz["jetstream"]["config"].get("unique_tag") == "zone:"
            assert "Zone eu-1c, from this node's registry entry" in node.log()
            listed = httpx.get(f"{server.url}/v1/services/zoned/nodes", headers=server.headers).json()
            assert [(n["name"], n["metadata"]["zone"]) for n in listed] == [("z2", "eu-1c")]
            assert listed[0]["metadata"]["cpus"]  # the node's own keys are there too
        finally:
            node.stop()
    finally:
        server.stop()


def test_with_nimsforest_zone_the_registrys_zone_is_not_used_and_nothing_warns() -> None:
    """What docs/DEPLOYMENT.md says: the node registers its own zone, which wins the merge, so
    the record it reads back carries the setting's zone (no 'not used' warning)."""
    record = merge_metadata({"zone": "eu-1b"}, machine_metadata("c", "eu-1a"))
    choice = choose_zone("eu-1a", record)
    assert (choice.zone, choice.source, choice.note) == ("eu-1a", ZoneSource.SETTING, None)
    unset = choose_zone(None, merge_metadata({"zone": "eu-1b"}, machine_metadata("c")))
    assert (unset.zone, unset.source) == ("eu-1b", ZoneSource.REGISTRY)
