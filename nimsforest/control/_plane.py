"""The control plane as the node runs it: the controller core, its two ways in and its
status reports.

`Controller` is the core (nimsforest.control._controller: validate, write, wait, audit)
plus NATS request/reply on `forest.control.*` and the status reports (started after the
core, stopped before it) and the management API's routers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from nimsforest.control._controller import ControllerCore
from nimsforest.control._http import make_caller, make_routers, token_matches
from nimsforest.control._nats import NatsControl


class Controller(ControllerCore):
    """Runtime changes to the forest, cluster-wide and durable. See docs/CONTROL.md."""

    _nats: NatsControl | None = None

    async def start(
        self, *, first_apply_timeout: float = 30.0, attempts: int = 6, backoff: float = 1.0
    ) -> None:
        """The core's start (see ControllerCore.start), then serve forest.control.*."""
        await super().start(
            first_apply_timeout=first_apply_timeout, attempts=attempts, backoff=backoff
        )
        self._nats = NatsControl(self._nc, self)
        await self._nats.start()
        await self.board.start()  # this node's status reports (control/_reports.py)

    async def stop(self) -> None:
        await self.board.stop()
        if self._nats is not None:
            await self._nats.stop()
            self._nats = None
        await super().stop()

    def routers(self, river: APIRouter | None = None) -> list[APIRouter]:
        """The management API routers; `river`, the forest's HTTP router, is included with
        the token check on its /api/ routes."""
        return make_routers(self, river)

    def guard(self, *, cookie: bool = False) -> Any:
        """The API's check of who calls, as a FastAPI dependency, for routes other layers
        add (the readers, the dashboard); `cookie`: read-only GET routes that also take the
        token from the dashboard's cookie."""
        return make_caller(self, cookie=cookie)

    def accepts_token(self, given: str) -> bool:
        """Whether `given` is this node's API token (always, when it has none)."""
        return token_matches(self, given)

    @property
    def needs_token(self) -> bool:
        return self.token is not None


__all__ = ["Controller"]
