"""The span exporter process of a node with tracing on (`python -m nimsforest.spanexport
SERVICE NODE [TRACES_URL]`, started by `nimsforest.forest.OtlpTracing`).

It reads frames from stdin, each a 4-byte big-endian length and a pickled list of the
hops the node recorded (`nimsforest.forest.trace.SpanRecord`), and exports them with the
OpenTelemetry SDK's OTLP/HTTP exporter, which reads the standard `OTEL_EXPORTER_OTLP_*`
variables (endpoint, headers, certificate, compression, timeout) and retries. It exits
when stdin closes (the node stopped, or died), after exporting what it holds. It runs at
a lower CPU priority than the node (NICENESS). It imports nothing of the node, so it
starts in a fraction of a second, and says `ready` on stdout once it has (nothing else is
written there).

A frame becomes one OTLP request built straight from the tuples (`Encoder`): the SDK's
own way, one ReadableSpan per hop and its `encode_spans`, costs about 25 us of Python per
span, this a few. What the SDK encodes once per batch it still encodes (the resource and
scope, each distinct set of attributes), with its public encoder; the request is the one
`encode_spans` would make of the same spans (tests/test_spanexport.py holds them equal).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

# Exporting spans must not take the CPU from the work they describe: on a machine with no
# core to spare, this process runs at a lower priority than the node and its nats-server
# (10 on Linux's 0..19 scale: it gets about a tenth of a contended core, and all of an idle
# one). Behind, its spans wait in its stdin (4 MiB), then are dropped and counted.
NICENESS = 10

# one hop (nimsforest.forest.trace.SpanRecord, not imported: this process stays small)
Record = tuple[str, str, str, str | None, int, int, Mapping[str, Any], str | None]


def _frames(stream: BinaryIO) -> Iterator[list[Record]]:
    while True:
        head = stream.read(4)
        if len(head) < 4:
            return
        (size,) = struct.unpack("!I", head)
        body = stream.read(size)
        if len(body) < size:
            return
        yield pickle.loads(body)  # noqa: S301 - written by the node that started this process


def readable_spans(batch: Sequence[Record], resource: Resource,
                   scope: InstrumentationScope) -> list[ReadableSpan]:
    """The SDK's spans of a batch: what its exporter takes (the way without `Encoder`)."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    sampled, ok = TraceFlags(1), Status(StatusCode.UNSET)
    spans = []
    for name, trace_id, span_id, parent, start, end, attributes, error in batch:
        t = int(trace_id, 16)
        spans.append(ReadableSpan(
            name=name,
            context=SpanContext(t, int(span_id, 16), is_remote=False, trace_flags=sampled),
            parent=(SpanContext(t, int(parent, 16), is_remote=True, trace_flags=sampled)
                    if parent is not None else None),
            resource=resource, attributes=attributes, kind=SpanKind.CONSUMER,
            instrumentation_scope=scope, start_time=start, end_time=end,
            status=Status(StatusCode.ERROR, error) if error is not None else ok,
        ))
    return spans


class Encoder:
    """One OTLP ExportTraceServiceRequest per batch, built from the tuples: each span is
    one message of the request, its attributes encoded once per distinct set (a
    component's hops all have the same ones)."""

    KEPT = 4096  # distinct sets of attributes kept encoded (then forgotten, all at once)

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.proto.trace.v1.trace_pb2 import Span, SpanFlags, Status

        self._resource, self._scope, self._encode = resource, scope, encode_spans
        # the resource and scope as the SDK encodes them, around no span yet
        template = encode_spans(readable_spans([("", "1", "1", None, 0, 0, {}, None)],
                                                resource, scope))
        self._template = template.resource_spans[0]
        del self._template.scope_spans[0].spans[:]
        self._kind = Span.SpanKind.SPAN_KIND_CONSUMER
        self._error = Status.StatusCode.STATUS_CODE_ERROR
        # as the SDK's: is-remote is known; the parent of a child is remote
        self._root = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
        self._child = self._root | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
        self._encoded: dict[tuple[tuple[str, Any], ...], bytes] = {}

    def _attributes(self, attributes: Mapping[str, Any]) -> bytes:
        """What every span with this set of attributes has in common, serialized to merge
        into each: the attributes as the SDK encodes them (its public encoder, on one
        span), the kind and the SDK's UNSET status (present, code 0); kept for the next
        span with the same set."""
        key: tuple[tuple[str, Any], ...] | None = tuple(attributes.items())
        try:
            return self._encoded[key]  # type: ignore[index]
        except KeyError:
            pass
        except TypeError:  # a value that cannot be a key (a list): encoded each time
            key = None
        one = self._encode(readable_spans([("", "1", "1", None, 0, 0, attributes, None)],
                                          self._resource, self._scope))
        span = one.resource_spans[0].scope_spans[0].spans[0]
        common = type(span)(attributes=span.attributes, kind=self._kind)
        common.status.SetInParent()
        kvs = common.SerializeToString()
        if key is not None:
            if len(self._encoded) >= self.KEPT:
                self._encoded.clear()
            self._encoded[key] = kvs
        return kvs

    def request(self, batch: Sequence[Record]) -> bytes:
        """The serialized request (as the SDK's exporter sends it: partial, unchecked)."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        req = ExportTraceServiceRequest()
        resource_spans = req.resource_spans.add()
        resource_spans.CopyFrom(self._template)
        add, encoded = resource_spans.scope_spans[0].spans.add, self._attributes
        # the hops of one component share one attributes object (pickled once per frame):
        # its encoding is looked up once per object in the batch, by identity
        common: dict[int, bytes] = {}
        root, child, fromhex = self._root, self._child, bytes.fromhex
        for name, trace_id, span_id, parent, start, end, attributes, error in batch:
            span = add(trace_id=fromhex(trace_id), span_id=fromhex(span_id),
                       parent_span_id=fromhex(parent) if parent is not None else b"",
                       name=name, start_time_unix_nano=start, end_time_unix_nano=end,
                       flags=root if parent is None else child)
            kvs = common.get(id(attributes))
            if kvs is None:
                kvs = common[id(attributes)] = encoded(attributes)
            span.MergeFromString(kvs)  # its attributes, kind and status
            if error is not None:
                span.status.code, span.status.message = self._error, error
        return req.SerializePartialToString()


def sender(exporter: SpanExporter, resource: Resource,
           scope: InstrumentationScope) -> Callable[[Sequence[Record]], object]:
    """How a batch is exported: its encoded request through the exporter's HTTP client,
    which does what the exporter's `export` does once it has the bytes (compression,
    headers, timeout, retries with backoff, TLS, logging what it cannot deliver).

    PRIVATE API: the SDK's exporter takes only ReadableSpans in public; its `_client`
    (opentelemetry-exporter-otlp-proto-http >= 1.45, `_OTLPHTTPClient.export(bytes)`) is
    what sends the bytes. When an SDK version has no such client, batches go through the
    public way (`readable_spans`, `exporter.export`): slower, the same spans (and so do
    they to an exporter of another kind)."""
    client = getattr(exporter, "_client", None)
    send = getattr(client, "export", None)
    if callable(send):
        encoder = Encoder(resource, scope)
        return lambda batch: send(encoder.request(batch))
    return lambda batch: exporter.export(readable_spans(batch, resource, scope))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="nimsforest-spans: %(levelname)s %(message)s")
    if len(argv) not in (2, 3):
        print("usage: python -m nimsforest.spanexport SERVICE NODE [TRACES_URL]", file=sys.stderr)
        return 2
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    with contextlib.suppress(OSError):  # a busy machine runs the forest and NATS first
        os.nice(NICENESS)
    service, node = argv[0], argv[1]
    resource = Resource.create({"service.name": service, "service.instance.id": node})
    scope = InstrumentationScope("nimsforest")
    exporter = OTLPSpanExporter(endpoint=argv[2]) if len(argv) == 3 else OTLPSpanExporter()
    send = sender(exporter, resource, scope)
    sys.stdout.write("ready\n")  # imports done: the node counts it as exporting from now on
    sys.stdout.flush()
    log = logging.getLogger("nimsforest.spanexport")
    try:
        for batch in _frames(sys.stdin.buffer):
            try:
                send(batch)  # the SDK retries and logs what it cannot deliver
            except Exception as exc:  # noqa: BLE001 - one batch lost, never the exporter
                log.warning("could not export a batch of %d spans: %s", len(batch), exc)
    finally:
        exporter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
