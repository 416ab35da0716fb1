"""Handing over every leadership a server holds (the core of a drain), on real servers."""

from __future__ import annotations

import nats
from nats.js.api import ConsumerConfig, Placement, StreamConfig

from natsembed import NODE_TAG, EmbeddedNats, hand_over_leaderships, held
from tests.support import EmbeddedFactory, eventually, publish_stored, routed_servers


async def forest_of_three(embedded: EmbeddedFactory) -> list[EmbeddedNats]:
    nodes = await routed_servers(embedded, "d")
    await nodes[0].retire_witness()
    return nodes


async def test_a_server_hands_over_its_meta_stream_and_consumer_leaderships(embedded: EmbeddedFactory) -> None:
    nodes = await forest_of_three(embedded)
    by_name = {n.name: n for n in nodes}
    nc = await nats.connect(nodes[0].client_url)
    try:
        js = nc.jetstream()
        for i in range(3):
            config = StreamConfig(name=f"S{i}", subjects=[f"s{i}.>"], num_replicas=3,
                                  placement=Placement(tags=[NODE_TAG]))
            await eventually(lambda config=config: js.add_stream(config), timeout=30, what="an R3 stream")
            await js.add_consumer(f"S{i}", ConsumerConfig(durable_name=f"C{i}"))
            await publish_stored(js, f"s{i}.x", b"x", msg_id=f"s{i}-x")
        # the server that leads S0 also leads the meta group
        leader = (await js.stream_info("S0")).cluster.leader  # type: ignore[union-attr]
        victim = by_name[str(leader)]
        async def leads_meta() -> bool:
            if (await held(victim)).meta:
                return True
            async with victim.system_client() as sysc:
                await sysc.meta_stepdown(preferred=victim.name)
            return (await held(victim)).meta

        await eventually(leads_meta, timeout=30, what=f"{victim.name} leads the meta group")
        before = await held(victim)
        assert before.meta and any(x.consumer is None for x in before.led)

        after = await hand_over_leaderships(victim, timeout=60)
        assert after.none_left and after.led == () and not after.meta, after
        meta = (await nodes[0].monitor.jsz()).meta_cluster
        assert meta is not None and meta.leader not in (None, victim.name)
        for i in range(3):  # still served, by another leader
            info = await js.stream_info(f"S{i}")
            assert info.cluster is not None and info.cluster.leader != victim.name
            c = await js.consumer_info(f"S{i}", f"C{i}")
            assert c.cluster is not None and c.cluster.leader != victim.name
            await js.publish(f"s{i}.x", b"y")
    finally:
        await nc.close()


async def test_single_replica_assets_are_reported_not_stepped_down(embedded: EmbeddedFactory) -> None:
    nodes = await forest_of_three(embedded)
    victim = nodes[2]
    nc = await nats.connect(nodes[0].client_url)
    try:
        js = nc.jetstream()
        only = StreamConfig(name="ONE", subjects=["one.>"], num_replicas=1, placement=Placement(tags=["node:d3"]))
        await eventually(lambda: js.add_stream(only), timeout=30, what="an R1 stream on d3")
        after = await hand_over_leaderships(victim, timeout=20)
        assert after.none_left
        assert [str(x) for x in after.single] == ["ONE"]
    finally:
        await nc.close()
