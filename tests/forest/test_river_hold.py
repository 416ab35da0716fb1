"""An input that arrives while the River has no leader waits for one (up to river.HOLD)."""

from __future__ import annotations

import asyncio

import nats
import pytest
from nats.js.api import StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

from nimsforest.forest import FlowError
from nimsforest.forest.river import DUPLICATE_IN_PROCESS, ask_again, flow


async def test_an_input_waits_for_the_river_to_answer_and_is_stored_once(nc: nats.NATS) -> None:
    js = nc.jetstream()
    pending = asyncio.ensure_future(flow(nc, js, "held", {"n": 1}, msg_id="held-1"))
    await asyncio.sleep(0.3)  # no stream answers yet: the input waits
    assert not pending.done()
    await js.add_stream(StreamConfig(name="RIVER", subjects=["river.>"]))
    receipt = await pending
    assert (receipt.stream, receipt.seq, receipt.duplicate) == ("RIVER", 1, False)
    assert (await js.stream_info("RIVER")).state.messages == 1


async def test_no_river_at_all_is_still_a_503_after_the_hold(nc: nats.NATS) -> None:
    with pytest.raises(FlowError) as err:
        await flow(nc, nc.jetstream(), "nowhere", {"n": 1})
    assert err.value.status == 503 and "River is not available" in str(err.value)


def test_only_an_unanswered_publish_or_its_own_copy_in_process_is_asked_again() -> None:
    in_process = APIError(code=409, err_code=DUPLICATE_IN_PROCESS,
                          description="duplicate message id is in process")
    assert ask_again(in_process) and ask_again(NoStreamResponseError())
    assert not ask_again(APIError(code=400, err_code=10071, description="wrong last sequence"))
    assert not ask_again(APIError(code=503, err_code=10077, description="store is closed"))
