"""HTTP ways into the River, as a router the node's app includes:

    POST /api/v1/river/{subject}   body: any JSON; stored on river.<subject>
                                   (optional Idempotency-Key header: stored once)
                                   202 {"stream", "subject", "seq", "duplicate"}
    POST /webhooks/{path}          the webhook sources of forest.yaml, with their signature
                                   checks; 200 {"status": "ok", "stream", "subject", "seq", ...}

Errors are JSON {"error": "<one sentence>"}: 400 bad subject or body, 401 bad signature,
404 no source at that path, 409 an earlier request with the same Idempotency-Key is still
being stored (ask again: the answer is then 202 with "duplicate": true), 413 too large,
503 River or NATS unavailable (a drained node adds Retry-After and Nimsforest-Draining).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from nimsforest.forest.errors import FlowError

if TYPE_CHECKING:
    from nimsforest.forest.runtime import Forest


def _error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


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
                subject, body, source="api", msg_id=f"api:{key}" if key else None
            )
        except FlowError as exc:
            return _error(str(exc), exc.status)
        return JSONResponse(receipt.model_dump(), status_code=202)

    @router.post("/webhooks/{path:path}")
    async def webhook(path: str, request: Request) -> JSONResponse:
        """A webhook source declared in forest.yaml."""
        body = await request.body()
        try:
            receipt = await forest.receive_webhook(f"/webhooks/{path}", dict(request.headers), body)
        except FlowError as exc:
            return _error(str(exc), exc.status)
        return JSONResponse({"status": "ok", **receipt.model_dump()}, status_code=200)

    return router


__all__ = ["make_router"]
