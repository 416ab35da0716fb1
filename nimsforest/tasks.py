"""An owner for a node's long-running tasks.

`TaskOwner` is an async context manager: `spawn()` starts a task it owns; leaving the
context cancels every task still running and awaits each, so no task outlives its owner
and none is left unawaited. A task that ends with an error while the owner lives is
logged in one sentence (the loops keep going through errors themselves; this is the
backstop).

`cancel_and_wait()` is how every owner of tasks stops them: one cancel is not always enough
on Python 3.11. `asyncio.wait_for` (inside nats-py's every request: each KV read, each
JetStream call) returns its result instead of raising when the cancel lands in the loop
tick in which the awaited reply arrives (cpython#86296, fixed in 3.12 only), and the task
goes on as if never cancelled: a polling loop then polls forever and the stop that awaits
it never returns. So a task still running a moment after its cancel is cancelled again,
and the wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any

log = logging.getLogger("nimsforest")

# a task still running this long after its cancel has lost it (see above): cancelled again.
# Long enough that a task's own clean-up on cancel (a finally that awaits) is not cut short.
RECANCEL_AFTER = 0.5
# seconds a stop waits for the tasks it cancelled (a loop ends in milliseconds once cancelled)
STOP_WITHIN = 5.0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], within: float = STOP_WITHIN, *, owner: str = "a stop"
) -> set[asyncio.Task[Any]]:
    """Cancel `tasks` and wait until every one has ended, cancelling again each
    RECANCEL_AFTER seconds one that goes on (a lost cancel), for at most `within` seconds.
    Returns the tasks still running then (none, unless one ignores cancellation), said in
    one sentence naming their `owner` and them; their results and errors are retrieved."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    done: set[asyncio.Task[Any]] = set()
    pending: set[asyncio.Task[Any]] = set()
    for t in tasks:
        (done if t.done() else pending).add(t)
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            break
        ended, pending = await asyncio.wait(pending, timeout=min(RECANCEL_AFTER, left))
        done |= ended
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved: the owner logs what matters
    if pending:
        names = ", ".join(sorted(t.get_name() for t in pending))
        log.error("%s: %d task(s) did not stop within %gs of being cancelled (%s)",
                  owner, len(pending), within, names)
    return pending


class TaskOwner:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        if self._closing:
            coro.close()
            raise RuntimeError(f"cannot start {name}: its owner is stopping")
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        if not self._closing:
            self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("Task %s ended: %s", task.get_name(), task.exception())

    async def __aenter__(self) -> TaskOwner:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Cancel every task and wait for each to end (cancelled again if it goes on, for
        up to STOP_WITHIN seconds: a close never hangs on a lost cancel)."""
        self._closing = True
        await cancel_and_wait(list(self._tasks), owner="the node")
        self._tasks.clear()


__all__ = ["RECANCEL_AFTER", "STOP_WITHIN", "TaskOwner", "cancel_and_wait"]
