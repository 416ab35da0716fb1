"""W3C trace context: what a hop reads from and writes to a message's headers."""

from __future__ import annotations

from nimsforest.forest.trace import (
    HOP_HEADER,
    INPUT_HEADER,
    NO_HOP,
    TRACEPARENT,
    Carry,
    StoredHop,
    TraceContext,
    Tracing,
    continued,
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


def test_a_components_hop_continues_the_trace_its_message_carries() -> None:
    parent = TraceContext.parse(VALID)
    assert parent is not None
    tracing = Tracing(Carry.EVERY_HOP)
    seen = set()
    for _ in range(200):
        mine = TraceContext.parse(tracing.hop_on("tree t", {TRACEPARENT: VALID}, {}).traceparent)
        assert mine is not None and mine.trace_id == parent.trace_id and mine.sampled
        assert mine.span_id not in (parent.span_id, "0" * 16)
        seen.add(mine.span_id)
    assert len(seen) == 200  # a new span id every hop
    unsampled = TraceContext.parse(continued(VALID[:-2] + "00"))
    assert unsampled is not None and not unsampled.sampled  # the flags go on as they came
    # any other form is read by the W3C rules: another case, a later version, "Traceparent"
    for other in (VALID.upper(), "01" + VALID[2:] + "-more", VALID[:-2] + "03"):
        assert continued(other) is None, other
        mine = TraceContext.parse(tracing.hop_on("tree t", {TRACEPARENT: other}, {}).traceparent)
        assert mine is not None and mine.trace_id == parent.trace_id, other
    mine = TraceContext.parse(tracing.hop_on("tree t", {"Traceparent": VALID}, {}).traceparent)
    assert mine is not None and mine.trace_id == parent.trace_id
    # none, or an invalid one (ids all zero, too short): the hop starts a trace
    for headers in (None, {}, {TRACEPARENT: "00-" + "0" * 32 + VALID[35:]},
                    {TRACEPARENT: VALID[:36] + "0" * 16 + "-01"}, {TRACEPARENT: VALID[:-3]}):
        mine = TraceContext.parse(tracing.hop_on("tree t", headers, {}).traceparent)
        assert mine is not None and mine.trace_id != parent.trace_id, headers


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


def test_otel_propagators_says_whether_hops_carry_the_trace_context() -> None:
    from nimsforest.forest.trace import Propagation

    assert Propagation.of(None) == Propagation.of("") == Propagation(True)  # not named
    for named in ("tracecontext,baggage", " TraceContext ", "baggage,tracecontext"):
        assert Propagation.of(named) == Propagation(True, named=True), named
    assert Propagation.of("none") == Propagation(False)
    assert Propagation.of("baggage") == Propagation(False)  # a list without tracecontext
    b3 = Propagation.of("tracecontext,b3")
    assert b3.carried and b3.unknown is not None and "b3, which hops do not carry" in b3.unknown
    typo = Propagation.of("tracecontex")
    assert not typo.carried and typo.unknown is not None
    assert "tracecontex, which OpenTelemetry has no propagator of" in typo.unknown
    assert typo.unknown.endswith("hops carry no trace context.")
    # tracing off: River inputs carry it, every hop when the variable names it; with an
    # exporter every hop does unless the variable leaves it out
    for env, carry in (({}, Carry.RIVER), ({"OTEL_PROPAGATORS": "tracecontext"}, Carry.EVERY_HOP),
                       ({"OTEL_PROPAGATORS": "none"}, Carry.NOTHING)):
        tracing = tracing_from_env(env, "nimsforest", "n1")
        assert tracing.carry is carry and tracing.status().carries is carry, env
        assert tracing.carried is (carry is not Carry.NOTHING)
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}  # built, never started
    for env, carry in ((endpoint, Carry.EVERY_HOP),
                       ({**endpoint, "OTEL_PROPAGATORS": "none"}, Carry.NOTHING)):
        tracing = tracing_from_env(env, "nimsforest", "n1")
        assert tracing.enabled and tracing.carry is carry, env
    for propagators, exporting in (("", True), ("tracecontext", True), ("tracecontext", False)):
        assert Propagation.of(propagators).carry(exporting) is Carry.EVERY_HOP
    assert Propagation.of("").carry(exporting=False) is Carry.RIVER
    assert Propagation.of("none").carry(exporting=True) is Carry.NOTHING


def test_tracing_off_puts_the_trace_context_on_river_inputs_only() -> None:
    parent = TraceContext.parse(VALID)
    off = Tracing()  # the default: no exporter, OTEL_PROPAGATORS unset
    assert off.carry is Carry.RIVER and off.parent({TRACEPARENT: VALID}) == parent
    river = off.hop("river x", parent, {})  # a River input continues its sender's trace
    assert river.context is not None and river.context.trace_id == parent.trace_id
    assert set(river.headers("api@n1")) == {TRACEPARENT, HOP_HEADER}
    assert off.hop("river x", None, {}).traceparent is not None  # or starts one
    # a component's outputs name the hop and its input, which lead back to that River input
    hop = off.hop_on("tree t", {TRACEPARENT: VALID}, {})
    assert hop is NO_HOP and hop.traceparent is None  # an http output sends none either
    assert hop.headers(hop_value("tree:t@n1", "RIVER", 7)) == {HOP_HEADER: "tree:t@n1 RIVER:7"}
    assert "River inputs carry" in off.status().sentence


def test_a_hop_that_carries_no_trace_context_names_only_itself() -> None:
    parent = TraceContext.parse(VALID)
    off = Tracing(Carry.NOTHING)
    assert off.parent({TRACEPARENT: VALID}) is None  # nothing is taken from what came in
    assert Tracing().parent({TRACEPARENT: VALID}) == parent
    hop = off.hop("tree t", parent, {})
    assert hop.headers(hop_name("tree:t", "n1")) == {HOP_HEADER: "tree:t@n1"}
    assert hop.traceparent is None  # an http output sends its receiver no traceparent either
    assert off.hop_on("tree t", {TRACEPARENT: VALID}, {}) is NO_HOP
    assert Tracing().hop("tree t", parent, {}).traceparent is not None
    assert off.status().carries is Carry.NOTHING and "no trace context" in off.status().sentence
    hop.end()


def test_an_exporter_under_no_propagation_records_each_hop_as_a_trace_of_its_own() -> None:
    from nimsforest.forest.trace import OtlpTracing

    parent = TraceContext.parse(VALID)
    assert parent is not None
    recorded: list[tuple] = []
    tracing = OtlpTracing("nimsforest", "n1", "http://127.0.0.1:9/v1/traces", carried=False)
    tracing._record = recorded.append  # type: ignore[method-assign]  # the batch, not the process
    hop = tracing.hop("tree t", parent, {"k": "v"})
    assert hop.headers("tree:t@n1") == {HOP_HEADER: "tree:t@n1"} and hop.traceparent is None
    hop.end()
    ((name, trace_id, _span, parent_span, *_),) = recorded
    assert name == "tree t" and trace_id != parent.trace_id and parent_span is None
