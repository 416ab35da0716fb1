"""watch_peers(): blocking queries (or polling) turned into ADDED / REMOVED events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any, Protocol, TypeVar

from registry._errors import RegistryError
from registry._model import NodeInfo, PeerEvent, PeerEventType
from registry._timing import Timing

T = TypeVar("T")


class Watched(Protocol):
    """What the watch loop needs of a registry client (registry._base.Registry)."""

    timing: Timing
    _closed: asyncio.Event

    async def _fetch(
        self, index: int | None, wait: float | None
    ) -> tuple[int | None, list[NodeInfo]]: ...

    async def _unless_closed(self, coro: Coroutine[Any, Any, T]) -> T | None: ...

    async def _sleep(self, seconds: float) -> bool: ...

    def _is_self(self, node: NodeInfo) -> bool: ...


async def watch(reg: Watched, known: Iterable[NodeInfo], wait: float) -> AsyncIterator[PeerEvent]:
    """The loop behind `Registry.watch_peers` (its contract is in `Registry`'s docstring).

    Each round is a blocking query from the last index when the backend answers with
    one, else a plain list after sleeping one heartbeat interval. A failed round falls
    back to polling until a plain list works again; failures yield nothing (no REMOVED
    events for a silent registry). A server that returns early without a change is not
    allowed to make the loop spin.
    """
    current = {n.identity(): n for n in known if not reg._is_self(n)}
    index: int | None = None
    blocking = True
    first = True
    while not reg._closed.is_set():
        started = time.monotonic()
        try:
            if index is not None and blocking:
                answer = await reg._unless_closed(reg._fetch(index, wait))
                if answer is None:
                    return
                new_index, nodes = answer
            else:
                if not first and await reg._sleep(reg.timing.interval):
                    return
                new_index, nodes = await reg._fetch(None, None)
        except RegistryError:
            index, first = None, False  # fall back to polling until a plain list works
            continue
        first = False
        if new_index is None:
            blocking = False  # this backend or server has no blocking queries
        fresh = {n.identity(): n for n in nodes if not reg._is_self(n)}
        for key in [k for k in current if k not in fresh]:
            yield PeerEvent(type=PeerEventType.REMOVED, node=current.pop(key))
        for key, node in fresh.items():
            if key not in current:
                current[key] = node
                yield PeerEvent(type=PeerEventType.ADDED, node=node)
        unchanged = index is not None and new_index == index
        index = new_index
        if unchanged and time.monotonic() - started < wait / 2:
            # an early return without a change: do not let a server spin us
            if await reg._sleep(min(reg.timing.interval, 1.0)):
                return
