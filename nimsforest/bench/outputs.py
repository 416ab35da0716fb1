"""The output hop of `nimsforest bench pipeline`: leaves on the Wind delivered by an http
output to a local HTTP receiver, next to raw httpx posting the same bodies to the same
receiver with the same concurrency, in the same run.

Both runs: `window` events in flight; an event is done when the receiver has its body
(the leaf's `data.id`). The output run adds what the forest does per event: a pull
consumption (fetch + ack) of WIND, the idempotency key, and the request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import nats

from nimsforest.bench.results import Result
from nimsforest.forest.leaf import Leaf

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Receiver:
    """A minimal HTTP/1.1 keep-alive server: answers 200 and reports each body's key."""

    def __init__(self) -> None:
        self.on_key: Callable[[str], None] = lambda key: None
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:].strip())
                body = await reader.readexactly(length)
                writer.write(_OK)
                try:
                    self.on_key(str(json.loads(body)["data"]["id"]))
                except (ValueError, KeyError, TypeError):
                    pass
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


def _leaf(n: int) -> bytes:
    return Leaf.new("bench.out", {"id": f"o-{n}", "pursue": True, "priority": "high",
                                  "reason": "benchmark"}, "bench").to_json()


async def _drive(receiver: Receiver, n_events: int, window: int,
                 send: Callable[[int], Awaitable[Any]]) -> Result:
    started: dict[str, float] = {}
    latencies: list[float] = []
    slots = asyncio.Semaphore(window)
    done = asyncio.Event()

    def on_key(key: str) -> None:
        t0 = started.pop(key, None)
        if t0 is not None:
            latencies.append(time.perf_counter() - t0)
            slots.release()
            if len(latencies) == n_events:
                done.set()

    receiver.on_key = on_key
    t_start = time.perf_counter()
    pending = []
    for i in range(n_events):
        await slots.acquire()
        started[f"o-{i}"] = time.perf_counter()
        pending.append(await send(i))
    await asyncio.wait_for(done.wait(), timeout=max(60.0, n_events / 20))
    seconds = time.perf_counter() - t_start
    await asyncio.gather(*pending, return_exceptions=True)
    return Result(n_events, seconds, latencies)


async def raw_posts(receiver: Receiver, n_events: int, window: int, concurrency: int) -> Result:
    """httpx posting the leaves' bodies, `concurrency` at a time."""
    sem = asyncio.Semaphore(concurrency)
    url = f"http://127.0.0.1:{receiver.port}/hook"
    async with httpx.AsyncClient(timeout=10.0) as client:

        async def post(body: bytes) -> None:
            async with sem:
                await client.post(url, content=body, headers={"Content-Type": "application/json"})

        async def send(i: int) -> Any:
            return asyncio.ensure_future(post(_leaf(i)))

        return await _drive(receiver, n_events, window, send)


async def output_hop(url: str, receiver: Receiver, n_events: int, window: int,
                     concurrency: int) -> Result:
    """The forest's http output delivering the leaves published on the Wind."""
    from nimsforest.forest import Forest, ForestConfig, parse_forest_config

    nc = await nats.connect(url)
    base: ForestConfig = parse_forest_config({"outputs": {"bench": {
        "subscribes": "bench.out", "url": f"http://127.0.0.1:{receiver.port}/hook",
        "concurrency": concurrency,
    }}}, base_dir=Path.cwd())
    forest = Forest(nc, base.model_copy(update={"decomposer": base.decomposer.model_copy(
        update={"enabled": False})}))
    await forest.start()
    js = nc.jetstream()
    try:
        return await _drive(receiver, n_events, window,
                            lambda i: js.publish_async("wind.bench.out", _leaf(i)))
    finally:
        await forest.stop()
        await nc.close()


__all__ = ["Receiver", "output_hop", "raw_posts"]
