"""The registry server's HTTP details: reading requests, error answers, the token guard."""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from registry._errors import RegistryConflict
from registry._model import NodeInfo, check_name
from registry._store import NotRegistered

log = logging.getLogger("registry")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class Fail(Exception):
    """An error answer: status code and one sentence."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def change(fn: Any) -> Any:
    try:
        return fn()
    except NotRegistered as exc:
        raise Fail(404, str(exc)) from None
    except RegistryConflict as exc:
        raise Fail(
            409,
            f"Node name '{exc.name}' belongs to another node (node id {exc.holder_node_id}).",
            name=exc.name,
            node_id=exc.holder_node_id,
        ) from None


def record(info: NodeInfo, ttl: float) -> dict[str, Any]:
    body = info.model_dump(mode="json")
    body.update(address=info.host, port=info.port, ttl_seconds=ttl)
    return body


def check_path_name(value: str, what: str) -> None:
    try:
        check_name(value, what)
    except ValueError as exc:
        raise Fail(400, f"{str(exc)[:200]}.") from None


def whole(value: str | None, param: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or len(value) > 18:
        raise Fail(400, f"Query parameter '{param}' must be a whole number of at least 0.")
    return int(value)


def duration(value: str | None, param: str) -> float | None:
    if value is None:
        return None
    m = _DURATION.match(value)
    if not m:
        raise Fail(400, f"Query parameter '{param}' must be a duration such as 30s, 500ms or 5m.")
    return float(m.group(1)) * _UNITS[m.group(2)]


async def read_json(request: Request, limit: int, optional: bool = False) -> Any:
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


def explain(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()))
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


def install_errors(app: FastAPI) -> None:
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
        log.exception(
            "Unexpected error in the registry while serving %s %s", request.method, request.url.path
        )
        return error(500, "Internal registry error; see the registry's log.")


class Guard:
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
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), self.token.encode()
            ):
                why = "is wrong" if given else "is missing"
                response = JSONResponse(
                    {
                        "error": "This registry needs a bearer token "
                        f"(Authorization: Bearer <token>); yours {why}."
                    },
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            text = declared.decode("latin-1").strip()
            status = 400 if not text.isdigit() else 413 if int(text) > self.max_body else 0
            if status:
                message = (
                    "The Content-Length header is not a number."
                    if status == 400
                    else f"The request body is larger than {self.max_body // 1024} KiB."
                )
                await JSONResponse({"error": message}, status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


__all__ = [
    "Fail",
    "Guard",
    "change",
    "check_path_name",
    "duration",
    "explain",
    "install_errors",
    "read_json",
    "record",
    "whole",
]
