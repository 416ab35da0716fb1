"""JetStream system requests ($JS.API.SERVER.REMOVE, META.LEADER.STEPDOWN, META.RESCUE).

They need a user of the system account; the rendered config has one (see credentials).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from types import TracebackType
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from natsembed.errors import SystemRequestFailed, SystemRequestUnanswered


class SystemClient:
    """A short-lived system-account connection to one local server."""

    def __init__(self, url: str, user: str, password: str, timeout: float = 5.0) -> None:
        self._url = url
        self._user = user
        self._password = password
        self._timeout = timeout
        self._nc: Client | None = None

    async def __aenter__(self) -> SystemClient:
        try:
            self._nc = await nats.connect(
                self._url,
                user=self._user,
                password=self._password,
                name="nimsforest-system",
                connect_timeout=self._timeout,
                max_reconnect_attempts=0,
                allow_reconnect=False,
            )
        except (TimeoutError, NatsError, OSError) as exc:
            raise SystemRequestFailed(
                f"Could not connect to {self._url} as the system user ({type(exc).__name__})."
            ) from None
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._nc is not None:
            await self._nc.close()

    async def request(self, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self._nc is not None, "use SystemClient as an async context manager"
        payload = json.dumps(body).encode() if body is not None else b""
        try:
            msg = await self._nc.request(subject, payload, timeout=self._timeout)
        except (NatsTimeout, NoRespondersError) as exc:
            raise SystemRequestUnanswered(f"{subject} got no answer ({type(exc).__name__}).") from None
        try:
            answer: dict[str, Any] = json.loads(msg.data or b"{}")
        except ValueError:
            raise SystemRequestFailed(f"{subject} answered with something that is not JSON.") from None
        err = answer.get("error")
        if err:
            code = err.get("err_code")
            raise SystemRequestFailed(
                f"{subject} failed: {err.get('description', err)} (code {code or '?'}).",
                err_code=code if isinstance(code, int) else None,
            )
        result: dict[str, Any] = answer
        return result

    async def gather(self, subject: str, wait: float = 0.5) -> list[dict[str, Any]]:
        """Every answer to a request that each server answers (`$SYS.REQ.SERVER.PING.*`)
        that arrives within `wait` seconds."""
        assert self._nc is not None, "use SystemClient as an async context manager"
        inbox = self._nc.new_inbox()
        answers: list[dict[str, Any]] = []
        sub = await self._nc.subscribe(inbox)
        try:
            await self._nc.publish(subject, b"", reply=inbox)
            deadline = asyncio.get_running_loop().time() + wait
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    msg = await sub.next_msg(timeout=left)
                except NatsTimeout:
                    break
                with contextlib.suppress(ValueError):
                    answers.append(json.loads(msg.data or b"{}"))
        finally:
            await sub.unsubscribe()
        return answers

    async def server_tags(self, wait: float = 0.5) -> dict[str, tuple[str, ...]]:
        """Server name -> its tags, for every server of the cluster that answers in time."""
        out: dict[str, tuple[str, ...]] = {}
        for answer in await self.gather("$SYS.REQ.SERVER.PING.STATSZ", wait):
            server = answer.get("server") or {}
            if server.get("name"):
                out[str(server["name"])] = tuple(str(t) for t in server.get("tags") or ())
        return out

    async def server_remove(self, peer_name: str) -> None:
        """Remove a server from the JetStream meta group for good."""
        await self.request("$JS.API.SERVER.REMOVE", {"peer": peer_name})

    async def meta_stepdown(self, preferred: str | None = None) -> None:
        """Ask the meta leader to step down, preferably in favour of `preferred`."""
        body = {"placement": {"preferred": preferred}} if preferred else None
        await self.request("$JS.API.META.LEADER.STEPDOWN", body)

    async def meta_rescue(self, quorum_needed: int = 1) -> dict[str, Any]:
        """Let a server that lost its meta quorum lead with `quorum_needed` votes."""
        return await self.request("$JS.API.META.RESCUE", {"quorum_needed": quorum_needed})
