"""The dashboard at /ui: one page that shows the cluster, the forest, the leaves going by and
Soil, live, without reloading.

    GET  /ui              the page (with a token on the node: a sign-in form until the
                          browser holds the token's cookie)
    POST /ui/login        form field `token`: sets the cookie, back to /ui
    GET  /ui/events       Server-Sent Events: `state`, the page's whole state, when it
                          changes (checked every second); `?node=N`: node N's own
                          figures instead of the cluster's
    GET  /ui/assets/NAME  the page's script and style, from the package

The state is made of the documents /health, /health/cluster and /api/v1/status answer
(`node_health`, `cluster_health` of the same snapshot, the controller's cluster status:
every node's status report merged), so the page
never disagrees with them, nor with /metrics (the same counters). The leaves and Soil panes
use the readers' endpoints (nimsforest.api.readers). No build step and no library: a
static HTML page, one script (EventSource and fetch) and one style sheet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from nimsforest.control import TOKEN_COOKIE, NotFound, RateLimited
from nimsforest.health import NodeSnapshot, cluster_health, node_health

TICK = 1.0  # seconds between two looks at the state
ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
_UI = resources.files("nimsforest.api") / "ui"


def _asset(name: str) -> str:
    return (_UI / name).read_text(encoding="utf-8")


def dashboard_state(snapshot: NodeSnapshot, status: BaseModel) -> dict[str, Any]:
    """Everything the page shows but the leaves and Soil, from the documents of /health,
    /health/cluster and /api/v1/status."""
    node_code, node = node_health(snapshot)
    cluster_code, cluster = cluster_health(snapshot)
    return {"node": node, "node_ok": node_code == 200, "cluster": cluster,
            "cluster_ok": cluster_code == 200, "forest": status.model_dump(mode="json")}


class Dashboard:
    """The page and its live state. `close()` ends every open state stream (the node calls
    it before it stops its API)."""

    def __init__(self, snapshot: Callable[[], NodeSnapshot],
                 status: Callable[[str | None], BaseModel],
                 guard: Any, accepts_token: Callable[[str], bool], needs_token: bool,
                 check_rate: Callable[[str], None] = lambda client: None) -> None:
        """`status(node)` is /api/v1/status's document (None: the cluster's; a name: that
        node's, or NotFound); `check_rate(client)` raises RateLimited when a client tried
        too often (sign-ins count as changes do, so a token cannot be guessed at speed)."""
        self._check_rate = check_rate
        self._snapshot = snapshot
        self._status = status
        self._guard = guard
        self._accepts = accepts_token
        self._needs_token = needs_token
        self._closed = asyncio.Event()

    def close(self) -> None:
        self._closed.set()

    def state(self, node: str | None = None) -> dict[str, Any]:
        return {**dashboard_state(self._snapshot(), self._status(node)), "at": time.time()}

    async def states(self, node: str | None = None) -> AsyncIterator[ServerSentEvent]:
        """The state when it changed, every TICK, until close()."""
        last = ""
        while not self._closed.is_set():
            try:
                state = self.state(node)
            except NotFound as exc:  # the node stopped reporting: say so, keep looking
                yield ServerSentEvent(json.dumps({"error": exc.message}), event="problem")
                last = ""
                await asyncio.sleep(TICK)
                continue
            at = state.pop("at")
            text = json.dumps(state, sort_keys=True, default=str)
            if text != last:
                last = text
                yield ServerSentEvent(json.dumps({**state, "at": at}, default=str), event="state")
            with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel
                async with asyncio.timeout(TICK):
                    await self._closed.wait()

    def _signed_in(self, request: Request) -> bool:
        if not self._needs_token:
            return True
        given = request.cookies.get(TOKEN_COOKIE) or ""
        auth = request.headers.get("authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:]
        return bool(given) and self._accepts(given)

    def router(self) -> APIRouter:
        ui = APIRouter(tags=["dashboard"], include_in_schema=False)

        @ui.get("/ui")
        async def page(request: Request) -> Response:
            if not self._signed_in(request):
                return HTMLResponse(_login_page(""), status_code=401)
            return HTMLResponse(_asset("index.html"), headers={"Cache-Control": "no-store"})

        @ui.post("/ui/login")
        async def login(request: Request) -> Response:
            try:
                self._check_rate(request.client.host if request.client else "unknown")
            except RateLimited as exc:
                return HTMLResponse(_login_page(exc.message), status_code=429,
                                    headers={"Retry-After": str(exc.retry_after)})
            form = parse_qs((await request.body()).decode(errors="replace"))
            token = (form.get("token") or [""])[0].strip()
            if not token or not self._accepts(token):
                return HTMLResponse(_login_page("That is not this node's API token."),
                                    status_code=401)
            resp = RedirectResponse("/ui", status_code=303)
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
            return resp

        @ui.get("/ui/events", dependencies=[Depends(self._guard)], response_model=None)
        async def events(node: str | None = Query(None, max_length=64)
                         ) -> EventSourceResponse | JSONResponse:
            try:
                self._status(node)
            except NotFound as exc:
                return JSONResponse({"error": exc.message}, status_code=404)
            return EventSourceResponse(self.states(node), ping=15,
                                       headers={"Cache-Control": "no-store"})

        @ui.get("/ui/assets/{name}")
        async def asset(name: str) -> Response:
            if name not in ASSETS:
                raise HTTPException(404, f"The dashboard has no asset '{name}'.")
            return Response(_asset(name), media_type=ASSETS[name])

        return ui


def _login_page(error: str) -> str:
    note = f'<p class="error">{error}</p>' if error else ""
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>NimsForest - sign in</title><link rel="stylesheet" href="/ui/assets/app.css"></head>
<body class="login"><form method="post" action="/ui/login">
<h1>NimsForest</h1><p>This node was started with an API token (NIMSFOREST_API_TOKEN).
Enter it to open the dashboard.</p>{note}
<input type="password" name="token" placeholder="API token" autofocus>
<button type="submit">Open the dashboard</button></form></body></html>"""


__all__ = ["Dashboard", "dashboard_state"]
