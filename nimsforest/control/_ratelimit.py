"""Rate limiting of changes per client, with the `limits` library (a moving window kept
in this node's memory: each node limits the clients that talk to it)."""

from __future__ import annotations

import math
import time

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from nimsforest.control.errors import RateLimited


class ChangeLimiter:
    """`check(client)` counts one change by `client` or raises RateLimited."""

    def __init__(self, rate: str = "60/minute") -> None:
        self.rate = rate
        self._item = parse(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def check(self, client: str) -> None:
        if self._limiter.hit(self._item, "changes", client):
            return
        reset, _ = self._limiter.get_window_stats(self._item, "changes", client)
        retry = max(1, math.ceil(reset - time.time()))
        raise RateLimited(
            f"Too many changes from {client} (at most {self.rate}); retry in {retry}s.", retry
        )


__all__ = ["ChangeLimiter"]
