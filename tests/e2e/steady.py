"""A steady writer for e2e scenarios: River inputs over HTTP, each acknowledged one recorded.

Every input has an Idempotency-Key; it goes round robin to the nodes a load balancer polling
/health every 0.5 s would use, and is sent again (to the next node) until some node answers
202. What it records is checked at the end against what the forest stored (`lost_or_twice`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from nimsforest.api.drain import DRAINING_HEADER
from tests.support import NodeProcess


@dataclass
class SteadyWriter:
    """Writes `body(i)` to /api/v1/river/<subject> with key `<prefix>-<i>`.

    `acked[i]` is the node that answered 202; `failures` every other answer (a drained
    node's documented 503 excepted, counted in `refused_draining`); `failed_503` only the
    503s, with the node that gave them."""

    nodes: list[NodeProcess]
    subject: str
    body: Callable[[int], Any]
    prefix: str = "w"
    token: str | None = None
    acked: dict[int, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    failed_503: list[str] = field(default_factory=list)
    refused_draining: int = 0
    ready: set[str] = field(default_factory=set)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def key(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self) -> SteadyWriter:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def __aenter__(self) -> SteadyWriter:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._balance())
            tasks.create_task(self._write())

    async def _balance(self) -> None:
        async with httpx.AsyncClient(timeout=1, trust_env=False) as http:
            while not self._stop.is_set():
                for n in self.nodes:
                    try:
                        ok = (await http.get(f"{n.api_url}/health")).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    (self.ready.add if ok else self.ready.discard)(n.name)
                await asyncio.sleep(0.5)

    async def _write(self) -> None:
        i = 0
        async with httpx.AsyncClient(timeout=5, trust_env=False, headers=self.headers) as http:
            while not self._stop.is_set():
                turn = i
                while not self._stop.is_set():
                    pool = [n for n in self.nodes if n.name in self.ready] or self.nodes
                    node = pool[turn % len(pool)]
                    turn += 1
                    try:
                        r = await http.post(f"{node.api_url}/api/v1/river/{self.subject}", json=self.body(i),
                                            headers={"Idempotency-Key": self.key(i)})
                    except httpx.HTTPError as exc:
                        self.failures.append(f"{node.name}: {type(exc).__name__}")
                        await asyncio.sleep(0.05)
                        continue
                    if r.status_code == 202:
                        self.acked[i] = node.name
                        break
                    if r.status_code == 503 and DRAINING_HEADER.lower() in r.headers:
                        self.refused_draining += 1
                        continue
                    self.failures.append(f"{node.name}: {r.status_code} {r.text}")
                    if r.status_code == 503:
                        self.failed_503.append(node.name)
                    await asyncio.sleep(0.05)
                i += 1
                await asyncio.sleep(0.01)

    async def more(self, count: int, timeout: float = 60) -> None:
        """Wait until `count` more inputs are acknowledged than now."""
        from tests.support import eventually

        target = len(self.acked) + count
        await eventually(lambda: len(self.acked) >= target, timeout=timeout,
                         what=f"{count} more inputs acknowledged (at {len(self.acked)})")


def lost_or_twice(acked: Iterable[str], seen: Iterable[str]) -> tuple[list[str], dict[str, int]]:
    """The acknowledged keys never seen, and the keys seen more than once."""
    counts = collections.Counter(seen)
    return [k for k in acked if counts[k] == 0], {k: c for k, c in counts.items() if c > 1}
