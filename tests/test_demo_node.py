"""What `make run` starts: `nimsforest standalone --demo`, used through HTTP and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import nats

from nimsforest.forest import demo_config_path
from tests.support import NodeProcess, OtlpReceiver, eventually

PAYLOAD = json.loads((demo_config_path().parent / "payloads" / "contact_created.json").read_text())


async def soil(node: NodeProcess, key: str) -> dict | None:
    nc = await nats.connect(node.client_url())
    try:
        kv = await nc.jetstream().key_value("SOIL")
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return json.loads(entry.value)
    finally:
        await nc.close()


async def test_demo_node_turns_a_webhook_into_a_qualified_lead(tmp_path: Path) -> None:
    node = NodeProcess("standalone", tmp_path / "data", extra=["--demo"]).start()
    try:
        body = await node.wait_healthy()
        assert body["forest"] == {"running": True, "components": 4, "failed": [], "dead": {},
                                  "sources": {}, "tracing": {
                                      "state": "off", "sentence": "tracing is off (no OTLP "
                                      "endpoint is set); River inputs carry their trace "
                                      "context, and the hop headers lead from them",
                                      "carries": "river inputs", "spans": 0, "dropped": 0,
                                      "restarts": 0}}
        resp = httpx.post(node.api_url + "/webhooks/contacts", json=PAYLOAD, timeout=5)
        assert resp.status_code == 200, resp.text
        lead = await eventually(lambda: soil(node, "c-1001"), timeout=30, what="lead c-1001 in Soil")
        assert lead["pursue"] is True and lead["priority"] == "medium"

        contact = {"event": "contact.created",
                   "contact": {"id": "c-2", "email": "sam@corp.io", "title": "Engineer",
                               "company": {"name": "Corp", "size": 10, "industry": "retail"}}}
        out = subprocess.run([sys.executable, "-m", "nimsforest", "flow", "contacts", json.dumps(contact)],
                             capture_output=True, text=True, timeout=30,
                             env={**os.environ, "NIMSFOREST_API": f"127.0.0.1:{node.api_port}"})
        assert out.returncode == 0, out.stderr
        lead = await eventually(lambda: soil(node, "c-2"), timeout=30, what="lead c-2 in Soil")
        assert lead["pursue"] is False
        check_component_metrics(node)
    finally:
        node.stop()


async def test_a_node_with_an_otlp_endpoint_exports_each_hop_of_the_demo_as_one_trace(
        tmp_path: Path) -> None:
    receiver = OtlpReceiver()
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    node = NodeProcess("standalone", tmp_path / "data", extra=["--demo"], env={
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_port}"}).start()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        await node.wait_healthy()
        # the node does not wait for its exporter process (its imports take a while on a
        # busy machine): exporting once that process says it is ready
        await eventually(lambda: node.health()[1]["forest"]["tracing"]["state"] == "exporting",
                         what="the span exporter exporting")
        resp = httpx.post(node.api_url + "/webhooks/contacts", json=PAYLOAD, timeout=5,
                          headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
        assert resp.status_code == 200, resp.text
        await eventually(lambda: soil(node, "c-1001"), timeout=30, what="lead c-1001 in Soil")
    finally:
        node.stop()  # a graceful stop hands over the last spans and waits for their export
        receiver.shutdown()
    spans = [s for s in receiver.spans() if s.trace_id.hex() == trace_id]
    names = {s.name for s in spans}
    assert {"tree contacts", "treehouse scoring", "nim qualify"} <= names, names
    assert any(n.startswith("river ") for n in names), names
    by_id = {s.span_id: s for s in spans}
    nim = next(s for s in spans if s.name == "nim qualify")
    assert by_id[nim.parent_span_id].name == "treehouse scoring"  # one chain of hops


def check_component_metrics(node: NodeProcess) -> None:
    """/metrics, read with Prometheus' own parser, counts each component's work."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(httpx.get(node.api_url + "/metrics", timeout=5).text):
        for s in family.samples:
            samples[(s.name, s.labels.get("kind"), s.labels.get("name"), s.labels.get("le"))] = s.value
    for kind, name in (("tree", "contacts"), ("treehouse", "scoring"), ("nim", "qualify")):
        assert samples[("nimsforest_component_events_in_total", kind, name, None)] >= 2, (kind, name)
        assert samples[("nimsforest_component_events_out_total", kind, name, None)] >= 2, (kind, name)
        assert samples[("nimsforest_component_latency_seconds_count", kind, name, None)] >= 2, (kind, name)
        assert ("nimsforest_component_errors_total", kind, name, None) in samples


def test_a_forest_config_that_is_not_yaml_is_a_usage_error(tmp_path: Path) -> None:
    # (a component with bad settings is not: it is FAILED alone, tests/forest/test_broken_...)
    bad = tmp_path / "forest.yaml"
    bad.write_text("treehouses:\n  scoring: {subscribes: contact.created\n")
    out = subprocess.run([sys.executable, "-m", "nimsforest", "standalone", "--data-dir", str(tmp_path / "d"),
                          "--forest-config", str(bad)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert str(bad) in out.stderr and "is not valid YAML at line 3" in out.stderr
    assert out.stderr.strip().count("\n") == 0, out.stderr
    assert not (tmp_path / "d" / "nats.conf").exists()  # nothing was started
