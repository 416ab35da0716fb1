"""Node health: a frozen snapshot of the node, and the documents built from it.

The node hands out a `NodeSnapshot` (its state and mode, the observer's `NatsView`, the
registry client's status, the cluster manager's last cycle, the forest's status); the
JSON documents of GET /health, /health/cluster and /health/registry are pure functions
of it. Nothing here does I/O, so the endpoints answer even when nats-server hangs: the
worst a stuck server can do is make the view stale, which is itself unhealthy.

Meaning for load balancers:
- /health           200: this node serves (nats-server ready, connected, JetStream has a
                    meta leader, the core streams exist, the stream it ingests into
                    has a leader its server can reach, and it is not drained). 503
                    otherwise, with `reasons`; a draining or drained node that is otherwise
                    fine reports status `draining` / `drained` (a load balancer sees it leave).
- /health/cluster   200: the cluster is whole as seen from here (meta leader, no peer
                    offline, every owned stream led, current and at the replication
                    factor). 503: degraded, with `problems`; the node may still serve.
- /health/registry  200: the registry answers heartbeats. 503: it does not (the cluster
                    keeps running on what it knows).
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from natsembed import ProcessState, node_of
from nimsforest.drain import DrainState, DrainStatus

if TYPE_CHECKING:
    from cluster import ClusterStatus, StreamState
    from nimsforest.forest import ForestStatus
    from nimsforest.observer import NatsView, StreamView
    from registry import RegistryStatus


class HealthStatus(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DEGRADED = "degraded"
    DRAINING = "draining"
    DRAINED = "drained"


class NodeMode(enum.Enum):
    STANDALONE = "standalone"
    CLUSTER = "cluster"
    SIDECAR = "sidecar"


class NodeState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class NodeSnapshot:
    """Everything the health documents say, read from the node at one moment."""

    node: str
    cluster_name: str
    mode: NodeMode
    state: NodeState
    replicas: int
    required_streams: tuple[str, ...] = ()  # the streams this node serves from
    ingest_streams: tuple[str, ...] = ()  # the streams a request writes to: they need a leader
    nats: NatsView | None = None  # None until NATS was first observed
    nats_stale: bool = False
    nats_url: str | None = None  # sidecar mode: the NATS it uses, password hidden
    monitor_url: str | None = None  # this node's own monitoring URL
    registry: RegistryStatus | None = None
    cluster: ClusterStatus | None = None  # the reconcile loop's last cycle (cluster mode)
    reconcile_interval: float = 2.0
    forest: ForestStatus | None = None
    drain: DrainStatus | None = None
    started_at: float | None = None  # time.time() this node process started
    status_reports: tuple[str, str] | None = None  # the status-report loop: state, sentence


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def problems(view: NatsView, required_streams: tuple[str, ...], stale: bool,
             ingest_streams: tuple[str, ...] = ()) -> list[str]:
    """Why the node is not healthy (empty when it is).

    An ingest stream whose leader is gone fails every write while it elects a new one
    (seconds): readiness follows that. The election itself is seen late (the last stream
    listing still names the old leader), the loss of the leader's route at once, so a
    leader this server has no route to counts as gone."""
    out: list[str] = []
    if stale:
        age = time.time() - view.observed_at
        out.append(f"health state is stale: NATS was last observed {age:.0f}s ago")
        return out
    if view.process_state is not None and view.process_state is not ProcessState.READY:
        out.append(f"nats-server is {view.process_state.value}")
    if not view.connected:
        out.append("the node's NATS connection is down")
    if view.error:
        out.append(view.error)
    elif view.process_state is not None and view.meta_leader is None:
        out.append("JetStream has no meta leader")
    if not view.error and view.connected and not view.streams_listed:
        out.append("JetStream has not listed its streams yet")
    have = {s.name for s in view.streams}
    missing = [s for s in required_streams if s not in have]
    if missing and not view.error and view.streams_listed:
        out.append("missing streams: " + ", ".join(missing))
    if view.streams_listed:
        out += _leaderless(view, ingest_streams)
    return out


def _leaderless(view: NatsView, ingest_streams: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for stream in view.streams:
        if stream.name not in ingest_streams:
            continue
        if stream.leader is None:
            out.append(f"stream {stream.name} has no leader: writes to it fail until one is elected")
        elif (view.monitor_ok and view.server_name and stream.leader != view.server_name
              and stream.leader not in view.routed):
            out.append(f"stream {stream.name}'s leader {stream.leader} is not reachable from this "
                       "server: writes to it fail until a new leader is elected")
    return out


def node_health(s: NodeSnapshot) -> tuple[int, dict[str, Any]]:
    view = s.nats
    reasons: list[str] = []
    if s.state is not NodeState.READY:
        reasons.append(f"node is {s.state.value}")
    if view is None:
        reasons.append("NATS not observed yet")
    else:
        reasons += problems(view, s.required_streams, s.nats_stale, s.ingest_streams)
    status = HealthStatus.UNHEALTHY if reasons else HealthStatus.HEALTHY
    drain = s.drain
    if drain is not None and drain.state is not DrainState.SERVING:
        if not reasons:
            status = (HealthStatus.DRAINED if drain.state is DrainState.DRAINED
                      else HealthStatus.DRAINING)
        reasons.append(f"node is {drain.sentence}")
    members = sorted(view.member_nodes) if view else []  # users see nodes
    sidecar = s.mode is NodeMode.SIDECAR
    body: dict[str, Any] = {
        "status": status.value,
        "node": s.node,
        "mode": s.mode.value,
        "started_at": _iso(s.started_at),
        "cluster": {
            "name": s.cluster_name,
            "size": None if sidecar else max(1, len(members)),  # a sidecar's NATS owns it
            "peers": None if sidecar else [m for m in members if m != s.node],
            "replication_factor": s.replicas,
        },
        "jetstream": {
            "streams": list(view.stream_names) if view else [],
            "kv_buckets": list(view.kv_buckets) if view else [],
            "meta_leader": _node(view.meta_leader) if view else None,
        },
        "nats": {
            "state": view.process_state.value if view and view.process_state else None,
            "pid": view.process_pid if view else None,
            "restarts": view.restarts if view else 0,
            "witness": view.witness if view else None,
            # its nats-server's name: the node's, or <node>-gen-N after a heal (natsembed._names)
            "server": (view.server_name or None) if view else None,
            "connected": view.connected if view else False,
        },
    }
    if s.nats_url is not None:
        body["nats"]["url"] = s.nats_url
    if s.registry is not None:
        body["registry"] = {"connected": s.registry.connected, "url": s.registry.url}
    if s.cluster is not None:
        body["cluster"]["status"] = s.cluster.sentence
    if s.forest is not None:
        body["forest"] = {
            "running": s.forest.running,
            "components": len(s.forest.user_components),
            "failed": [f"{c.ref}: {c.last_error}" for c in s.forest.failed],
            # events each component gave up on here (kept in the DEAD stream): a growing
            # count is visible without failing the node's health
            "dead": {str(c.ref): c.dead for c in s.forest.components if c.dead},
            # what each source that runs does now (polling, standing by, next tick)
            "sources": {str(c.ref): c.activity for c in s.forest.components if c.activity},
            # the span exporter (OTLP): its state, spans handed to it and spans dropped
            "tracing": {"state": s.forest.tracing.state.value,
                        "sentence": s.forest.tracing.sentence,
                        "carries": s.forest.tracing.carries.value,
                        "spans": s.forest.tracing.spans, "dropped": s.forest.tracing.dropped,
                        "restarts": s.forest.tracing.restarts},
        }
    if drain is not None:
        body["drain"] = drain.doc()
    if s.status_reports is not None:  # this node's report to the STATUS bucket (its loop)
        body["status_reports"] = {"state": s.status_reports[0], "sentence": s.status_reports[1]}
    if reasons:
        body["reasons"] = reasons
    return (503 if reasons else 200), body


def cluster_health(s: NodeSnapshot) -> tuple[int, dict[str, Any]]:
    status = s.cluster
    if status is None:
        return _unmanaged_cluster(s)
    problems_ = list(status.problems)
    age = time.time() - status.cycle_at
    if age > max(10.0, s.reconcile_interval * 5):
        problems_.append(f"the reconcile loop last reported {age:.0f}s ago")
    body = {
        "status": (HealthStatus.DEGRADED if problems_ else HealthStatus.HEALTHY).value,
        "node": status.node,
        "size": status.size,
        "replication_factor": status.replication_factor,
        "meta_leader": status.meta_leader,
        "server": status.server,
        "witness": status.witness,
        "witnesses": list(status.witnesses),
        "peers": [{**asdict(p), "state": p.state.value} for p in status.peers],
        "streams": [_stream_doc(x) for x in status.streams],
        "monitor_url": s.monitor_url,
        "registry_ok": status.registry_ok,
        "last_sentence": status.sentence,
        "last_cycle_at": _iso(status.cycle_at),
        "cycles": status.cycles,
    }
    if problems_:
        body["problems"] = problems_
    return (503 if problems_ else 200), body


def _node(server: str | None) -> str | None:
    return node_of(server) if server else None


def _stream_doc(x: StreamState | StreamView) -> dict[str, Any]:
    return {"name": x.name, "replicas": x.replicas, "leader": _node(x.leader), "current": x.current,
            "lagging": [node_of(n) for n in x.lagging], "messages": x.messages,
            "consumers": x.consumers}


def _unmanaged_cluster(s: NodeSnapshot) -> tuple[int, dict[str, Any]]:
    """/health/cluster of a node without a reconcile loop (standalone, sidecar)."""
    view = s.nats
    streams = view.streams if view else ()
    problems_: list[str] = []
    if view is None or view.meta_leader is None:
        problems_.append("JetStream has no meta leader")
    for x in streams:
        if x.owned and (x.leader is None or not x.current):
            problems_.append(f"stream {x.name} is not led or not current")
    body: dict[str, Any] = {
        "status": (HealthStatus.DEGRADED if problems_ else HealthStatus.HEALTHY).value,
        "node": s.node,
        "size": max(1, len(view.member_nodes)) if view else 1,
        "replication_factor": s.replicas,
        "meta_leader": _node(view.meta_leader) if view else None,
        "witness": view.witness if view else None,
        "peers": [],
        "streams": [_stream_doc(x) for x in streams if x.owned],
        "monitor_url": s.monitor_url,
        "registry_ok": None,
        "last_sentence": (
            "sidecar: clustering belongs to the NATS the node uses"
            if s.mode is NodeMode.SIDECAR else "standalone: no registry, no peers to manage"
        ),
        "last_cycle_at": _iso(view.observed_at) if view else None,
    }
    if problems_:
        body["problems"] = problems_
    return (503 if problems_ else 200), body


def registry_health(s: NodeSnapshot) -> tuple[int, dict[str, Any]]:
    if s.registry is None:
        return 200, {"configured": False, "connected": False, "url": None,
                     "detail": f"{s.mode.value} mode uses no registry"}
    st = s.registry
    body = {
        "configured": True,
        "connected": st.connected,
        "url": st.url,
        "state": st.state.value,
        "last_heartbeat": st.last_heartbeat.isoformat() if st.last_heartbeat else None,
        "last_error": st.last_error,
    }
    return (200 if st.connected else 503), body


__all__ = [
    "HealthStatus",
    "NodeMode",
    "NodeSnapshot",
    "NodeState",
    "cluster_health",
    "node_health",
    "problems",
    "registry_health",
]
