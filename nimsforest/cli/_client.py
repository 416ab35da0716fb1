"""How client commands reach the running daemon: its management API at NIMSFOREST_API."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse

from nimsforest.cli._common import EXIT_FAILURE, EXIT_USAGE, fail
from nimsforest.settings import api_headers, local_http_url


def daemon_url(api: str | None = None) -> str:
    """The daemon's base URL from --api, else NIMSFOREST_API, else 127.0.0.1:8080."""
    value = api or os.environ.get("NIMSFOREST_API") or "127.0.0.1:8080"
    try:
        return local_http_url(value)
    except ValueError as exc:
        fail(f"Invalid NIMSFOREST_API / --api: {exc}.", 2)


class DaemonClient:
    """A short-lived async client of one daemon's management API."""

    def __init__(self, api: str | None = None, timeout: float = 10.0) -> None:
        self.base = daemon_url(api)
        self._client = httpx.AsyncClient(
            base_url=self.base, timeout=timeout, headers=api_headers(), trust_env=False
        )

    async def __aenter__(self) -> DaemonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self._client.request(method, path, **kw)
        except httpx.ConnectError:
            fail(f"No NimsForest daemon is running at {self.base} (set NIMSFOREST_API or --api).", EXIT_FAILURE)
        except httpx.TimeoutException:
            fail(f"The NimsForest daemon at {self.base} did not answer in time.", EXIT_FAILURE)
        except httpx.HTTPError as exc:
            fail(f"Cannot talk to the NimsForest daemon at {self.base}: {exc}.", EXIT_FAILURE)

    async def get_json(self, path: str, *, ok: tuple[int, ...] = (200,),
                       params: dict[str, Any] | None = None, usage: tuple[int, ...] = ()) -> Any:
        resp = await self.request("GET", path, params=params)
        return self.json_or_fail(resp, ok, usage)

    def json_or_fail(self, resp: httpx.Response, ok: tuple[int, ...],
                     usage: tuple[int, ...] = ()) -> Any:
        """The answer's JSON, or exit with its sentence (code 2 for the `usage` statuses: the
        daemon refused an argument)."""
        try:
            body = resp.json()
        except ValueError:
            fail(f"The daemon at {self.base} answered {resp.status_code} with something that is not JSON.")
        if resp.status_code not in ok:
            message = body.get("error") if isinstance(body, dict) else None
            fail(message or f"The daemon at {self.base} answered {resp.status_code}.",
                 EXIT_USAGE if resp.status_code in usage else EXIT_FAILURE)
        return body

    @classmethod
    async def read(cls, api: str | None, path: str, params: dict[str, Any] | None = None) -> Any:
        """One GET of a read-only endpoint: its JSON, or exit with the daemon's sentence
        (code 2 when it refused an argument, 422)."""
        async with cls(api) as client:
            return await client.get_json(path, params=params, usage=(422,))

    async def events(self, path: str, params: dict[str, Any] | None = None
                     ) -> AsyncIterator[ServerSentEvent]:
        """The Server-Sent Events of a streaming GET, until the daemon ends the stream.
        An error answer fails with the daemon's sentence."""
        try:
            async with aconnect_sse(self._client, "GET", path, params=params,
                                    timeout=httpx.Timeout(10.0, read=None)) as source:
                if source.response.status_code != 200:
                    await source.response.aread()
                    self.json_or_fail(source.response, (200,), usage=(422,))
                async for event in source.aiter_sse():
                    yield event
        except httpx.ConnectError:
            fail(f"No NimsForest daemon is running at {self.base} (set NIMSFOREST_API or --api).", EXIT_FAILURE)
        except SSEError as exc:
            fail(f"The daemon at {self.base} did not answer with an event stream: {exc}.")
        except httpx.HTTPError as exc:
            fail(f"The stream from the NimsForest daemon at {self.base} broke: {exc}.", EXIT_FAILURE)
