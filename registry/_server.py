"""The registry server: a FastAPI app over one `Store`, persisted to an atomic JSON file.

API (details and examples in docs/REGISTRY.md):

    POST   /v1/services/{service}/nodes                  register (201 new, 200 taken over)
    GET    /v1/services/{service}/nodes[?index=N&wait=30s]   live nodes; blocking query
    GET    /v1/services/{service}/nodes/{name}           one node
    PUT    /v1/services/{service}/nodes/{name}/heartbeat renew the TTL
    DELETE /v1/services/{service}/nodes/{name}           deregister (204)
    GET    /v1/services/{service}/nodes/{name}/metadata  the operator's metadata of a node
    PUT    /v1/services/{service}/nodes/{name}/metadata  replace it ({"metadata": {...}})
    PATCH  /v1/services/{service}/nodes/{name}/metadata  merge into it (an empty value removes)
    DELETE /v1/services/{service}/nodes/{name}/metadata  clear it (204)
    GET    /v1/services                                  services with live nodes
    GET    /v1/health                                    the registry itself

Every node answer carries `X-Registry-Index`. Errors are `{"error": "<one sentence>"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from registry._atomic import write_atomic
from registry._errors import RegistryConflict
from registry._model import MetadataBody, NodeInfo, OperatorMetadata
from registry._store import Store, parse_body_ttl
from registry._wire import (
    Fail,
    Guard,
    change,
    check_path_name,
    duration,
    explain,
    install_errors,
    read_json,
    record,
    whole,
)

log = logging.getLogger("registry")

INDEX_HEADER = "X-Registry-Index"
STATE_FILE = "state.json"
MAX_BODY = 64 * 1024


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
            log.info(
                "Loaded %d node(s) from %s; each has one full TTL to heartbeat.",
                store.node_count(),
                path,
            )
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

    app = FastAPI(
        title="NimsForest registry",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/v1/openapi.json",
    )
    app.state.store = store  # the CLI wakes blocking queries through it on shutdown
    app.add_middleware(Guard, token=token or None, max_body=max_body)
    install_errors(app)

    def answer(body: Any, status: int = 200, index: int | None = None) -> JSONResponse:
        return JSONResponse(
            body, status, headers={INDEX_HEADER: str(store.index if index is None else index)}
        )

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        services = store.services()
        return answer(
            {
                "status": "ok",
                "index": store.index,
                "services": len(services),
                "nodes": sum(services.values()),
                "persistent": path is not None,
            }
        )

    @app.get("/v1/services")
    async def services() -> JSONResponse:
        return answer(
            [
                {"name": name, "nodes": count, "index": store.service_index(name)}
                for name, count in store.services().items()
            ]
        )

    @app.post("/v1/services/{service}/nodes")
    async def register(service: str, request: Request) -> JSONResponse:
        check_path_name(service, "service name")
        body = await read_json(request, max_body)
        if not isinstance(body, dict):
            raise Fail(422, "The request body must be a JSON object describing the node.")
        try:
            ttl = parse_body_ttl(body.get("ttl_seconds"))
        except ValueError as exc:
            raise Fail(422, f"Invalid registration: {exc}.") from None
        fields = {
            k: v
            for k, v in body.items()
            if k not in ("registered_at", "create_index", "ttl_seconds")
        }
        try:
            info = NodeInfo.model_validate(fields)
        except ValidationError as exc:
            raise Fail(422, f"Invalid registration: {explain(exc)}.") from None
        try:
            stored, created = store.register(service, info, ttl)
        except RegistryConflict as exc:
            raise Fail(409, str(exc), name=exc.name, node_id=exc.holder_node_id) from None
        await saver.save()
        ttl_used = store.bound_ttl(ttl)
        log.info(
            "Node %s %s service %s at %s (create index %s, TTL %g s).",
            stored.name,
            "registered in" if created else "re-registered in",
            service,
            stored.cluster_address,
            stored.create_index,
            ttl_used,
        )
        return answer(record(stored, ttl_used), 201 if created else 200)

    @app.get("/v1/services/{service}/nodes")
    async def nodes(service: str, request: Request) -> JSONResponse:
        check_path_name(service, "service name")
        query = request.query_params
        index = whole(query.get("index"), "index")
        wait = duration(query.get("wait"), "wait")
        if query.get("watch", "").lower() in ("1", "true", "yes") and index is None:
            index = store.index
        if index is not None:
            await store.wait(service, index, min(wait if wait is not None else max_wait, max_wait))
        listed = store.nodes(service)
        await saver.save()  # expiries found while listing are on disk before anyone acts on them
        return answer([record(info, ttl) for info, ttl in listed])

    @app.get("/v1/services/{service}/nodes/{name}")
    async def node(service: str, name: str) -> JSONResponse:
        check_path_name(service, "service name")
        check_path_name(name, "node name")
        for info, ttl in store.nodes(service):
            if info.name == name:
                return answer(record(info, ttl))
        raise Fail(404, f"Node '{name}' is not registered in service '{service}'.")

    @app.put("/v1/services/{service}/nodes/{name}/heartbeat")
    async def heartbeat(service: str, name: str, request: Request) -> JSONResponse:
        check_path_name(service, "service name")
        check_path_name(name, "node name")
        await read_json(request, max_body, optional=True)
        info, ttl = change(
            lambda: store.heartbeat(service, name, request.query_params.get("node_id"))
        )
        await saver.save()
        return answer(record(info, ttl))

    @app.delete("/v1/services/{service}/nodes/{name}")
    async def deregister(service: str, name: str, request: Request) -> Response:
        check_path_name(service, "service name")
        check_path_name(name, "node name")
        change(lambda: store.deregister(service, name, request.query_params.get("node_id")))
        await saver.save()
        log.info("Node %s deregistered from service %s.", name, service)
        return Response(status_code=204, headers={INDEX_HEADER: str(store.index)})

    def metadata_answer(service: str, name: str, kept: dict[str, str]) -> JSONResponse:
        return answer(
            OperatorMetadata(service=service, name=name, metadata=kept).model_dump(mode="json")
        )

    async def metadata_body(service: str, name: str, request: Request) -> MetadataBody:
        check_path_name(service, "service name")
        check_path_name(name, "node name")
        body = await read_json(request, max_body)
        try:
            return MetadataBody.model_validate(body)
        except ValidationError as exc:
            raise Fail(
                422,
                f"Invalid metadata ({explain(exc)}); send "
                '{"metadata": {"KEY": "VALUE", ...}} with string values.',
            ) from None

    async def metadata_changed(service: str, name: str, before: dict[str, str]) -> None:
        await saver.save()
        kept = store.operator_metadata(service, name)
        if kept != before:
            shown = ", ".join(f"{k}={v[:64]}" for k, v in sorted(kept.items())) or "nothing"
            log.info("Operator metadata of node %s in service %s is now %s.", name, service, shown)

    @app.get("/v1/services/{service}/nodes/{name}/metadata")
    async def get_metadata(service: str, name: str) -> JSONResponse:
        check_path_name(service, "service name")
        check_path_name(name, "node name")
        return metadata_answer(service, name, store.operator_metadata(service, name))

    async def change_metadata(service: str, name: str, request: Request,
                              change: Callable[[str, str, Mapping[str, str]], dict[str, str]],
                              ) -> JSONResponse:
        body = await metadata_body(service, name, request)
        before = store.operator_metadata(service, name)
        kept = change(service, name, body.metadata)
        await metadata_changed(service, name, before)
        return metadata_answer(service, name, kept)

    @app.put("/v1/services/{service}/nodes/{name}/metadata")
    async def put_metadata(service: str, name: str, request: Request) -> JSONResponse:
        return await change_metadata(service, name, request, store.set_operator_metadata)

    @app.patch("/v1/services/{service}/nodes/{name}/metadata")
    async def patch_metadata(service: str, name: str, request: Request) -> JSONResponse:
        return await change_metadata(service, name, request, store.edit_operator_metadata)

    @app.delete("/v1/services/{service}/nodes/{name}/metadata")
    async def delete_metadata(service: str, name: str) -> Response:
        check_path_name(service, "service name")
        check_path_name(name, "node name")
        before = store.operator_metadata(service, name)
        store.set_operator_metadata(service, name, {})
        await metadata_changed(service, name, before)
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
                log.error(
                    "Cannot save the registry state to %s: %s.", self.path, exc.strerror or exc
                )
                raise Fail(
                    500, f"The registry cannot save its state: {exc.strerror or exc}."
                ) from None
            self.saved = version


async def _reap(store: Store, saver: _Saver, period: float) -> None:
    while True:
        await asyncio.sleep(period)
        store.expire()
        with contextlib.suppress(Fail):
            await saver.save()


def _log_expiry(service: str, info: NodeInfo) -> None:
    log.info("Node %s expired from service %s (no heartbeat within its TTL).", info.name, service)


__all__ = ["create_app", "INDEX_HEADER", "STATE_FILE", "MAX_BODY"]
