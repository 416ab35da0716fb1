"""The River -> Soil figures of `nimsforest bench cluster`, on frozen store times."""

from __future__ import annotations

from nimsforest.bench.cluster import Latency, latency_figures


def test_latency_is_soil_minus_river_per_acknowledged_key() -> None:
    river = {f"k{i}": float(i) for i in range(200)}
    soil = {f"k{i}": float(i) + (0.5 if i != 7 else 9.0) for i in range(200) if i != 3}
    acked = [f"k{i}" for i in range(200)]
    got = latency_figures(river, soil, acked)
    assert got == Latency(max=9.0, p99=0.5, acked=200, missing=1, measured=199)
    # an input stored but never acknowledged does not count
    assert latency_figures(river, soil, ["k1", "k2"]) == Latency(0.5, 0.5, 2, 0, 2)
    assert latency_figures(river, {}, ["k1"]) == Latency(0.0, 0.0, 1, 1, 0)
