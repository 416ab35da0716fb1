"""The node's HTTP API (FastAPI): health, metrics, and the routers of the forest.

Every handler answers from in-memory state; none waits on nats-server. The app knows the
node only through what it is given: a function returning the node's frozen
`NodeSnapshot`, the routers of the forest and its control plane, and a hook that hears
of every request refused for its body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from nimsforest import __version__, metrics
from nimsforest.control import validation_sentence
from nimsforest.health import NodeSnapshot, cluster_health, node_health, registry_health

RefusedHook = Callable[[Request, str], Awaitable[None]]


async def _ignore(request: Request, message: str) -> None:
    """No one to tell about a refused request."""


def create_app(
    snapshot: Callable[[], NodeSnapshot],
    routers: Sequence[APIRouter] = (),
    on_refused: RefusedHook = _ignore,
) -> FastAPI:
    # /docs and /redoc load Swagger UI and ReDoc from the package, never from a CDN
    app = FastAPIOffline(
        title="NimsForest node API",
        version=__version__,
        description="Health, metrics and management of one NimsForest node.",
    )

    @app.get("/health", tags=["health"], summary="Overall health (200 healthy, 503 not)")
    def health() -> JSONResponse:
        code, body = node_health(snapshot())
        return JSONResponse(body, status_code=code)

    @app.get("/health/cluster", tags=["health"], summary="Cluster state (200 whole, 503 degraded)")
    def health_cluster() -> JSONResponse:
        code, body = cluster_health(snapshot())
        return JSONResponse(body, status_code=code)

    @app.get("/health/registry", tags=["health"], summary="Registry connection (200 up, 503 down)")
    def health_registry() -> JSONResponse:
        code, body = registry_health(snapshot())
        return JSONResponse(body, status_code=code)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)

    # every error is {"error": "<one sentence>"}, whichever layer refuses the request
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else None
        if exc.status_code == 404 and message in (None, "Not Found"):
            message = f"There is no endpoint {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}."
        return JSONResponse({"error": message or f"HTTP {exc.status_code}."},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = validation_sentence(exc.errors())
        await on_refused(request, message)
        return JSONResponse({"error": message}, status_code=422)

    return app


__all__ = ["create_app"]
