"""The registry's state: services, node records, TTLs, indexes, blocking waits, persistence.

One `Store` is the whole truth of a registry server (`_server.py`) and of a `memory://`
registry, so both have the same semantics:

- register: atomic. A name held by a live record with a different node id is a conflict.
  The same node id takes the record over and keeps its create_index. A new record gets
  create_index = the next value of the store-wide index (strictly increasing).
- heartbeat: renews the record's TTL (the TTL the node asked for, bounded).
- TTL expiry: a record not renewed within its TTL is removed (an expired record never
  conflicts); removal bumps the index like any other change.
- index: every change (register, deregister, expiry, an operator's metadata) takes the
  next store-wide index and stamps it on its service; `wait()` blocks until the service's
  index passes the caller's one (Consul-style blocking query).
- operator metadata: per service and node name, set before or after the node registers
  and kept when its record goes (deregistration, expiry). Every record the store hands
  out carries `merge_metadata(operator's, node's own)`; the record keeps the node's own.

Persistence is a JSON snapshot written atomically by the server; on load every TTL clock
restarts with one full TTL, so a registry restart does not expire every node.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from registry._errors import RegistryConflict
from registry._model import Metadata, NodeInfo, edit_metadata, merge_metadata

STATE_VERSION = 1


class NotRegistered(LookupError):
    """The named node has no live record in the service."""


class StateFileError(ValueError):
    """The state file cannot be loaded; the message is one sentence."""


_OPERATOR_METADATA = TypeAdapter(dict[str, Metadata])


@dataclass
class _Record:
    info: NodeInfo  # as the node registered it: its own metadata only
    ttl: float
    expires_at: float  # on the store's monotonic clock


@dataclass
class _Service:
    nodes: dict[str, _Record] = field(default_factory=dict)
    metadata: dict[str, dict[str, str]] = field(default_factory=dict)  # the operator's, by name
    index: int = 0  # store index of the last change in this service

    def answer(self, info: NodeInfo) -> NodeInfo:
        """The record as handed out: with the operator's metadata merged in."""
        operator = self.metadata.get(info.name)
        if not operator:
            return info
        return info.model_copy(update={"metadata": merge_metadata(operator, info.metadata)})


class Store:
    """Services and their live node records (see the module docstring)."""

    def __init__(
        self,
        *,
        min_ttl: float = 1.0,
        max_ttl: float = 3600.0,
        default_ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_expire: Callable[[str, NodeInfo], None] | None = None,
    ) -> None:
        self.min_ttl, self.max_ttl, self.default_ttl = min_ttl, max_ttl, default_ttl
        self._clock = clock
        self._on_expire = on_expire
        self._services: dict[str, _Service] = {}
        self.index = 0  # the store-wide index: the last change anywhere
        self.version = 0  # bumped on every change worth persisting
        self._waiters: set[asyncio.Future[None]] = set()
        self._closing = False

    # --- changes ---------------------------------------------------------------------------
    def bound_ttl(self, ttl: float | None) -> float:
        if ttl is None:
            return self.default_ttl
        return min(max(float(ttl), self.min_ttl), self.max_ttl)

    def register(
        self, service: str, info: NodeInfo, ttl: float | None = None
    ) -> tuple[NodeInfo, bool]:
        """Store `info`; return (the stored record, with the operator's metadata merged in,
        and True if it is a new record)."""
        self.expire()
        svc = self._services.setdefault(service, _Service())
        old = svc.nodes.get(info.name)
        if old is not None and old.info.node_id != info.node_id:
            raise RegistryConflict(info.name, old.info.node_id)
        index = self._bump(svc)
        create_index = old.info.create_index if old is not None else index
        stored = info.model_copy(
            update={"registered_at": datetime.now(UTC), "create_index": create_index}
        )
        ttl = self.bound_ttl(ttl)
        svc.nodes[info.name] = _Record(stored, ttl, self._clock() + ttl)
        return svc.answer(stored), old is None

    def heartbeat(
        self, service: str, name: str, node_id: str | None = None
    ) -> tuple[NodeInfo, float]:
        """Renew the record's TTL; return (record, ttl). Raises NotRegistered / RegistryConflict."""
        self.expire()
        rec = self._live(service, name, node_id)
        rec.expires_at = self._clock() + rec.ttl
        return self._services[service].answer(rec.info), rec.ttl

    def deregister(self, service: str, name: str, node_id: str | None = None) -> None:
        """Remove the record. Raises NotRegistered / RegistryConflict (another node's record)."""
        self.expire()
        self._live(service, name, node_id)
        svc = self._services[service]
        del svc.nodes[name]
        self._bump(svc)

    def expire(self) -> bool:
        """Remove every record past its TTL; True if anything was removed."""
        now = self._clock()
        changed = False
        for service, svc in self._services.items():
            dead = [name for name, rec in svc.nodes.items() if rec.expires_at <= now]
            for name in dead:
                rec = svc.nodes.pop(name)
                if self._on_expire is not None:
                    self._on_expire(service, rec.info)
            if dead:
                self._bump(svc)
                changed = True
        return changed

    def set_operator_metadata(
        self, service: str, name: str, metadata: Mapping[str, str]
    ) -> dict[str, str]:
        """Replace the operator's metadata of node `name` (registered or not); keys with an
        empty value are left out, so `{}` clears it. Returns what is kept now."""
        kept = edit_metadata({}, metadata)
        svc = self._services.setdefault(service, _Service())
        if kept != svc.metadata.get(name, {}):
            if kept:
                svc.metadata[name] = kept
            else:
                del svc.metadata[name]
            self._bump(svc)
        return kept

    def edit_operator_metadata(
        self, service: str, name: str, changes: Mapping[str, str]
    ) -> dict[str, str]:
        """Merge `changes` into the operator's metadata of node `name`; a key with an empty
        value is removed. Returns what is kept now."""
        current = self.operator_metadata(service, name)
        return self.set_operator_metadata(service, name, edit_metadata(current, changes))

    # --- reading ---------------------------------------------------------------------------
    def operator_metadata(self, service: str, name: str) -> dict[str, str]:
        """The operator's metadata of node `name` ({} when none was given)."""
        svc = self._services.get(service)
        return dict(svc.metadata.get(name, {})) if svc is not None else {}

    def nodes(self, service: str) -> list[tuple[NodeInfo, float]]:
        """Live records of `service` as (record, ttl), sorted by create_index."""
        self.expire()
        svc = self._services.get(service)
        if svc is None:
            return []
        recs = sorted(svc.nodes.values(), key=lambda r: (r.info.create_index or 0, r.info.name))
        return [(svc.answer(r.info), r.ttl) for r in recs]

    def service_index(self, service: str) -> int:
        svc = self._services.get(service)
        return svc.index if svc is not None else 0

    def services(self) -> dict[str, int]:
        """Service name -> number of live nodes, for services that have any."""
        self.expire()
        return {name: len(svc.nodes) for name, svc in sorted(self._services.items()) if svc.nodes}

    def node_count(self) -> int:
        return sum(self.services().values())

    async def wait(self, service: str, index: int, timeout: float) -> None:
        """Return when the service's index passes `index`, or after `timeout` seconds.

        Returns at once when `index` is ahead of the store (the store lost state or
        restarted) or the store is closing. A return does not promise a change.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self.expire()
            if self._closing or self.service_index(service) > index or index > self.index:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            next_expiry = self._next_expiry(service)
            if next_expiry is not None:
                remaining = min(remaining, max(next_expiry - self._clock(), 0.0) + 0.001)
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.add(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(fut)

    def close(self) -> None:
        """Wake every waiter and make later waits return at once (server shutdown)."""
        self._closing = True
        self._notify()

    # --- persistence -----------------------------------------------------------------------
    def snapshot(self) -> bytes:
        services = {
            name: {
                "index": svc.index,
                "nodes": [
                    dict(r.info.model_dump(mode="json"), ttl_seconds=r.ttl)
                    for r in svc.nodes.values()
                ],
                "metadata": svc.metadata,
            }
            for name, svc in self._services.items()
            if svc.nodes or svc.index or svc.metadata
        }
        body = {"version": STATE_VERSION, "index": self.index, "services": services}
        return json.dumps(body, indent=1).encode()

    def restore(self, raw: bytes, source: str) -> None:
        """Load a snapshot; every record gets one full TTL from now."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise StateFileError(f"Registry state file {source} has an unknown format.")
            now = self._clock()
            services: dict[str, _Service] = {}
            for name, svc_data in data["services"].items():
                svc = _Service(
                    index=int(svc_data["index"]),
                    metadata=_OPERATOR_METADATA.validate_python(svc_data.get("metadata", {})),
                )
                for node in svc_data["nodes"]:
                    info = NodeInfo.model_validate(node)
                    ttl = self.bound_ttl(node.get("ttl_seconds"))
                    svc.nodes[info.name] = _Record(info, ttl, now + ttl)
                services[name] = svc
            index = int(data["index"])
        except StateFileError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StateFileError(
                f"Registry state file {source} cannot be loaded ({first}); fix or move it away."
            ) from None
        self._services, self.index = services, index

    def load_file(self, path: Path) -> bool:
        """Restore from `path` if it exists; True if it did."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StateFileError(
                f"Registry state file {path} cannot be read: {exc.strerror or exc}."
            ) from None
        self.restore(raw, str(path))
        return True

    # --- internals -------------------------------------------------------------------------
    def _live(self, service: str, name: str, node_id: str | None) -> _Record:
        svc = self._services.get(service)
        rec = svc.nodes.get(name) if svc is not None else None
        if rec is None:
            raise NotRegistered(f"Node '{name}' is not registered in service '{service}'.")
        if node_id is not None and rec.info.node_id != node_id:
            raise RegistryConflict(name, rec.info.node_id)
        return rec

    def _bump(self, svc: _Service) -> int:
        self.index += 1
        svc.index = self.index
        self.version += 1
        self._notify()
        return self.index

    def _next_expiry(self, service: str) -> float | None:
        svc = self._services.get(service)
        if svc is None or not svc.nodes:
            return None
        return min(rec.expires_at for rec in svc.nodes.values())

    def _notify(self) -> None:
        # Waiters may belong to different event loops (memory:// stores outlive a loop).
        for fut in list(self._waiters):
            try:
                fut.get_loop().call_soon_threadsafe(_settle, fut)
            except RuntimeError:  # that loop is closed
                self._waiters.discard(fut)


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def parse_body_ttl(value: Any) -> float | None:
    """`ttl_seconds` from a request body: None or a positive number, else ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError("'ttl_seconds' must be a positive number of seconds")
    return float(value)


__all__ = ["Store", "NotRegistered", "StateFileError", "parse_body_ttl"]
