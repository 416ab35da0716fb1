"""The memory:// backend: an in-process registry with the server's semantics, for tests.

All `memory://NAME` registries of one process share the store named NAME (the URL's
netloc), so several nodes in one test see each other. The store is the server's own
`Store` (TTL expiry, conflicts, create_index, blocking waits), with a lower TTL floor
(0.05 s) so tests stay fast. `memory_store(NAME).reachable = False` makes every call of
those registries raise RegistryUnreachable, to test outages.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from registry._base import Registry
from registry._errors import RegistryConflict, RegistryUnreachable
from registry._model import NodeInfo
from registry._store import NotRegistered, Store
from registry._timing import Timing


class MemoryStore(Store):
    """A Store shared by the memory:// registries of one name, with an outage switch."""

    def __init__(self, name: str) -> None:
        super().__init__(min_ttl=0.05)
        self.name = name
        self.reachable = True


_STORES: dict[str, MemoryStore] = {}


def memory_store(name: str) -> MemoryStore:
    """The shared store behind `memory://name` (created on first use)."""
    store = _STORES.get(name)
    if store is None:
        store = _STORES[name] = MemoryStore(name)
    return store


class MemoryRegistry(Registry):
    """A Registry on a process-wide MemoryStore."""

    backend = "memory"

    def __init__(
        self,
        url: str,
        *,
        service: str,
        timing: Timing,
        cache_path: str | os.PathLike[str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "memory":
            raise ValueError(f"'{url}' is not a memory:// registry URL.")
        super().__init__(url, service=service, timing=timing, cache_path=cache_path)
        self.store = memory_store(parts.netloc)

    def _check(self) -> None:
        if not self.store.reachable:
            raise RegistryUnreachable(f"Registry unreachable at {self.url}: it is switched off.")

    async def _register(self, info: NodeInfo) -> NodeInfo:
        self._check()
        return self.store.register(self.service, info, self.timing.ttl)[0]

    async def _heartbeat(self, record: NodeInfo) -> NodeInfo | None:
        self._check()
        try:
            return self.store.heartbeat(self.service, record.name, record.node_id)[0]
        except NotRegistered:
            return None

    async def _deregister(self, info: NodeInfo) -> None:
        self._check()
        try:
            self.store.deregister(self.service, info.name, info.node_id)
        except (NotRegistered, RegistryConflict):
            pass  # gone already, or the name now belongs to another node: leave it

    async def _list(
        self, index: int | None, wait: float | None
    ) -> tuple[int | None, list[NodeInfo]]:
        self._check()
        if index is not None and wait:
            await self.store.wait(self.service, index, wait)
            self._check()
        return self.store.index, [info for info, _ in self.store.nodes(self.service)]

    async def _metadata(self, name: str) -> dict[str, str]:
        self._check()
        return self.store.operator_metadata(self.service, name)

    async def _set_metadata(
        self, name: str, metadata: dict[str, str], merge: bool
    ) -> dict[str, str]:
        self._check()
        if merge:
            return self.store.edit_operator_metadata(self.service, name, metadata)
        return self.store.set_operator_metadata(self.service, name, metadata)


__all__ = ["MemoryRegistry", "MemoryStore", "memory_store"]
