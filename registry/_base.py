"""The `Registry` interface: each method's contract, and the logic every backend shares."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Coroutine, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

from registry._cache import CachedNodes, PeerCache
from registry._errors import RegistryConflict, RegistryError, RegistryRejected, RegistryUnreachable
from registry._model import (
    NodeInfo,
    OperatorMetadata,
    PeerEvent,
    RegistryState,
    RegistryStatus,
    check_metadata,
    check_name,
)
from registry._timing import Timing
from registry._watch import watch

log = logging.getLogger("registry")
T = TypeVar("T")

_TROUBLE = (RegistryState.UNREACHABLE, RegistryState.CONFLICT, RegistryState.REJECTED)


def display_url(url: str) -> str:
    """The URL without any user:password part, for logs and status."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class Registry(abc.ABC):
    """Where nodes of one service find each other. asyncio only.

    Outcomes are kept apart (see `registry._errors`): `RegistryUnreachable` (degrade:
    keep running on what you know and retry), `RegistryConflict` (a normal "no": the name
    is taken), `RegistryRejected` (fix the setup). Any other exception is a bug.

    This node's own record is given to `register()`; until then the registry does not
    know which node is "self" (list_peers() then equals list_nodes()).

    Contracts:

    - `register(info)`: atomic. Remembers `info` as this node's record even when it
      raises, so run_heartbeat() keeps trying to register it. Returns the stored record
      with `registered_at` and `create_index` set. Conflict when the name is held by a
      live record with another node id; the same node id takes its record over and keeps
      its create_index. All attempts finish within one heartbeat interval.
    - `heartbeat()`: renews the TTL. If the registry has forgotten this node (TTL expiry,
      registry data loss) it registers again, logs that, and returns the new record.
      Finishes within one heartbeat interval (the timing rule, `registry._timing`).
    - `deregister()`: removes this node's record (never another node's one with the
      same name) and stops run_heartbeat() from registering again. If it raises
      RegistryUnreachable the record simply expires after its TTL. close() does not
      deregister.
    - `list_nodes()`: every live node, self included, sorted by create_index (lowest =
      oldest). Raises RegistryUnreachable when the registry cannot answer; it never
      answers from the cache (call `cached_peers()` for that). A success updates the
      peer cache.
    - `list_peers()`: list_nodes() without this node.
    - `cached_peers()`: the peers of the last successful answer, from this process or from
      the cache file (`cache_path`) of an earlier run; [] if none. No registry I/O.
    - `watch_peers(known)`: an endless async iterator of ADDED/REMOVED events relative
      to `known` (default: nothing known, so current peers first come as ADDED). Each
      round is a blocking query (Consul-style) or, when blocking fails or is not
      supported, a poll every heartbeat interval; a round may end with no change, which
      the caller does not see. It keeps going through outages without raising and
      without inventing REMOVED events; it ends when close() is called.
    - `run_heartbeat()`: a long-running coroutine: registers (if not yet done) and then
      heartbeats every interval, through every error, logging one line whenever the
      state changes. Ends on close(); cancel it to stop earlier.
    - `status()`: a snapshot (no I/O) for health endpoints.
    - `close()`: stops run_heartbeat() and watch_peers(), releases connections.

    An operator's calls (the CLI's `registry metadata`), about any node of the service and
    apart from this client's own registration (they leave `status()` as it is):

    - `node_metadata(name)`: the operator's metadata of node `name`.
    - `set_node_metadata(name, metadata, merge=False)`: replace it, or with `merge` merge
      into it; a key with an empty value is removed. Returns what is kept.
    - `clear_node_metadata(name)`: remove all of it.

    A node's record carries the operator's metadata under its own (`merge_metadata`: the
    node's keys win, except an empty value). A bad name or key is a ValueError before any
    I/O; RegistryUnreachable and RegistryRejected as for the other calls.
    """

    backend: ClassVar[str] = "?"

    def __init__(
        self,
        url: str,
        *,
        service: str,
        timing: Timing,
        cache_path: str | os.PathLike[str] | None = None,
    ) -> None:
        try:
            check_name(service, "service name")
        except ValueError as exc:
            raise ValueError(f"{exc}.") from None
        self.url = display_url(url)
        self.service = service
        self.timing = timing
        self._cache = PeerCache(cache_path) if cache_path is not None else None
        self._cached: CachedNodes | None = self._cache.load() if self._cache else None
        self._self: NodeInfo | None = None  # what register() was asked to store
        self._record: NodeInfo | None = None  # what the registry stored; None = not registered
        self._wanted = False  # register() called and deregister() not called since
        self._state = RegistryState.NOT_REGISTERED
        self._connected = False
        self._last_heartbeat: datetime | None = None
        self._last_error: str | None = None
        self._last_nodes: tuple[NodeInfo, ...] | None = None
        self._closed = asyncio.Event()
        self._op_lock = asyncio.Lock()  # register / heartbeat / deregister one at a time

    # --- what a backend provides (each raises only RegistryError subclasses) ----------------
    @abc.abstractmethod
    async def _register(self, info: NodeInfo) -> NodeInfo: ...

    @abc.abstractmethod
    async def _heartbeat(self, record: NodeInfo) -> NodeInfo | None:
        """Renew; None when the registry does not know the node (any more)."""

    @abc.abstractmethod
    async def _deregister(self, info: NodeInfo) -> None: ...

    @abc.abstractmethod
    async def _list(
        self, index: int | None, wait: float | None
    ) -> tuple[int | None, list[NodeInfo]]:
        """(index or None when the backend has no blocking queries, live nodes)."""

    @abc.abstractmethod
    async def _metadata(self, name: str) -> dict[str, str]:
        """The operator's metadata of node `name`."""

    @abc.abstractmethod
    async def _set_metadata(
        self, name: str, metadata: dict[str, str], merge: bool
    ) -> dict[str, str]:
        """Replace (or merge into) the operator's metadata of `name`; return what is kept."""

    async def _aclose(self) -> None:
        return None

    # --- the interface ---------------------------------------------------------------------
    async def register(self, info: NodeInfo) -> NodeInfo:
        self._check_open()
        self._self, self._wanted = info, True
        async with self._op_lock:
            return await self._do_register()

    async def heartbeat(self) -> NodeInfo:
        self._check_open()
        if self._self is None or not self._wanted:
            raise RuntimeError("heartbeat() needs register() first (and no deregister() since).")
        async with self._op_lock:
            if self._record is None:
                return await self._do_register()
            try:
                record = await self._heartbeat(self._record)
            except RegistryError as exc:
                self._failed(exc)
                raise
            if record is None:
                self._record = None
                record = await self._do_register()
                log.info(
                    "Registry at %s had forgotten node %s; registered it again (create index %s).",
                    self.url,
                    record.name,
                    record.create_index,
                )
                return record
            self._registered(record)
            return record

    async def deregister(self) -> None:
        self._wanted = False
        if self._self is None:
            return
        async with self._op_lock:
            try:
                await self._deregister(self._self)
            except RegistryError as exc:
                self._failed(exc)
                raise
            self._record = None
            self._connected = True
            self._set_state(RegistryState.NOT_REGISTERED)

    async def list_nodes(self) -> list[NodeInfo]:
        self._check_open()
        return (await self._fetch(None, None))[1]

    async def list_peers(self) -> list[NodeInfo]:
        return [n for n in await self.list_nodes() if not self._is_self(n)]

    def cached_peers(self) -> list[NodeInfo]:
        nodes = (
            self._last_nodes
            if self._last_nodes is not None
            else (self._cached.nodes if self._cached is not None else ())
        )
        return [n for n in nodes if not self._is_self(n)]

    def watch_peers(
        self, known: Iterable[NodeInfo] = (), *, wait: float = 30.0
    ) -> AsyncIterator[PeerEvent]:
        return watch(self, known, wait)

    async def run_heartbeat(self) -> None:
        if self._self is None:
            raise RuntimeError("run_heartbeat() needs register() first.")
        loop = asyncio.get_running_loop()
        next_at = loop.time() + (self.timing.interval if self._record is not None else 0.0)
        reported: str | None = None
        while not self._closed.is_set():
            delay = next_at - loop.time()
            if delay > 0 and await self._sleep(delay):
                return
            next_at = max(next_at + self.timing.interval, loop.time())
            if not self._wanted or self._closed.is_set():
                continue
            try:
                await self.heartbeat()
                reported = None
            except RegistryError:
                pass  # state and its one log line are handled by _failed()
            except Exception as exc:  # noqa: BLE001 - a bug: log it once, keep the loop alive
                if repr(exc) != reported:
                    log.exception(
                        "Unexpected error in the registry heartbeat loop (a bug): %r", exc
                    )
                    reported = repr(exc)

    async def node_metadata(self, name: str) -> OperatorMetadata:
        self._check_open()
        _check_node_name(name)
        return self._operator(name, await self._metadata(name))

    async def set_node_metadata(
        self, name: str, metadata: Mapping[str, str], *, merge: bool = False
    ) -> OperatorMetadata:
        self._check_open()
        _check_node_name(name)
        values = check_metadata(metadata)
        return self._operator(name, await self._set_metadata(name, values, merge))

    async def clear_node_metadata(self, name: str) -> None:
        self._check_open()
        _check_node_name(name)
        await self._set_metadata(name, {}, False)

    def _operator(self, name: str, metadata: dict[str, str]) -> OperatorMetadata:
        return OperatorMetadata(service=self.service, name=name, metadata=metadata)

    def status(self) -> RegistryStatus:
        return RegistryStatus(
            url=self.url,
            service=self.service,
            backend=self.backend,
            state=self._state,
            connected=self._connected,
            node=self._self.name if self._self else None,
            create_index=self._record.create_index if self._record else None,
            last_heartbeat=self._last_heartbeat,
            last_error=self._last_error,
            peers_cached=self._last_nodes is not None or self._cached is not None,
            heartbeat_interval=self.timing.interval,
            ttl_seconds=self.timing.ttl,
        )

    async def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._set_state(RegistryState.CLOSED)
        await self._aclose()

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- shared machinery ------------------------------------------------------------------
    async def _do_register(self) -> NodeInfo:
        assert self._self is not None
        try:
            record = await self._register(self._self)
        except RegistryError as exc:
            self._failed(exc)
            raise
        self._registered(record)
        log.debug(
            "Registered node %s at %s (create index %s).",
            record.name,
            self.url,
            record.create_index,
        )
        return record

    async def _fetch(
        self, index: int | None, wait: float | None
    ) -> tuple[int | None, list[NodeInfo]]:
        try:
            new_index, nodes = await self._list(index, wait)
        except RegistryError as exc:
            self._failed(exc)
            raise
        nodes = sorted(nodes, key=lambda n: (n.create_index or 0, n.name))
        self._connected = True
        if self._state is RegistryState.UNREACHABLE:
            self._set_state(
                RegistryState.REGISTERED if self._record else RegistryState.NOT_REGISTERED
            )
        self._last_nodes = tuple(nodes)
        if self._cache is not None:
            self._cache.save(nodes, url=self.url, service=self.service)
        return new_index, nodes

    def _registered(self, record: NodeInfo) -> None:
        self._record = record
        self._connected = True
        self._last_heartbeat = datetime.now(UTC)
        self._set_state(RegistryState.REGISTERED)

    def _failed(self, exc: RegistryError) -> None:
        self._last_error = str(exc)
        if isinstance(exc, RegistryUnreachable):
            self._connected = False
            self._set_state(RegistryState.UNREACHABLE, exc)
        elif isinstance(exc, RegistryConflict):
            self._connected = True
            self._set_state(RegistryState.CONFLICT, exc)
        elif isinstance(exc, RegistryRejected):
            self._connected = True
            self._set_state(RegistryState.REJECTED, exc)

    def _set_state(self, state: RegistryState, exc: RegistryError | None = None) -> None:
        old, self._state = self._state, state
        if state is old or state is RegistryState.CLOSED:
            return
        if state is RegistryState.UNREACHABLE:
            log.warning("%s", exc)
        elif state in (RegistryState.CONFLICT, RegistryState.REJECTED):
            log.error("%s", exc)
        elif old is RegistryState.UNREACHABLE:
            log.info("Registry reachable again at %s.", self.url)
        elif old in _TROUBLE:
            log.info(
                "Registry at %s accepts node %s again.",
                self.url,
                self._self.name if self._self else "?",
            )

    def _is_self(self, node: NodeInfo) -> bool:
        return self._self is not None and node.name == self._self.name

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise RuntimeError("This registry client is closed.")

    async def _unless_closed(self, coro: Coroutine[Any, Any, T]) -> T | None:
        """The result of `coro`, or None (and `coro` cancelled) once close() is called."""
        task = asyncio.ensure_future(coro)
        closer = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({task, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, closer):
                if not pending.done():
                    pending.cancel()
        if not task.done() or task.cancelled():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            return None
        return task.result()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep; True (at once) if close() was called meanwhile."""
        try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._closed.wait()
        except TimeoutError:
            return False
        return True


def _check_node_name(name: str) -> None:
    try:
        check_name(name)
    except ValueError as exc:
        raise ValueError(f"{exc}.") from None


__all__ = ["Registry", "display_url"]
