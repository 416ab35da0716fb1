"""cluster: discovery, routes, membership and replication of a NimsForest forest.

Public API:

    decide_role(registry, info, ...) -> Startup   the founder rule, at start
    ClusterManager                                the reconcile loop
    ClusterStatus, PeerStatus, PeerState          what /health/cluster shows
    plan(), Observation, Memory, Tuning           the pure decision (for tests and tools)
"""

from cluster._founder import Role, Startup, decide_role
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
    StartWitness,
    StreamState,
)
from cluster._plan import Memory, Tuning, plan, replication_factor

__all__ = [
    "ClusterManager",
    "ClusterStatus",
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
    "StartWitness",
    "Startup",
    "StreamState",
    "Tuning",
    "decide_role",
    "plan",
    "replication_factor",
]
