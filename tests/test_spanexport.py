"""The span exporter process's encoding: the OTLP request the SDK would make of the same
hops, built without the SDK's per-span objects, sent through the SDK's exporter."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from nimsforest.spanexport import Encoder, Record, readable_spans, sender
from tests.support import OtlpReceiver

RESOURCE = Resource.create({"service.name": "nimsforest", "service.instance.id": "n1"})
SCOPE = InstrumentationScope("nimsforest")
TREE = {"nimsforest.component": "tree:contacts", "nimsforest.node": "n1",
        "messaging.destination.name": "RIVER"}
NIM = {"nimsforest.component": "nim:qualify", "nimsforest.node": "n1", "retries": 2,
       "cached": True, "share": 0.5, "tags": ["a", "b"]}  # a list: not kept encoded
T = "4bf92f3577b34da6a3ce929d0e0e4736"
BATCH: list[Record] = [
    ("tree contacts", T, "00f067aa0ba902b7", None, 1_000, 2_000, TREE, None),  # a root
    ("nim qualify", T, "1111111111111111", "00f067aa0ba902b7", 2_000, 3_500, NIM, None),
    ("tree contacts", "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331",
     "a000000000000001", 4_000, 4_100, TREE, "the brain did not answer"),
]


def _sdk(batch: list[Record]) -> ExportTraceServiceRequest:
    return encode_spans(readable_spans(batch, RESOURCE, SCOPE))


def test_the_request_is_the_one_the_sdk_encodes_from_its_own_spans() -> None:
    ours = ExportTraceServiceRequest.FromString(Encoder(RESOURCE, SCOPE).request(BATCH))
    assert ours == _sdk(BATCH)
    spans = ours.resource_spans[0].scope_spans[0].spans
    assert [s.name for s in spans] == ["tree contacts", "nim qualify", "tree contacts"]
    assert spans[1].parent_span_id.hex() == "00f067aa0ba902b7" and not spans[0].parent_span_id
    assert spans[2].status.message == "the brain did not answer"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_a_batch_goes_through_the_sdks_exporter_to_the_receiver(receiver: OtlpReceiver) -> None:
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{receiver.server_port}/v1/traces")
    try:
        send = sender(exporter, RESOURCE, SCOPE)
        send(BATCH)
        send(BATCH[:1])
    finally:
        exporter.shutdown()
    assert [req for _, req in receiver.requests] == [_sdk(BATCH), _sdk(BATCH[:1])]


def test_an_exporter_without_the_sdks_http_client_gets_the_sdks_spans() -> None:
    memory = InMemorySpanExporter()  # as an SDK version whose exporter has no `_client`
    sender(memory, RESOURCE, SCOPE)(BATCH)
    assert encode_spans(memory.get_finished_spans()) == _sdk(BATCH)
