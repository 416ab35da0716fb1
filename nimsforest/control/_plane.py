"""The control plane as the node runs it: the controller core and its two ways in.

`Controller` is the core (nimsforest.control._controller: validate, write, wait, audit)
plus NATS request/reply on `forest.control.*` (started after the core, stopped before it)
and the management API's routers.
"""

from __future__ import annotations

from fastapi import APIRouter

from nimsforest.control._controller import ControllerCore
from nimsforest.control._http import make_routers
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

    async def stop(self) -> None:
        if self._nats is not None:
            await self._nats.stop()
            self._nats = None
        await super().stop()

    def routers(self, river: APIRouter | None = None) -> list[APIRouter]:
        """The management API routers; `river`, the forest's HTTP router, is included with
        the token check on its /api/ routes."""
        return make_routers(self, river)


__all__ = ["Controller"]
