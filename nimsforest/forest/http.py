"""HTTP ways into the River, as a router the node's app includes:

    POST /api/v1/river/{subject}   body: any JSON; stored on river.<subject>
                                   (optional Idempotency-Key header: stored once)
                                   202 {"stream", "subject", "seq", "duplicate"}
    POST /webhooks/{path}          the webhook sources of forest.yaml, with their signature
                                   checks; 200 {"status": "ok", "stream", "subject", "seq", ...}

Errors are JSON {"error": "<one sentence>"}: 400 bad subject or body, 401 bad signature,
404 no source at that path, 413 too large, 503 River or NATS unavailable (after holding
the input up to NIMSFOREST_RIVER_HOLD while the River elects a leader; with Retry-After
when asking again may succeed; a drained node answers 503 with Retry-After and
Nimsforest-Draining at once: nothing was stored, send it to another node).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from nimsforest.forest.errors import FlowError
from nimsforest.forest.trace import TraceContext

if TYPE_CHECKING:
    from nimsforest.forest.runtime import Forest


def _error(message: str, status: int, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _refused(exc: FlowError) -> JSONResponse:
    return _error(str(exc), exc.status, exc.retry_after)


def make_router(forest: Forest) -> APIRouter:
    router = APIRouter(tags=["river"])

    @router.post("/api/v1/river/{subject:path}", status_code=202)
    async def flow_into_river(subject: str, request: Request) -> JSONResponse:
        """Store one JSON input in the River."""
        body = await request.body()
        if not body.strip():
            return _error("The request body is empty; a JSON body is required.", 400)
        key = request.headers.get("idempotency-key")
        try:
            receipt = await forest.flow(
                subject, body, source="api", msg_id=f"api:{key}" if key else None,
                trace=TraceContext.of(request.headers),
            )
        except FlowError as exc:
            return _refused(exc)
        return JSONResponse(receipt.model_dump(), status_code=202)

    @router.post("/webhooks/{path:path}")
    async def webhook(path: str, request: Request) -> JSONResponse:
        """A webhook source declared in forest.yaml."""
        body = await request.body()
        try:
            receipt = await forest.receive_webhook(f"/webhooks/{path}", dict(request.headers), body)
        except FlowError as exc:
            return _refused(exc)
        return JSONResponse({"status": "ok", **receipt.model_dump()}, status_code=200)

    return router


__all__ = ["make_router"]
