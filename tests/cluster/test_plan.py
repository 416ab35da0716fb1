"""The reconcile decision on frozen observations (no processes needed)."""

from __future__ import annotations

from dataclasses import replace

from cluster import (
    Memory,
    MetaMember,
    Observation,
    RegistryPeer,
    RemovePeer,
    Rescue,
    RetireWitness,
    ScaleStreams,
    SetRoutes,
    StreamState,
    Tuning,
    plan,
)

NOW = 1000.0
STREAMS_R1 = (StreamState("HUMUS", 1, "n1", True), StreamState("KV_SOIL", 1, "n1", True),
              StreamState("RIVER", 1, "n1", True))


def obs(**kw: object) -> Observation:
    base = dict(
        at=NOW, node="n1", nats_ok=True, registry_peers=(), routes=(), routed=frozenset(),
        meta_leader="n1", meta_members=(), witness=None, streams=STREAMS_R1,
    )
    base.update(kw)
    return Observation(**base)  # type: ignore[arg-type]


FRESH = Memory(gone_since={}, leaderless_since=None)
FLOORLESS = Tuning(min_quorum=1)  # the automatic way down to one node (the default floor is 3)


def settled(*names: str) -> Memory:
    """Memory in which `names` have been reachable for longer than the stabilisation time."""
    return Memory({}, None, dict.fromkeys(names, NOW - 60))


def test_lone_node_with_its_witness_does_nothing_and_says_so() -> None:
    p = plan(obs(witness="n1-witness-a", meta_members=(MetaMember("n1-witness-a", True, False),)), FRESH)
    assert p.actions == ()
    assert p.sentence.startswith("no action: n1 is in a cluster of 1")
    assert "replication 1" in p.sentence and "all replicas current" in p.sentence


LONE = dict(witness="n1-witness-a", meta_members=(MetaMember("n1-witness-a", True, False),))


def test_new_registry_peer_gets_a_route() -> None:
    p = plan(obs(registry_peers=(RegistryPeer("n2", "10.0.0.2:6222"), RegistryPeer("n2", "10.0.0.2:6222")),
                 **LONE), FRESH)
    assert p.actions == (SetRoutes(("10.0.0.2:6222",), added=("10.0.0.2:6222",)),)
    assert "route to 10.0.0.2:6222 added" in p.sentence


def test_registry_down_changes_no_route() -> None:
    p = plan(obs(registry_peers=None, routes=("10.0.0.2:6222",), **LONE), FRESH)
    assert not any(isinstance(a, SetRoutes) for a in p.actions)
    assert "registry unreachable" in p.sentence


def test_peer_gone_from_registry_loses_its_route() -> None:
    p = plan(obs(registry_peers=(), routes=("10.0.0.2:6222",)), FRESH)
    assert SetRoutes((), removed=("10.0.0.2:6222",)) in p.actions


def test_witness_retired_once_a_peer_is_an_online_member() -> None:
    members = (MetaMember("n1-witness-a", True, False), MetaMember("n2", False, False))
    base = obs(witness="n1-witness-a", meta_members=members, routed=frozenset(),
               registry_peers=(RegistryPeer("n2", "h2:6222"),), routes=("h2:6222",))
    assert not any(isinstance(a, RetireWitness) for a in plan(base, FRESH).actions)  # not routed yet
    offline = (MetaMember("n1-witness-a", True, False), MetaMember("n2", False, True))
    routed = replace(base, routed=frozenset({"n2"}))
    assert not any(isinstance(a, RetireWitness) for a in plan(replace(routed, meta_members=offline), FRESH).actions)
    assert RetireWitness() in plan(routed, FRESH).actions
    assert not any(isinstance(a, RetireWitness) for a in plan(replace(routed, meta_leader=None), FRESH).actions)


def test_second_node_scales_streams_to_r2_without_counting_the_witness() -> None:
    members = (MetaMember("n1-witness-a", True, False), MetaMember("n2", True, False))
    p = plan(obs(witness="n1-witness-a", meta_members=members, routed=frozenset({"n2"}),
                 registry_peers=(RegistryPeer("n2", "h2:6222"),), routes=("h2:6222",)), settled("n2"))
    assert ScaleStreams(2, ("HUMUS", "KV_SOIL", "RIVER")) in p.actions


def test_only_the_acting_node_scales() -> None:
    members = (MetaMember("n2", True, False),)
    p = plan(obs(meta_leader="n2", meta_members=members, routed=frozenset({"n2"}),
                 registry_peers=(RegistryPeer("n2", "h2:6222"),), routes=("h2:6222",)), FRESH)
    assert p.actions == ()


def test_r3_at_most() -> None:
    members = tuple(MetaMember(f"n{i}", True, False) for i in range(2, 6))
    peers = tuple(RegistryPeer(f"n{i}", f"h{i}:6222") for i in range(2, 6))
    p = plan(obs(meta_members=members, routed=frozenset(m.name for m in members), registry_peers=peers,
                 routes=tuple(sorted(x.cluster_address for x in peers))), settled("n2", "n3", "n4", "n5"))
    assert p.actions == (ScaleStreams(3, ("HUMUS", "KV_SOIL", "RIVER")),)


def test_offline_peer_still_registered_is_waited_for() -> None:
    members = (MetaMember("n2", False, True), MetaMember("n3", True, False))
    streams = tuple(replace(s, replicas=3) for s in STREAMS_R1)
    peers = (RegistryPeer("n2", "h2:6222"), RegistryPeer("n3", "h3:6222"))
    p = plan(obs(meta_members=members, routed=frozenset({"n3"}), registry_peers=peers,
                 routes=("h2:6222", "h3:6222"), streams=streams), FRESH)
    assert p.actions == ()


def test_gone_peer_removed_after_the_grace_period_only() -> None:
    # a forest of four: removing one leaves three, the default quorum floor
    members = (MetaMember("n2", False, True), MetaMember("n3", True, False), MetaMember("n4", True, False))
    streams = tuple(replace(s, replicas=3) for s in STREAMS_R1)
    o = obs(meta_members=members, routed=frozenset({"n3", "n4"}),
            registry_peers=(RegistryPeer("n3", "h3:6222"), RegistryPeer("n4", "h4:6222")),
            routes=("h3:6222", "h4:6222"), streams=streams)
    early = plan(o, Memory({"n2": NOW - 10}, None), Tuning(grace=60))
    assert early.actions == ()
    assert "peer n2 gone; removed when the 60s grace period ends" in early.sentence
    later = plan(o, Memory({"n2": NOW - 40}, None), Tuning(grace=60))
    assert later.sentence == early.sentence  # one log line for the whole grace period
    late = plan(o, Memory({"n2": NOW - 61}, None), Tuning(grace=60))
    assert late.actions == (RemovePeer("n2"),)


def test_without_the_registry_nobody_is_removed() -> None:
    members = (MetaMember("n2", False, True), MetaMember("n3", True, False))
    o = obs(meta_members=members, routed=frozenset({"n3"}), registry_peers=None, routes=("h3:6222",))
    assert not any(isinstance(a, RemovePeer) for a in plan(o, Memory({"n2": 0.0}, None), Tuning(grace=1)).actions)


def test_after_removal_size_2_scales_down_to_r2() -> None:
    members = (MetaMember("n3", True, False),)
    streams = tuple(replace(s, replicas=3) for s in STREAMS_R1)
    p = plan(obs(meta_members=members, routed=frozenset({"n3"}), registry_peers=(RegistryPeer("n3", "h3:6222"),),
                 routes=("h3:6222",), streams=streams), FRESH)
    assert p.actions == (ScaleStreams(2, ("HUMUS", "KV_SOIL", "RIVER")),)


def test_rescue_only_for_a_group_of_two_after_grace_and_leaderless_time() -> None:
    lost = obs(meta_leader=None, meta_members=(MetaMember("n2", False, True),), registry_peers=(),
               streams=())
    tuning = Tuning(grace=60, rescue_after=10, min_quorum=1)
    assert plan(lost, Memory({"n2": NOW - 61}, NOW - 11), tuning).actions == (Rescue(("n2",)),)
    # not long enough without a leader, or not past the grace period: wait
    assert plan(lost, Memory({"n2": NOW - 61}, NOW - 5), tuning).actions == ()
    assert plan(lost, Memory({"n2": NOW - 30}, NOW - 30), tuning).actions == ()
    # still registered: a partition, not a departure
    registered = replace(lost, registry_peers=(RegistryPeer("n2", "h2:6222"),), routes=("h2:6222",))
    assert not any(isinstance(a, Rescue) for a in plan(registered, Memory({}, NOW - 100), tuning).actions)
    # registry unreachable: never
    blind = replace(lost, registry_peers=None)
    assert plan(blind, Memory({"n2": NOW - 100}, NOW - 100), tuning).actions == ()


def test_no_rescue_when_two_of_three_are_lost() -> None:
    members = (MetaMember("n2", False, True), MetaMember("n3", False, True))
    o = obs(meta_leader=None, meta_members=members, registry_peers=(), streams=())
    p = plan(o, Memory({"n2": 0.0, "n3": 0.0}, 0.0), Tuning(grace=1, rescue_after=1))
    assert p.actions == ()
    assert "no meta leader" in p.sentence


def test_monitor_down_means_waiting() -> None:
    p = plan(obs(nats_ok=False), FRESH)
    assert p.actions == () and "monitoring port" in p.sentence


def test_founder_dying_with_its_witness_in_a_group_of_four_is_rescued_by_one_survivor() -> None:
    # n3 founded with witness W; n1 and n2 joined; n3 died (and W with it) before W was retired.
    members = (MetaMember("n2", True, False), MetaMember("n3", False, True), MetaMember("n3-witness-ab", False, True))
    o = obs(meta_leader=None, meta_members=members, routed=frozenset({"n2"}),
            registry_peers=(RegistryPeer("n2", "h2:6222"),), routes=("h2:6222",), streams=())
    memory = Memory({"n3": NOW - 100, "n3-witness-ab": NOW - 100}, NOW - 100)
    tuning = Tuning(grace=60, rescue_after=10, min_quorum=2)
    assert plan(o, memory, tuning).actions == (Rescue(("n3", "n3-witness-ab"), 2),)
    # n2 sees the same and leaves the asking to n1 (the lowest name): one request is enough,
    # every server applies it.
    seen_from_n2 = replace(o, node="n2", meta_members=(MetaMember("n1", True, False), *members[1:]),
                           routed=frozenset({"n1"}), registry_peers=(RegistryPeer("n1", "h1:6222"),),
                           routes=("h1:6222",))
    assert plan(seen_from_n2, memory, tuning).actions == ()


def test_a_witness_goes_with_its_owner_only() -> None:
    members = (MetaMember("n2", True, False), MetaMember("n2-witness-cd", False, False))
    alive_owner = obs(meta_members=members, routed=frozenset({"n2"}),
                      registry_peers=(RegistryPeer("n2", "h2:6222"),), routes=("h2:6222",))
    assert not any(isinstance(a, RemovePeer) for a in plan(alive_owner, Memory({}, None), Tuning(grace=0)).actions)
    dead_owner = replace(alive_owner, registry_peers=())
    p = plan(dead_owner, Memory({"n2-witness-cd": 0.0}, None), Tuning(grace=1))
    assert RemovePeer("n2-witness-cd") in p.actions


def test_no_rescue_while_an_unreachable_member_is_not_proven_gone() -> None:
    members = (MetaMember("n2", True, False), MetaMember("n3", False, True), MetaMember("n3-witness-ab", False, True))
    o = obs(meta_leader=None, meta_members=members, routed=frozenset({"n2"}),
            registry_peers=(RegistryPeer("n2", "h2:6222"), RegistryPeer("n3", "h3:6222")),
            routes=("h2:6222", "h3:6222"), streams=())
    assert plan(o, Memory({}, NOW - 100), Tuning(grace=1, rescue_after=1)).actions == ()


def test_a_witness_left_in_a_multi_node_group_is_a_problem() -> None:
    from cluster import ClusterStatus

    status = ClusterStatus(node="n1", size=2, replication_factor=2, meta_leader="n1", witness="n1-witness-a",
                           peers=(), streams=(), sentence="", registry_ok=True, cycle_at=0.0, cycles=1,
                           witnesses=("n1-witness-a",))
    assert any("still in the meta group" in p for p in status.problems)
    alone = replace(status, size=1, replication_factor=1)
    assert not alone.problems


def test_a_leader_left_alone_without_a_witness_starts_one() -> None:
    from cluster import StartWitness

    assert plan(obs(), FRESH).actions == (StartWitness(),)  # leads a group of one, no witness
    assert plan(obs(meta_leader=None), FRESH).actions == ()  # not while leaderless
    with_witness = obs(witness="n1-witness-a", meta_members=(MetaMember("n1-witness-a", True, False),))
    assert plan(with_witness, FRESH).actions == ()


# --- quorum floor, stabilisation, one membership change at a time ---------------------------
R3 = tuple(replace(s, replicas=3) for s in STREAMS_R1)


def three_with_n3_gone(**kw: object) -> Observation:
    members = (MetaMember("n2", True, False), MetaMember("n3", False, True))
    base: dict[str, object] = {"meta_members": members, "routed": frozenset({"n2"}), "streams": R3,
                               "registry_peers": (RegistryPeer("n2", "h2:6222"),), "routes": ("h2:6222",)}
    base.update(kw)
    return obs(**base)


def test_quorum_floor_keeps_a_forest_of_three_at_three_voters() -> None:
    p = plan(three_with_n3_gone(), Memory({"n3": NOW - 100}, None), Tuning(grace=60))
    assert p.actions == ()
    assert p.sentence == ("waiting: peer n3 gone past the grace period but kept: removing it would leave "
                          "2 voting node(s), below the quorum floor of 3 (NIMSFOREST_MIN_QUORUM)")
    # the same words on every later cycle (one log line)
    assert plan(three_with_n3_gone(), Memory({"n3": NOW - 900}, None), Tuning(grace=60)).sentence == p.sentence
    # an operator who lowers the floor lets it go
    lowered = plan(three_with_n3_gone(), Memory({"n3": NOW - 100}, None), Tuning(grace=60, min_quorum=2))
    assert lowered.actions == (RemovePeer("n3"),)


def test_quorum_floor_holds_when_two_of_three_are_gone() -> None:
    # n3 was kept by the floor; now n2 is gone too: no meta leader, and nothing is rescued
    members = (MetaMember("n2", False, True), MetaMember("n3", False, True))
    o = obs(meta_leader=None, meta_members=members, registry_peers=(), streams=())
    for tuning in (Tuning(grace=1, rescue_after=1), Tuning(grace=1, rescue_after=1, min_quorum=1)):
        p = plan(o, Memory({"n2": NOW - 100, "n3": NOW - 100}, NOW - 100), tuning)
        assert p.actions == ()
        assert "JetStream has no meta leader" in p.sentence


def test_the_floor_also_stops_a_rescue() -> None:
    lost = obs(meta_leader=None, meta_members=(MetaMember("n2", False, True),), registry_peers=(), streams=())
    p = plan(lost, Memory({"n2": NOW - 100}, NOW - 100), Tuning(grace=60, rescue_after=10))
    assert p.actions == ()
    assert "removing it would leave 1 voting node(s), below the quorum floor of 3" in p.sentence
    assert "JetStream has no meta leader" in p.sentence
    allowed = plan(lost, Memory({"n2": NOW - 100}, NOW - 100), Tuning(grace=60, rescue_after=10, min_quorum=1))
    assert allowed.actions == (Rescue(("n2",)),)


def test_the_floor_does_not_keep_a_dead_owners_witness() -> None:
    members = (MetaMember("n2", True, False), MetaMember("n3", True, False), MetaMember("n9-witness-x", False, True))
    o = obs(meta_members=members, routed=frozenset({"n2", "n3"}), streams=R3,
            registry_peers=(RegistryPeer("n2", "h2:6222"), RegistryPeer("n3", "h3:6222")),
            routes=("h2:6222", "h3:6222"))
    assert plan(o, Memory({"n9-witness-x": NOW - 100}, None), Tuning(grace=60)).actions == (
        RemovePeer("n9-witness-x"),)


def joined(**kw: object) -> Observation:
    """n1 leads alone with R1 streams; n2 has joined the meta group and is reachable."""
    members = (MetaMember("n2", True, False),)
    base: dict[str, object] = {"meta_members": members, "routed": frozenset({"n2"}),
                               "registry_peers": (RegistryPeer("n2", "h2:6222"),), "routes": ("h2:6222",)}
    base.update(kw)
    return obs(**base)


def test_a_new_node_gets_replicas_only_after_the_stabilisation_time() -> None:
    tuning = Tuning(stabilise=10)
    young = plan(joined(), Memory({}, None, {"n2": NOW - 4}), tuning)
    assert not any(isinstance(a, ScaleStreams) for a in young.actions)
    assert "reach R2 once the new node(s) have been reachable for the 10s stabilisation time" in young.sentence
    never_seen = plan(joined(), FRESH, tuning)  # just appeared: its clock starts now
    assert not any(isinstance(a, ScaleStreams) for a in never_seen.actions)
    grown = plan(joined(), Memory({}, None, {"n2": NOW - 10}), tuning)
    assert grown.actions == (ScaleStreams(2, ("HUMUS", "KV_SOIL", "RIVER")),)
    # reachable since long ago by the memory, but unreachable now: not counted
    away = joined(routed=frozenset())
    assert not any(isinstance(a, ScaleStreams) for a in plan(away, Memory({}, None, {"n2": 0.0}), tuning).actions)


def test_stabilisation_scales_up_in_steps_onto_stable_nodes_only() -> None:
    members = (MetaMember("n2", True, False), MetaMember("n3", True, False))
    streams = tuple(replace(s, replicas=1) for s in STREAMS_R1)
    o = obs(meta_members=members, routed=frozenset({"n2", "n3"}), streams=streams,
            registry_peers=(RegistryPeer("n2", "h2:6222"), RegistryPeer("n3", "h3:6222")),
            routes=("h2:6222", "h3:6222"))
    p = plan(o, Memory({}, None, {"n2": NOW - 60, "n3": NOW - 1}), Tuning(stabilise=10))
    assert p.actions == (ScaleStreams(2, ("HUMUS", "KV_SOIL", "RIVER")),)  # n2 counts, n3 not yet
    assert "reach R3 once" in " ".join(p.waiting)


def test_scaling_down_is_never_delayed_by_stabilisation() -> None:
    members = (MetaMember("n3", True, False),)
    p = plan(obs(meta_members=members, routed=frozenset({"n3"}), registry_peers=(RegistryPeer("n3", "h3:6222"),),
                 routes=("h3:6222",), streams=R3), FRESH, Tuning(stabilise=1000))
    assert p.actions == (ScaleStreams(2, ("HUMUS", "KV_SOIL", "RIVER")),)


def test_one_membership_change_at_a_time() -> None:
    # five nodes, n4 and n5 gone past the grace period: one removal per cycle
    names = ("n2", "n3", "n4", "n5")
    members = tuple(MetaMember(n, n in ("n2", "n3"), n in ("n4", "n5")) for n in names)
    o = obs(meta_members=members, routed=frozenset({"n2", "n3"}), streams=R3,
            registry_peers=(RegistryPeer("n2", "h2:6222"), RegistryPeer("n3", "h3:6222")),
            routes=("h2:6222", "h3:6222"))
    tuning = Tuning(grace=60, min_quorum=1)
    p = plan(o, Memory({"n4": NOW - 100, "n5": NOW - 100}, None), tuning)
    assert p.actions == (RemovePeer("n4"),)
    assert "one membership change at a time: next, peer n5 removed from the cluster" in p.waiting
    # the next cycle, with n4 gone from the group, removes n5
    after = replace(o, meta_members=members[:2] + members[3:])
    assert plan(after, Memory({"n5": NOW - 100}, None), tuning).actions == (RemovePeer("n5"),)


def test_retiring_the_witness_and_removing_a_peer_are_two_changes() -> None:
    members = (MetaMember("n1-witness-a", True, False), MetaMember("n2", True, False),
               MetaMember("n3", True, False), MetaMember("n4", True, False), MetaMember("n5", False, True))
    o = obs(witness="n1-witness-a", meta_members=members, routed=frozenset({"n2", "n3", "n4"}), streams=R3,
            registry_peers=tuple(RegistryPeer(n, f"h{n}:6222") for n in ("n2", "n3", "n4")),
            routes=tuple(sorted(f"h{n}:6222" for n in ("n2", "n3", "n4"))))
    p = plan(o, Memory({"n5": NOW - 100}, None), Tuning(grace=60))
    assert [type(a) for a in p.actions] == [RetireWitness]
    assert "one membership change at a time: next, peer n5 removed from the cluster" in p.waiting


def test_with_zones_the_factor_is_at_most_the_number_of_zones() -> None:
    members = (MetaMember("n2", True, False), MetaMember("n3", True, False))
    three_nodes = obs(meta_members=members, routed=frozenset({"n2", "n3"}),
                      registry_peers=(RegistryPeer("n2", "h2:6222"), RegistryPeer("n3", "h3:6222")),
                      routes=("h2:6222", "h3:6222"))
    memory = settled("n2", "n3")
    two_zones = replace(three_nodes, zone="a", zones={"n2": "a", "n3": "b"})
    assert plan(two_zones, memory).actions == (ScaleStreams(2, ("HUMUS", "KV_SOIL", "RIVER")),)
    assert "replication 2" in plan(replace(two_zones, streams=tuple(replace(s, replicas=2) for s in STREAMS_R1)),
                                   memory).sentence
    three_zones = replace(three_nodes, zone="a", zones={"n2": "b", "n3": "c"})
    assert plan(three_zones, memory).actions == (ScaleStreams(3, ("HUMUS", "KV_SOIL", "RIVER")),)
    unknown = replace(three_nodes, zone="a", zones={})  # peers' zones not read yet: one zone known
    assert not any(isinstance(a, ScaleStreams) for a in plan(unknown, memory).actions)
    # without a zone of its own the node does not use unique_tag: zones play no part
    assert plan(replace(two_zones, zone=None), memory).actions == (ScaleStreams(3, ("HUMUS", "KV_SOIL", "RIVER")),)
