"""The founder rule: who bootstraps the cluster, decided before nats-server starts.

A node registers first, then reads the live nodes. Every registration gets a
`create_index` from the registry, strictly increasing. So:

- a node with JetStream state of its own is a MEMBER: it rejoins (it never founds again);
- a fresh node that sees no live node older than itself is the FOUNDER: it starts with a
  witness and with no route but the witness' (so its first meta group has two members
  and elects at once; routes to younger nodes are added by the reconcile loop later);
- any other fresh node is a JOINER: it waits until EVERY older live node's JetStream has
  a meta leader, then starts with routes to them. Fresh servers thus join one at a time.
  This matters: a fresh JetStream server campaigns for meta leadership at once, needing
  the votes of (routes + 1) / 2 + 1 servers; servers with a meta log refuse a candidate
  with an empty one, but another fresh server would vote for it, and two fresh joiners
  starting together can elect one of themselves and split the meta group (seen in
  testing). With every older node ready, a new server meets only servers whose log is
  ahead of its own, so it cannot win and follows the existing leader. An older node that
  stays unready for `patience` seconds (a broken node still heartbeating) no longer
  blocks joins: the joiner then goes ahead with the ready ones and says so.

Two fresh nodes cannot both be founders: the second to register necessarily sees the
first, whose create_index is lower, because it reads after its own registration.

When the registry cannot be reached: a node with cached peers or state of its own starts
with what it knows; a fresh node without either knows nothing and waits for the
registry, since founding blind could fork the forest.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from registry import NodeInfo, Registry

log = logging.getLogger("cluster")

Probe = Callable[["NodeInfo"], Awaitable[bool]]


class Role(enum.Enum):
    FOUNDER = "founder"
    JOINER = "joiner"
    MEMBER = "member"


@dataclass(frozen=True)
class Startup:
    role: Role
    peers: tuple[NodeInfo, ...]  # every other live node we know of
    routes: tuple[str, ...]  # cluster addresses to route to at start
    record: NodeInfo | None  # our registration; None when the registry did not answer
    from_cache: bool
    reason: str  # one sentence for the log


async def probe_ready(node: NodeInfo, timeout: float = 2.0) -> bool:
    """True when `node`'s JetStream has a meta leader (or, without a monitoring URL,
    when its cluster port accepts connections)."""
    if node.monitor_url:
        from natsembed import MonitorClient

        monitor = MonitorClient(node.monitor_url, timeout)
        try:
            return await monitor.healthz(js_meta_only=True)
        finally:
            await monitor.close()
    host, _, port = node.cluster_address.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout)
    except (TimeoutError, OSError, ValueError):
        return False
    writer.close()
    return True


async def decide_role(
    registry: Registry,
    info: NodeInfo,
    *,
    has_state: bool,
    probe: Probe = probe_ready,
    retry_interval: float = 2.0,
    after_first_attempt: Callable[[], None] | None = None,
    patience: float = 120.0,
) -> Startup:
    """Register `info`, then decide this node's role from the live nodes.

    Raises RegistryConflict when the name is held by another live node. Waits (retrying
    every `retry_interval`) while the registry is unreachable for a fresh node without
    cached peers, or while no older node is ready yet. `after_first_attempt` is called
    once after the first registration attempt, whatever its outcome: the caller starts
    the heartbeat loop there, so the record does not expire while this node waits.
    """
    from registry import RegistryUnreachable

    said: set[str] = set()

    def once(key: str, message: str, *args: object) -> None:
        if key not in said:
            said.add(key)
            log.info(message, *args)

    first = True
    waiting_since: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        try:
            try:
                record = await registry.register(info)
            finally:
                if first and after_first_attempt is not None:
                    after_first_attempt()
                first = False
            nodes = await registry.list_nodes()
        except RegistryUnreachable as exc:
            cached = tuple(registry.cached_peers())
            if cached:
                routes = tuple(p.cluster_address for p in cached)
                return Startup(
                    Role.MEMBER if has_state else Role.JOINER, cached, routes, None, True,
                    f"Registry unreachable ({exc}); starting with {len(cached)} cached peer(s)",
                )
            if has_state:
                return Startup(
                    Role.MEMBER, (), (), None, False,
                    f"Registry unreachable ({exc}); restarting on this node's own JetStream state",
                )
            once("unreachable", "Registry unreachable (%s); a new node waits for it before joining or founding", exc)
            await asyncio.sleep(retry_interval)
            continue
        peers = tuple(n for n in nodes if n.name != info.name)
        if has_state:
            routes = tuple(p.cluster_address for p in peers)
            return Startup(Role.MEMBER, peers, routes, record, False,
                           f"Rejoining with {len(peers)} known peer(s)")
        mine = record.create_index if record.create_index is not None else 0
        older = [n for n in peers if n.create_index is not None and n.create_index < mine]
        if not older:
            return Startup(Role.FOUNDER, peers, (), record, False,
                           "No existing peers found - starting as cluster of 1" if not peers
                           else f"Oldest live node - founding the cluster ({len(peers)} younger peer(s) will join)")
        checks = await asyncio.gather(*(probe(n) for n in older))
        ready = [n for n, ok in zip(older, checks, strict=True) if ok]
        unready = [n.name for n, ok in zip(older, checks, strict=True) if not ok]
        waiting_since = loop.time() if waiting_since is None else waiting_since
        impatient = loop.time() - waiting_since >= patience and older[0] in ready
        if ready and (not unready or impatient):
            if unready:
                log.warning("Joining although %s is still not ready after %.0fs", ", ".join(unready), patience)
            return Startup(Role.JOINER, peers, tuple(n.cluster_address for n in ready), record, False,
                           f"Joining the cluster of {', '.join(n.name for n in ready)}")
        once("waiting:" + ",".join(unready), "Waiting for %s to be ready before joining the cluster",
             ", ".join(unready))
        await asyncio.sleep(retry_interval)
