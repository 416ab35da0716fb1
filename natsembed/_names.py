"""A node's nats-server name: the one rule between server names and node names (pure).

nats-server derives a server's raft peer id from its `server_name` (a hash of it), and
after `$JS.API.SERVER.REMOVE` the meta leader refuses that id for `peerRemoveTimeout`,
5 minutes (server/raft.go, `trackPeer`); a name it has never seen is added at once. So a
node that was removed and starts afresh on an empty store takes a new server name, one
generation further:

    generation 0     <node>              (every node until its first heal)
    generation N     <node>-gen-N        (after its Nth heal; kept in its data directory)

The node's name (its registry record, /health, drain, status, metrics, placement tags)
never changes; every server name that appears in NATS (meta members, stream leaders
and replicas, routes) is turned back into a node with `node_of`. `-gen-` never appears
in a node's name (the settings refuse it, like the witness mark).
"""

from __future__ import annotations

from collections.abc import Iterable

GENERATION_MARK = "-gen-"  # in the server name of a node that started afresh
WITNESS_MARK = "-witness-"  # in every witness server's name, never in a node's name


def server_name(node: str, generation: int = 0) -> str:
    """The nats-server name of `node` in its `generation`."""
    return node if generation <= 0 else f"{node}{GENERATION_MARK}{generation}"


def node_of(server: str) -> str:
    """The node a server name belongs to (a witness' name is returned as it is)."""
    if WITNESS_MARK in server:
        return server
    head, mark, tail = server.rpartition(GENERATION_MARK)
    return head if mark and tail.isdigit() and head else server


def generation_of(server: str) -> int:
    """The generation in a node's server name (0 without a generation suffix)."""
    if WITNESS_MARK in server:
        return 0
    head, mark, tail = server.rpartition(GENERATION_MARK)
    return int(tail) if mark and tail.isdigit() and head else 0


def superseded(servers: Iterable[str]) -> frozenset[str]:
    """The server names among `servers` that a later generation of the same node replaced
    (an old name that is still listed is not the node any more)."""
    names = set(servers)
    newest: dict[str, int] = {}
    for name in names:
        node = node_of(name)
        newest[node] = max(newest.get(node, 0), generation_of(name))
    return frozenset(n for n in names if generation_of(n) < newest[node_of(n)])


def label(server: str) -> str:
    """How a server is named to users: its node, and the server name when they differ."""
    node = node_of(server)
    return node if node == server else f"{node} (server {server})"
