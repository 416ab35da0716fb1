"""The registry server: a FastAPI app over one `Store`, persisted to an atomic JSON file.

API (details and examples in docs/REGISTRY.md):

    POST   /v1/services/{service}/nodes                  register (201 new, 200 taken over)
    GET    /v1/services/{service}/nodes[?index=N&wait=30s]   live nodes; blocking query
    GET    /v1/services/{service}/nodes/{name}           one node
    PUT    /v1/services/{service}/nodes/{name}/heartbeat renew the TTL
    DELETE /v1/services/{service}/nodes/{name}           deregister (204)
    GET    /v1/services                                  services with live nodes
    GET    /v1/health                                    the registry itself

Every node answer carries `X-Registry-Index`. Errors are `{"error": "<one sentence>"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from registry._atomic import write_atomic
from registry._errors import RegistryConflict
from registry._model import NodeInfo, check_name
from registry._store import NotRegistered, Store, parse_body_ttl

log = logging.getLogger("registry")

INDEX_HEADER = "X-Registry-Index"
STATE_FILE = "state.json"
MAX_BODY = 64 * 1024
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class Fail(Exception):
    """An error answer: status code and one sentence."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def create_app(
    *,
    data_dir: str | Path | None = None,
    token: str | None = None,
    min_ttl: float = 1.0,
    max_ttl: float = 3600.0,
    default_ttl: float = 30.0,
    max_wait: float = 300.0,
    max_body: int = MAX_BODY,
) -> FastAPI:
    """The registry app. With `data_dir`, state is kept in `<data_dir>/state.json`.

    Loads and test-writes the state file at once, so a bad data dir fails here with a
    `StateFileError` or `OSError` rather than on the first registration.
    """
    store = Store(min_ttl=min_ttl, max_ttl=max_ttl, default_ttl=default_ttl, on_expire=_log_expiry)
    path = Path(data_dir) / STATE_FILE if data_dir is not None else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if store.load_file(path):
            log.info("Loaded %d node(s) from %s; each has one full TTL to heartbeat.", store.node_count(), path)
        write_atomic(path, store.snapshot())
    saver = _Saver(store, path)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reaper = asyncio.create_task(_reap(store, saver, min(1.0, min_ttl / 2)))
        try:
            yield
        finally:
            store.close()
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            with contextlib.suppress(Exception):
                await saver.save()

    app = FastAPI(title="NimsForest registry", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/v1/openapi.json")
    app.state.store = store  # the CLI wakes blocking queries through it on shutdown
    app.add_middleware(_Guard, token=token or None, max_body=max_body)
    _install_errors(app)

    def answer(body: Any, status: int = 200, index: int | None = None) -> JSONResponse:
        return JSONResponse(body, status, headers={INDEX_HEADER: str(store.index if index is None else index)})

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        services = store.services()
        return answer({"status": "ok", "index": store.index, "services": len(services),
                       "nodes": sum(services.values()), "persistent": path is not None})

    @app.get("/v1/services")
    async def services() -> JSONResponse:
        return answer([{"name": name, "nodes": count, "index": store.service_index(name)}
                       for name, count in store.services().items()])

    @app.post("/v1/services/{service}/nodes")
    async def register(service: str, request: Request) -> JSONResponse:
        _name(service, "service name")
        body = await _read_json(request, max_body)
        if not isinstance(body, dict):
            raise Fail(422, "The request body must be a JSON object describing the node.")
        try:
            ttl = parse_body_ttl(body.get("ttl_seconds"))
        except ValueError as exc:
            raise Fail(422, f"Invalid registration: {exc}.") from None
        fields = {k: v for k, v in body.items() if k not in ("registered_at", "create_index", "ttl_seconds")}
        try:
            info = NodeInfo.model_validate(fields)
        except ValidationError as exc:
            raise Fail(422, f"Invalid registration: {_explain(exc)}.") from None
        try:
            stored, created = store.register(service, info, ttl)
        except RegistryConflict as exc:
            raise Fail(409, str(exc), name=exc.name, node_id=exc.holder_node_id) from None
        await saver.save()
        ttl_used = store.bound_ttl(ttl)
        log.info("Node %s %s service %s at %s (create index %s, TTL %g s).", stored.name,
                 "registered in" if created else "re-registered in", service, stored.cluster_address,
                 stored.create_index, ttl_used)
        return answer(_record(stored, ttl_used), 201 if created else 200)

    @app.get("/v1/services/{service}/nodes")
    async def nodes(service: str, request: Request) -> JSONResponse:
        _name(service, "service name")
        query = request.query_params
        index = _whole(query.get("index"), "index")
        wait = _duration(query.get("wait"), "wait")
        if query.get("watch", "").lower() in ("1", "true", "yes") and index is None:
            index = store.index
        if index is not None:
            await store.wait(service, index, min(wait if wait is not None else max_wait, max_wait))
        listed = store.nodes(service)
        await saver.save()  # expiries found while listing are on disk before anyone acts on them
        return answer([_record(info, ttl) for info, ttl in listed])

    @app.get("/v1/services/{service}/nodes/{name}")
    async def node(service: str, name: str) -> JSONResponse:
        _name(service, "service name")
        _name(name, "node name")
        for info, ttl in store.nodes(service):
            if info.name == name:
                return answer(_record(info, ttl))
        raise Fail(404, f"Node '{name}' is not registered in service '{service}'.")

    @app.put("/v1/services/{service}/nodes/{name}/heartbeat")
    async def heartbeat(service: str, name: str, request: Request) -> JSONResponse:
        _name(service, "service name")
        _name(name, "node name")
        await _read_json(request, max_body, optional=True)
        info, ttl = _change(lambda: store.heartbeat(service, name, request.query_params.get("node_id")))
        await saver.save()
        return answer(_record(info, ttl))

    @app.delete("/v1/services/{service}/nodes/{name}")
    async def deregister(service: str, name: str, request: Request) -> Response:
        _name(service, "service name")
        _name(name, "node name")
        _change(lambda: store.deregister(service, name, request.query_params.get("node_id")))
        await saver.save()
        log.info("Node %s deregistered from service %s.", name, service)
        return Response(status_code=204, headers={INDEX_HEADER: str(store.index)})

    return app


# --- helpers -----------------------------------------------------------------------------------
class _Saver:
    """Writes the store's snapshot after changes; concurrent saves coalesce into one write."""

    def __init__(self, store: Store, path: Path | None) -> None:
        self.store, self.path = store, path
        self.saved = store.version
        self.lock = asyncio.Lock()

    async def save(self) -> None:
        if self.path is None:
            return
        async with self.lock:
            version = self.store.version
            if version == self.saved:
                return
            try:
                await asyncio.to_thread(write_atomic, self.path, self.store.snapshot())
            except OSError as exc:
                log.error("Cannot save the registry state to %s: %s.", self.path, exc.strerror or exc)
                raise Fail(500, f"The registry cannot save its state: {exc.strerror or exc}.") from None
            self.saved = version


async def _reap(store: Store, saver: _Saver, period: float) -> None:
    while True:
        await asyncio.sleep(period)
        store.expire()
        with contextlib.suppress(Fail):
            await saver.save()


def _log_expiry(service: str, info: NodeInfo) -> None:
    log.info("Node %s expired from service %s (no heartbeat within its TTL).", info.name, service)


def _change(fn: Any) -> Any:
    try:
        return fn()
    except NotRegistered as exc:
        raise Fail(404, str(exc)) from None
    except RegistryConflict as exc:
        raise Fail(409, f"Node name '{exc.name}' belongs to another node (node id {exc.holder_node_id}).",
                   name=exc.name, node_id=exc.holder_node_id) from None


def _record(info: NodeInfo, ttl: float) -> dict[str, Any]:
    body = info.model_dump(mode="json")
    body.update(address=info.host, port=info.port, ttl_seconds=ttl)
    return body


def _name(value: str, what: str) -> None:
    try:
        check_name(value, what)
    except ValueError as exc:
        raise Fail(400, f"{str(exc)[:200]}.") from None


def _whole(value: str | None, param: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:
        raise Fail(400, f"Query parameter '{param}' must be a whole number of at least 0.")
    return int(value)


def _duration(value: str | None, param: str) -> float | None:
    if value is None:
        return None
    m = _DURATION.match(value)
    if not m:
        raise Fail(400, f"Query parameter '{param}' must be a duration such as 30s, 500ms or 5m.")
    return float(m.group(1)) * _UNITS[m.group(2)]


async def _read_json(request: Request, limit: int, optional: bool = False) -> Any:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Fail(413, f"The request body is larger than {limit // 1024} KiB.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if optional and not raw.strip():
        return None
    if not raw.strip():
        raise Fail(400, "The request body is empty; send a JSON object.")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Fail(400, f"The request body is not valid JSON ({str(exc)[:120]}).") from None


def _explain(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def _install_errors(app: FastAPI) -> None:
    def error(status: int, message: str, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status)

    @app.exception_handler(Fail)
    async def _fail(request: Request, exc: Fail) -> JSONResponse:
        return error(exc.status, exc.message, **exc.extra)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error(404, f"No such endpoint: {request.method} {request.url.path}.")
        if exc.status_code == 405:
            return error(405, f"Method {request.method} is not allowed on {request.url.path}.")
        return error(exc.status_code, f"{exc.detail}.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        return error(400, f"Invalid request: {first.get('msg', 'bad input')}.")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("Unexpected error in the registry while serving %s %s", request.method, request.url.path)
        return error(500, "Internal registry error; see the registry's log.")


class _Guard:
    """ASGI middleware: the bearer token (when set) and the declared body size."""

    def __init__(self, app: ASGIApp, token: str | None, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.token is not None:
            given = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
                why = "is wrong" if given else "is missing"
                response = JSONResponse(
                    {"error": f"This registry needs a bearer token (Authorization: Bearer <token>); yours {why}."},
                    401, headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            text = declared.decode("latin-1").strip()
            status = 400 if not text.isdigit() else 413 if int(text) > self.max_body else 0
            if status:
                message = ("The Content-Length header is not a number." if status == 400
                           else f"The request body is larger than {self.max_body // 1024} KiB.")
                await JSONResponse({"error": message}, status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = ["create_app", "INDEX_HEADER", "STATE_FILE", "MAX_BODY"]
