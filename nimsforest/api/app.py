"""The node's HTTP API (FastAPI): health, metrics, and the routers of the forest.

Every handler answers from in-memory state; none waits on nats-server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from nimsforest import __version__, metrics

if TYPE_CHECKING:
    from nimsforest.node import Node


def create_app(node: Node) -> FastAPI:
    app = FastAPI(
        title="NimsForest node API",
        version=__version__,
        description="Health, metrics and management of one NimsForest node.",
    )

    @app.get("/health", tags=["health"], summary="Overall health (200 healthy, 503 not)")
    def health() -> JSONResponse:
        code, body = node.health()
        return JSONResponse(body, status_code=code)

    @app.get("/health/cluster", tags=["health"], summary="Cluster state (200 whole, 503 degraded)")
    def health_cluster() -> JSONResponse:
        code, body = node.cluster_health()
        return JSONResponse(body, status_code=code)

    @app.get("/health/registry", tags=["health"], summary="Registry connection (200 up, 503 down)")
    def health_registry() -> JSONResponse:
        code, body = node.registry_health()
        return JSONResponse(body, status_code=code)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    for router in node.routers():
        app.include_router(router)

    # every error is {"error": "<one sentence>"}, whichever layer refuses the request
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else None
        if exc.status_code == 404 and message in (None, "Not Found"):
            message = f"There is no endpoint {request.method} {request.url.path}."
        elif message == "There was an error parsing the body":
            message = "The request body is not valid JSON."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        return JSONResponse({"error": message or f"HTTP {exc.status_code}."},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        from nimsforest.control._http import record_refused
        from nimsforest.control._schemas import validation_sentence

        message = validation_sentence(exc.errors())
        control = getattr(node, "control", None)
        if control is not None:
            await record_refused(control, request, message)
        return JSONResponse({"error": message}, status_code=422)

    return app


__all__ = ["create_app"]
