"""A node removed from the cluster: how to tell, and whether it may start afresh (pure).

nats-server 2.15 shows a removal in one of two ways (both seen on real servers):

- removed while running: the server logs "JetStream being DISABLED, our server was
  removed from the cluster" and its /jsz says `disabled: true` (its /healthz answers 503
  with err_code 10076, JetStream not enabled) until it restarts;
- removed while it was away, then restarted on its old store: JetStream runs and follows
  the meta leader, but the leader does not count it: its /jsz `meta_cluster` lists the
  other members only and `cluster_size` equals their number (a member's own /jsz lists
  the others and counts itself: cluster_size = len(replicas) + 1). A new node looks like
  this for a moment while the leader adds it, hence a waiting time before it counts.

Starting afresh (the old store set aside, never deleted in place) is safe only when every
stream is held in full by the other nodes: each stream the stale store holds exists on
them, and every stream they hold has all its replicas current without this node.
Otherwise this node's copy might be the only one, and an operator decides. A fresh
start takes the node's next server name (natsembed._names), which the meta leader adds
at once; the removed name it would refuse for 5 minutes.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from natsembed import node_of


class Membership(enum.Enum):
    MEMBER = "member"
    REMOVED = "removed"  # JetStream disabled after a peer-remove
    NOT_COUNTED = "not_counted"  # follows a meta leader that does not count this server
    UNKNOWN = "unknown"  # no meta leader to tell


def membership(
    node: str, *, disabled: bool, leader: str | None, cluster_size: int, members: Sequence[str]
) -> Membership:
    """This server's place in the meta group, from its own /jsz (`node`: its server name,
    as the meta group names it)."""
    if disabled:
        return Membership.REMOVED
    if not leader:
        return Membership.UNKNOWN
    if leader != node and node not in members and cluster_size <= len(members):
        return Membership.NOT_COUNTED
    return Membership.MEMBER


@dataclass(frozen=True)
class StreamCopies:
    """One stream as the other nodes hold it."""

    name: str
    replicas: int  # configured num_replicas
    current: tuple[str, ...]  # servers with a current copy, the leader included


class Verdict(enum.Enum):
    SAFE = "safe"  # every stream is held in full without this node
    UNSAFE = "unsafe"  # this node's copy of some stream might be the only one
    UNKNOWN = "unknown"  # the other nodes' streams could not be read


def verdict(
    node: str, stored: Sequence[str], elsewhere: Sequence[StreamCopies] | None
) -> tuple[Verdict, tuple[str, ...]]:
    """Whether `node` may set its store aside, and the streams at risk if not (a copy on
    any server name of `node`, natsembed._names, is its own)."""
    if elsewhere is None:
        return Verdict.UNKNOWN, ()
    held = {s.name: s for s in elsewhere}
    at_risk = {name for name in stored if name not in held}
    for s in elsewhere:
        others = [c for c in s.current if node_of(c) != node]
        if s.replicas < 1 or len(others) < s.replicas:
            at_risk.add(s.name)
    if at_risk:
        return Verdict.UNSAFE, tuple(sorted(at_risk))
    return Verdict.SAFE, ()
