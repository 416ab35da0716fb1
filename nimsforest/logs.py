"""Plain one-line logs: `2026-11-22 10:52:10 INFO  Peer n2 joined cluster (size now 2)`."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-5s %(message)s"
_QUIET = ("httpx", "httpcore", "uvicorn.access", "asyncio", "nats.aio.client", "watchfiles")


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
