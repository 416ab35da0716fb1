"""An owner for a node's long-running tasks.

`TaskOwner` is an async context manager: `spawn()` starts a task it owns; leaving the
context cancels every task still running and awaits each, so no task outlives its owner
and none is left unawaited. A task that ends with an error while the owner lives is
logged in one sentence (the loops keep going through errors themselves; this is the
backstop).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

log = logging.getLogger("nimsforest")


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
        """Cancel every task and wait for each to end."""
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()


__all__ = ["TaskOwner"]
