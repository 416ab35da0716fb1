"""/health's readiness on frozen views: an ingest stream without a reachable leader."""

from __future__ import annotations

from natsembed import ProcessState
from nimsforest.health import NodeMode, NodeSnapshot, NodeState, node_health, problems
from nimsforest.observer import NatsView, StreamView

CORE = ("RIVER", "WIND", "HUMUS", "SOIL")


def view(river_leader: str | None, routed: frozenset[str] = frozenset({"n2", "n3"}), **kw: object) -> NatsView:
    streams = tuple(StreamView(name=n, replicas=3, leader=river_leader if n == "RIVER" else "n2",
                               current=True) for n in CORE)
    fields: dict[str, object] = {
        "observed_at": 1.0, "process_state": ProcessState.READY, "connected": True, "monitor_ok": True,
        "server_name": "n1", "meta_leader": "n2", "members": ("n1", "n2", "n3"), "routed": routed,
        "streams": streams, "streams_listed": True,
    }
    fields.update(kw)
    return NatsView.model_validate(fields)


def test_ingest_stream_led_here_or_by_a_routed_server_is_ready() -> None:
    assert problems(view("n1"), CORE, False, ("RIVER",)) == []
    assert problems(view("n3"), CORE, False, ("RIVER",)) == []


def test_ingest_stream_without_a_leader_is_not_ready() -> None:
    said = problems(view(None), CORE, False, ("RIVER",))
    assert said == ["stream RIVER has no leader: writes to it fail until one is elected"]


def test_ingest_stream_led_by_a_server_whose_route_is_gone_is_not_ready() -> None:
    # the last listing still names n3; the route to n3 dropped when it died
    said = problems(view("n3", routed=frozenset({"n2"})), CORE, False, ("RIVER",))
    assert said == ["stream RIVER's leader n3 is not reachable from this server: writes to it fail "
                    "until a new leader is elected"]


def test_only_ingest_streams_need_a_leader_and_a_sidecar_is_not_judged_on_routes() -> None:
    # SOIL's leader gone: ingest still succeeds, the node stays ready
    lost = view("n1").model_copy(update={"streams": tuple(
        s.model_copy(update={"leader": None}) if s.name == "SOIL" else s for s in view("n1").streams)})
    assert problems(lost, CORE, False, ("RIVER",)) == []
    # no monitoring port (sidecar): routes unknown, only a missing leader counts
    assert problems(view("n3", routed=frozenset(), monitor_ok=False), CORE, False, ("RIVER",)) == []


def test_node_health_answers_503_with_the_reason() -> None:
    snap = NodeSnapshot(node="n1", cluster_name="forest", mode=NodeMode.CLUSTER, state=NodeState.READY,
                        replicas=3, required_streams=CORE, ingest_streams=("RIVER",), nats=view(None))
    code, body = node_health(snap)
    assert code == 503 and body["status"] == "unhealthy"
    assert body["reasons"] == ["stream RIVER has no leader: writes to it fail until one is elected"]
    code, _ = node_health(NodeSnapshot(node="n1", cluster_name="forest", mode=NodeMode.CLUSTER,
                                       state=NodeState.READY, replicas=3, required_streams=CORE,
                                       ingest_streams=("RIVER",), nats=view("n2")))
    assert code == 200


def test_health_names_nodes_when_a_server_carries_a_generation() -> None:
    """n1 runs as n1-gen-1 after a heal, n3 as n3-gen-2: /health shows nodes."""
    healed = view("n3-gen-2", routed=frozenset({"n2", "n3-gen-2"}), server_name="n1-gen-1",
                  meta_leader="n3-gen-2", members=("n1-gen-1", "n2", "n3-gen-2"))
    assert problems(healed, CORE, False, ("RIVER",)) == []  # its leader is routed, by server name
    code, body = node_health(NodeSnapshot(node="n1", cluster_name="forest", mode=NodeMode.CLUSTER,
                                          state=NodeState.READY, replicas=3, required_streams=CORE,
                                          ingest_streams=("RIVER",), nats=healed))
    assert code == 200
    assert body["cluster"]["size"] == 3 and body["cluster"]["peers"] == ["n2", "n3"]
    assert body["jetstream"]["meta_leader"] == "n3" and body["nats"]["server"] == "n1-gen-1"
