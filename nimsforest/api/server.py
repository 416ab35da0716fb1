"""Serving an ASGI app with uvicorn inside our event loop, on a socket we bind ourselves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from nimsforest.api.sockets import AddressInUse, bind_socket

__all__ = ["AddressInUse", "ApiServer", "bind_socket"]

log = logging.getLogger("nimsforest.api")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the node owns SIGINT/SIGTERM/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """Runs `app` on (host, port) until stop() is called."""

    def __init__(self, app: Callable[..., Any], host: str, port: int) -> None:
        self.host = host
        self.sock = bind_socket(host, port)
        self.port = int(self.sock.getsockname()[1])
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=3
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self.sock]), name="api-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # surfaces the error
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5.0)
        self.sock.close()
