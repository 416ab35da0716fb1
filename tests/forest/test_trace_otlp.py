"""Spans go to a real (local) OTLP/HTTP receiver when the standard variable is set."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from nimsforest.forest.trace import TraceContext, tracing_from_env

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, ExportTraceServiceRequest]] = []


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.requests.append((self.path, ExportTraceServiceRequest.FromString(body)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield server
    server.shutdown()


def test_hops_are_exported_as_spans_of_the_incoming_trace(receiver: Receiver) -> None:
    import os

    tracing = tracing_from_env(os.environ, "nimsforest", "n1")
    assert tracing.enabled
    parent = TraceContext.parse(PARENT)
    tree = tracing.hop("tree qualify", parent, {"nimsforest.node": "n1"})
    nim = tracing.hop("nim scorer", tree.context, {})
    nim.end("the brain did not answer")
    tree.end()
    tracing.shutdown()  # flushes the batch

    spans = [s for path, req in receiver.requests for rs in req.resource_spans
             for ss in rs.scope_spans for s in ss.spans if path == "/v1/traces"]
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"tree qualify", "nim scorer"}
    t, n = by_name["tree qualify"], by_name["nim scorer"]
    assert t.trace_id.hex() == parent.trace_id == n.trace_id.hex()  # type: ignore[union-attr]
    assert t.parent_span_id.hex() == parent.span_id  # type: ignore[union-attr]
    assert n.parent_span_id == t.span_id and t.span_id.hex() == tree.context.span_id
    assert n.status.message == "the brain did not answer"
    resource = receiver.requests[0][1].resource_spans[0].resource
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "nimsforest"
