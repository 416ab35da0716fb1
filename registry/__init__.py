"""Where NimsForest nodes find each other: a registry client, its backends, and a server.

    reg = open_registry("http://registry:8500", service="nimsforest",
                        heartbeat_interval=10.0, cache_path=data_dir / "peers.json")
    record = await reg.register(NodeInfo(name="n1", cluster_address="10.0.0.1:6222",
                                         node_id=ensure_node_id(data_dir / "node_id")))
    peers = await reg.list_peers()            # or reg.cached_peers() when unreachable
    asyncio.create_task(reg.run_heartbeat())
    async for event in reg.watch_peers(known=peers): ...
    await reg.set_node_metadata("n2", {"zone": "eu-1b"}, merge=True)   # an operator's call

Backends by URL scheme: `http(s)://` (the server, `nimsforest registry serve`),
`file:///path/registry.json?forest=ID` (Morpheus' shared file), `memory://NAME` (tests).
The contracts are in `Registry`'s docstring, the errors in `registry._errors`, the
timing rule in `registry._timing`, the HTTP API in docs/REGISTRY.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from registry._base import Registry
from registry._cache import CachedNodes, PeerCache, ensure_node_id
from registry._errors import RegistryConflict, RegistryError, RegistryRejected, RegistryUnreachable
from registry._memory import MemoryStore, memory_store
from registry._model import (
    NAME_RE,
    NodeInfo,
    OperatorMetadata,
    PeerEvent,
    PeerEventType,
    RegistryState,
    RegistryStatus,
    check_metadata,
    check_name,
    merge_metadata,
)
from registry._store import StateFileError
from registry._timing import Timing, plan_timing

if TYPE_CHECKING:
    from fastapi import FastAPI

SCHEMES = ("http", "https", "file", "memory")


def open_registry(
    url: str,
    *,
    service: str = "nimsforest",
    token: Any = None,
    heartbeat_interval: float = 10.0,
    request_timeout: float | None = None,
    cache_path: str | os.PathLike[str] | None = None,
) -> Registry:
    """A Registry for `url`, the backend chosen by its scheme. No I/O besides the cache.

    `token` (a str or a pydantic SecretStr) is sent as a bearer token (http(s) only).
    `heartbeat_interval` and `request_timeout` follow the timing rule (registry._timing):
    an interval below 0.1 s is a ValueError, a timeout that breaks the rule is clamped
    with a warning. With `cache_path`, every successful node list is saved there and
    `cached_peers()` can answer from it when the registry is down (even after a restart).
    Raises ValueError (one sentence) for a bad URL, service name or interval.
    """
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) else ""
    if scheme not in SCHEMES:
        raise ValueError(
            f"Registry URL '{url}' must start with http://, https://, file:// or memory://."
        )
    timing = plan_timing(heartbeat_interval, request_timeout)
    if hasattr(token, "get_secret_value"):
        token = token.get_secret_value()
    if scheme in ("http", "https"):
        from registry._http import HttpRegistry

        return HttpRegistry(url, service=service, timing=timing, token=token, cache_path=cache_path)
    if scheme == "file":
        from registry._file import FileRegistry

        return FileRegistry(url, service=service, timing=timing, cache_path=cache_path)
    from registry._memory import MemoryRegistry

    return MemoryRegistry(url, service=service, timing=timing, cache_path=cache_path)


def create_app(
    *,
    data_dir: str | os.PathLike[str] | None = None,
    token: str | None = None,
    min_ttl: float = 1.0,
    max_ttl: float = 3600.0,
    default_ttl: float = 30.0,
    max_wait: float = 300.0,
    max_body: int = 64 * 1024,
) -> FastAPI:
    """The registry server's FastAPI app (serve it with uvicorn; see docs/REGISTRY.md).

    With `data_dir`, state is kept in `<data_dir>/state.json` and survives restarts;
    without it, state lives in memory only. `token` makes every endpoint require
    `Authorization: Bearer <token>`. TTLs asked by nodes are bounded to
    [min_ttl, max_ttl] (default_ttl when none is given), blocking queries wait at most
    `max_wait` seconds, request bodies are limited to `max_body` bytes. Imported lazily
    so that clients do not load the web stack.
    """
    from registry._server import create_app as _create_app

    return _create_app(
        data_dir=Path(data_dir) if data_dir is not None else None,
        token=token,
        min_ttl=min_ttl,
        max_ttl=max_ttl,
        default_ttl=default_ttl,
        max_wait=max_wait,
        max_body=max_body,
    )


__all__ = [
    "open_registry",
    "create_app",
    "Registry",
    "NodeInfo",
    "OperatorMetadata",
    "check_metadata",
    "check_name",
    "merge_metadata",
    "PeerEvent",
    "PeerEventType",
    "RegistryState",
    "RegistryStatus",
    "StateFileError",
    "RegistryError",
    "RegistryUnreachable",
    "RegistryConflict",
    "RegistryRejected",
    "PeerCache",
    "CachedNodes",
    "ensure_node_id",
    "memory_store",
    "MemoryStore",
    "Timing",
    "plan_timing",
    "NAME_RE",
]
