"""The node's drain over HTTP, and the gate that turns new input away while drained.

    GET  /api/v1/node/drain      the drain: state, sentence, what the node still leads
    POST /api/v1/node/drain      drain this node (kept across restarts until undrained); 202
    POST /api/v1/node/undrain    serve again; 200
    POST /api/v1/node/restart    restart this node (for nodes without ssh): it stops as a
                                 graceful stop does (draining first; an operator's drain
                                 stays kept) and exits with RESTART_EXIT_STATUS (75) for its
                                 supervisor (systemd, a container runtime) to start it; 202

These routes sit with the River's /api/ routes, behind the same bearer token. Each
change leaves an audit record (action `drain` / `undrain` / `restart`: who, when, which node, the
outcome), and so does a refusal before it (a 401 is audited as the route's own action).

While an operator's drain is on, new input (POST /api/v1/river/..., POST /webhooks/...)
is answered 503 with `Retry-After: 1` and `Nimsforest-Draining: <node>`: nothing was
stored, and sending the same request to another node (or again later) is the right
retry. A graceful stop's drain keeps taking input until the listener closes.

While any drain is on (an operator's or a graceful stop's), every answer carries
`Connection: close`: a client's next request opens a new connection, which another node
(or, once this listener is closed, a refused connect) answers, rather than going out on a
kept-alive connection just as the stopping server closes it, the one way a request could
be lost without any answer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from nimsforest.control import Action, Actor, AuditRecord, audited_as
from nimsforest.drain import RESTART_EXIT_STATUS, Drainer, DrainStatus

DRAINING_HEADER = "Nimsforest-Draining"
INPUT_PATHS = ("/api/v1/river/", "/webhooks/")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


Record = Callable[[AuditRecord], Awaitable[None]]


def make_drain_router(drainer: Drainer, guard: Any, record: Record,
                      restart: Callable[[], None] | None = None) -> APIRouter:
    """The drain routes; `guard` is the API's caller check (a dependency returning the
    Actor), `record` writes an audit record (it never raises), `restart` asks the node to
    stop with RESTART_EXIT_STATUS (None: the node cannot be restarted this way, 409)."""
    router = APIRouter(tags=["node"])

    async def audit(action: Action, who: Actor, status: DrainStatus) -> None:
        await record(AuditRecord(node=drainer.node, who=who, action=action, kind="node",
                                 name=drainer.node, ok=True, result="ok",
                                 detail=status.sentence))

    @router.get("/api/v1/node/drain", summary="This node's drain: state, sentence, what it still leads")
    async def drain_status() -> JSONResponse:
        return JSONResponse(_doc(drainer.node, drainer.status()))

    async def drain(who: Actor = Depends(guard)) -> JSONResponse:
        status = drainer.drain()
        await audit(Action.DRAIN, who, status)
        return JSONResponse(_doc(drainer.node, status), status_code=202)

    async def undrain(who: Actor = Depends(guard)) -> JSONResponse:
        status = drainer.undrain()
        await audit(Action.UNDRAIN, who, status)
        return JSONResponse(_doc(drainer.node, status))

    async def restart_node(who: Actor = Depends(guard)) -> JSONResponse:
        if restart is None:
            await record(AuditRecord(node=drainer.node, who=who, action=Action.RESTART,
                                     kind="node", name=drainer.node, ok=False,
                                     result="this node cannot be restarted through its API"))
            return JSONResponse({"error": f"Node {drainer.node} cannot be restarted through its "
                                          "API."}, status_code=409)
        status = drainer.status()
        await record(AuditRecord(node=drainer.node, who=who, action=Action.RESTART, kind="node",
                                 name=drainer.node, ok=True, result="ok",
                                 detail=f"exit status {RESTART_EXIT_STATUS}; {status.sentence}"))
        restart()
        return JSONResponse({**_doc(drainer.node, status), "restarting": True,
                             "exit_status": RESTART_EXIT_STATUS}, status_code=202)

    router.add_api_route("/api/v1/node/restart", restart_node, methods=["POST"], status_code=202,
                         route_class_override=audited_as(Action.RESTART),
                         summary="Restart this node: drain, stop, exit 75 for its supervisor "
                                 "to start it again")
    router.add_api_route("/api/v1/node/drain", drain, methods=["POST"], status_code=202,
                         route_class_override=audited_as(Action.DRAIN),
                         summary="Drain this node: no new work, hand over every leadership (kept)")
    router.add_api_route("/api/v1/node/undrain", undrain, methods=["POST"],
                         route_class_override=audited_as(Action.UNDRAIN),
                         summary="Serve again after a drain")
    return router


def _doc(node: str, status: DrainStatus) -> dict[str, Any]:
    return {"node": node, **status.doc()}


class DrainGate:
    """ASGI middleware: while `status()` refuses input, new input is answered 503; while any
    drain is on, every answer says `Connection: close`."""

    def __init__(self, app: ASGIApp, status: Callable[[], DrainStatus], node: str) -> None:
        self.app, self.status, self.node = app, status, node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        status = self.status()
        if status.closes_connections:
            send = _closing(send)
        if (
            scope.get("method") == "POST"
            and str(scope.get("path", "")).startswith(INPUT_PATHS)
            and status.refuses_input
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


def _closing(send: Send) -> Send:
    """`send` with `Connection: close` on the response (the server closes after it)."""

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await send(message)

    return closing


__all__ = ["DRAINING_HEADER", "RESTART_EXIT_STATUS", "DrainGate", "make_drain_router"]
