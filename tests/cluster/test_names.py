"""A node's server name after it started afresh, and every place that turns server names
back into nodes (pure: frozen inputs, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster import (
    Membership,
    Memory,
    MetaMember,
    Observation,
    RegistryPeer,
    RemovePeer,
    ScaleStreams,
    StreamState,
    Tuning,
    plan,
)
from cluster._manager import view_membership
from natsembed import (
    GENERATION_MARK,
    NODE_TAG,
    WITNESS_MARK,
    EmbeddedConfig,
    EmbeddedNats,
    Leaderships,
    Led,
    generation_of,
    label,
    node_of,
    server_name,
    superseded,
)
from nimsforest.drain import DrainObservation, DrainReason, Home
from nimsforest.drain import plan as drain_plan
from nimsforest.observer import MetaPeerView, NatsView
from nimsforest.settings import check_name

NOW = 1000.0


def test_a_nodes_server_name_and_back() -> None:
    assert server_name("n3") == server_name("n3", 0) == "n3"
    assert server_name("n3", 2) == "n3-gen-2"
    for node in ("n3", "web-1", "a.b_c", "gen-2", "n3-gen"):
        for gen in (0, 1, 12):
            assert node_of(server_name(node, gen)) == node
            assert generation_of(server_name(node, gen)) == gen
    # not a generation suffix: names are returned as they are
    assert node_of("n3-gen-x") == "n3-gen-x" and generation_of("n3-gen-x") == 0
    assert node_of("-gen-2") == "-gen-2"
    witness = f"n3{WITNESS_MARK}a1b2c3"
    assert node_of(witness) == witness and generation_of(witness) == 0
    assert label("n3") == "n3" and label("n3-gen-1") == "n3 (server n3-gen-1)"


def test_an_old_generation_still_listed_is_superseded() -> None:
    assert superseded(["n1", "n3", "n3-gen-1", "n2-gen-2", "n2-gen-1"]) == {"n3", "n2-gen-1"}
    assert superseded(["n1", "n3-gen-1"]) == frozenset()


def test_a_node_name_may_not_hold_the_generation_mark() -> None:
    with pytest.raises(ValueError, match="started afresh"):
        check_name(f"n3{GENERATION_MARK}1")
    assert check_name("n3-general") == "n3-general"


def test_the_generation_is_read_from_the_data_directory(tmp_path: Path) -> None:
    config = EmbeddedConfig(name="n3", data_dir=tmp_path, binary=Path("nats-server"),
                            extra_tags=("zone:a",))
    assert EmbeddedNats(config).server_name == "n3"
    (tmp_path / "generation").write_text("2\n")
    e = EmbeddedNats(config)
    rendered = e.server_config()
    assert e.name == "n3" and e.server_name == rendered.server_name == "n3-gen-2"
    assert "node:n3" in rendered.tags and NODE_TAG in rendered.tags  # placement by node name
    (tmp_path / "generation").write_text("two\n")
    assert EmbeddedNats(config).server_name == "n3"  # unreadable: warned, generation 0


def members(*names: str, offline: tuple[str, ...] = ()) -> tuple[MetaMember, ...]:
    return tuple(MetaMember(n, n not in offline, n in offline) for n in names)


def healed(**kw: object) -> Observation:
    """n1 leads; n3 started afresh once and runs as n3-gen-1."""
    base: dict[str, object] = {
        "at": NOW, "node": "n1", "nats_ok": True, "routes": ("h2:6222", "h3:6222"),
        "registry_peers": (RegistryPeer("n2", "h2:6222"), RegistryPeer("n3", "h3:6222")),
        "routed": frozenset({"n2", "n3-gen-1"}), "meta_leader": "n1",
        "meta_members": members("n2", "n3-gen-1"), "witness": None,
        "streams": (StreamState("RIVER", 3, "n1", True),),
    }
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


def test_a_healed_peer_counts_once_under_its_node_and_needs_nothing() -> None:
    o = healed()
    assert o.size == 3 and o.member_nodes == {"n2", "n3"}
    p = plan(o, Memory({}, None), Tuning())
    assert p.actions == () and "cluster of 3" in p.sentence


def test_the_old_name_of_a_healed_peer_never_counts_and_goes() -> None:
    """n3's old server name still listed (offline): not a node, not a voter for the floor;
    removed after the grace period although node n3 is registered."""
    o = healed(meta_members=members("n2", "n3", "n3-gen-1", offline=("n3",)))
    assert o.size == 3 and o.stale == {"n3"}
    tuning = Tuning(min_quorum=3)
    waiting = plan(o, Memory({"n3": NOW - 10}, None), tuning)
    assert waiting.actions == () and "peer n3 gone" in waiting.sentence
    gone = plan(o, Memory({"n3": NOW - 400}, None), tuning)
    assert gone.actions == (RemovePeer("n3"),)  # the floor of 3 holds: n1, n2, n3-gen-1


def test_this_node_under_its_new_name_leads_and_acts() -> None:
    o = healed(node="n3", server="n3-gen-1", meta_leader="n3-gen-1",
               registry_peers=(RegistryPeer("n1", "h1:6222"), RegistryPeer("n2", "h2:6222")),
               routes=("h1:6222", "h2:6222"), routed=frozenset({"n1", "n2"}),
               meta_members=members("n1", "n2"),
               streams=(StreamState("RIVER", 2, "n1", True),))
    assert o.me == "n3-gen-1"
    p = plan(o, Memory({}, None, {"n1": 0.0, "n2": 0.0}), Tuning())
    assert p.actions == (ScaleStreams(3, ("RIVER",)),)  # it acts: it leads under its new name


def test_membership_is_read_under_the_current_server_name() -> None:
    view = NatsView(observed_at=1.0, monitor_ok=True, server_name="n3-gen-1", meta_leader="n1",
                    meta_size=3, meta_peers=(MetaPeerView(name="n1", current=True, offline=False),
                                             MetaPeerView(name="n2", current=True, offline=False)))
    assert view_membership("n3-gen-1", view) is Membership.MEMBER
    not_yet = view.model_copy(update={"meta_size": 2})
    assert view_membership("n3-gen-1", not_yet) is Membership.NOT_COUNTED


def test_drain_compares_server_names_with_nodes() -> None:
    """Successors and homes are server names in NATS; drained peers are nodes."""
    now = Leaderships("n1", True, ("n2-gen-1",), (Led("RIVER", None, ("n2-gen-1", "n3"), 3),))
    p = drain_plan(DrainObservation(DrainReason.OPERATOR, False, True, held=now,
                                    peers_draining=frozenset({"n2"})))
    assert p.hand_over is not None and not p.hand_over.meta  # n2-gen-1 is n2: it drains
    assert [x.candidates for x in p.hand_over.led] == [("n3",)]
    one = Leaderships("n1-gen-1", False, (), (Led("ONE", None, (), 1),))
    homes = (Home("n1", (NODE_TAG, "node:n1")), Home("n2", (NODE_TAG, "node:n2")))
    moved = drain_plan(DrainObservation(DrainReason.OPERATOR, False, True, held=one, homes=homes,
                                        clustered=True))
    assert [(m.stream, m.to) for m in moved.moves] == [("ONE", "n2")]  # never to itself
