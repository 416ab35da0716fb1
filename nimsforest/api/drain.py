"""The node's drain over HTTP, and the gate that turns new input away while drained.

    GET  /api/v1/node/drain      the drain: state, sentence, what the node still leads
    POST /api/v1/node/drain      drain this node (kept across restarts until undrained); 202
    POST /api/v1/node/undrain    serve again; 200

These routes sit with the River's /api/ routes, behind the same bearer token.

While an operator's drain is on, new input (POST /api/v1/river/..., POST /webhooks/...)
is answered 503 with `Retry-After: 1` and `Nimsforest-Draining: <node>`: nothing was
stored, and sending the same request to another node (or again later) is the right
retry. A graceful stop's drain keeps taking input until the listener closes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from nimsforest.drain import Drainer, DrainStatus

DRAINING_HEADER = "Nimsforest-Draining"
INPUT_PATHS = ("/api/v1/river/", "/webhooks/")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def make_drain_router(drainer: Drainer) -> APIRouter:
    router = APIRouter(tags=["node"])

    @router.get("/api/v1/node/drain", summary="This node's drain: state, sentence, what it still leads")
    async def drain_status() -> JSONResponse:
        return JSONResponse(_doc(drainer.node, drainer.status()))

    @router.post("/api/v1/node/drain", status_code=202,
                 summary="Drain this node: no new work, hand over every leadership (kept)")
    async def drain() -> JSONResponse:
        return JSONResponse(_doc(drainer.node, drainer.drain()), status_code=202)

    @router.post("/api/v1/node/undrain", summary="Serve again after a drain")
    async def undrain() -> JSONResponse:
        return JSONResponse(_doc(drainer.node, drainer.undrain()))

    return router


def _doc(node: str, status: DrainStatus) -> dict[str, Any]:
    return {"node": node, **status.doc()}


class DrainGate:
    """ASGI middleware: while `status()` refuses input, new input is answered 503."""

    def __init__(self, app: ASGIApp, status: Callable[[], DrainStatus], node: str) -> None:
        self.app, self.status, self.node = app, status, node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope.get("type") == "http"
            and scope.get("method") == "POST"
            and str(scope.get("path", "")).startswith(INPUT_PATHS)
            and self.status().refuses_input
        ):
            body = json.dumps({
                "error": f"Node {self.node} is drained and takes no new input; nothing was "
                         "stored: send it to another node.",
                "draining": True,
            }).encode()
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (DRAINING_HEADER.lower().encode(), self.node.encode()),
            ]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


__all__ = ["DRAINING_HEADER", "DrainGate", "make_drain_router"]
