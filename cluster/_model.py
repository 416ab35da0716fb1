"""Typed values of the cluster manager: one observation per cycle, actions, status."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from cluster._heal import Membership, StreamCopies
from natsembed import is_witness, node_of, superseded


@dataclass(frozen=True)
class RegistryPeer:
    name: str
    cluster_address: str
    monitor_url: str | None = None


@dataclass(frozen=True)
class MetaMember:
    name: str
    current: bool
    offline: bool


@dataclass(frozen=True)
class StreamState:
    name: str
    replicas: int
    leader: str | None
    current: bool  # every replica current and online
    lagging: tuple[str, ...] = ()
    messages: int = 0
    consumers: int = 0


@dataclass(frozen=True)
class Observation:
    """Everything one reconcile cycle knows, read once at its start."""

    at: float  # time.monotonic() of the observation
    node: str  # this node's name (the registry's, the users')
    nats_ok: bool  # the local monitoring port answered
    registry_peers: tuple[RegistryPeer, ...] | None  # None: the registry did not answer
    routes: tuple[str, ...]  # peer routes in our config (the witness' is not listed)
    routed: frozenset[str]  # servers we have live routes to (/routez)
    meta_leader: str | None
    meta_members: tuple[MetaMember, ...]  # other servers of the meta group, witness included
    witness: str | None  # our own witness, if it runs
    streams: tuple[StreamState, ...]  # streams NimsForest owns
    # this node's zone; set, its nats-server places replicas in distinct zones (unique_tag)
    zone: str | None = None
    zones: Mapping[str, str] = field(default_factory=dict)  # other servers' zones, as known
    membership: Membership = Membership.MEMBER  # this server's place in the meta group
    stored: tuple[str, ...] = ()  # streams seen in this node's store while not a member
    elsewhere: tuple[StreamCopies, ...] | None = None  # streams on the other nodes (idem)
    counted_elsewhere: bool = False  # another node's meta group view lists this node (idem)
    # this node's nats-server name (natsembed._names; "": the node's name). Meta members,
    # leaders and routes are server names; the registry's are node names (node_of)
    server: str = ""

    @property
    def me(self) -> str:
        """This node's server name, as NATS names it."""
        return self.server or self.node

    @property
    def stale(self) -> frozenset[str]:
        """Meta members that a later generation of their node replaced (this node's own
        server included): they are not that node any more."""
        return superseded([self.me, *(m.name for m in self.meta_members)]) - {self.me}

    @property
    def member_nodes(self) -> frozenset[str]:
        """The nodes of the other meta members (witnesses and replaced names excluded)."""
        return frozenset(node_of(m.name) for m in self.nodes)

    @property
    def zone_count(self) -> int:
        """Distinct zones among this node and the other node members."""
        known = {self.zones[m.name] for m in self.nodes if m.name in self.zones}
        return len(known | ({self.zone} if self.zone else set()))

    @property
    def registry_ok(self) -> bool:
        return self.registry_peers is not None

    @property
    def registry_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.registry_peers or ())

    @property
    def nodes(self) -> tuple[MetaMember, ...]:
        """Other non-witness members of the meta group (a name a later generation of its
        node replaced does not count: it is not that node any more)."""
        stale = self.stale
        return tuple(m for m in self.meta_members if not is_witness(m.name) and m.name not in stale)

    @property
    def size(self) -> int:
        """JetStream cluster size: this node plus every other non-witness meta member."""
        return 1 + len(self.nodes)


# --- actions the planner asks for ---------------------------------------------------------
@dataclass(frozen=True)
class SetRoutes:
    routes: tuple[str, ...]
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class RetireWitness:
    pass


@dataclass(frozen=True)
class StartWitness:
    pass


@dataclass(frozen=True)
class RemovePeer:
    name: str


@dataclass(frozen=True)
class Rescue:
    lost: tuple[str, ...]
    quorum: int = 1  # the survivors: the quorum every server is asked to use


@dataclass(frozen=True)
class ScaleStreams:
    replicas: int
    streams: tuple[str, ...]


@dataclass(frozen=True)
class StartAfresh:
    """Set this node's stale JetStream store aside and rejoin as a new peer."""


Action = SetRoutes | RetireWitness | StartWitness | RemovePeer | Rescue | ScaleStreams | StartAfresh


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]
    sentence: str  # what this cycle decided, for logs and /health/cluster
    waiting: tuple[str, ...] = field(default_factory=tuple)
    operator: bool = False  # only an operator can resolve it: logged as a warning


class PeerState(enum.Enum):
    CURRENT = "current"  # in the meta group and up to date (as the meta leader sees it)
    ONLINE = "online"  # in the meta group and reachable (a follower cannot see currency)
    CATCHING_UP = "catching_up"  # in the meta group, reachable, behind (leader's view)
    OFFLINE = "offline"  # in the meta group, not heard from
    LEAVING = "leaving"  # offline and gone from the registry: removed after the grace period
    KEPT = "kept"  # gone past the grace period, kept in the meta group by the quorum floor
    REGISTERED = "registered"  # in the registry, not (yet) in the meta group


@dataclass(frozen=True)
class PeerStatus:
    name: str  # the node's name
    state: PeerState
    address: str | None
    in_registry: bool
    routed: bool
    gone_for: float | None = None  # seconds since it went offline and left the registry
    monitor_url: str | None = None
    server: str | None = None  # its nats-server's name in the meta group (natsembed._names)


@dataclass(frozen=True)
class ClusterStatus:
    """What /health/cluster shows: the last cycle's observation and decision."""

    node: str
    size: int
    replication_factor: int
    meta_leader: str | None
    witness: str | None
    peers: tuple[PeerStatus, ...]
    streams: tuple[StreamState, ...]
    sentence: str
    registry_ok: bool
    cycle_at: float  # epoch seconds of the last completed cycle
    cycles: int
    witnesses: tuple[str, ...] = ()  # witness servers still in the meta group
    membership: Membership = Membership.MEMBER
    server: str = ""  # this node's nats-server name (natsembed._names)

    @property
    def problems(self) -> tuple[str, ...]:
        out: list[str] = []
        if self.membership in (Membership.REMOVED, Membership.NOT_COUNTED):
            out.append(f"this node was removed from the cluster ({self.membership.value})")
        if self.meta_leader is None:
            out.append("JetStream has no meta leader")
        if self.size > 1 and self.witnesses:
            # One machine holding two votes: losing it could cost the quorum.
            out.append(f"witness {', '.join(self.witnesses)} is still in the meta group")
        for p in self.peers:
            if p.state in (PeerState.OFFLINE, PeerState.LEAVING, PeerState.KEPT):
                out.append(f"peer {p.name} is {p.state.value}")
        for s in self.streams:
            if s.leader is None:
                out.append(f"stream {s.name} has no leader")
            elif not s.current:
                out.append(f"stream {s.name} has replicas that are not current")
            if s.replicas and s.replicas != self.replication_factor:
                out.append(f"stream {s.name} has {s.replicas} replicas, not {self.replication_factor}")
        return tuple(out)
