"""Spans go to a real (local) OTLP/HTTP receiver when the standard variable is set."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from nimsforest.forest.trace import OtlpTracing, TraceContext, TracingState, tracing_from_env
from tests.support import OtlpReceiver as Receiver
from tests.support import eventually

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield server
    server.shutdown()


def _spans(receiver: Receiver) -> list[Span]:
    return receiver.spans()


async def test_hops_are_exported_as_spans_of_the_incoming_trace(receiver: Receiver) -> None:
    tracing = tracing_from_env(os.environ, "nimsforest", "n1")
    assert tracing.enabled
    await tracing.start()
    parent = TraceContext.parse(PARENT)
    tree = tracing.hop("tree qualify", parent, {"nimsforest.node": "n1"})
    nim = tracing.hop_on("nim scorer", tree.headers("tree:qualify@n1 RIVER:1"), {})  # its output
    nim.end("the brain did not answer")
    tree.end()
    await tracing.stop()  # hands over the batch; the exporter process exports it, then ends
    assert tracing.status().state is TracingState.STOPPED and tracing.status().spans == 2

    spans = _spans(receiver)
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"tree qualify", "nim scorer"}
    t, n = by_name["tree qualify"], by_name["nim scorer"]
    assert t.trace_id.hex() == parent.trace_id == n.trace_id.hex()  # type: ignore[union-attr]
    assert t.parent_span_id.hex() == parent.span_id  # type: ignore[union-attr]
    assert n.parent_span_id == t.span_id and t.span_id.hex() == tree.context.span_id
    assert n.status.message == "the brain did not answer"
    resource = receiver.requests[0][1].resource_spans[0].resource
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "nimsforest"


async def test_a_sampler_that_drops_everything_records_nothing_but_ids_go_on(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    tracing = tracing_from_env(os.environ, "nimsforest", "n1")
    await tracing.start()
    hop = tracing.hop("tree t", None, {})
    assert not hop.context.sampled and hop.headers("tree:t@n1")["traceparent"].endswith("-00")
    hop.end()
    await tracing.stop()
    assert _spans(receiver) == [] and tracing.status().spans == 0


async def test_under_the_default_sampler_a_hop_follows_its_parents_flag(receiver: Receiver) -> None:
    tracing = tracing_from_env(os.environ, "nimsforest", "n1")
    await tracing.start()
    unsampled = TraceContext.parse(PARENT[:-2] + "00")
    tracing.hop("tree dropped", unsampled, {}).end()
    tracing.hop("tree kept", TraceContext.parse(PARENT), {}).end()
    # a component's hop on a message (the forest's own form is sliced, others parsed)
    dropped = tracing.hop_on("nim dropped", {"traceparent": PARENT[:-2] + "00"}, {})
    assert dropped.traceparent is not None and dropped.traceparent.endswith("-00")
    assert dropped.traceparent[3:35] == PARENT[3:35] and dropped.traceparent[36:52] != PARENT[36:52]
    dropped.end()
    kept = tracing.hop_on("nim kept", {"traceparent": PARENT}, {"k": "v"})
    kept.end("no brain")
    other = tracing.hop_on("nim other form", {"traceparent": PARENT.upper()}, {})
    other.end()
    await tracing.stop()
    spans = {s.name: s for s in _spans(receiver)}
    assert set(spans) == {"tree kept", "nim kept", "nim other form"}
    for name, hop in (("nim kept", kept), ("nim other form", other)):
        span = spans[name]
        assert span.trace_id.hex() == PARENT[3:35] and span.parent_span_id.hex() == PARENT[36:52]
        assert hop.traceparent == f"00-{span.trace_id.hex()}-{span.span_id.hex()}-01"
    assert spans["nim kept"].status.message == "no brain"
    assert [(a.key, a.value.string_value) for a in spans["nim kept"].attributes] == [("k", "v")]


async def test_a_dead_exporter_process_is_started_again(receiver: Receiver) -> None:
    tracing = tracing_from_env(os.environ, "nimsforest", "n1")
    assert isinstance(tracing, OtlpTracing)
    tracing.RESTART_AFTER = (0.2, 0.2)
    await tracing.start()
    # exporting once the process says it is ready (its imports done), not before
    assert tracing.status().state is TracingState.STARTING
    assert await tracing.ready(30) and tracing.status().state is TracingState.EXPORTING
    try:
        tracing.hop("tree before", None, {}).end()
        await eventually(lambda: tracing.status().spans == 1)  # handed over by the flusher
        await eventually(lambda: "tree before" in {s.name for s in _spans(receiver)})
        os.kill(tracing.exporter_pid or 0, 9)
        await eventually(lambda: tracing.status().restarts == 1
                         and tracing.status().state is TracingState.EXPORTING)
        tracing.hop("tree after", None, {}).end()
    finally:
        await tracing.stop()
    assert {"tree before", "tree after"} <= {s.name for s in _spans(receiver)}


async def test_the_exporter_process_runs_at_a_lower_priority_than_the_node(
    receiver: Receiver
) -> None:
    """On a machine with no core to spare, the forest and NATS get the CPU before spans do."""
    import psutil

    from nimsforest.spanexport import NICENESS

    tracing = tracing_from_env(os.environ, "nimsforest", "n1")
    assert isinstance(tracing, OtlpTracing)
    await tracing.start()
    try:
        assert await tracing.ready(30)
        exporter = psutil.Process(tracing.exporter_pid or 0)
        assert exporter.nice() == min(19, psutil.Process().nice() + NICENESS) > psutil.Process().nice()
    finally:
        await tracing.stop()
