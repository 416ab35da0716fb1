"""Errors raised by the registry package.

    RegistryError            base class; the message is one plain sentence for the user
    ├── RegistryUnreachable  the registry cannot be used right now: connection refused,
    │                        timeout, 5xx, a file that cannot be read or locked, or an
    │                        answer that is not a registry answer (bad JSON, wrong shape).
    │                        Degrade gracefully: keep the cluster running, use the peer
    │                        cache, retry later.
    ├── RegistryConflict     the registry answered "no": our node name is held by another
    │                        live node (a different node id). A normal answer, not a
    │                        failure; a node refuses to start on it.
    └── RegistryRejected     the registry refused the request itself: a missing or wrong
                             bearer token (401), or input it calls invalid (400, 413, 422).
                             Retrying the same request will not help; fix the setup.

Anything else escaping this package is a bug: log it and keep the loop alive.
Configuration mistakes found before any I/O (a bad URL, a heartbeat interval below
0.1 s) are plain `ValueError`s.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of every registry error; `str(err)` is one plain sentence."""


class RegistryUnreachable(RegistryError):
    """The registry cannot be used right now (network, timeout, 5xx, malformed answer)."""


class RegistryConflict(RegistryError):
    """The node name is already held by another live node."""

    def __init__(self, name: str, holder_node_id: str | None) -> None:
        self.name = name
        self.holder_node_id = holder_node_id
        holder = holder_node_id if holder_node_id else "unknown"
        super().__init__(
            f"Node name '{name}' is already registered by a live node (node id {holder}); "
            "choose another NATS_NODE_NAME or stop that node."
        )


class RegistryRejected(RegistryError):
    """The registry refused the request (bad token, invalid input): retrying will not help."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


__all__ = ["RegistryError", "RegistryUnreachable", "RegistryConflict", "RegistryRejected"]
