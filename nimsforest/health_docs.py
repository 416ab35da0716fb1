"""The JSON documents of GET /health, /health/cluster and /health/registry.

Built from in-memory snapshots only (the observer's view, the cluster manager's last
cycle, the registry client's status): no I/O, so they answer even when nats-server hangs.

Meaning for load balancers:
- /health           200: this node serves (nats-server ready, connected, JetStream has a
                    meta leader, the core streams exist). 503 otherwise, with `reasons`.
- /health/cluster   200: the cluster is whole as seen from here (meta leader, no peer
                    offline, every owned stream led, current and at the replication
                    factor). 503: degraded, with `problems`; the node may still serve.
- /health/registry  200: the registry answers heartbeats. 503: it does not (the cluster
                    keeps running on what it knows).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nimsforest.health import HealthStatus, problems

if TYPE_CHECKING:
    from nimsforest.node import Node


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts else None


def node_health(node: Node) -> tuple[int, dict[str, Any]]:
    from nimsforest.streams import CORE_STREAMS

    obs = node.observer
    view = obs.view if obs else None
    reasons: list[str] = []
    if node.state.value != "ready":
        reasons.append(f"node is {node.state.value}")
    if view is None or obs is None:
        reasons.append("NATS not observed yet")
    else:
        reasons += problems(view, tuple(spec.name for spec in CORE_STREAMS), obs.is_stale())
    members = view.members if view else ()
    body: dict[str, Any] = {
        "status": (HealthStatus.UNHEALTHY if reasons else HealthStatus.HEALTHY).value,
        "node": node.settings.node_name,
        "mode": node.mode.value,
        "cluster": {
            "name": node.settings.cluster_name,
            "size": max(1, len(members)),
            "peers": [m for m in members if m != node.settings.node_name],
            "replication_factor": node.replicas,
        },
        "jetstream": {
            "streams": list(view.stream_names) if view else [],
            "kv_buckets": list(view.kv_buckets) if view else [],
            "meta_leader": view.meta_leader if view else None,
        },
        "nats": {
            "state": view.process_state if view else None,
            "pid": view.process_pid if view else None,
            "restarts": view.restarts if view else 0,
            "witness": view.witness if view else None,
            "connected": view.connected if view else False,
        },
    }
    if node.mode.value == "sidecar" and node.settings.nats_url:
        from nimsforest.connection import redact

        body["nats"]["url"] = redact(node.settings.nats_url)
        body["cluster"]["size"] = None  # the sidecar NATS owns its cluster
        body["cluster"]["peers"] = None
    if node.registry is not None:
        st = node.registry.status()
        body["registry"] = {"connected": st.connected, "url": st.url}
    if node.manager is not None:
        body["cluster"]["status"] = node.manager.sentence
    if node.forest is not None:
        st = node.forest.status()
        user = [c for c in st.components if c.kind.value != "decomposer"]
        body["forest"] = {
            "running": st.running,
            "components": len(user),
            "failed": [f"{c.kind.value} {c.name}: {c.last_error}" for c in st.components
                       if c.state.value == "failed"],
        }
    if reasons:
        body["reasons"] = reasons
    return (503 if reasons else 200), body


def cluster_health(node: Node) -> tuple[int, dict[str, Any]]:
    status = node.manager.status() if node.manager else None
    if status is None:
        return _standalone_cluster(node)
    problems_ = list(status.problems)
    age = time.time() - status.cycle_at
    if node.manager is not None and age > max(10.0, node.manager.interval * 5):
        problems_.append(f"the reconcile loop last reported {age:.0f}s ago")
    body = {
        "status": "healthy" if not problems_ else "degraded",
        "node": status.node,
        "size": status.size,
        "replication_factor": status.replication_factor,
        "meta_leader": status.meta_leader,
        "witness": status.witness,
        "witnesses": list(status.witnesses),
        "peers": [
            {**asdict(p), "state": p.state.value} for p in status.peers
        ],
        "streams": [_stream_doc(s) for s in status.streams],
        "monitor_url": _self_monitor_url(node),
        "registry_ok": status.registry_ok,
        "last_sentence": status.sentence,
        "last_cycle_at": _iso(status.cycle_at),
        "cycles": status.cycles,
    }
    if problems_:
        body["problems"] = problems_
    return (503 if problems_ else 200), body


def _stream_doc(s: Any) -> dict[str, Any]:
    return {"name": s.name, "replicas": s.replicas, "leader": s.leader, "current": s.current,
            "lagging": list(s.lagging), "messages": s.messages, "consumers": s.consumers}


def _self_monitor_url(node: Node) -> str | None:
    return node.embedded.monitor_url if node.embedded is not None else None


def _standalone_cluster(node: Node) -> tuple[int, dict[str, Any]]:
    view = node.observer.view if node.observer else None
    streams = view.streams if view else ()
    problems_: list[str] = []
    if view is None or view.meta_leader is None:
        problems_.append("JetStream has no meta leader")
    for s in streams:
        if s.owned and (s.leader is None or not s.current):
            problems_.append(f"stream {s.name} is not led or not current")
    body: dict[str, Any] = {
        "status": "healthy" if not problems_ else "degraded",
        "node": node.settings.node_name,
        "size": max(1, len(view.members)) if view else 1,
        "replication_factor": node.replicas,
        "meta_leader": view.meta_leader if view else None,
        "witness": view.witness if view else None,
        "peers": [],
        "streams": [_stream_doc(s) for s in streams if s.owned],
        "monitor_url": _self_monitor_url(node),
        "registry_ok": None,
        "last_sentence": (
            "sidecar: clustering belongs to the NATS the node uses"
            if node.mode.value == "sidecar" else "standalone: no registry, no peers to manage"
        ),
        "last_cycle_at": _iso(view.observed_at) if view else None,
    }
    if problems_:
        body["problems"] = problems_
    return (503 if problems_ else 200), body


def registry_health(node: Node) -> tuple[int, dict[str, Any]]:
    if node.registry is None:
        return 200, {"configured": False, "connected": False, "url": None,
                     "detail": f"{node.mode.value} mode uses no registry"}
    st = node.registry.status()
    body = {
        "configured": True,
        "connected": st.connected,
        "url": st.url,
        "state": st.state.value,
        "last_heartbeat": st.last_heartbeat.isoformat() if st.last_heartbeat else None,
        "last_error": st.last_error,
    }
    return (200 if st.connected else 503), body
