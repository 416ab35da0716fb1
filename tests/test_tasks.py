"""cancel_and_wait: every owner's way to stop its tasks. A cancel can be lost on Python 3.11
(asyncio.wait_for returns the reply that arrived in the cancel's tick: cpython#86296), so
a task that goes on is cancelled again; a task that will not stop at all is given up on
in bounded time and named."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from nimsforest.tasks import TaskOwner, cancel_and_wait


class Polling:
    """A polling loop that awaits each reply through asyncio.wait_for, as nats-py awaits
    every request; `reply()` gives the awaited reply."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.polls = 0
        self._reply: asyncio.Future[None] | None = None

    async def run(self) -> None:
        while True:
            self._reply = asyncio.get_running_loop().create_future()
            self.asked.set()
            try:
                await asyncio.wait_for(self._reply, 5)
            except TimeoutError:
                pass
            self.polls += 1
            await asyncio.sleep(0.01)

    def reply(self) -> None:
        assert self._reply is not None
        self._reply.set_result(None)


async def _asked(poller: Polling) -> None:
    await asyncio.wait_for(poller.asked.wait(), 5)


async def test_a_task_whose_cancel_came_with_its_reply_is_stopped() -> None:
    poller = Polling()
    task = asyncio.create_task(poller.run(), name="poller")
    await _asked(poller)
    poller.reply()  # the reply arrives, and in the same tick the cancel
    async with asyncio.timeout(20):
        assert await cancel_and_wait([task], 10, owner="the test") == set()
    assert task.cancelled()


async def test_a_lost_cancel_is_why_cancel_and_wait_exists() -> None:
    # the same race with one cancel and a plain wait: the task goes on (Python 3.11)
    poller = Polling()
    task = asyncio.create_task(poller.run(), name="poller")
    await _asked(poller)
    poller.reply()
    task.cancel()
    await asyncio.wait({task}, timeout=0.5)
    lost = not task.done()
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.done()
    if not lost:
        pytest.skip("this Python does not lose the cancel (fixed in 3.12)")
    assert poller.polls >= 1  # it polled again after its cancel


async def test_a_task_that_refuses_to_stop_is_given_up_on_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                pass

    task = asyncio.create_task(stubborn(), name="stubborn")
    quick = asyncio.create_task(asyncio.sleep(10), name="quick")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="nimsforest"):
        async with asyncio.timeout(20):
            stuck = await cancel_and_wait([task, quick], 1.0, owner="the test")
    assert stuck == {task} and quick.cancelled()
    assert "the test: 1 task(s) did not stop within 1s of being cancelled (stubborn)" in caplog.text
    release.set()
    await asyncio.wait({task}, timeout=5)


async def test_errors_of_stopped_tasks_are_retrieved_and_done_tasks_pass() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails())
    await asyncio.wait({failed})
    finished = asyncio.create_task(asyncio.sleep(0))
    await finished
    loop = asyncio.get_running_loop()
    unretrieved: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))
    assert await cancel_and_wait([failed, finished], 1.0) == set()
    del failed  # a Task whose exception was never retrieved says so when collected
    gc.collect()
    assert unretrieved == []


async def test_a_task_owner_stops_a_task_whose_cancel_came_with_its_reply() -> None:
    poller = Polling()
    async with asyncio.timeout(20):
        async with TaskOwner() as owner:
            task = owner.spawn(poller.run(), "poller")
            await _asked(poller)
            poller.reply()
    assert task.cancelled()
