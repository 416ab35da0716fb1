"""Prometheus metrics for a node, in one registry served at GET /metrics.

Owners: the connection manager sets the nats_* gauges and counters; the cluster manager
sets the cluster gauges; the NATS observer sets `nimsforest_consumer_pending`; every forest component reports through `component_*`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

nats_connection_status = Gauge(
    "nats_connection_status", "1 when the node's NATS connection is up, else 0", registry=REGISTRY
)
nats_reconnect_total = Counter(
    "nats_reconnect", "Reconnects of the node's NATS connection", registry=REGISTRY
)
nats_cluster_peers = Gauge(
    "nats_cluster_peers", "Other JetStream servers in this node's cluster", registry=REGISTRY
)
replication_factor = Gauge(
    "nimsforest_replication_factor", "Replica count the node keeps for its streams", registry=REGISTRY
)
cluster_size = Gauge(
    "nimsforest_cluster_size", "JetStream cluster size seen by this node", registry=REGISTRY
)

consumer_pending = Gauge(
    "nimsforest_consumer_pending",
    "A durable consumer's lag: messages not yet delivered plus delivered and not acknowledged "
    "(num_pending + num_ack_pending), as the node's NATS observer last listed it",
    ("stream", "consumer"), registry=REGISTRY,
)

_LABELS = ("kind", "name")
component_events_in = Counter(
    "nimsforest_component_events_in", "Events received by a forest component", _LABELS, registry=REGISTRY
)
component_events_out = Counter(
    "nimsforest_component_events_out", "Events emitted by a forest component", _LABELS, registry=REGISTRY
)
component_errors = Counter(
    "nimsforest_component_errors", "Errors raised while a component handled an event", _LABELS, registry=REGISTRY
)
component_dead = Counter(
    "nimsforest_component_dead", "Events a forest component gave up on (kept in DEAD)", _LABELS, registry=REGISTRY
)
component_latency = Histogram(
    "nimsforest_component_latency_seconds",
    "Time a forest component spent on one event",
    _LABELS,
    registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

_NIM = ("name", "brain", "model")
nim_tokens = Counter(
    "nimsforest_nim_tokens", "Tokens a nim's brain answers cost, as the server counted them",
    (*_NIM, "type"), registry=REGISTRY,
)
nim_cost = Counter(
    "nimsforest_nim_cost", "Cost of a nim's answers (the brain's prices per million tokens)",
    _NIM, registry=REGISTRY,
)
nim_fallbacks = Counter(
    "nimsforest_nim_fallbacks", "Decisions made by a fallback brain", ("name", "brain"),
    registry=REGISTRY,
)
nim_schema_retries = Counter(
    "nimsforest_nim_schema_retries", "Answers asked again because they did not match the schema",
    ("name", "brain"), registry=REGISTRY,
)
nim_cache_hits = Counter(
    "nimsforest_nim_cache_hits", "Decisions answered from the nim answer cache",
    ("name", "brain"), registry=REGISTRY,
)
