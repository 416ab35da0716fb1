"""ensure_stream against a real nats-server: created when missing, marked as ours, and an
existing stream's replica count left alone unless the caller owns the replication."""

from __future__ import annotations

import nats
import pytest
from nats.js.errors import APIError

from nimsforest.streams import RIVER, ensure_stream, is_owned


async def test_an_existing_stream_keeps_its_replicas_without_rescale(nc: nats.NATS) -> None:
    js = nc.jetstream()
    await js.add_stream(name="RIVER", subjects=["river.>"])  # not ours yet, R1
    info = await ensure_stream(js, RIVER, 3, None, rescale=False)
    assert info.config.num_replicas == 1 and is_owned(info)
    assert info.config.subjects == ["river.>"]


async def test_rescale_asks_for_the_count_and_a_lone_server_refuses_it(nc: nats.NATS) -> None:
    js = nc.jetstream()
    await ensure_stream(js, RIVER, 1, None)
    with pytest.raises(APIError, match="replicas > 1 not supported"):
        await ensure_stream(js, RIVER, 3, None, rescale=True)
    assert (await js.stream_info("RIVER")).config.num_replicas == 1


async def test_a_missing_stream_is_created_at_the_given_count(nc: nats.NATS) -> None:
    js = nc.jetstream()
    info = await ensure_stream(js, RIVER, 1, None, rescale=False)
    assert info.config.num_replicas == 1 and is_owned(info)
