"""W3C trace context: what a hop reads from and writes to a message's headers."""

from __future__ import annotations

from nimsforest.forest.trace import (
    HOP_HEADER,
    INPUT_HEADER,
    TRACEPARENT,
    StoredHop,
    TraceContext,
    Tracing,
    hop_name,
    hop_value,
    tracing_from_env,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_read_in_any_header_case() -> None:
    ctx = TraceContext.parse(VALID)
    assert ctx == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    assert ctx.header == VALID
    assert TraceContext.of({"Traceparent": VALID}) == ctx
    assert TraceContext.parse(VALID[:-2] + "00") == TraceContext(ctx.trace_id, ctx.span_id, False)
    # a later version may add fields: its first four are read
    assert TraceContext.parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra") is not None


def test_an_invalid_traceparent_starts_a_new_trace() -> None:
    for bad in ("", "garbage", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01"):
        assert TraceContext.parse(bad) is None, bad
    assert TraceContext.of(None) is None and TraceContext.of({}) is None


def test_a_hop_continues_its_parents_trace_with_a_span_of_its_own() -> None:
    parent = TraceContext.parse(VALID)
    assert parent is not None
    hop = Tracing().hop("tree t", parent, {})
    assert hop.context.trace_id == parent.trace_id and hop.context.span_id != parent.span_id
    headers = hop.headers(hop_name("tree:t", "n1"))
    assert headers == {TRACEPARENT: hop.context.header, HOP_HEADER: "tree:t@n1"}
    assert TraceContext.of(headers) == hop.context
    fresh = Tracing().hop("river x", None, {}).context
    assert len(fresh.trace_id) == 32 and fresh.trace_id != parent.trace_id
    hop.end("ignored without an exporter")


def test_the_hop_header_names_who_stored_a_message_and_its_input_in_either_format() -> None:
    output = {HOP_HEADER: hop_value(hop_name("tree:t", "n1"), "RIVER", 7)}
    assert output == {HOP_HEADER: "tree:t@n1 RIVER:7"}
    assert StoredHop.of(output) == StoredHop("tree:t@n1", "RIVER:7")
    # what earlier versions stored: the input in a header of its own
    assert StoredHop.of({HOP_HEADER: "tree:t@n1", INPUT_HEADER: "RIVER:7"}) == StoredHop(
        "tree:t@n1", "RIVER:7")
    assert StoredHop.of({HOP_HEADER: "api@n1"}) == StoredHop("api@n1", None)  # a River input
    assert StoredHop.of(None) == StoredHop.of({}) == StoredHop(None, None)


def test_no_exporter_without_the_standard_variables() -> None:
    assert not tracing_from_env({}, "nimsforest", "n1").enabled
    assert not tracing_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, "nimsforest", "n1").enabled
