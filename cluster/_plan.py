"""The reconcile decision: a pure function of one observation and a little memory.

Rules, in order (each one is local to this node or cluster-wide):

0. Removed (local, checked right after the routes). A node the meta group no longer
   counts (cluster._heal) sets its store aside and rejoins as a new peer, under its next
   server name (natsembed._names: the meta leader refuses a removed name for 5 minutes),
   when the other nodes hold every stream in full; otherwise it keeps its store and says
   what to run. No other rule applies to it meanwhile.

1. Routes (local). With the registry answering, route to exactly its peers; with the
   registry down, change nothing (the cluster keeps running on the routes it has).
2. Witness (local). Retire our witness once another node is a meta member (the leader
   admitted it) that is online and routed to us. Start one when this node leads a meta
   group with no other member left (peers were removed): a lone node always runs with a
   witness, so that it can restart and grow like any node that started alone. (A meta follower cannot tell whether
   a member is current: /jsz reports `current` only from the leader's point of view.)
3. Departures (cluster-wide, by the acting node). A meta member that is unreachable AND
   absent from the registry for the grace period is removed from the meta group
   (JetStream peer-remove), but only while the nodes left stay at or above the quorum
   floor (`Tuning.min_quorum`, default 3): automation never shrinks a forest of three
   below three voters; below the floor the peer is kept, offline, and the sentence says
   so. A foreign witness is not a voter of its own (it goes with its owner). Without the
   registry's word nobody is removed.
4. Rescue. With no meta leader for a while, a lost quorum can be rescued, but only when
   it is provably safe: every unreachable member is confirmed gone (absent from the
   registry for the grace period; a witness counts as gone with its owner), the lost
   members are too few to hold a quorum of their own (so they cannot be a live majority
   behind a partition), and the survivors lack a quorum. The lowest-named surviving node
   then asks every server to lower the quorum to the number of survivors
   (`$JS.API.META.RESCUE`); the survivors elect a leader, which removes the lost members.
   A node left alone starts a witness. Examples: a group of two losing one node (the way
   back down to one node); a founder dying with its witness still in a group of four.
   Two of three lost is never rescued: that case needs an operator. A rescue obeys the
   quorum floor too (the survivors must number at least `min_quorum`).
5. Replication (cluster-wide, by the acting node). Every stream NimsForest owns is kept at
   min(cluster size, 3) replicas, where size counts the meta group's nodes (witness
   excluded, members not yet removed included), as NATS sees it. A node that joined
   counts for scaling *up* only once it has been reachable for the stabilisation time
   (`Tuning.stabilise`, default 10 s): a node that flaps right after joining is not given
   replicas. Scaling down (after a removal) is never delayed. With zones (this node has
   one: its nats-server has `unique_tag: "zone:"`), no two replicas share a zone, so the
   factor is also at most the number of zones among the nodes.

One membership change at a time: a plan holds at most one of RemovePeer, Rescue,
RetireWitness, StartWitness; the others wait for the next cycle, which observes the
cluster after the first one.

The acting node is the meta leader, or the node whose witness is the meta leader.

Meta members, leaders and routes are server names; the registry's peers are nodes.
`natsembed.node_of` turns one into the other; a server name that a later generation of
its node replaced (`Observation.stale`) is not that node: it never counts for the size or
the quorum floor, and it is removed once unreachable for the grace period.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cluster._heal import Membership, Verdict, verdict
from cluster._model import (
    Action,
    Observation,
    Plan,
    RemovePeer,
    Rescue,
    RetireWitness,
    ScaleStreams,
    SetRoutes,
    StartAfresh,
    StartWitness,
)
from natsembed import WITNESS_MARK, is_witness, label, node_of


@dataclass(frozen=True)
class Memory:
    """What the loop remembers between cycles (the planner never mutates it)."""

    gone_since: Mapping[str, float]  # peer -> monotonic time it became unreachable + unregistered
    leaderless_since: float | None  # monotonic time the meta leader went missing
    # node member -> monotonic time it became reachable (this stretch); see `stable`
    reachable_since: Mapping[str, float] = field(default_factory=dict)
    not_counted_since: float | None = None  # monotonic time the meta leader stopped counting us
    afresh_at: float | None = None  # monotonic time this node last started afresh


DEFAULT_MIN_QUORUM = 3
DEFAULT_STABILISE = 10.0


@dataclass(frozen=True)
class Tuning:
    grace: float = 300.0  # how long a vanished peer may stay before it is removed
    rescue_after: float = 10.0  # how long without a meta leader before a rescue is considered
    min_quorum: int = DEFAULT_MIN_QUORUM  # automation never leaves fewer voting nodes
    stabilise: float = DEFAULT_STABILISE  # reachable this long before a new node gets replicas
    # not counted by the meta leader this long: removed (a joining node is not counted for
    # a moment until the leader adds it)
    not_counted_after: float = 20.0
    # after starting afresh (under a new server name, which the meta leader adds at once),
    # wait this long to be admitted before another try
    rejoin_wait: float = 60.0


def replication_factor(size: int) -> int:
    return max(1, min(size, 3))


def target_replicas(obs: Observation) -> int:
    """min(size, 3); with zones, also at most the number of zones (nats-server cannot place
    two replicas in one zone, rule 5)."""
    rf = replication_factor(obs.size)
    return max(1, min(rf, obs.zone_count)) if obs.zone else rf


def acting(obs: Observation) -> bool:
    """True when this node makes cluster-wide changes (it, or its witness, leads)."""
    return obs.meta_leader is not None and obs.meta_leader in (obs.me, obs.witness)


def unreachable(obs: Observation, name: str) -> bool:
    member = next((m for m in obs.meta_members if m.name == name), None)
    return member is None or member.offline or name not in obs.routed


def gone(obs: Observation, name: str) -> bool:
    """Unreachable in NATS and, by the registry's own answer, no longer registered.

    A witness is not registered itself: it is gone when it is unreachable and its owner
    node (the part of its name before `-witness-`) is no longer registered. Our own
    witness is never gone while we run. A server name that a later generation of its node
    replaced (natsembed._names) is gone once unreachable: the node runs under the new one.
    """
    if not obs.registry_ok or not unreachable(obs, name):
        return False
    if is_witness(name):
        return name != obs.witness and owner_of(name) not in obs.registry_names
    return node_of(name) not in obs.registry_names or name in obs.stale


def owner_of(witness: str) -> str:
    return witness.split(WITNESS_MARK, 1)[0]


def quorum(members: int) -> int:
    return members // 2 + 1


def stable(obs: Observation, memory: Memory, tuning: Tuning, name: str) -> bool:
    """Reachable without a break for at least the stabilisation time."""
    since = memory.reachable_since.get(name)
    return not unreachable(obs, name) and since is not None and obs.at - since >= tuning.stabilise


MEMBERSHIP = (RemovePeer, Rescue, RetireWitness, StartWitness, StartAfresh)


def plan(obs: Observation, memory: Memory, tuning: Tuning = Tuning()) -> Plan:
    if not obs.nats_ok:
        return Plan((), "waiting: the local nats-server does not answer its monitoring port")
    actions: list[Action] = []
    waiting: list[str] = []

    # 1. routes
    if obs.registry_peers is not None:
        wanted = tuple(sorted({p.cluster_address for p in obs.registry_peers if p.name != obs.node}))
        have = set(obs.routes)
        if set(wanted) != have:
            added = tuple(sorted(set(wanted) - have))
            removed = tuple(sorted(have - set(wanted)))
            actions.append(SetRoutes(wanted, added, removed))

    # 0. this node removed from the cluster: start afresh when safe, else say what to do
    if obs.membership in (Membership.REMOVED, Membership.NOT_COUNTED):
        return removed_plan(obs, memory, tuning, actions)

    # 2. witness
    if obs.witness and obs.meta_leader and any(not unreachable(obs, m.name) for m in obs.nodes):
        actions.append(RetireWitness())
    if obs.witness is None and obs.meta_leader == obs.node and not obs.meta_members:
        actions.append(StartWitness())

    # 3. departures (foreign witnesses included: they go with their owner)
    lost: list[str] = []
    voters = obs.size  # voting nodes left if nothing is removed (witnesses excluded)
    for member in obs.meta_members:
        if not gone(obs, member.name):
            continue
        since = memory.gone_since.get(member.name, obs.at)
        waited = obs.at - since
        if waited < tuning.grace:
            # the same words all through the grace period (logged once; /health/cluster shows
            # each peer's gone_for)
            waiting.append(
                f"peer {label(member.name)} gone; removed when the {tuning.grace:.0f}s grace period "
                "ends unless it returns"
            )
        elif voter(obs, member.name) and voters - 1 < tuning.min_quorum:
            waiting.append(below_floor(member.name, voters, tuning))
        elif acting(obs):
            actions.append(RemovePeer(member.name))
            voters -= 1 if voter(obs, member.name) else 0
        else:
            lost.append(member.name)

    # 4. rescue
    if obs.meta_leader is None:
        rescue = rescue_plan(obs, memory, tuning, lost)
        if rescue is not None:
            actions.append(rescue)
        else:
            waiting.append("JetStream has no meta leader")

    # one membership change at a time: the first one asked for, the rest next cycle
    changes = [a for a in actions if isinstance(a, MEMBERSHIP)]
    for later in changes[1:]:
        actions.remove(later)
        waiting.append(f"one membership change at a time: next, {describe(later)}")

    # 5. replication
    rf = target_replicas(obs)
    online = 1 + sum(1 for m in obs.nodes if not unreachable(obs, m.name))
    settled = replication_factor(1 + sum(1 for m in obs.nodes if stable(obs, memory, tuning, m.name)))
    if acting(obs) and not any(isinstance(a, (RemovePeer, Rescue)) for a in actions):
        scale_plan(obs, rf, online, settled, tuning, actions, waiting)

    return Plan(tuple(actions), sentence(obs, actions, waiting, rf), tuple(waiting))


COMMAND = (
    "stop nimsforest, move the store/ folder of its data directory aside "
    "(mv store removed-by-hand) and start nimsforest"
)


def removed_plan(obs: Observation, memory: Memory, tuning: Tuning, actions: list[Action]) -> Plan:
    """Rule 0: this node is no longer a member of the meta group."""
    how = (
        "JetStream disabled: removed from the cluster"
        if obs.membership is Membership.REMOVED
        else f"the meta leader {label(obs.meta_leader or '')} does not count this node"
    )
    if obs.counted_elsewhere:  # JetStream off for another reason (a full disk, ...)
        waiting = [(
            "JetStream does not run on this node, yet the other nodes still count it as a "
            "member: not a removal, its store is kept (the reason is in the nats-server log)"
        )]
        return Plan(tuple(actions), sentence(obs, actions, waiting, 1), tuple(waiting), operator=True)
    since = memory.not_counted_since if memory.not_counted_since is not None else obs.at
    if obs.membership is Membership.NOT_COUNTED and obs.at - since < tuning.not_counted_after:
        waiting = [f"{how} (yet)"]
        return Plan(tuple(actions), sentence(obs, actions, waiting, 1), tuple(waiting))
    if memory.afresh_at is not None and obs.at - memory.afresh_at < tuning.rejoin_wait:
        waiting = [(
            f"{how}: started afresh, waiting to be admitted as a new peer (server name {obs.me})"
        )]
        return Plan(tuple(actions), sentence(obs, actions, waiting, 1), tuple(waiting))
    result, at_risk = verdict(obs.node, obs.stored, obs.elsewhere)
    if result is Verdict.SAFE:
        actions.append(StartAfresh())
        return Plan(tuple(actions), sentence(obs, actions, [], 1))
    if result is Verdict.UNKNOWN:
        waiting = [f"{how}; the other nodes' streams could not be read, so its store is kept"]
    else:
        held = "; ".join(_held_elsewhere(name, obs) for name in at_risk)
        waiting = [(
            f"{how}; its store is kept because its copy of {', '.join(at_risk)} might be the "
            f"only one (not held in full by the other nodes: {held}). To rejoin without it: "
            f"{COMMAND}"
        )]
        return Plan(tuple(actions), sentence(obs, actions, waiting, 1), tuple(waiting), operator=True)
    return Plan(tuple(actions), sentence(obs, actions, waiting, 1), tuple(waiting))


def _held_elsewhere(stream: str, obs: Observation) -> str:
    """How the other nodes hold a stream this node's store might hold the only copy of."""
    copies = next((c for c in obs.elsewhere or () if c.name == stream), None)
    if copies is None:
        return f"{stream} is led by none of them"
    others = [label(c) for c in copies.current if node_of(c) != obs.node]
    return (f"{stream} is R{copies.replicas}, current on "
            f"{', '.join(others) if others else 'none of them'}")


def voter(obs: Observation, name: str) -> bool:
    """A member that counts as a voting node for the quorum floor: neither a witness nor a
    server name its node replaced."""
    return not is_witness(name) and name not in obs.stale


def below_floor(name: str, voters: int, tuning: Tuning) -> str:
    return (
        f"peer {label(name)} gone past the grace period but kept: removing it would leave "
        f"{voters - 1} voting node(s), below the quorum floor of {tuning.min_quorum} "
        "(NIMSFOREST_MIN_QUORUM)"
    )


def scale_plan(
    obs: Observation, rf: int, online: int, settled: int, tuning: Tuning,
    actions: list[Action], waiting: list[str],
) -> None:
    """Streams to scale (rule 5): down at once, up only onto stable nodes."""
    down = tuple(s.name for s in obs.streams if s.replicas > rf)  # 0 replicas: did not answer
    if down:
        actions.append(ScaleStreams(rf, down))
    up = [s for s in obs.streams if 0 < s.replicas < rf]
    if not up:
        return
    if rf > online:
        waiting.append(f"{len(up)} stream(s) wait for {rf} reachable nodes to reach R{rf}")
        return
    target = min(rf, settled)
    ready = tuple(s.name for s in up if s.replicas < target)
    if ready:
        actions.append(ScaleStreams(target, ready))
    if target < rf:
        waiting.append(
            f"{len(up)} stream(s) reach R{rf} once the new node(s) have been reachable for "
            f"the {tuning.stabilise:.0f}s stabilisation time"
        )


def rescue_plan(obs: Observation, memory: Memory, tuning: Tuning, lost: list[str]) -> Rescue | None:
    """A quorum rescue when it is provably safe (rule 4), else None. `lost`: the members
    past the grace period that the quorum floor lets go."""
    leaderless = obs.at - (memory.leaderless_since if memory.leaderless_since is not None else obs.at)
    if leaderless < tuning.rescue_after or not obs.registry_ok or not lost:
        return None
    reachable = [m for m in obs.meta_members if not unreachable(obs, m.name)]
    unknown = [m for m in obs.meta_members if unreachable(obs, m.name) and m.name not in lost]
    if unknown:  # an unreachable member we cannot prove gone: it may be partitioned away
        return None
    total = 1 + len(obs.meta_members)  # this node and every other member, witnesses included
    survivors = 1 + len(reachable)
    if len(lost) >= quorum(total) or survivors >= quorum(total):
        return None
    deputy = min([obs.me, *(m.name for m in reachable if not is_witness(m.name))])
    if deputy != obs.me:  # one survivor asks for all of them
        return None
    return Rescue(tuple(sorted(lost)), survivors)


def describe(action: Action) -> str:
    if isinstance(action, SetRoutes):
        parts = []
        if action.added:
            parts.append("route to " + ", ".join(action.added) + " added")
        if action.removed:
            parts.append("route to " + ", ".join(action.removed) + " removed")
        return "; ".join(parts) or "routes rewritten"
    if isinstance(action, RetireWitness):
        return "witness retired"
    if isinstance(action, StartWitness):
        return "witness started (this node is alone)"
    if isinstance(action, RemovePeer):
        return f"peer {label(action.name)} removed from the cluster"
    if isinstance(action, Rescue):
        return f"quorum rescued ({action.quorum} survivor(s)) after losing " + ", ".join(map(label, action.lost))
    if isinstance(action, StartAfresh):
        return (
            "this node was removed from the cluster and every stream is held in full by the "
            "other nodes: its JetStream store was set aside and it rejoins as a new peer under "
            "its next server name"
        )
    return f"{', '.join(action.streams)} scaled to R{action.replicas}"


def sentence(obs: Observation, actions: list[Action], waiting: list[str], rf: int) -> str:
    if actions:
        return "; ".join(describe(a) for a in actions)
    if waiting:
        return "waiting: " + "; ".join(waiting)
    behind = [s.name for s in obs.streams if not s.current]
    state = "all replicas current" if not behind else f"{', '.join(behind)} catching up"
    registry = "" if obs.registry_ok else " (registry unreachable)"
    return (
        f"no action: {obs.node} is in a cluster of {obs.size} (meta leader {label(obs.meta_leader or 'none')}), "
        f"replication {rf}, {state}{registry}"
    )
