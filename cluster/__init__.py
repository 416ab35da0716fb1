"""cluster: discovery, routes, membership and replication of a NimsForest forest.

Public API:

    decide_role(registry, info, ...) -> Startup   the founder rule, at start
    ClusterManager                                the reconcile loop
    ClusterStatus, PeerStatus, PeerState          what /health/cluster shows
    plan(), Observation, Memory, Tuning           the pure decision (for tests and tools)
    membership(), verdict()                       a removed node: how to tell, whether to heal
"""

from cluster._founder import Role, Startup, decide_role
from cluster._heal import Membership, StreamCopies, Verdict, membership, verdict
from cluster._manager import ClusterManager
from cluster._model import (
    ClusterStatus,
    MetaMember,
    Observation,
    PeerState,
    PeerStatus,
    RegistryPeer,
    RemovePeer,
    Rescue,
    RetireWitness,
    ScaleStreams,
    SetRoutes,
    StartAfresh,
    StartWitness,
    StreamState,
)
from cluster._plan import Memory, Tuning, plan, replication_factor

__all__ = [
    "ClusterManager",
    "ClusterStatus",
    "Membership",
    "Memory",
    "MetaMember",
    "Observation",
    "PeerState",
    "PeerStatus",
    "RegistryPeer",
    "RemovePeer",
    "Rescue",
    "RetireWitness",
    "Role",
    "ScaleStreams",
    "SetRoutes",
    "StartAfresh",
    "StartWitness",
    "Startup",
    "StreamCopies",
    "StreamState",
    "Tuning",
    "Verdict",
    "decide_role",
    "membership",
    "plan",
    "replication_factor",
    "verdict",
]
