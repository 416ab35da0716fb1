"""What a node keeps in its data dir for the registry: the peer cache and its node id."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from registry._atomic import write_atomic
from registry._model import NODE_ID_RE, NodeInfo

log = logging.getLogger("registry")

CACHE_VERSION = 1


@dataclass(frozen=True)
class CachedNodes:
    """A node list saved from an earlier successful registry answer."""

    nodes: tuple[NodeInfo, ...]
    saved_at: datetime
    url: str
    service: str


class PeerCache:
    """The last successful node list, saved as JSON at `path` (atomic writes).

    `save` never raises: a cache that cannot be written is logged once and skipped.
    `load` never raises: a missing file gives None, a corrupt one is logged and gives None.
    The file holds every live node (self included); callers filter out self.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._last_saved: tuple[tuple[object, ...], ...] | None = None
        self._save_failed = False

    def save(self, nodes: Sequence[NodeInfo], *, url: str, service: str) -> None:
        key = tuple(
            n.identity() + (n.create_index, n.client_address, n.monitor_url, n.api_url)
            for n in nodes
        )
        if key == self._last_saved:
            return  # unchanged: skip the write
        body = {
            "version": CACHE_VERSION,
            "saved_at": datetime.now(UTC).isoformat(),
            "url": url,
            "service": service,
            "nodes": [n.model_dump(mode="json") for n in nodes],
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps(body, indent=2).encode())
        except OSError as exc:
            if not self._save_failed:
                log.warning("Cannot write the peer cache %s: %s.", self.path, exc.strerror or exc)
            self._save_failed = True
            return
        self._save_failed = False
        self._last_saved = key

    def load(self) -> CachedNodes | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("Cannot read the peer cache %s: %s.", self.path, exc.strerror or exc)
            return None
        try:
            data = json.loads(raw)
            nodes = tuple(NodeInfo.model_validate(n) for n in data["nodes"])
            saved_at = datetime.fromisoformat(data["saved_at"])
            return CachedNodes(
                nodes, saved_at, str(data.get("url", "")), str(data.get("service", ""))
            )
        except (ValueError, KeyError, TypeError, ValidationError):
            log.warning("Ignoring the peer cache %s: it is not a peer cache file.", self.path)
            return None


def ensure_node_id(path: str | os.PathLike[str]) -> str:
    """The stable node id kept in the file `path` (e.g. data_dir / "node_id").

    Created (a random UUID) on first use, then read back on every start, so a node that
    restarts with the same data dir keeps its id and can take over its own registration.
    Raises OSError if the file cannot be read or written, ValueError if it holds garbage.
    """
    path = Path(path)
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = uuid.uuid4().hex
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (value + "\n").encode())
        return value
    if not NODE_ID_RE.match(value):
        raise ValueError(
            f"The node id file {path} does not hold a node id; remove it to make a new one."
        )
    return value


__all__ = ["PeerCache", "CachedNodes", "ensure_node_id"]
