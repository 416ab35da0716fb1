"""The few PocketBase REST calls the stack makes, as a superuser (PocketBase 0.23 and later).

Superuser auth is `POST /api/collections/_superusers/auth-with-password`; the token goes
in the Authorization header and is renewed on a 401.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

log = logging.getLogger("nimsforest.stack")

_PAGE = 500


class PocketBaseError(Exception):
    """PocketBase answered an error, or could not be asked; the message is one sentence."""


class PocketBase:
    def __init__(self, url: str, email: str, password: str) -> None:
        self.url = url
        self._email = email
        self._password = password
        self._http = httpx.AsyncClient(base_url=url, timeout=10.0, trust_env=False)
        self._token: str | None = None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise PocketBaseError(f"PocketBase at {self.url} could not be asked "
                                  f"({type(exc).__name__}).") from exc

    async def _auth(self) -> None:
        resp = await self._send("POST", "/api/collections/_superusers/auth-with-password",
                                json={"identity": self._email, "password": self._password})
        if resp.status_code != 200:
            raise PocketBaseError(f"PocketBase refused the superuser {self._email} "
                                  f"(HTTP {resp.status_code}).")
        self._token = str(resp.json()["token"])

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if self._token is None:
            await self._auth()
        resp = await self._send(method, path, headers={"authorization": f"{self._token}"}, **kw)
        if resp.status_code == 401:
            await self._auth()
            resp = await self._send(method, path, headers={"authorization": f"{self._token}"}, **kw)
        return resp

    @staticmethod
    def refused(what: str, resp: httpx.Response) -> PocketBaseError:
        return PocketBaseError(f"PocketBase refused to {what} (HTTP {resp.status_code}: "
                               f"{resp.text.strip()[:200]}).")

    async def ensure_collection(self, name: str, fields: list[dict[str, Any]],
                                indexes: list[str]) -> bool:
        """Create base collection `name` (superusers only) unless it exists; True if created."""
        resp = await self.request("GET", f"/api/collections/{name}")
        if resp.status_code == 200:
            return False
        body = {"name": name, "type": "base", "fields": fields, "indexes": indexes}
        resp = await self.request("POST", "/api/collections", json=body)
        if resp.status_code not in (200, 201):
            raise self.refused(f"create collection {name}", resp)
        log.info("Created the PocketBase collection %s", name)
        return True

    async def records(self, collection: str, fields: str = "") -> list[dict[str, Any]]:
        """Every record of `collection` (all pages)."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            params: dict[str, str | int] = {"page": page, "perPage": _PAGE, "skipTotal": "true"}
            if fields:
                params["fields"] = fields
            resp = await self.request("GET", f"/api/collections/{collection}/records", params=params)
            if resp.status_code != 200:
                raise self.refused(f"list the records of {collection}", resp)
            items = resp.json().get("items", [])
            found.extend(i for i in items if isinstance(i, dict))
            if len(items) < _PAGE:
                return found
            page += 1
