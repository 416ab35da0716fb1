"""The span exporter process of a node with tracing on (`python -m nimsforest.spanexport
SERVICE NODE [TRACES_URL]`, started by `nimsforest.forest.OtlpTracing`).

It reads frames from stdin, each a 4-byte big-endian length and a pickled list of the
hops the node recorded (`nimsforest.forest.trace.SpanRecord`), builds the OpenTelemetry
SDK's spans from them and exports them with the SDK's OTLP/HTTP exporter, which reads the
standard `OTEL_EXPORTER_OTLP_*` variables (endpoint, headers, certificate, compression,
timeout). It exits when stdin closes (the node stopped, or died), after exporting what it
holds. It imports nothing of the node, so it starts in a fraction of a second.
"""

from __future__ import annotations

import logging
import pickle
import struct
import sys
from typing import Any, BinaryIO


def _frames(stream: BinaryIO) -> Any:
    while True:
        head = stream.read(4)
        if len(head) < 4:
            return
        (size,) = struct.unpack("!I", head)
        body = stream.read(size)
        if len(body) < size:
            return
        yield pickle.loads(body)  # noqa: S301 - written by the node that started this process


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="nimsforest-spans: %(levelname)s %(message)s")
    if len(argv) not in (2, 3):
        print("usage: python -m nimsforest.spanexport SERVICE NODE [TRACES_URL]", file=sys.stderr)
        return 2
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    service, node = argv[0], argv[1]
    resource = Resource.create({"service.name": service, "service.instance.id": node})
    scope = InstrumentationScope("nimsforest")
    exporter = OTLPSpanExporter(endpoint=argv[2]) if len(argv) == 3 else OTLPSpanExporter()
    sampled, ok = TraceFlags(1), Status(StatusCode.UNSET)
    try:
        for batch in _frames(sys.stdin.buffer):
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
            exporter.export(spans)  # the SDK retries and logs what it cannot deliver
    finally:
        exporter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
