"""Zones: a node's zone is a server tag, and JetStream's unique_tag spreads replicas."""

from __future__ import annotations

import nats
import pytest
from nats.js.api import Placement, StreamConfig
from nats.js.errors import BadRequestError

from natsembed import NODE_TAG, EmbeddedNats
from nimsforest.settings import SettingsError, load_settings
from tests.support import EmbeddedFactory, eventually, routed_servers


def test_a_zone_becomes_a_server_tag_and_turns_on_unique_tag(embedded: EmbeddedFactory) -> None:
    zoned = embedded("z1", extra_tags=("zone:eu-1",))
    text = zoned.render()
    assert 'server_tags: ["role:node", "node:z1", "zone:eu-1"]' in text
    jetstream = text.split("jetstream {", 1)[1].split("}", 1)[0]
    assert 'unique_tag: "zone:"' in jetstream
    assert zoned.zone == "eu-1"
    plain = embedded("p1")
    assert plain.zone is None and "unique_tag" not in plain.render()


def test_the_zone_setting_is_a_server_tag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIMSFOREST_ZONE", "rack-2")
    assert load_settings().server_tags == ["zone:rack-2"]
    monkeypatch.setenv("NATS_SERVER_TAGS", "disk:ssd, role:x")
    assert load_settings().server_tags == ["disk:ssd", "role:x", "zone:rack-2"]
    monkeypatch.setenv("NIMSFOREST_ZONE", "Not A Zone")
    with pytest.raises(SettingsError, match="NIMSFOREST_ZONE"):
        load_settings()


async def three(embedded: EmbeddedFactory, zones: tuple[str, ...]) -> list[EmbeddedNats]:
    """Three servers routed together (the first with its witness), in `zones`."""
    return await routed_servers(embedded, "z", len(zones), tuple((f"zone:{z}",) for z in zones))


R3 = StreamConfig(name="S3", subjects=["s3.>"], num_replicas=3, placement=Placement(tags=[NODE_TAG]))


async def test_three_zones_hold_an_r3_stream_in_distinct_zones(embedded: EmbeddedFactory) -> None:
    nodes = await three(embedded, ("a", "b", "c"))
    nc = await nats.connect(nodes[0].client_url)
    try:
        js = nc.jetstream()
        await eventually(lambda: js.add_stream(R3), timeout=30, what="an R3 stream")

        async def placed() -> list[str]:
            info = await js.stream_info("S3")
            assert info.cluster is not None and info.cluster.leader
            peers = [info.cluster.leader, *(r.name for r in info.cluster.replicas or [])]
            return peers if len(peers) == 3 else []

        peers = await eventually(placed, timeout=30, what="three replicas")
    finally:
        await nc.close()
    async with nodes[0].system_client() as sysc:
        tags = await sysc.server_tags()
    zones = {next(t for t in tags[p] if t.startswith("zone:")) for p in peers}
    assert zones == {"zone:a", "zone:b", "zone:c"}


async def test_two_zones_cannot_hold_three_replicas(embedded: EmbeddedFactory) -> None:
    # why the cluster manager caps the replication factor at the number of zones
    nodes = await three(embedded, ("a", "a", "b"))
    nc = await nats.connect(nodes[0].client_url)
    try:
        js = nc.jetstream()

        async def refused() -> int | None:
            try:
                await js.add_stream(R3)
            except BadRequestError as exc:
                return exc.err_code
            raise AssertionError("an R3 stream was placed in two zones")

        assert await eventually(refused, timeout=30, what="R3 refused") == 10005  # insufficient resources
        two = StreamConfig(name="S2", subjects=["s2.>"], num_replicas=2, placement=Placement(tags=[NODE_TAG]))
        info = await eventually(lambda: js.add_stream(two), timeout=30, what="an R2 stream")
        assert info.config.num_replicas == 2
    finally:
        await nc.close()
