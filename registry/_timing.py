"""The timing rule that ties the heartbeat interval, the TTL and request timeouts together.

The rule
--------
With `interval` = REGISTRY_HEARTBEAT_INTERVAL (default 10 s):

    ttl      = 3 x interval                 the registry forgets a node that missed
                                            three heartbeats in a row, never fewer
    timeout  = min(interval / 2, 10 s)      for each single HTTP request
    budget   = interval                     all attempts of ONE heartbeat (requests,
                                            backoff sleeps) finish within one interval

Why: heartbeats start on a fixed schedule (t, t + interval, t + 2 interval, ...).
Because one heartbeat with its retries ends within its interval, the next one always
starts on time, so any window of one TTL holds three heartbeat attempts; a node expires
only after three consecutive failed heartbeats. A request timeout of at most half the
interval leaves room for at least one retry after a timed-out attempt.

Enforced when a registry client is created (`plan_timing`):
- an interval below 0.1 s (or not a finite number) is refused with a ValueError;
- an interval above 1200 s is clamped to 1200 s with a warning, because the registry
  server bounds a TTL to at most 1 h and 3 x 1200 s is that bound;
- a requested request timeout above the rule's maximum is clamped with a warning.

The client sends its TTL in the registration (`ttl_seconds`); the server bounds it to
[1 s, 1 h]. A longer TTL than asked is safe; the rule is about never a shorter one.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

log = logging.getLogger("registry")

MIN_INTERVAL = 0.1
MAX_INTERVAL = 1200.0
TTL_FACTOR = 3.0
MAX_REQUEST_TIMEOUT = 10.0
FIRST_BACKOFF = 0.05


@dataclass(frozen=True)
class Timing:
    """The numbers a client works with; build it with `plan_timing`."""

    interval: float
    ttl: float
    request_timeout: float

    @property
    def retry_budget(self) -> float:
        """All attempts of one call (with backoff sleeps) end within this many seconds."""
        return self.interval

    def backoff(self, attempt: int) -> float:
        """Sleep before retry number `attempt` (1, 2, ...): exponential with full jitter."""
        cap = min(FIRST_BACKOFF * 2 ** (attempt - 1), self.interval / 4, 2.0)
        return random.uniform(cap / 2, cap)


def plan_timing(interval: float, request_timeout: float | None = None) -> Timing:
    """Apply the rule above to `interval` (seconds); see the module docstring."""
    if (
        isinstance(interval, bool)
        or not isinstance(interval, (int, float))
        or not math.isfinite(interval)
    ):
        raise ValueError(
            f"The registry heartbeat interval must be a number of seconds, not {interval!r}."
        )
    if interval < MIN_INTERVAL:
        raise ValueError(
            f"The registry heartbeat interval must be at least {MIN_INTERVAL} s; got {interval} s."
        )
    interval = float(interval)
    if interval > MAX_INTERVAL:
        log.warning(
            "Registry heartbeat interval %.0f s is longer than the %.0f s maximum; using %.0f s.",
            interval,
            MAX_INTERVAL,
            MAX_INTERVAL,
        )
        interval = MAX_INTERVAL
    limit = min(interval / 2, MAX_REQUEST_TIMEOUT)
    if request_timeout is None:
        timeout = limit
    elif not math.isfinite(request_timeout) or request_timeout <= 0:
        raise ValueError(
            "The registry request timeout must be a positive number of seconds; "
            f"got {request_timeout}."
        )
    elif request_timeout > limit:
        log.warning(
            "Registry request timeout %.2f s breaks the timing rule (at most half the heartbeat "
            "interval and at most %.0f s); using %.2f s.",
            request_timeout,
            MAX_REQUEST_TIMEOUT,
            limit,
        )
        timeout = limit
    else:
        timeout = float(request_timeout)
    return Timing(interval=interval, ttl=round(TTL_FACTOR * interval, 6), request_timeout=timeout)


__all__ = [
    "Timing",
    "plan_timing",
    "MIN_INTERVAL",
    "MAX_INTERVAL",
    "TTL_FACTOR",
    "MAX_REQUEST_TIMEOUT",
]
