"""How a lone node's JetStream meta group gets its leader at start (the pure decision).

A lone node (standalone, or a cluster node alone) runs its nats-server and a witness:
a meta group of two, quorum two. On a first boot both servers bootstrap the group and
campaign at once (raft's campaign delay, 0.1-0.8 s). Restarted on their logs, both only
*recover* the group, and raft arms the election timer with its election timeout, 4-9 s
(nats-server server/raft.go: `initRaftNode` -> `resetElectionTimeout`; only a bootstrap
calls `Campaign()`, in `setupMetaGroup`): a restarted lone node would wait that long.

`$JS.API.META.RESCUE` with `quorum_needed` equal to the group's current quorum (2) is the
public way to cut that wait: `RescueQuorum(2)` accepts a quorum *not lower* than the
current one, lowers nothing, and re-arms the election timer with the campaign delay. Raft's
rules stay whole: the candidate still needs both votes, and a server only votes for a log
at least as up to date as its own (the one with the newer log campaigns at once when asked
by the other). The rescue marker it leaves (for at most 5 minutes) keeps a lowered quorum
while the group grows; it holds no lowered quorum here, and the first membership change
of a group of two ends it (its natural quorum, 2, is not above the kept one). That is why
the prompt is only sent to a group of exactly two (this node and its witness), each
server leaderless with quorum 2, routed to each other and to no other server (any server
routed would receive the broadcast request too).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from natsembed._monitor import MetaCluster

PAIR = 2  # the meta group of a lone node: the node and its witness; also its quorum


class MetaElection(enum.Enum):
    """How the meta group got its leader at the node's last start."""

    FIRST = "first"  # a first boot: the fresh pair's own first campaign
    FIRST_AGAIN = "first-again"  # a first boot, started again on empty stores after a lost first vote
    PROMPTED = "prompted"  # a lone node restarted on its log: both servers asked to campaign now
    RAFT = "raft"  # raft's own timing: a group with peers, or a prompt that did not conclude


class Prompt(enum.Enum):
    """What to do next about a restarted pair's election."""

    WAIT = "wait"  # a server has no meta group yet, or the two are not routed yet
    ELECTED = "elected"  # a leader is known
    PROMPT = "prompt"  # ask both servers to campaign now
    REFUSE = "refuse"  # not exactly this node and its witness: raft's own timer decides


@dataclass(frozen=True)
class PairObservation:
    """One look at a restarted node and its witness."""

    node: str
    witness: str
    node_meta: MetaCluster | None  # /jsz meta_cluster of the node's server
    witness_meta: MetaCluster | None
    node_routes: tuple[str, ...]  # /routez remote names
    witness_routes: tuple[str, ...]


def plan_prompt(o: PairObservation) -> Prompt:
    """Whether a restarted pair may be asked to elect now (see the module docstring)."""
    metas = (o.node_meta, o.witness_meta)
    if any(m is not None and m.leader for m in metas):
        return Prompt.ELECTED
    if o.node_routes and o.node_routes != (o.witness,) or o.witness_routes and o.witness_routes != (o.node,):
        return Prompt.REFUSE  # routed to some other server: it would be prompted too
    if o.node_meta is None or o.witness_meta is None or not o.node_routes or not o.witness_routes:
        return Prompt.WAIT
    # (a rescue left by an earlier prompt keeps quorum 2: prompting again is the same ask;
    # a real rescue has lowered it, and is refused here)
    if any(m.cluster_size != PAIR or m.quorum_needed != PAIR for m in (o.node_meta, o.witness_meta)):
        return Prompt.REFUSE
    return Prompt.PROMPT
