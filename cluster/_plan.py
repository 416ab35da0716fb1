"""The reconcile decision: a pure function of one observation and a little memory.

Rules, in order (each one is local to this node or cluster-wide):

1. Routes (local). With the registry answering, route to exactly its peers; with the
   registry down, change nothing (the cluster keeps running on the routes it has).
2. Witness (local). Retire our witness once another node is a meta member (the leader
   admitted it) that is online and routed to us. (A meta follower cannot tell whether
   a member is current: /jsz reports `current` only from the leader's point of view.)
3. Departures (cluster-wide, by the acting node). A meta member that is unreachable AND
   absent from the registry for the grace period is removed from the meta group
   (JetStream peer-remove). Without the registry's word nobody is removed.
4. Rescue (local). The way back down to one node: in a meta group of two, when the other
   node has been unreachable and absent from the registry for the grace period, there is
   no quorum to remove it. This node then asks for a quorum rescue, starts a witness and
   removes the lost node. It is done only for a group of two: with three or more, the
   lost nodes could still hold a quorum of their own (a partition), and rescuing would
   split the cluster; that case needs an operator.
5. Replication (cluster-wide, by the acting node). Every stream NimsForest owns is kept at
   min(cluster size, 3) replicas, where size counts the meta group's nodes (witness
   excluded, members not yet removed included), as NATS sees it.

The acting node is the meta leader, or the node whose witness is the meta leader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cluster._model import (
    Action,
    Observation,
    Plan,
    RemovePeer,
    Rescue,
    RetireWitness,
    ScaleStreams,
    SetRoutes,
)


@dataclass(frozen=True)
class Memory:
    """What the loop remembers between cycles (the planner never mutates it)."""

    gone_since: Mapping[str, float]  # peer -> monotonic time it became unreachable + unregistered
    leaderless_since: float | None  # monotonic time the meta leader went missing


@dataclass(frozen=True)
class Tuning:
    grace: float = 300.0  # how long a vanished peer may stay before it is removed
    rescue_after: float = 10.0  # how long without a meta leader before a rescue is considered


def replication_factor(size: int) -> int:
    return max(1, min(size, 3))


def acting(obs: Observation) -> bool:
    """True when this node makes cluster-wide changes (it, or its witness, leads)."""
    return obs.meta_leader is not None and obs.meta_leader in (obs.node, obs.witness)


def unreachable(obs: Observation, name: str) -> bool:
    member = next((m for m in obs.meta_members if m.name == name), None)
    return member is None or member.offline or name not in obs.routed


def gone(obs: Observation, name: str) -> bool:
    """Unreachable in NATS and, by the registry's own answer, no longer registered."""
    return obs.registry_ok and name not in obs.registry_names and unreachable(obs, name)


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

    # 2. witness
    if obs.witness and obs.meta_leader and any(not unreachable(obs, m.name) for m in obs.nodes):
        actions.append(RetireWitness())

    # 3. departures
    lost: list[str] = []
    for member in obs.nodes:
        if not gone(obs, member.name):
            continue
        since = memory.gone_since.get(member.name, obs.at)
        waited = obs.at - since
        if waited < tuning.grace:
            waiting.append(f"peer {member.name} gone for {waited:.0f}s of the {tuning.grace:.0f}s grace period")
        elif acting(obs):
            actions.append(RemovePeer(member.name))
        else:
            lost.append(member.name)

    # 4. rescue
    if obs.meta_leader is None:
        leaderless = obs.at - (memory.leaderless_since if memory.leaderless_since is not None else obs.at)
        if (
            leaderless >= tuning.rescue_after
            and len(obs.nodes) == 1
            and obs.witness is None
            and lost == [obs.nodes[0].name]
        ):
            actions.append(Rescue(tuple(lost)))
        else:
            waiting.append("JetStream has no meta leader")

    # 5. replication
    rf = replication_factor(obs.size)
    online = 1 + sum(1 for m in obs.nodes if not unreachable(obs, m.name))
    off = tuple(s.name for s in obs.streams if s.replicas != rf)
    if off and acting(obs) and not any(isinstance(a, (RemovePeer, Rescue)) for a in actions):
        if rf <= online:
            actions.append(ScaleStreams(rf, off))
        else:
            waiting.append(f"{len(off)} stream(s) wait for {rf} reachable nodes to reach R{rf}")

    return Plan(tuple(actions), sentence(obs, actions, waiting, rf), tuple(waiting))


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
    if isinstance(action, RemovePeer):
        return f"peer {action.name} removed from the cluster"
    if isinstance(action, Rescue):
        return "quorum rescued after losing " + ", ".join(action.lost)
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
        f"no action: {obs.node} is in a cluster of {obs.size} (meta leader {obs.meta_leader}), "
        f"replication {rf}, {state}{registry}"
    )
