"""The http(s):// backend: an httpx client of the registry server's API (docs/REGISTRY.md)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import TypeAdapter, ValidationError

from registry._base import Registry
from registry._errors import RegistryConflict, RegistryRejected, RegistryUnreachable
from registry._model import MetadataBody, NodeInfo, OperatorMetadata
from registry._timing import Timing

log = logging.getLogger("registry")

INDEX_HEADER = "X-Registry-Index"
_NODE_LIST = TypeAdapter(list[NodeInfo])


class HttpRegistry(Registry):
    """Client of a NimsForest registry server; retries with backoff within the timing rule."""

    backend = "http"

    def __init__(
        self,
        url: str,
        *,
        service: str,
        timing: Timing,
        token: str | None = None,
        cache_path: str | os.PathLike[str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"'{url}' is not an http:// or https:// registry URL.")
        super().__init__(url, service=service, timing=timing, cache_path=cache_path)
        base = f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
        self._nodes = f"/v1/services/{quote(service)}/nodes"
        headers = {"Accept": "application/json", "User-Agent": "nimsforest-registry-client"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._has_token = bool(token)
        self._client = httpx.AsyncClient(
            base_url=base, headers=headers, timeout=timing.request_timeout, follow_redirects=False
        )

    # --- backend primitives ----------------------------------------------------------------
    async def _register(self, info: NodeInfo) -> NodeInfo:
        body = info.model_dump(
            mode="json", exclude={"registered_at", "create_index"}, exclude_none=True
        )
        body["ttl_seconds"] = self.timing.ttl
        resp = await self._call("POST", self._nodes, json=body)
        if resp.status_code not in (200, 201):
            self._refuse(resp, "the registration", info.name)
        return self._node(resp, info.name)

    async def _heartbeat(self, record: NodeInfo) -> NodeInfo | None:
        resp = await self._call(
            "PUT", f"{self._nodes}/{quote(record.name)}/heartbeat", params=_node_id(record)
        )
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            self._refuse(resp, "the heartbeat", record.name)
        return self._node(resp, record.name)

    async def _deregister(self, info: NodeInfo) -> None:
        resp = await self._call(
            "DELETE", f"{self._nodes}/{quote(info.name)}", params=_node_id(info)
        )
        if resp.status_code == 409:
            log.debug("Not deregistering %s: the name now belongs to another node.", info.name)
        elif resp.status_code not in (200, 204, 404):
            self._refuse(resp, "the deregistration", info.name)

    async def _list(
        self, index: int | None, wait: float | None
    ) -> tuple[int | None, list[NodeInfo]]:
        if index is not None and wait:
            params: dict[str, str] = {"index": str(index), "wait": f"{wait:g}s"}
            # one attempt; its timeout covers the server's wait (a failure means: poll instead)
            timeout = wait + wait / 16 + self.timing.request_timeout
            resp = await self._call(
                "GET", self._nodes, params=params, timeout=timeout, retries=False
            )
        else:
            resp = await self._call("GET", self._nodes)
        if resp.status_code != 200:
            self._refuse(resp, "the node list", None)
        try:
            nodes = _NODE_LIST.validate_python(self._json(resp))
        except ValidationError as exc:
            raise self._malformed(f"a node list of the wrong shape ({_first_error(exc)})") from None
        return _index(resp), nodes

    async def _metadata(self, name: str) -> dict[str, str]:
        return await self._metadata_call("GET", name, None, "the metadata read")

    async def _set_metadata(
        self, name: str, metadata: dict[str, str], merge: bool
    ) -> dict[str, str]:
        body = MetadataBody(metadata=metadata).model_dump(mode="json")
        return await self._metadata_call(
            "PATCH" if merge else "PUT", name, body, "the metadata change"
        )

    async def _metadata_call(self, method: str, name: str, body: Any, what: str) -> dict[str, str]:
        resp = await self._call(method, f"{self._nodes}/{quote(name)}/metadata", json=body)
        if resp.status_code != 200:
            self._refuse(resp, what, None)
        try:
            answer = OperatorMetadata.model_validate(self._json(resp))
        except ValidationError as exc:
            raise self._malformed(f"metadata of the wrong shape ({_first_error(exc)})") from None
        if answer.name != name:
            raise self._malformed(f"the metadata of node '{answer.name}' instead of '{name}'")
        return answer.metadata

    async def _aclose(self) -> None:
        await self._client.aclose()

    # --- HTTP with retries -----------------------------------------------------------------
    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
        retries: bool = True,
    ) -> httpx.Response:
        """The response (status < 500), retrying connection errors and 5xx within one interval."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timing.retry_budget if retries else (timeout or 0) + 1.0)
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            limit = min(timeout or self.timing.request_timeout, max(remaining, 0.01))
            try:
                resp = await self._client.request(
                    method, path, json=json, params=params, timeout=limit
                )
            except httpx.TimeoutException:
                reason = f"no answer within {limit:.1f} s"
            except httpx.RequestError as exc:
                reason = _describe(exc)
            except RuntimeError as exc:  # the client was closed under us (close())
                raise RegistryUnreachable(f"Registry unreachable at {self.url}: {exc}.") from None
            else:
                if resp.status_code < 500:
                    return resp
                reason = f"HTTP {resp.status_code} for {method} {path}{_error_suffix(resp)}"
            delay = self.timing.backoff(attempt)
            if not retries or self._closed.is_set() or loop.time() + delay >= deadline:
                raise RegistryUnreachable(f"Registry unreachable at {self.url}: {reason}.")
            await asyncio.sleep(delay)

    def _refuse(self, resp: httpx.Response, what: str, name: str | None) -> None:
        """Raise the error a non-success answer stands for."""
        code = resp.status_code
        message = _error_message(resp)
        if code in (401, 403):
            hint = "REGISTRY_TOKEN is wrong" if self._has_token else "it needs REGISTRY_TOKEN"
            raise RegistryRejected(
                f"Registry at {self.url} refused {what} with HTTP {code} ({hint}).", code
            )
        if code == 409 and name is not None:
            holder = None
            try:
                data = resp.json()
                holder = data.get("node_id") if isinstance(data, dict) else None
            except ValueError:
                pass
            raise RegistryConflict(name, holder if isinstance(holder, str) else None)
        if code in (400, 413, 422) and message:
            raise RegistryRejected(f"Registry at {self.url} refused {what}: {message}", code)
        raise self._malformed(
            f"HTTP {code} for {resp.request.method} {resp.request.url.path}"
            " (is this a NimsForest registry?)"
        )

    def _json(self, resp: httpx.Response) -> Any:
        try:
            return resp.json()
        except ValueError:
            raise self._malformed(f"HTTP {resp.status_code} with a body that is not JSON") from None

    def _node(self, resp: httpx.Response, name: str) -> NodeInfo:
        try:
            node = NodeInfo.model_validate(self._json(resp))
        except ValidationError as exc:
            raise self._malformed(
                f"a node record of the wrong shape ({_first_error(exc)})"
            ) from None
        if node.name != name:
            raise self._malformed(f"the record of node '{node.name}' instead of '{name}'")
        return node

    def _malformed(self, what: str) -> RegistryUnreachable:
        return RegistryUnreachable(f"Registry unreachable at {self.url}: it answered {what}.")


def _node_id(info: NodeInfo) -> dict[str, str] | None:
    return {"node_id": info.node_id} if info.node_id else None


def _index(resp: httpx.Response) -> int | None:
    raw = resp.headers.get(INDEX_HEADER)
    if raw is None or not raw.strip().isdigit():
        return None
    return int(raw)


def _error_message(resp: httpx.Response) -> str | None:
    try:
        data = resp.json()
    except ValueError:
        return None
    msg = data.get("error") if isinstance(data, dict) else None
    return msg[:300] if isinstance(msg, str) and msg else None


def _error_suffix(resp: httpx.Response) -> str:
    msg = _error_message(resp)
    return f" ({msg.rstrip('.')})" if msg else ""


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "body"
    return f"{where}: {err.get('msg', 'invalid')}"


def _describe(exc: httpx.RequestError) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({text})"
    return f"{type(exc).__name__} ({text})"


__all__ = ["HttpRegistry", "INDEX_HEADER"]
