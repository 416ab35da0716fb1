"""The file:// backend on a Morpheus-format registry.json."""

from __future__ import annotations

import asyncio
import copy
import fcntl
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from registry import (
    NodeInfo,
    PeerEvent,
    PeerEventType,
    Registry,
    RegistryConflict,
    RegistryState,
    RegistryUnreachable,
    open_registry,
)
from tests.support import eventually

MORPHEUS = {
    "version": 1,
    "updated_at": "2026-02-10T10:00:00Z",
    "forests": {
        "forest-1": {"id": "forest-1", "provider": "hetzner", "node_count": 3, "status": "active"}
    },
    "nodes": {
        "forest-1": [
            {
                "id": "forest-1-node-1",
                "ip": "2a01:4f8::1",
                "forest_id": "forest-1",
                "location": "fsn1",
                "status": "active",
                "metadata": {"managed-by": "morpheus"},
            },
            {
                "id": "forest-1-node-2",
                "ip": "2a01:4f8::2",
                "ipv6": "2a01:4f8::22",
                "ipv4": "192.0.2.2",
                "forest_id": "forest-1",
            },
            {
                "id": "forest-1-node-3",
                "ip": "192.0.2.3",
                "forest_id": "forest-1",
                "cluster_port": 7222,
            },
        ],
        "forest-2": [{"id": "forest-2-node-1", "ip": "198.51.100.1", "forest_id": "forest-2"}],
    },
}


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "forest" / "registry.json"
    path.parent.mkdir()
    path.write_text(json.dumps(MORPHEUS, indent=2))
    return path


@pytest.fixture
async def opened() -> AsyncIterator[Any]:
    made: list[Registry] = []

    def make(path: Path, forest: str | None = "forest-1", **kw: Any) -> Registry:
        kw.setdefault("heartbeat_interval", 5.0)  # TTL 15 s: nothing expires by accident
        url = f"file://{path}" + (f"?forest={forest}" if forest else "")
        reg = open_registry(url, **kw)
        made.append(reg)
        return reg

    yield make
    for reg in made:
        await reg.close()


def me(name: str = "forest-1-node-1", node_id: str = "me-1", host: str = "2a01:4f8::1") -> NodeInfo:
    return NodeInfo(
        name=name,
        cluster_address=f"[{host}]:6222" if ":" in host else f"{host}:6222",
        client_address="127.0.0.1:4222",
        node_id=node_id,
        metadata={"role": "nimsforest"},
    )


def entries(path: Path, forest: str = "forest-1") -> list[dict[str, Any]]:
    return json.loads(path.read_text())["nodes"][forest]


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


async def test_reads_a_forest_with_the_go_address_preference(
    registry_file: Path, opened: Any
) -> None:
    nodes = await opened(registry_file).list_nodes()
    assert [(n.name, n.cluster_address, n.create_index) for n in nodes] == [
        ("forest-1-node-1", "[2a01:4f8::1]:6222", 1),
        ("forest-1-node-2", "[2a01:4f8::22]:6222", 2),  # ipv6 before ipv4 before ip
        ("forest-1-node-3", "192.0.2.3:7222", 3),  # cluster_port when given
    ]
    assert nodes[0].metadata == {"managed-by": "morpheus"}


async def test_forest_defaults_to_service_name_and_port_can_be_set(
    registry_file: Path, opened: Any
) -> None:
    reg = open_registry(f"file://{registry_file}?cluster_port=16222", service="forest-2")
    try:
        [only] = await reg.list_nodes()
    finally:
        await reg.close()
    assert (only.name, only.cluster_address) == ("forest-2-node-1", "198.51.100.1:16222")


async def test_register_takes_over_morpheus_entry_and_keeps_the_rest(
    registry_file: Path, opened: Any
) -> None:
    reg = opened(registry_file)
    rec = await reg.register(me())
    assert rec.create_index == 1 and rec.node_id == "me-1"
    data = json.loads(registry_file.read_text())
    original = copy.deepcopy(MORPHEUS)
    for key in ("version", "updated_at", "forests"):
        assert data[key] == original[key]
    assert data["nodes"]["forest-2"] == original["nodes"]["forest-2"]
    assert data["nodes"]["forest-1"][1:] == original["nodes"]["forest-1"][1:]
    ours = data["nodes"]["forest-1"][0]
    for key in ("id", "ip", "forest_id", "location", "status"):
        assert ours[key] == original["nodes"]["forest-1"][0][key]
    assert ours["metadata"] == {"managed-by": "morpheus", "role": "nimsforest"}
    assert ours["node_id"] == "me-1" and ours["cluster_port"] == 6222 and "last_seen" in ours
    assert [n.name for n in await reg.list_peers()] == ["forest-1-node-2", "forest-1-node-3"]


async def test_register_new_name_appends_a_go_readable_entry(
    registry_file: Path, opened: Any
) -> None:
    rec = await opened(registry_file).register(me("forest-1-node-9", host="192.0.2.9"))
    assert rec.create_index == 4
    last = entries(registry_file)[-1]
    assert (last["id"], last["ip"], last["forest_id"]) == (
        "forest-1-node-9",
        "192.0.2.9",
        "forest-1",
    )


async def test_advertised_address_wins_over_morpheus_ip(registry_file: Path, opened: Any) -> None:
    reg = opened(registry_file)
    await reg.register(me(host="10.9.9.9"))
    other = opened(registry_file)
    first = (await other.list_nodes())[0]
    assert first.cluster_address == "10.9.9.9:6222"
    assert entries(registry_file)[0]["ip"] == "2a01:4f8::1"  # Morpheus' ip stays


async def test_conflicts_takeovers_and_expired_entries(registry_file: Path, opened: Any) -> None:
    await opened(registry_file).register(me("n", node_id="first"))
    with pytest.raises(RegistryConflict) as err:
        await opened(registry_file).register(me("n", node_id="second"))
    assert "Node name 'n' is already registered by a live node (node id first)" in str(err.value)
    again = await opened(registry_file).register(me("n", node_id="first"))  # same node id: fine
    assert again.create_index == 4
    data = json.loads(registry_file.read_text())
    data["nodes"]["forest-1"][3]["last_seen"] = ago(3600)  # the holder went silent
    registry_file.write_text(json.dumps(data))
    taken = await opened(registry_file).register(me("n", node_id="second"))
    assert taken.node_id == "second" and taken.create_index == 4  # same position, no conflict


async def test_last_seen_older_than_ttl_means_gone(registry_file: Path, opened: Any) -> None:
    data = json.loads(registry_file.read_text())
    data["nodes"]["forest-1"][1].update(last_seen=ago(3600), ttl_seconds=30)
    data["nodes"]["forest-1"][2].update(last_seen=ago(1), ttl_seconds=30)
    registry_file.write_text(json.dumps(data))
    names = [n.name for n in await opened(registry_file).list_nodes()]
    assert names == ["forest-1-node-1", "forest-1-node-3"]  # node-1 has no last_seen: live


async def test_heartbeat_keeps_our_entry_alive_and_silence_expires_it(
    registry_file: Path, opened: Any
) -> None:
    reg = opened(registry_file, heartbeat_interval=0.1)  # TTL 0.3 s
    await reg.register(me("short-lived"))
    reader = opened(registry_file)
    loop = asyncio.create_task(reg.run_heartbeat())

    async def listed() -> bool:
        return "short-lived" in [n.name for n in await reader.list_nodes()]

    first_seen = entries(registry_file)[-1]["last_seen"]
    await eventually(
        lambda: entries(registry_file)[-1]["last_seen"] > first_seen, what="a heartbeat"
    )
    assert await listed()
    loop.cancel()
    await eventually(lambda: _not(listed()), what="the silent entry to expire")


async def _not(coro: Any) -> bool:
    return not await coro


async def test_deregister_removes_only_our_entry(registry_file: Path, opened: Any) -> None:
    reg = opened(registry_file)
    await reg.register(me())
    await reg.deregister()
    left = entries(registry_file)
    assert [e["id"] for e in left] == ["forest-1-node-2", "forest-1-node-3"]
    assert reg.status().state is RegistryState.NOT_REGISTERED


async def test_heartbeat_registers_again_when_the_file_was_rewritten(
    registry_file: Path, opened: Any
) -> None:
    reg = opened(registry_file)
    await reg.register(me("n-x"))
    registry_file.write_text(json.dumps(MORPHEUS))  # cloud-init overwrote the file without us
    rec = await reg.heartbeat()
    assert rec.name == "n-x" and entries(registry_file)[-1]["id"] == "n-x"


async def test_a_held_lock_makes_writes_wait_then_fail_unreachable(
    registry_file: Path, opened: Any
) -> None:
    before = registry_file.read_text()
    reg = opened(registry_file, heartbeat_interval=0.2)
    fd = os.open(f"{registry_file}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(RegistryUnreachable, match="lock file .* is held by another process"):
            await reg.register(me())
        assert registry_file.read_text() == before
        assert len(await reg.list_nodes()) == 3  # reading needs no lock
    finally:
        os.close(fd)
    assert (await reg.register(me())).name == "forest-1-node-1"


async def test_concurrent_writers_lose_no_entry(registry_file: Path, opened: Any) -> None:
    regs = [opened(registry_file) for _ in range(12)]
    await asyncio.gather(*(r.register(me(f"w{i}", node_id=f"w{i}")) for i, r in enumerate(regs)))
    ids = [e["id"] for e in entries(registry_file)]
    assert ids[:3] == ["forest-1-node-1", "forest-1-node-2", "forest-1-node-3"]
    assert sorted(ids[3:]) == sorted(f"w{i}" for i in range(12))
    assert entries(registry_file, "forest-2") == MORPHEUS["nodes"]["forest-2"]


@pytest.mark.parametrize(
    "content", ["{not json", '{"nodes": []}', '{"nodes": {"forest-1": {}}}', "[1]"]
)
async def test_unreadable_file_is_unreachable_and_never_overwritten(
    registry_file: Path, opened: Any, content: str
) -> None:
    registry_file.write_text(content)
    reg = opened(registry_file)
    for call in (lambda: reg.register(me()), reg.list_nodes):
        with pytest.raises(RegistryUnreachable, match="is not a registry file"):
            await call()
    assert registry_file.read_text() == content


async def test_missing_file_is_created_missing_directory_is_unreachable(
    tmp_path: Path, opened: Any
) -> None:
    path = tmp_path / "registry.json"
    rec = await opened(path).register(me("first"))
    assert rec.create_index == 1
    assert [e["id"] for e in entries(path)] == ["first"]
    with pytest.raises(RegistryUnreachable, match="is the shared storage mounted"):
        await opened(tmp_path / "not-mounted" / "registry.json").list_nodes()


async def test_odd_entries_are_skipped(registry_file: Path, opened: Any) -> None:
    data = json.loads(registry_file.read_text())
    data["nodes"]["forest-1"] += [
        "junk",
        {"id": "bad id!", "ip": "1.2.3.4"},
        {"id": "no-ip"},
        {"id": "forest-1-node-2", "ip": "10.0.0.99"},
    ]
    registry_file.write_text(json.dumps(data))
    names = [n.name for n in await opened(registry_file).list_nodes()]
    assert names == ["forest-1-node-1", "forest-1-node-2", "forest-1-node-3"]


async def test_watch_sees_other_writers(registry_file: Path, opened: Any) -> None:
    reg = opened(registry_file, heartbeat_interval=0.1)
    await reg.register(me())
    events: list[PeerEvent] = []
    known = await reg.list_peers()

    async def watch() -> None:
        async for event in reg.watch_peers(known=known):
            events.append(event)

    task = asyncio.create_task(watch())
    data = json.loads(registry_file.read_text())
    data["nodes"]["forest-1"].append(
        {"id": "forest-1-node-4", "ip": "192.0.2.4", "forest_id": "forest-1"}
    )
    del data["nodes"]["forest-1"][1]
    registry_file.write_text(json.dumps(data))
    await eventually(
        lambda: (
            {(e.type, e.node.name) for e in events}
            >= {
                (PeerEventType.ADDED, "forest-1-node-4"),
                (PeerEventType.REMOVED, "forest-1-node-2"),
            }
        ),
        what="file events",
    )
    assert not any(
        e.node.name == "forest-1-node-3" for e in events
    )  # its position moved, not the peer
    task.cancel()
