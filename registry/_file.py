"""The file:// backend: the registry.json that Morpheus keeps on shared storage.

URL: `file:///mnt/forest/registry.json?forest=<forest_id>[&cluster_port=6222]`; the
forest id defaults to the service name.

Format (Morpheus, see docs/REGISTRY.md): `{"nodes": {"<forest_id>": [{"id", "ip",
"forest_id", ...}]}}`. Reading `.nodes[forest_id]`:

- an entry is a node named `id`; its cluster address is our own `cluster_address` field
  when present, else `<ipv6 | ipv4 | ip>:<cluster_port or 6222>` (that preference, like
  the Go original);
- create_index = the entry's 1-based position in the list (appends only, so the order
  is the order of first registration; removing an entry shifts later numbers but never
  changes their order);
- Morpheus has no TTL: an entry with `last_seen` older than its `ttl_seconds` (or ours)
  is gone; an entry without `last_seen` (written by Morpheus' cloud-init) is live;
- entries that are not objects, have a bad `id` or no address are skipped; the first
  entry of a name wins.

Writing (register, heartbeat, deregister) happens under an exclusive `fcntl.flock` on
`<path>.lock`, rewrites the whole file atomically (temp + fsync + rename) and keeps
every entry, field and top-level key it does not understand. An entry with our name and
no `node_id` is Morpheus' record of this machine: we take it over and add our fields. A
file that cannot be parsed is never overwritten: every call raises RegistryUnreachable.

Metadata: an entry's `metadata` holds the operator's keys (written into the file, or set
with the operator calls) and the node's own; a registration merges the node's into it
with `merge_metadata` (the node's keys win, except an empty value), as the server does.
The operator calls edit an existing entry only: a node that is not in the file has no
entry to hold them (the file is Morpheus', which writes an entry per machine).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import ValidationError

from registry._atomic import write_atomic
from registry._base import Registry
from registry._errors import RegistryConflict, RegistryRejected, RegistryUnreachable
from registry._model import NAME_RE, NodeInfo, edit_metadata, format_hostport, merge_metadata
from registry._timing import Timing

T = TypeVar("T")
DEFAULT_CLUSTER_PORT = 6222
_OURS = ("cluster_address", "client_address", "monitor_url", "api_url")


class FileRegistry(Registry):
    """A Registry on a Morpheus registry.json (see the module docstring)."""

    backend = "file"

    def __init__(
        self,
        url: str,
        *,
        service: str,
        timing: Timing,
        cache_path: str | os.PathLike[str] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost") or not parts.path:
            raise ValueError(f"'{url}' is not a file:///path/to/registry.json URL.")
        query = parse_qs(parts.query)
        super().__init__(url, service=service, timing=timing, cache_path=cache_path)
        self.path = Path(unquote(parts.path))
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.forest = query.get("forest", [service])[0]
        port = query.get("cluster_port", [str(DEFAULT_CLUSTER_PORT)])[0]
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"'{port}' in {url} is not a valid cluster port.")
        self.cluster_port = int(port)

    # --- backend primitives ----------------------------------------------------------------
    async def _register(self, info: NodeInfo) -> NodeInfo:
        return await asyncio.to_thread(self._locked, lambda data: self._put(data, info))

    async def _heartbeat(self, record: NodeInfo) -> NodeInfo | None:
        return await asyncio.to_thread(self._locked, lambda data: self._touch(data, record))

    async def _deregister(self, info: NodeInfo) -> None:
        await asyncio.to_thread(self._locked, lambda data: self._remove(data, info))

    async def _list(
        self, index: int | None, wait: float | None
    ) -> tuple[int | None, list[NodeInfo]]:
        data = await asyncio.to_thread(self._read)
        return None, self._nodes(self._entries(data), datetime.now(UTC))

    async def _metadata(self, name: str) -> dict[str, str]:
        data = await asyncio.to_thread(self._read)
        entry = self._entry(data, name)
        return _metadata_of(entry) if entry is not None else {}

    async def _set_metadata(
        self, name: str, metadata: dict[str, str], merge: bool
    ) -> dict[str, str]:
        return await asyncio.to_thread(
            self._locked, lambda data: self._edit_metadata(data, name, metadata, merge)
        )

    # --- changes (run under the lock, in a thread) -----------------------------------------
    def _put(self, data: dict[str, Any], info: NodeInfo) -> tuple[NodeInfo, bool]:
        entries = self._entries(data, create=True)
        now = datetime.now(UTC)
        for pos, entry in enumerate(entries, start=1):
            if isinstance(entry, dict) and entry.get("id") == info.name:
                holder = entry.get("node_id")
                if holder is not None and holder != info.node_id and self._alive(entry, now):
                    raise RegistryConflict(info.name, str(holder))
                self._fill(entry, info, now, new=False)
                return self._stored(entry, pos, now), True
        entry = {"id": info.name, "ip": info.host, "forest_id": self.forest}
        self._fill(entry, info, now, new=True)
        entries.append(entry)
        return self._stored(entry, len(entries), now), True

    def _touch(self, data: dict[str, Any], record: NodeInfo) -> tuple[NodeInfo | None, bool]:
        now = datetime.now(UTC)
        for pos, entry in enumerate(self._entries(data), start=1):
            if isinstance(entry, dict) and entry.get("id") == record.name:
                if entry.get("node_id") != record.node_id:
                    if self._alive(entry, now) and entry.get("node_id") is not None:
                        raise RegistryConflict(record.name, str(entry.get("node_id")))
                    return None, False  # not our entry any more: register again
                entry["last_seen"] = _iso(now)
                return self._stored(entry, pos, now), True
        return None, False

    def _remove(self, data: dict[str, Any], info: NodeInfo) -> tuple[None, bool]:
        entries = self._entries(data)
        keep = [
            e
            for e in entries
            if not (
                isinstance(e, dict)
                and e.get("id") == info.name
                and e.get("node_id") == info.node_id
            )
        ]
        if len(keep) == len(entries):
            return None, False
        entries[:] = keep
        return None, True

    def _edit_metadata(
        self, data: dict[str, Any], name: str, metadata: dict[str, str], merge: bool
    ) -> tuple[dict[str, str], bool]:
        entry = self._entry(data, name)
        if entry is None:
            raise RegistryRejected(
                f"{self.path} has no entry for node '{name}' in forest '{self.forest}': its "
                "metadata is kept on that entry, so add the machine's entry (id, ip) or let "
                "the node register first."
            )
        old = entry.get("metadata")
        old = old if isinstance(old, dict) else {}
        new = edit_metadata(old if merge else {}, metadata)
        if new == old:
            return _metadata_of(entry), False
        if new:
            entry["metadata"] = new
        else:
            entry.pop("metadata", None)
        return _metadata_of(entry), True

    def _fill(self, entry: dict[str, Any], info: NodeInfo, now: datetime, *, new: bool) -> None:
        for key in _OURS:
            value = getattr(info, key)
            if value is not None:
                entry[key] = value
            elif not new:
                entry.pop(key, None)
        if info.node_id is not None:
            entry["node_id"] = info.node_id
        entry["cluster_port"] = info.port
        if info.metadata:
            old = entry.get("metadata")
            entry["metadata"] = merge_metadata(old if isinstance(old, dict) else {}, info.metadata)
        entry["ttl_seconds"] = self.timing.ttl
        entry["registered_at"] = _iso(now)
        entry["last_seen"] = _iso(now)

    # --- reading ---------------------------------------------------------------------------
    def _nodes(self, entries: list[Any], now: datetime) -> list[NodeInfo]:
        out: list[NodeInfo] = []
        seen: set[str] = set()
        for pos, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict) or not self._alive(entry, now):
                continue
            node = self._node_at(entry, pos, now)
            if node is not None and node.name not in seen:
                seen.add(node.name)
                out.append(node)
        return out

    def _node_at(self, entry: dict[str, Any], pos: int, now: datetime) -> NodeInfo | None:
        name = entry.get("id")
        if not isinstance(name, str) or not NAME_RE.match(name):
            return None
        address = entry.get("cluster_address")
        if not isinstance(address, str):
            host = next(
                (
                    h
                    for h in (entry.get(k) for k in ("ipv6", "ipv4", "ip"))
                    if isinstance(h, str) and h
                ),
                None,
            )
            if host is None:
                return None
            port = entry.get("cluster_port")
            port = (
                port if isinstance(port, int) and not isinstance(port, bool) else self.cluster_port
            )
            address = format_hostport(host.strip("[]"), port)
        try:
            return NodeInfo(
                name=name,
                cluster_address=address,
                client_address=_str(entry.get("client_address")),
                monitor_url=_str(entry.get("monitor_url")),
                api_url=_str(entry.get("api_url")),
                node_id=_str(entry.get("node_id")),
                registered_at=_when(entry.get("registered_at")) or _when(entry.get("created_at")),
                create_index=pos,
                metadata=_metadata_of(entry),
            )
        except ValidationError:
            return None

    def _stored(self, entry: dict[str, Any], pos: int, now: datetime) -> NodeInfo:
        node = self._node_at(entry, pos, now)
        if node is None:  # only if another writer left our entry unreadable
            raise self._bad(f"our entry '{entry.get('id')}' cannot be read back")
        return node

    def _alive(self, entry: dict[str, Any], now: datetime) -> bool:
        seen = _when(entry.get("last_seen"))
        if seen is None:
            return True  # Morpheus' own entries carry no last_seen: live
        ttl = entry.get("ttl_seconds")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            ttl = self.timing.ttl
        return (now - seen).total_seconds() <= ttl

    def _entry(self, data: dict[str, Any], name: str) -> dict[str, Any] | None:
        """The first entry named `name` (the one the reader takes), or None."""
        return next(
            (e for e in self._entries(data) if isinstance(e, dict) and e.get("id") == name), None
        )

    def _entries(self, data: dict[str, Any], create: bool = False) -> list[Any]:
        nodes = data.get("nodes")
        if nodes is None:
            nodes = data["nodes"] = {}
        if not isinstance(nodes, dict):
            raise self._bad("'nodes' is not an object")
        entries = nodes.get(self.forest)
        if entries is None:
            entries = []
            if create:
                nodes[self.forest] = entries
        if not isinstance(entries, list):
            raise self._bad(f"'nodes.{self.forest}' is not a list")
        return entries

    # --- file access -----------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if not self.path.parent.is_dir():
                raise self._down(
                    f"the directory {self.path.parent} does not exist "
                    "(is the shared storage mounted?)"
                ) from None
            return {"nodes": {}}
        except OSError as exc:
            raise self._down(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if not raw.strip():
            return {"nodes": {}}
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise self._bad(f"it is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise self._bad("it is not a JSON object")
        self._entries(data)  # checks the shape
        return data

    def _locked(self, change: Callable[[dict[str, Any]], tuple[T, bool]]) -> T:
        """Run `change` on the file's content under the lock; write it back if it changed."""
        deadline = time.monotonic() + self.timing.retry_budget
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._down(
                f"cannot open the lock file {self.lock_path}: {exc.strerror or exc}"
            ) from None
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise self._down(
                            f"the lock file {self.lock_path} is held by another process"
                        ) from None
                    time.sleep(0.02)
            data = self._read()
            result, changed = change(data)
            if changed:
                try:
                    write_atomic(self.path, (json.dumps(data, indent=2) + "\n").encode())
                except OSError as exc:
                    raise self._down(f"cannot write {self.path}: {exc.strerror or exc}") from None
            return result
        finally:
            os.close(fd)  # releases the flock

    def _down(self, reason: str) -> RegistryUnreachable:
        return RegistryUnreachable(f"Registry unreachable at {self.url}: {reason}.")

    def _bad(self, reason: str) -> RegistryUnreachable:
        return RegistryUnreachable(
            f"Registry unreachable at {self.url}: {self.path} is not a registry file: {reason}."
        )


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds")


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _metadata_of(entry: dict[str, Any]) -> dict[str, str]:
    metadata = entry.get("metadata")
    if not isinstance(metadata, dict):
        return {}
    return {k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, str)}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


__all__ = ["FileRegistry", "DEFAULT_CLUSTER_PORT"]
