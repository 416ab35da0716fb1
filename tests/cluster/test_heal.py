"""A node removed from the cluster heals itself only when no copy can be lost.

The pure part on frozen observations; then real nats-servers: one removed while it runs
starts afresh under its next server name when the other two hold every stream in full,
is a meta member again at once and gets its replica back (R3), and refuses (saying what
to run) while it holds the only copy of a stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import replace

import nats
from nats.js.api import Placement, StreamConfig

from cluster import (
    ClusterManager,
    Membership,
    Memory,
    MetaMember,
    Observation,
    RegistryPeer,
    StartAfresh,
    StreamCopies,
    Tuning,
    Verdict,
    membership,
    plan,
    verdict,
)
from natsembed import NODE_TAG, REMOVED_PREFIX, EmbeddedNats, stored_streams
from nimsforest.connection import ConnectionManager, ConnectionOptions
from nimsforest.observer import NatsObserver
from registry import NodeInfo, open_registry
from tests.support import EmbeddedFactory, eventually, free_port, publish_stored, routed_servers

NOW = 1000.0


def test_membership_from_a_servers_own_view() -> None:
    assert membership("n3", disabled=True, leader=None, cluster_size=0, members=()) is Membership.REMOVED
    assert membership("n3", disabled=False, leader=None, cluster_size=3, members=("n1", "n2")) is Membership.UNKNOWN
    # a member lists the others and counts itself
    assert membership("n3", disabled=False, leader="n1", cluster_size=3, members=("n1", "n2")) is Membership.MEMBER
    assert membership("n1", disabled=False, leader="n1", cluster_size=2, members=("n2",)) is Membership.MEMBER
    # the leader does not count it
    assert (membership("n3", disabled=False, leader="n1", cluster_size=2, members=("n1", "n2"))
            is Membership.NOT_COUNTED)


def test_verdict_safe_only_when_every_stream_is_held_in_full_elsewhere() -> None:
    full = (StreamCopies("RIVER", 2, ("n1", "n2")), StreamCopies("HUMUS", 2, ("n2", "n1")))
    assert verdict("n3", ("RIVER", "HUMUS"), full) == (Verdict.SAFE, ())
    assert verdict("n3", (), full) == (Verdict.SAFE, ())
    # a stream only this node has
    assert verdict("n3", ("RIVER", "ONLY"), full) == (Verdict.UNSAFE, ("ONLY",))
    # a stream short of a current replica, or counting this node's copy
    short = (StreamCopies("RIVER", 3, ("n1", "n2")),)
    assert verdict("n3", ("RIVER",), short) == (Verdict.UNSAFE, ("RIVER",))
    counted = (StreamCopies("RIVER", 2, ("n1", "n3")),)
    assert verdict("n3", ("RIVER",), counted) == (Verdict.UNSAFE, ("RIVER",))
    assert verdict("n3", ("RIVER",), None) == (Verdict.UNKNOWN, ())


def removed(**kw: object) -> Observation:
    base: dict[str, object] = {
        "at": NOW, "node": "n3", "nats_ok": True, "routes": ("h1:6222", "h2:6222"), "routed": frozenset(),
        "registry_peers": (RegistryPeer("n1", "h1:6222"), RegistryPeer("n2", "h2:6222")),
        "meta_leader": None, "meta_members": (), "witness": None, "streams": (),
        "membership": Membership.REMOVED, "stored": ("RIVER",),
        "elsewhere": (StreamCopies("RIVER", 2, ("n1", "n2")),),
    }
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def test_a_removed_node_starts_afresh_when_safe() -> None:
    p = plan(removed(), Memory({}, None))
    assert p.actions == (StartAfresh(),)
    assert "its JetStream store was set aside and it rejoins as a new peer" in p.sentence


def test_a_removed_node_keeps_a_store_that_might_hold_the_only_copy() -> None:
    p = plan(removed(stored=("ONLY", "RIVER")), Memory({}, None))
    assert p.actions == () and p.operator  # logged as a warning
    assert "its copy of ONLY might be the only one" in p.sentence
    assert "(not held in full by the other nodes: ONLY is led by none of them)" in p.sentence
    assert "mv store removed-by-hand" in p.sentence  # the command to run
    short = plan(removed(elsewhere=(StreamCopies("RIVER", 2, ("n1", "n3")),)), Memory({}, None))
    assert "RIVER is R2, current on n1)" in short.sentence  # its own copy does not count
    unknown = plan(removed(elsewhere=None), Memory({}, None))
    assert unknown.actions == () and "could not be read, so its store is kept" in unknown.sentence


def test_jetstream_off_while_the_others_still_count_this_node_is_not_a_removal() -> None:
    p = plan(removed(counted_elsewhere=True), Memory({}, None))
    assert p.actions == () and p.operator
    assert "not a removal, its store is kept" in p.sentence


def test_a_node_not_counted_waits_before_it_counts_as_removed() -> None:
    o = removed(membership=Membership.NOT_COUNTED, meta_leader="n1",
                meta_members=(MetaMember("n1", True, False), MetaMember("n2", True, False)))
    tuning = Tuning(not_counted_after=20)
    joining = plan(o, Memory({}, None, {}, NOW - 5), tuning)
    assert joining.actions == () and "does not count this node (yet)" in joining.sentence
    assert plan(o, Memory({}, None, {}, NOW - 25), tuning).actions == (StartAfresh(),)
    assert plan(replace(o, membership=Membership.MEMBER), Memory({}, None, {}, NOW - 25), tuning).actions == ()


def test_after_starting_afresh_it_waits_to_be_admitted_instead_of_starting_afresh_again() -> None:
    o = removed(membership=Membership.NOT_COUNTED, meta_leader="n1", stored=(),
                meta_members=(MetaMember("n1", True, False), MetaMember("n2", True, False)))
    tuning = Tuning(not_counted_after=20, rejoin_wait=600)
    waiting = plan(o, Memory({}, None, {}, NOW - 100, NOW - 90), tuning)
    assert waiting.actions == ()
    assert "started afresh, waiting to be admitted as a new peer" in waiting.sentence
    # not admitted long after: try once more
    assert plan(o, Memory({}, None, {}, NOW - 700, NOW - 650), tuning).actions == (StartAfresh(),)


# --- real servers --------------------------------------------------------------------------
async def forest_of_three(embedded: EmbeddedFactory) -> list[EmbeddedNats]:
    nodes = await routed_servers(embedded, "h")
    await nodes[0].retire_witness()
    return nodes


class Beating:
    """A registry client that keeps its registration alive until closed."""

    def __init__(self, reg: object) -> None:
        self.reg = reg
        self.task = asyncio.create_task(reg.run_heartbeat())  # type: ignore[attr-defined]

    async def close(self) -> None:
        self.task.cancel()
        await self.reg.close()  # type: ignore[attr-defined]


async def removed_manager(nodes: list[EmbeddedNats], url: str) -> tuple[ClusterManager, list]:
    """h3 removed from the cluster while it runs, and a cluster manager for it."""
    h1, _, h3 = nodes
    async with h1.system_client() as sysc:
        await sysc.server_remove("h3")
    await eventually(lambda: h3.monitor.jsz(), timeout=30, what="h3 answers")

    async def disabled() -> bool:
        return (await h3.monitor.jsz()).disabled

    await eventually(disabled, timeout=30, what="h3's JetStream disabled by the removal")
    closers: list = []
    for e in nodes:
        reg = open_registry(url, service="nimsforest", heartbeat_interval=1.0)
        await reg.register(NodeInfo(name=e.name, cluster_address=e.cluster_address, node_id=e.name,
                                    monitor_url=e.monitor_url))
        closers.append(Beating(reg))
    conn = ConnectionManager([h3.system_url], ConnectionOptions(retry_attempts=2, retry_interval=0.2),
                             user=h3.credentials.app_user, password=h3.credentials.app_password)
    await conn.connect()
    closers.append(conn)
    observer = NatsObserver("h3", conn, embedded=h3)
    return ClusterManager(embedded=h3, observer=observer, registry=closers[2].reg,
                          interval=0.5), closers


async def r2(js: object, config: StreamConfig) -> bool:
    """Scale to R2 the way the acting node's manager does after a removal."""
    info = await js.stream_info(config.name)  # type: ignore[attr-defined]
    await js.update_stream(dataclasses.replace(info.config, num_replicas=2))  # type: ignore[attr-defined]
    return True


async def test_removed_node_sets_its_store_aside_when_the_others_hold_everything(
    embedded: EmbeddedFactory,
) -> None:
    nodes = await forest_of_three(embedded)
    h1, _, h3 = nodes
    nc = await nats.connect(h1.client_url)
    closers: list = []
    try:
        js = nc.jetstream()
        config = StreamConfig(name="KEPT", subjects=["kept.>"], num_replicas=3, placement=Placement(tags=[NODE_TAG]))
        await eventually(lambda: js.add_stream(config), timeout=30, what="an R3 stream")
        for i in range(20):
            await publish_stored(js, "kept.x", str(i).encode(), msg_id=f"kept-{i}")
        await eventually(lambda: "KEPT" in stored_streams(h3.store_dir), what="h3 holds a copy")
        manager, closers = await removed_manager(nodes, f"memory://heal-{free_port()}")
        await eventually(lambda: r2(js, config), timeout=30, what="KEPT at R2 on h1 and h2")

        async def healed() -> str | None:
            said = await manager.cycle()
            return said if "set aside" in said else None

        said = await eventually(healed, timeout=60, interval=0.5, what="h3 starts afresh")
        assert "rejoins as a new peer" in said
        for _ in range(4):  # and then waits to be admitted: no second start afresh
            assert "set aside" not in await manager.cycle()
        healed_at = time.monotonic()
        aside = [p for p in h3.config.data_dir.iterdir() if p.name.startswith(REMOVED_PREFIX)]
        assert len(aside) == 1 and (aside[0] / "jetstream").is_dir()  # set aside, not deleted
        assert "KEPT" not in stored_streams(h3.store_dir)
        assert not (await h3.monitor.jsz()).disabled  # JetStream runs again, on an empty store
        info = await js.stream_info("KEPT")
        assert info.state.messages == 20
        # a new server name, which the meta leader admits at once (the old one for 5 minutes)
        assert h3.server_name == "h3-gen-1" and h3.name == "h3"
        assert (h3.config.data_dir / "generation").read_text().strip() == "1"

        async def admitted() -> bool:
            meta = (await h1.monitor.jsz()).meta_cluster
            return meta is not None and "h3-gen-1" in meta.members and "h3" not in meta.members

        await eventually(admitted, timeout=30, what="h3-gen-1 a meta member on h1")

        async def member() -> str | None:
            said = await manager.cycle()
            status = manager.status()
            return said if status is not None and status.membership is Membership.MEMBER else None

        await eventually(member, timeout=30, interval=0.5, what="h3's manager sees it a member")
        status = manager.status()
        assert status is not None and status.node == "h3" and status.server == "h3-gen-1"
        assert {p.name for p in status.peers} >= {"h1", "h2"}  # nodes, never server names

        async def r3() -> bool:  # what the acting node's manager does once h3 is stable
            info = await js.stream_info("KEPT")
            if info.config.num_replicas != 3:
                await js.update_stream(dataclasses.replace(info.config, num_replicas=3))
                return False
            cluster = info.cluster
            replicas = {r.name: r for r in (cluster.replicas or [])} if cluster else {}
            on = {cluster.leader if cluster else None, *replicas}
            return on == {"h1", "h2", "h3-gen-1"} and all(r.current for r in replicas.values())

        await eventually(r3, timeout=60, interval=0.2, what="KEPT back at R3, h3-gen-1 current")
        print(f"heal to R3 back: {time.monotonic() - healed_at:.1f}s")
        assert (await js.stream_info("KEPT")).state.messages == 20
        assert (await h3.monitor.varz()).server_name == "h3-gen-1"
        assert "KEPT" in stored_streams(h3.store_dir)  # its copy, on the new store
    finally:
        await nc.close()
        for c in closers:
            await c.close()


async def test_removed_node_with_the_only_copy_of_a_stream_refuses(embedded: EmbeddedFactory) -> None:
    nodes = await forest_of_three(embedded)
    h1, _, h3 = nodes
    nc = await nats.connect(h1.client_url)
    closers: list = []
    try:
        js = nc.jetstream()
        only = StreamConfig(name="ONLY", subjects=["only.>"], num_replicas=1, placement=Placement(tags=["node:h3"]))
        await eventually(lambda: js.add_stream(only), timeout=30, what="an R1 stream on h3")
        await publish_stored(js, "only.x", b"precious", msg_id="precious")
        manager, closers = await removed_manager(nodes, f"memory://refuse-{free_port()}")
        said = ""
        for _ in range(4):
            said = await manager.cycle()
            await asyncio.sleep(0.5)
        assert "its copy of ONLY might be the only one" in said, said
        assert "mv store removed-by-hand" in said
        assert "ONLY" in stored_streams(h3.store_dir)
        assert not [p for p in h3.config.data_dir.iterdir() if p.name.startswith(REMOVED_PREFIX)]
        status = manager.status()
        assert status is not None and status.membership is Membership.REMOVED
        assert any("removed from the cluster" in p for p in status.problems)
    finally:
        await nc.close()
        for c in closers:
            await c.close()
