"""The River -> Soil figures of `nimsforest bench cluster` (and its breakdowns), on frozen inputs."""

from __future__ import annotations

import datetime as dt
import json

import httpx

from natsembed import free_port
from nimsforest.bench.cluster import (
    Election,
    FailedWrite,
    Failure,
    HopTime,
    Latency,
    election_of,
    failed_answer,
    failed_request,
    failures_line,
    hop_times,
    latency_figures,
    slowest,
)


def test_latency_is_soil_minus_river_per_acknowledged_key() -> None:
    river = {f"k{i}": float(i) for i in range(200)}
    soil = {f"k{i}": float(i) + (0.5 if i != 7 else 9.0) for i in range(200) if i != 3}
    acked = [f"k{i}" for i in range(200)]
    got = latency_figures(river, soil, acked)
    assert got == Latency(max=9.0, p99=0.5, acked=200, missing=1, measured=199)
    # an input stored but never acknowledged does not count
    assert latency_figures(river, soil, ["k1", "k2"]) == Latency(0.5, 0.5, 2, 0, 2)
    assert latency_figures(river, {}, ["k1"]) == Latency(0.0, 0.0, 1, 1, 0)


def test_the_slowest_are_the_acknowledged_keys_with_the_longest_way() -> None:
    river = {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}
    soil = {"a": 1.0, "b": 5.0, "c": 3.0, "d": 9.0}
    assert slowest(river, soil, ["a", "b", "c"], 2) == ["b", "c"]  # d: never acknowledged
    assert slowest(river, {}, ["a"], 2) == []


def test_hop_times_walk_the_lineage_from_the_river_to_soil() -> None:
    lineage = {"key": "k", "complete": True, "steps": [  # newest first, as /api/v1/why answers
        {"stream": "HUMUS", "seq": 9, "by": "nim:qualify@n1", "time": "2026-01-01T00:00:09.5Z"},
        {"stream": "WIND", "seq": 8, "by": "tree:contacts@n3", "time": "2026-01-01T00:00:09Z"},
        {"stream": "RIVER", "seq": 7, "by": "api@n2", "time": "2026-01-01T00:00:01Z"},
    ]}
    soil_at = dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=dt.UTC).timestamp()
    got = hop_times("k", lineage, soil_at)
    assert got is not None
    assert got.total == 9.0
    assert got.hops == (HopTime("RIVER", "api@n2", 0.0), HopTime("WIND", "tree:contacts@n3", 8.0),
                        HopTime("HUMUS", "nim:qualify@n1", 0.5), HopTime("KV_SOIL", "decomposer", 0.5))
    assert got.line(got.at - 1) == ("  9.00s k (River at +1.00s): RIVER api@n2 -> WIND "
                                    "tree:contacts@n3 +8.00s -> HUMUS nim:qualify@n1 +0.50s -> "
                                    "KV_SOIL decomposer +0.50s")
    assert hop_times("k", {**lineage, "complete": False}, soil_at) is None  # a step not stored


def test_a_leader_elected_advisory_names_its_group_node_and_time() -> None:
    def advisory(leader: str) -> bytes:
        return json.dumps({"leader": leader, "timestamp": "2026-01-01T00:00:04.25Z"}).encode()

    got = election_of("$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.WIND.treehouse-scoring",
                      advisory("n3"))
    assert got == Election("WIND > treehouse-scoring", "n3",
                           dt.datetime(2026, 1, 1, 0, 0, 4, 250000, tzinfo=dt.UTC).timestamp())
    stream = election_of("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.RIVER",
                         advisory("n1"))
    assert stream is not None and (stream.group, stream.leader) == ("RIVER", "n1")
    assert election_of("$JS.EVENT.ADVISORY.STREAM.CREATED.RIVER", b"{}") is None
    assert election_of("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.RIVER", b"not json") is None


def test_failed_writes_are_grouped_by_cause() -> None:
    try:  # a real refusal: nothing listens on a port just freed
        httpx.post(f"http://127.0.0.1:{free_port()}/api/v1/river/x", content=b"1", timeout=2)
    except httpx.HTTPError as exc:
        refused = failed_request(exc)
    assert refused == FailedWrite(Failure.REFUSED)
    assert failed_request(httpx.ConnectError("no route")) == FailedWrite(Failure.CONNECT)
    assert failed_request(httpx.ReadTimeout("slow")) == FailedWrite(Failure.TIMEOUT)
    assert failed_request(httpx.ReadError("reset")) == FailedWrite(Failure.RESET)
    assert failed_request(httpx.RemoteProtocolError("closed")) == FailedWrite(Failure.CLOSED)

    def answer(sentence: str) -> bytes:
        return json.dumps({"error": sentence}).encode()

    no_river = "The River is not available (no JetStream stream answers on river.>)"
    first = failed_answer(503, answer(f"{no_river} (held 15.0s); try again."))
    assert first == FailedWrite(Failure.UNAVAILABLE, no_river)
    assert failed_answer(503, answer(f"{no_river}; try again.")) == first  # held or not: alike
    assert failed_answer(500, b"oops") == FailedWrite(Failure.STATUS, "500")
    assert failed_answer(503, b"<html>") == FailedWrite(Failure.UNAVAILABLE, "")
    line = failures_line([first, refused, first, failed_answer(500, b""), first, refused])
    assert line == f"6 failed (3 x 503 {no_river}, 2 x connection refused, 1 x status 500)"
    assert failures_line([]) == "0 failed"
