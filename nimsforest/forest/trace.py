"""W3C trace context on every hop; OpenTelemetry spans only when an OTLP endpoint is set.

Every River input carries a `traceparent` header: the HTTP request's when it sent a valid
one (its trace goes on through the forest), a new trace otherwise. Each component that
handles a message is one hop: a span whose parent is the message's `traceparent`, and
whose own id is the `traceparent` of every output it stores, with `Nimsforest-Hop`
naming the component and the node. So the stored headers alone are the trace:
`nimsforest trace ID` reads them back from the streams, with or without a collector.

Spans are exported over OTLP/HTTP only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (the standard variables, read by the SDK);
otherwise the SDK is not even imported and a hop costs one random number and a string.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span
    from opentelemetry.trace import Tracer as OtelTracer

TRACEPARENT = "traceparent"
HOP_HEADER = "Nimsforest-Hop"  # who stored the message: <kind>:<name>@<node>, api@<node>, ...
INPUT_HEADER = "Nimsforest-Input"  # the message a component's output answers: <stream>:<seq>
OTLP_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

# version-traceid-parentid-flags (https://www.w3.org/TR/trace-context/#traceparent-header)
_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_rand = random.Random()  # ids need to be unique, not secret (as the OpenTelemetry SDK's)


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One position in a trace: the trace and the span that a message's producer was."""

    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str  # 16 lowercase hex digits, not all zero
    sampled: bool = True

    @classmethod
    def parse(cls, value: str | None) -> TraceContext | None:
        """A `traceparent` header's context, or None when it is missing or invalid (then
        the receiver starts a new trace, as the W3C rules say)."""
        if not value:
            return None
        m = _TRACEPARENT_RE.match(value.strip().lower())
        if m is None:
            return None
        version, trace_id, span_id, flags, rest = m.groups()
        if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"} or set(span_id) == {"0"}:
            return None
        return cls(trace_id, span_id, bool(int(flags, 16) & 1))

    @classmethod
    def of(cls, headers: Mapping[str, str] | None) -> TraceContext | None:
        if not headers:
            return None
        value = headers.get(TRACEPARENT)
        if value is None:  # HTTP headers may come in any case
            value = next((v for k, v in headers.items() if k.lower() == TRACEPARENT), None)
        return cls.parse(value)

    @classmethod
    def new(cls) -> TraceContext:
        return cls(f"{_nonzero(128):032x}", f"{_nonzero(64):016x}")

    def child(self) -> TraceContext:
        """The same trace, a new span: the context of what this hop stores."""
        return TraceContext(self.trace_id, f"{_nonzero(64):016x}", self.sampled)

    @property
    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def _nonzero(bits: int) -> int:
    return _rand.getrandbits(bits) or 1


def hop_name(who: str, node: str) -> str:
    """`Nimsforest-Hop`'s value: a component (`tree:contacts`) or a way into the River
    (`api`, `source:github`), at a node."""
    return f"{who}@{node}" if node else who


class Hop:
    """One component handling one message: `context` goes on its outputs; `end` once the
    message is acked or failed."""

    __slots__ = ("context",)

    def __init__(self, context: TraceContext) -> None:
        self.context = context

    def headers(self, hop: str) -> dict[str, str]:
        return {TRACEPARENT: self.context.header, HOP_HEADER: hop}

    def end(self, error: str | None = None) -> None:
        """Nothing to record without an exporter."""


class _SpanHop(Hop):
    __slots__ = ("_failed", "_span")

    def __init__(self, span: Span, failed: Callable[[str], Any]) -> None:
        ctx = span.get_span_context()
        super().__init__(TraceContext(f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}",
                                      bool(ctx.trace_flags & 1)))
        self._span, self._failed = span, failed  # failed(text): an ERROR status

    def end(self, error: str | None = None) -> None:
        if error is not None:
            self._span.set_status(self._failed(error))
        self._span.end()


class Tracing:
    """The node's tracing: without an exporter, hops only carry the headers."""

    enabled = False

    def hop(self, name: str, parent: TraceContext | None, attributes: Mapping[str, Any]) -> Hop:
        return Hop(parent.child() if parent is not None else TraceContext.new())

    def shutdown(self) -> None:
        """Nothing to flush."""


class OtlpTracing(Tracing):
    """Spans exported over OTLP/HTTP in batches. The SDK reads the standard variables:
    `OTEL_EXPORTER_OTLP_*` for where, `OTEL_TRACES_SAMPLER(_ARG)` for how many (a span
    sampled out costs little and its ids still go on in the headers)."""

    enabled = True

    def __init__(self, service: str, node: str, endpoint: str | None = None) -> None:
        """`endpoint`: the traces URL (…/v1/traces); else the standard variables say."""
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
        )

        self._provider = TracerProvider(resource=Resource.create({
            "service.name": service, "service.instance.id": node}))
        exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer: OtelTracer = self._provider.get_tracer("nimsforest")
        self._in_context = trace.set_span_in_context
        self._remote, self._remote_span = SpanContext, NonRecordingSpan
        self._flags = (TraceFlags(0), TraceFlags(1))
        self._consumer = SpanKind.CONSUMER
        self._failed = lambda text: Status(StatusCode.ERROR, text)

    def hop(self, name: str, parent: TraceContext | None, attributes: Mapping[str, Any]) -> Hop:
        context = None
        if parent is not None:
            remote = self._remote(int(parent.trace_id, 16), int(parent.span_id, 16), is_remote=True,
                                  trace_flags=self._flags[parent.sampled])
            context = self._in_context(self._remote_span(remote))
        return _SpanHop(self._tracer.start_span(name, context=context, kind=self._consumer,
                                                attributes=attributes), self._failed)

    def shutdown(self) -> None:
        self._provider.shutdown()  # flushes what is batched


NO_TRACING = Tracing()


def tracing_from_env(env: Mapping[str, str], service: str, node: str) -> Tracing:
    """OTLP export when one of the standard endpoint variables is set; headers only else."""
    if any(env.get(v) for v in OTLP_VARIABLES):
        return OtlpTracing(service, node)
    return Tracing()


__all__ = [
    "HOP_HEADER",
    "INPUT_HEADER",
    "NO_TRACING",
    "OTLP_VARIABLES",
    "TRACEPARENT",
    "Hop",
    "OtlpTracing",
    "TraceContext",
    "Tracing",
    "hop_name",
    "tracing_from_env",
]
