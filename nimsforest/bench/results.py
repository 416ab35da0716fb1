"""A benchmark run's figures: events, seconds and per-event latencies."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    events: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def pct(self, q: float) -> float:
        return (
            statistics.quantiles(self.latencies, n=100)[int(q) - 1] * 1000
            if len(self.latencies) > 1
            else 0.0
        )


__all__ = ["Result"]
