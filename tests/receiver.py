"""A real local HTTP receiver for output tests: a small starlette app served by uvicorn on
a free port, in the test's event loop. It records every request and answers from a plan:
each step is a status, or (status, headers); when the plan is empty it answers `status`
(200 by default). `fail_with(status)` / `fix()` change that default on command."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support import free_port


@dataclass(frozen=True)
class Request_:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered


@dataclass
class Receiver:
    plan: list[int | tuple[int, dict[str, str]]] = field(default_factory=list)
    status: int = 200
    seen: list[Request_] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_with(self, status: int) -> None:
        self.status = status

    def fix(self) -> None:
        self.plan.clear()
        self.status = 200

    def delivered(self) -> list[Request_]:
        return [r for r in self.seen if 200 <= r.status < 300]

    async def _any(self, request: Request) -> Response:
        step = self.plan.pop(0) if self.plan else self.status
        status, headers = step if isinstance(step, tuple) else (step, {})
        self.seen.append(Request_(request.method, request.url.path,
                                  {k.lower(): v for k, v in request.headers.items()},
                                  await request.body(), status))
        return Response(b"ok" if status < 300 else b"nope", status, headers=headers)


@contextlib.asynccontextmanager
async def receiver(**kw: object) -> AsyncIterator[Receiver]:
    r = Receiver(**kw)  # type: ignore[arg-type]
    r.port = free_port()
    app = Starlette(routes=[Route("/{path:path}", r._any, methods=["GET", "POST", "PUT"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=r.port, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield r
    finally:
        server.should_exit = True
        await task
