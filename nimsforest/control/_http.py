"""The management API, as FastAPI routers the node's app includes.

    GET    /api/v1/status[?node=N]          the forest on every node (or node N), the control loop
    GET    /api/v1/{kinds}[?node=N]         trees | treehouses | nims | outputs | sources
    POST   /api/v1/{kinds}                  add (201 applied here, 202 stored, not yet applied)
    GET    /api/v1/{kinds}/{name}[?node=N]  one component on every node (or node N), its settings
    PUT    /api/v1/{kinds}/{name}           replace its settings
    DELETE /api/v1/{kinds}/{name}           remove
    POST   /-/reload                        reload this node's forest.yaml
    GET    /api/v1/audit?limit=N            the newest audit records
    /api/v1/dead...                         dead letters: list, show, replay, purge (_dead.py)
    POST   /api/v1/replay                   re-feed one component from its input (_replay.py)

With NIMSFOREST_API_TOKEN set, each of these (and POST /api/v1/river) needs
`Authorization: Bearer <token>` (401 otherwise). Changes are rate limited per client
address (429 with Retry-After). Errors are {"error": "<one sentence>"}.
"""

# no `from __future__ import annotations`: FastAPI reads the request models of the
# per-kind routes from annotations evaluated where they are defined.

import hmac
from typing import Any, ClassVar
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nimsforest.control._audit import Action, Actor, AuditRecord, Refusal, Via
from nimsforest.control._controller import ControllerCore
from nimsforest.control._dead import dead_desk, dead_router
from nimsforest.control._replay import ReplayDesk, replay_router
from nimsforest.control._schemas import (
    MAX_BODY,
    REQUEST_MODELS,
    ChangeOut,
    ComponentDetail,
    ComponentOut,
    ErrorOut,
    ReloadOut,
    StatusOut,
)
from nimsforest.control.errors import ControlError, RateLimited
from nimsforest.forest import ComponentKind

NODE_QUERY = Query(
    None, description="One node's own report instead of the cluster's merged view",
    max_length=64)


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "The body is not JSON, or the change is not possible on this node",
        401: "A bearer token is required",
        404: "No such component",
        409: "Already exists, or changed by someone else meanwhile",
        413: "Too large",
        422: "Invalid name, settings, script or prompt",
        429: "Too many changes; see Retry-After",
        503: "JetStream unavailable",
    }
    return {c: {"model": ErrorOut, "description": text[c]} for c in codes}


def _error(exc: ControlError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


TOKEN_COOKIE = "nimsforest_token"
# The header the dashboard's page sends with the changes it may make with its cookie (the
# dead-letter replays). A page of another site cannot send it: a custom header makes its
# request "non-simple", so the browser first asks the API (a CORS preflight), which answers
# no CORS headers, and the request is never sent.
PAGE_HEADER = "X-NimsForest-Page"


def same_origin(request: Request) -> bool:
    """False when a browser says the request comes from a page of another origin (its
    `Origin` header names another host:port than the request's `Host`); a request with no
    Origin (the CLI, curl, a service) is not a browser's cross-site one."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


def make_caller(ctl: ControllerCore, *, cookie: bool = False, page_changes: bool = False) -> Any:
    """The API's one check of who calls (a FastAPI dependency returning the Actor): with
    NIMSFOREST_API_TOKEN set, `Authorization: Bearer <token>` (401 otherwise). `cookie`: the
    token may also come in the dashboard's cookie (TOKEN_COOKIE), for read-only GET routes,
    which a browser's page and EventSource reach without a header; `page_changes`: and for
    the changes of this route when the request carries PAGE_HEADER and comes from the same
    origin (the dashboard's replay buttons; docs/OBSERVABILITY.md says why that is safe)."""
    bearer = HTTPBearer(
        auto_error=False,
        description="NIMSFOREST_API_TOKEN; required when the node was started with one",
    )

    async def caller(
        request: Request, creds: HTTPAuthorizationCredentials | None = Security(bearer)
    ) -> Actor:
        address = request.client.host if request.client else None
        _no_unknown_query(request)
        if ctl.token is not None:
            given = creds.credentials if creds is not None else ""
            from_page = (page_changes and request.headers.get(PAGE_HEADER) == "1"
                         and same_origin(request))
            if not given and cookie and (request.method == "GET" or from_page):
                given = request.cookies.get(TOKEN_COOKIE, "")
            if not token_matches(ctl, given):
                who = Actor(via=Via.HTTP, address=address)
                message = "This API needs 'Authorization: Bearer <NIMSFOREST_API_TOKEN>'."
                if is_change(request):
                    await ctl.refused(_action(request), who, Refusal.UNAUTHORIZED, message)
                raise HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})
        return Actor(via=Via.HTTP, address=address, token=ctl.token is not None)

    return caller


def token_matches(ctl: ControllerCore, given: str) -> bool:
    """Whether `given` is this node's API token (always, when it has none)."""
    return ctl.token is None or hmac.compare_digest(given.encode(), ctl.token.encode())


def make_routers(ctl: ControllerCore, river: APIRouter | None = None) -> list[APIRouter]:
    caller = make_caller(ctl, cookie=True)  # the dashboard reads status and audit (GET only)
    page = make_caller(ctl, cookie=True, page_changes=True)  # and replays dead letters

    async def changer(request: Request, who: Actor = Depends(caller)) -> Actor:
        return await checked(request, who)

    async def replayer(request: Request, who: Actor = Depends(page)) -> Actor:
        return await checked(request, who)

    async def checked(request: Request, who: Actor) -> Actor:
        if not same_origin(request):  # a page of another site, even on an open node
            message = "A change from a page of another site is refused."
            await ctl.refused(_action(request), who, Refusal.UNAUTHORIZED, message)
            raise HTTPException(403, message)
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > MAX_BODY:
            raise HTTPException(413, f"The request is larger than {MAX_BODY // 1024} KiB.")
        try:
            ctl.check_rate(who.address or "unknown")
        except RateLimited as exc:
            await ctl.refused(_action(request), who, Refusal.RATE_LIMITED, exc.message)
            raise HTTPException(429, exc.message, headers={"Retry-After": str(exc.retry_after)}) from None
        return who

    api = APIRouter(prefix="/api/v1", tags=["forest management"])

    @api.get(
        "/status", response_model=StatusOut, operation_id="status",
        responses=_responses(401, 404),
        summary="The forest on every node (or one node's): each component, the nodes, the "
        "control loop",
    )
    async def status(node: str | None = NODE_QUERY, who: Actor = Depends(caller)) -> Any:
        try:
            return ctl.cluster_status(node)
        except ControlError as exc:
            return _error(exc)

    @api.get(
        "/audit", response_model=list[AuditRecord], operation_id="audit",
        responses=_responses(401, 503), summary="The newest audit records, oldest first",
    )
    async def audit(
        limit: int = Query(20, ge=1, le=1000), who: Actor = Depends(caller)
    ) -> Any:
        try:
            return await ctl.audit(limit)
        except ControlError as exc:
            return _error(exc)

    for kind, model in REQUEST_MODELS.items():
        _kind_routes(api, ctl, kind, model, caller, changer)

    reload = APIRouter(tags=["forest management"])

    @reload.post(
        "/-/reload", response_model=ReloadOut, operation_id="reload",
        responses=_responses(400, 401, 409, 422, 429, 503),
        summary="Reload this node's forest.yaml (its components; API ones stay)",
    )
    async def reload_file(who: Actor = Depends(changer)) -> Any:
        try:
            return await ctl.reload_file(who)
        except ControlError as exc:
            return _error(exc)

    routers = [api, reload, dead_router(dead_desk(ctl), caller, changer, replayer),
               replay_router(ReplayDesk(ctl.forest, ctl.audit_log, ctl.node), changer)]
    if river is not None:
        routers.append(_guard_api_routes(river, caller))
    return routers


def _kind_routes(
    router: APIRouter, ctl: ControllerCore, kind: ComponentKind, model: type, caller: Any, changer: Any
) -> None:
    plural = kind.plural

    async def list_components(node: str | None = NODE_QUERY, who: Actor = Depends(caller)) -> Any:
        try:
            return ctl.cluster_list(kind, node)
        except ControlError as exc:
            return _error(exc)

    async def add_component(
        body: model,  # type: ignore[valid-type]
        who: Actor = Depends(changer),
    ) -> Any:
        try:
            out = await ctl.add(kind, body, who)
        except ControlError as exc:
            return _error(exc)
        return JSONResponse(out.model_dump(mode="json"), status_code=201 if out.applied else 202)

    async def get_component(name: str, node: str | None = NODE_QUERY,
                            who: Actor = Depends(caller)) -> Any:
        try:
            return ctl.cluster_get(kind, name, node)
        except ControlError as exc:
            return _error(exc)

    async def replace_component(
        name: str,
        body: model,  # type: ignore[valid-type]
        who: Actor = Depends(changer),
    ) -> Any:
        try:
            out = await ctl.replace(kind, name, body, who)
        except ControlError as exc:
            return _error(exc)
        return JSONResponse(out.model_dump(mode="json"), status_code=200 if out.applied else 202)

    async def remove_component(name: str, who: Actor = Depends(changer)) -> Any:
        try:
            out = await ctl.remove(kind, name, who)
        except ControlError as exc:
            return _error(exc)
        return JSONResponse(out.model_dump(mode="json"), status_code=200 if out.applied else 202)

    stored: dict[int | str, dict[str, Any]] = {202: {"model": ChangeOut, "description": "Stored; this node has not applied it yet"}}
    router.add_api_route(
        f"/{plural}", list_components, methods=["GET"], response_model=list[ComponentOut],
        operation_id=f"list_{plural}", summary=f"List the {plural}, as every node runs them",
        responses=_responses(401, 404),
    )
    router.add_api_route(
        f"/{plural}", add_component, methods=["POST"], response_model=ChangeOut,
        status_code=201, operation_id=f"add_{kind.value}", summary=f"Add a {kind.value}",
        responses={**stored, **_responses(400, 401, 409, 413, 422, 429, 503)},
    )
    router.add_api_route(
        f"/{plural}/{{name}}", get_component, methods=["GET"], response_model=ComponentDetail,
        operation_id=f"get_{kind.value}",
        summary=f"One {kind.value} as every node runs it (or one node), with its settings",
        responses=_responses(401, 404),
    )
    router.add_api_route(
        f"/{plural}/{{name}}", replace_component, methods=["PUT"], response_model=ChangeOut,
        operation_id=f"replace_{kind.value}", summary=f"Replace a {kind.value}'s settings",
        responses={**stored, **_responses(400, 401, 404, 409, 413, 422, 429, 503)},
    )
    router.add_api_route(
        f"/{plural}/{{name}}", remove_component, methods=["DELETE"], response_model=ChangeOut,
        operation_id=f"remove_{kind.value}", summary=f"Remove a {kind.value}",
        responses={**stored, **_responses(401, 404, 409, 429, 503)},
    )


def _guard_api_routes(river: APIRouter, caller: Any) -> APIRouter:
    """The River router with the token check on its /api/ routes (webhooks keep their
    own signature checks: the services calling them have no token)."""
    guarded, open_ = APIRouter(), APIRouter()
    for route in river.routes:
        (guarded if getattr(route, "path", "").startswith("/api/") else open_).routes.append(route)
    outer = APIRouter()
    outer.include_router(guarded, dependencies=[Depends(caller)], responses=_responses(401))
    outer.include_router(open_)
    return outer


def _no_unknown_query(request: Request) -> None:
    """A misspelt query parameter is an error, not silently ignored."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    known: set[str] = set()
    todo = [dependant] if dependant is not None else []
    while todo:
        d = todo.pop()
        known |= {p.alias for p in getattr(d, "query_params", ())}
        todo += list(getattr(d, "dependencies", ()))
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise HTTPException(422, f"'{unknown[0]}' is not a query parameter of this endpoint.")


def is_change(request: Request) -> bool:
    """A request that asks the control plane for a change."""
    path = request.url.path
    return request.method in ("POST", "PUT", "DELETE") and (
        path == "/-/reload"
        or (path.startswith("/api/v1/") and not path.startswith("/api/v1/river"))
    )


async def record_refused(ctl: ControllerCore, request: Request, message: str) -> None:
    """Audit a change the API layer refused before the controller saw it (a body that is
    not valid JSON or does not fit the schema)."""
    if is_change(request):
        who = Actor(via=Via.HTTP, address=request.client.host if request.client else None)
        await ctl.refused(_action(request), who, Refusal.INVALID, message)


class AuditedRoute(APIRoute):
    """A route that names the change it makes, for its audit records (see `audited_as`)."""

    action: ClassVar[Action]


def audited_as(action: Action) -> type[APIRoute]:
    """The route class of a change route other layers add (`route_class_override=`): its
    audit records, a refusal before the endpoint ran (401, 429) included, carry `action`."""
    return type(f"Audited{action.name.title()}Route", (AuditedRoute,), {"action": action})


def _action(request: Request) -> Action:
    """The change a request asks for (only called for requests where is_change holds): the
    one its route names, else the control plane's own routes by path and method."""
    route = request.scope.get("route")
    if isinstance(route, AuditedRoute):
        return route.action
    if request.url.path.endswith("/-/reload"):
        return Action.RELOAD
    if request.url.path == "/api/v1/replay":
        return Action.REPLAY
    if request.url.path.startswith("/api/v1/dead"):
        return Action.REPLAY if request.method == "POST" else Action.PURGE
    return {"POST": Action.ADD, "PUT": Action.REPLACE}.get(request.method, Action.REMOVE)


__all__ = [
    "PAGE_HEADER", "TOKEN_COOKIE", "AuditedRoute", "audited_as", "is_change", "make_caller",
    "make_routers", "record_refused", "token_matches",
]
