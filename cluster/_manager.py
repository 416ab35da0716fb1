"""The reconcile loop: observe (registry, and NATS through the node's one observer),
plan, act, report.

Each cycle works on one frozen Observation, asks the pure planner (cluster._plan) what
to do, does it, and ends in one sentence that is logged when it changes and shown in
/health/cluster. NATS is read through the node's `NatsObserver` (the same view /health
shows): a look per cycle, the cluster-wide stream list refreshed in the background and
started anew after a cycle that acted. The loop keeps going through every error; an
error becomes the sentence of that cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from cluster._heal import Membership, StreamCopies, membership
from cluster._model import (
    Action,
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
from cluster._plan import Memory, Tuning, gone, plan, target_replicas, unreachable
from cluster._replication import scale_streams
from natsembed import SystemRequestUnanswered, is_witness, label, node_of
from natsembed.errors import reason

if TYPE_CHECKING:
    from natsembed import EmbeddedNats, SystemClient
    from nimsforest.observer import NatsObserver, NatsView
    from registry import Registry

log = logging.getLogger("cluster")

FOLLOW_UP = 0.25  # seconds to the next cycle after one that acted
ZONE_WAIT = 0.3  # seconds to collect every server's tags (asked only for unknown zones)
RESCUE_REMOVE_FOR = 20.0  # seconds a rescue asks again to remove a lost peer that got no answer


def in_transition(obs: Observation) -> bool:
    """A peer registered but not yet in the meta group, a witness beside real peers, or a
    stream not current: the cluster is changing and the next look should come soon."""
    members = obs.member_nodes | {obs.node}
    joining = any(p.name not in members for p in obs.registry_peers or ())
    return joining or bool(obs.witness and obs.nodes) or any(not s.current for s in obs.streams)


def view_membership(node: str, view: NatsView) -> Membership:
    """This server's place in the meta group, from the observer's view of it (pure;
    `node`: this node's server name)."""
    if not view.monitor_ok:
        return Membership.UNKNOWN
    if view.meta_leader is None:
        return Membership.REMOVED if view.jetstream_disabled else Membership.UNKNOWN
    return membership(node, disabled=view.jetstream_disabled, leader=view.meta_leader,
                      cluster_size=view.meta_size, members=[p.name for p in view.meta_peers])


def observation(
    node: str,
    view: NatsView,
    registry_peers: tuple[RegistryPeer, ...] | None,
    routes: tuple[str, ...],
    *,
    zone: str | None = None,
    zones: dict[str, str] | None = None,
    membership: Membership = Membership.UNKNOWN,
    stored: tuple[str, ...] = (),
    elsewhere: tuple[StreamCopies, ...] | None = None,
    counted_elsewhere: bool = False,
    server: str = "",
) -> Observation:
    """The planner's Observation from the node's NATS view and what else the cycle read
    (pure)."""
    meta_ok = view.monitor_ok and view.meta_leader is not None
    members = tuple(MetaMember(p.name, p.current, p.offline) for p in view.meta_peers)
    streams = tuple(
        StreamState(v.name, v.replicas, v.leader, v.current, v.lagging, v.messages, v.consumers)
        for v in view.streams
        if v.owned
    )
    return Observation(
        at=view.at,
        node=node,
        nats_ok=view.monitor_ok,
        registry_peers=registry_peers,
        routes=routes,
        routed=view.routed,
        meta_leader=view.meta_leader if view.monitor_ok else None,
        meta_members=members if view.monitor_ok else (),
        witness=view.witness,
        streams=streams if meta_ok else (),
        zone=zone,
        zones=zones or {},
        membership=membership,
        stored=stored,
        elsewhere=elsewhere,
        counted_elsewhere=counted_elsewhere,
        server=server,
    )


class ClusterManager:
    """Keeps this node's routes, the meta group and stream replication in line."""

    def __init__(
        self,
        *,
        embedded: EmbeddedNats,
        observer: NatsObserver,
        registry: Registry | None,
        tuning: Tuning | None = None,
        interval: float = 2.0,
        on_replication: Callable[[int], None] | None = None,
    ) -> None:
        self.embedded = embedded
        self.observer = observer
        self.conn = observer.conn
        self.registry = registry
        self.tuning = tuning or Tuning()
        self.interval = interval
        self._on_replication = on_replication
        self.node = embedded.name
        self._wake = asyncio.Event()
        self._gone_since: dict[str, float] = {}
        self._reachable_since: dict[str, float] = {}
        # server -> zone, None when it has none (a server's tags change only with a restart)
        self._zones: dict[str, str | None] = {}
        self._not_counted_since: float | None = None
        self._afresh_at: float | None = None
        # streams seen in this node's store while it is not a member: nats-server may delete
        # a removed server's stream folders on its own (orphans), the risk stays
        self._stored_seen: set[str] = set()
        self._leaderless_since: float | None = None
        self._known_registry: dict[str, str] = {}
        self._monitor_urls: dict[str, str] = {}
        self._soon = False
        self._known_members: set[str] | None = None
        self._rf: int | None = None
        self._sentence = "starting"
        self._cycles = 0
        self._status: ClusterStatus | None = None

    def seed_known(self, peers: object) -> None:
        """Peers already announced at start ("Discovered peer ..." is not logged twice)."""
        for p in peers:  # type: ignore[attr-defined]
            self._known_registry[p.name] = p.cluster_address
            if p.monitor_url:
                self._monitor_urls[p.name] = p.monitor_url

    # --- the loop --------------------------------------------------------------------------
    def wake(self) -> None:
        """Run the next cycle now (a registry change, for instance)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop lives on; the error is the sentence
                self._say(f"cycle failed: {reason(exc)}", error=True)
            pause, self._soon = (FOLLOW_UP if self._soon else self.interval), False
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as the event is set (a wake during the node's stop), and the loop
            # would never end
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()
            self._wake.clear()

    async def cycle(self) -> str:
        obs = await self.observe()
        self._remember(obs)
        self._log_membership(obs)
        memory = Memory(dict(self._gone_since), self._leaderless_since, dict(self._reachable_since),
                        self._not_counted_since, self._afresh_at)
        decision = plan(obs, memory, self.tuning)
        outcomes = []
        try:
            for action in decision.actions:
                outcomes.append(await self._act(action, obs))
        finally:  # the next cycle's stream list; what was just done changes the streams
            if decision.actions:
                self.observer.refresh_streams()
        # Look again soon while things are moving; idle at the normal interval otherwise.
        self._soon = bool(decision.actions) or in_transition(obs)
        sentence = "; ".join(outcomes) if outcomes else decision.sentence
        rf = target_replicas(obs)
        if rf != self._rf:
            if self._rf is not None:
                log.info("Replication factor adjusted to %d", rf)
            self._rf = rf
            if self._on_replication:
                self._on_replication(rf)
        self._cycles += 1
        self._status = self._make_status(obs, sentence, rf)
        self._say(sentence, error=decision.operator and not outcomes)
        return sentence

    def _say(self, sentence: str, error: bool = False) -> None:
        if sentence != self._sentence:
            (log.warning if error else log.info)("Cluster: %s", sentence)
            self._sentence = sentence

    # --- observing -------------------------------------------------------------------------
    async def observe(self) -> Observation:
        """Registry and local NATS, read at the same time; the latest stream list.

        The cluster-wide stream list can take seconds while streams move (a join, a
        replica change), so the observer refreshes it in the background and a cycle never
        waits for it: routes, the witness and departures are decided without delay.
        """
        registry_peers, view = await asyncio.gather(self._observe_registry(), self.observer.look())
        server = self.embedded.server_name  # changes when this node starts afresh
        place = view_membership(server, view)
        stored: tuple[str, ...] = ()
        elsewhere: tuple[StreamCopies, ...] | None = None
        counted = False
        if place in (Membership.REMOVED, Membership.NOT_COUNTED):
            self._stored_seen.update(self.embedded.stored_streams())
            stored = tuple(sorted(self._stored_seen))
            elsewhere, counted = await self._observe_elsewhere(registry_peers, server)
        elif place is Membership.MEMBER:
            self._stored_seen.clear()
        zone = self.embedded.zone
        if zone and any(p.name not in self._zones for p in view.meta_peers
                        if not is_witness(p.name)):
            await self._observe_zones()
        return observation(
            self.node, view, registry_peers, self.embedded.routes,
            zone=zone, zones={name: z for name, z in self._zones.items() if z},
            membership=place, stored=stored, elsewhere=elsewhere, counted_elsewhere=counted,
            server=server,
        )

    async def _observe_elsewhere(
        self, peers: tuple[RegistryPeer, ...] | None, server: str
    ) -> tuple[tuple[StreamCopies, ...] | None, bool]:
        """Every stream as the other nodes hold it, from their monitoring ports (None when
        no other node answers; each stream is described by the server that leads it), and
        whether the meta group, as any of them sees it, still counts this node's server
        (`server`, its current name)."""
        from natsembed import MonitorClient

        urls = [(p.name, p.monitor_url) for p in peers or () if p.name != self.node and p.monitor_url]
        answers = 0
        counted = False
        copies: dict[str, StreamCopies] = {}
        for name, url in urls:
            monitor = MonitorClient(url)
            try:
                jsz = await monitor.jsz(streams=True)
            except Exception as exc:  # noqa: BLE001 - one node fewer to ask
                log.debug("Streams of %s not read: %s", url, reason(exc))
                continue
            finally:
                await monitor.close()
            answers += 1
            meta = jsz.meta_cluster
            if meta is not None and meta.leader and meta.leader != server:
                counted = counted or server in meta.members
            for detail in jsz.stream_details():
                cluster = detail.cluster
                if cluster is None or cluster.leader is None or node_of(cluster.leader) != name:
                    continue  # described by its leader
                current = (cluster.leader, *(r.name for r in cluster.replicas if r.current and not r.offline))
                copies[detail.name] = StreamCopies(
                    detail.name, int(detail.config.get("num_replicas", 1)), tuple(current)
                )
        return (tuple(copies.values()) if answers else None), counted
    async def _observe_zones(self) -> None:
        """Learn the zone of every server that answers (asked while a member's is unknown)."""
        prefix = self.embedded.config.zone_prefix or ""
        try:
            async with self.embedded.system_client() as sysc:
                tags = await sysc.server_tags(wait=ZONE_WAIT)
        except Exception as exc:  # noqa: BLE001 - unknown zones count as none this cycle
            log.debug("Server tags not read: %s", reason(exc))
            return
        for name, server_tags in tags.items():
            zone = next((t[len(prefix):] for t in server_tags if prefix and t.startswith(prefix)), None)
            self._zones[name] = zone or None

    async def _observe_registry(self) -> tuple[RegistryPeer, ...] | None:
        if self.registry is None:
            return None
        try:
            peers = await self.registry.list_peers()
        except Exception as exc:  # noqa: BLE001 - unreachable: keep running on what we have
            log.debug("Registry did not answer: %s", exc)
            return None
        return tuple(RegistryPeer(p.name, p.cluster_address, p.monitor_url) for p in peers)

    def _remember(self, obs: Observation) -> None:
        for member in obs.meta_members:
            if gone(obs, member.name):
                self._gone_since.setdefault(member.name, obs.at)
            else:
                self._gone_since.pop(member.name, None)
        members = {m.name for m in obs.meta_members}
        for name in list(self._gone_since):
            if name not in members:
                del self._gone_since[name]
        for member in obs.nodes:
            if unreachable(obs, member.name):
                self._reachable_since.pop(member.name, None)
            else:
                self._reachable_since.setdefault(member.name, obs.at)
        for name in set(self._reachable_since) - members:
            del self._reachable_since[name]
        if obs.membership is Membership.NOT_COUNTED:
            if self._not_counted_since is None:
                self._not_counted_since = obs.at
        else:
            self._not_counted_since = None
        if obs.membership is Membership.MEMBER:
            self._afresh_at = None  # admitted
        if obs.nats_ok and obs.meta_leader is None:
            if self._leaderless_since is None:
                self._leaderless_since = obs.at
        else:
            self._leaderless_since = None

    def _log_membership(self, obs: Observation) -> None:
        for peer in obs.registry_peers or ():
            if self._known_registry.get(peer.name) != peer.cluster_address:
                log.info("Discovered peer %s at %s", peer.name, peer.cluster_address)
                self._known_registry[peer.name] = peer.cluster_address
        if obs.registry_peers is not None:
            for name in set(self._known_registry) - obs.registry_names:
                del self._known_registry[name]
        if not obs.nats_ok or obs.meta_leader is None:
            return
        members = {m.name for m in obs.nodes}
        if self._known_members is not None:
            for name in sorted(members - self._known_members):
                log.info("Peer %s joined cluster (size now %d)", label(name), obs.size)
            for name in sorted(self._known_members - members):
                log.info("Peer %s left cluster (size now %d)", label(name), obs.size)
        self._known_members = members

    # --- acting ----------------------------------------------------------------------------
    async def _act(self, action: Action, obs: Observation) -> str:
        from cluster._plan import describe

        try:
            if isinstance(action, SetRoutes):
                await self.embedded.set_routes(action.routes)
            elif isinstance(action, RetireWitness):
                name = self.embedded.witness_name
                await self.embedded.retire_witness()
                return f"witness {name} retired"
            elif isinstance(action, StartWitness):
                name = await self.embedded.start_witness()
                return f"witness {name} started (this node is alone)"
            elif isinstance(action, RemovePeer):
                async with self.embedded.system_client() as sysc:
                    await sysc.server_remove(action.name)
                self._gone_since.pop(action.name, None)
            elif isinstance(action, Rescue):
                await self._rescue(action)
            elif isinstance(action, ScaleStreams):
                await scale_streams(self.conn, action.streams, action.replicas)
            elif isinstance(action, StartAfresh):
                aside = await self.embedded.start_afresh()
                self._stored_seen.clear()
                self._not_counted_since = None
                self._afresh_at = time.monotonic()
                return f"{describe(action)} (the old store is in {aside})"
            return describe(action)
        except Exception as exc:  # noqa: BLE001 - reported as this cycle's sentence
            return f"{describe(action)} failed: {reason(exc)}"

    async def _rescue(self, action: Rescue) -> None:
        log.warning(
            "Cluster: %s gone for good and the meta group has no quorum; asking the %d survivor(s) "
            "to lead with a quorum of %d",
            ", ".join(action.lost), action.quorum, action.quorum,
        )
        async with self.embedded.system_client() as sysc:
            await sysc.meta_rescue(action.quorum)  # every reachable server applies it
        if not await self.embedded.wait_jetstream(30):
            raise RuntimeError("no meta leader after the quorum rescue")
        async with self.embedded.system_client() as sysc:
            for name in action.lost:
                await self._remove_lost(sysc, name)
                self._gone_since.pop(name, None)

    async def _remove_lost(self, sysc: SystemClient, name: str) -> None:
        """Remove a peer a rescue left behind. The leader the rescue has just elected can be
        too busy to answer at first (seen on a loaded machine): a removal that got no answer
        is asked again until it is answered or the peer is no longer a member (its answer
        was lost), for up to RESCUE_REMOVE_FOR seconds."""
        deadline = time.monotonic() + RESCUE_REMOVE_FOR
        while True:
            try:
                await sysc.server_remove(name)
                return
            except SystemRequestUnanswered:
                meta = (await self.embedded.monitor.jsz()).meta_cluster
                if meta is not None and meta.leader and name not in meta.members:
                    return
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.5)

    # --- status ----------------------------------------------------------------------------
    @property
    def sentence(self) -> str:
        return self._sentence

    @property
    def replication_factor(self) -> int:
        return self._rf or 1

    def status(self) -> ClusterStatus | None:
        return self._status

    def _make_status(self, obs: Observation, sentence: str, rf: int) -> ClusterStatus:
        registry_addr = {p.name: p.cluster_address for p in obs.registry_peers or ()}
        if obs.registry_peers is None:
            registry_addr = dict(self._known_registry)
        else:
            self._monitor_urls.update({p.name: p.monitor_url for p in obs.registry_peers if p.monitor_url})
        peers: list[PeerStatus] = []
        for member in obs.nodes:
            since = self._gone_since.get(member.name)
            if since is not None:
                # past the grace period and still here: the quorum floor keeps it
                state = PeerState.KEPT if obs.at - since >= self.tuning.grace else PeerState.LEAVING
            elif unreachable(obs, member.name):
                state = PeerState.OFFLINE
            elif obs.meta_leader != obs.me:
                state = PeerState.CURRENT if member.name == obs.meta_leader else PeerState.ONLINE
            elif member.current:
                state = PeerState.CURRENT
            else:
                state = PeerState.CATCHING_UP
            node = node_of(member.name)  # users see nodes; the server name goes with it
            peers.append(
                PeerStatus(
                    name=node,
                    state=state,
                    address=registry_addr.get(node),
                    in_registry=node in registry_addr,
                    routed=member.name in obs.routed,
                    gone_for=(obs.at - since) if since is not None else None,
                    monitor_url=self._monitor_urls.get(node),
                    server=member.name,
                )
            )
        in_meta = obs.member_nodes
        for name, addr in sorted(registry_addr.items()):
            if name not in in_meta:
                peers.append(PeerStatus(name, PeerState.REGISTERED, addr, True, name in obs.routed,
                                        monitor_url=self._monitor_urls.get(name)))
        return ClusterStatus(
            node=self.node,
            size=obs.size,
            replication_factor=rf,
            meta_leader=node_of(obs.meta_leader) if obs.meta_leader else None,
            witness=obs.witness,
            peers=tuple(sorted(peers, key=lambda p: p.name)),
            streams=tuple(replace(s, leader=node_of(s.leader) if s.leader else None,
                                  lagging=tuple(map(node_of, s.lagging))) for s in obs.streams),
            sentence=sentence,
            registry_ok=obs.registry_ok,
            cycle_at=time.time(),
            cycles=self._cycles,
            witnesses=tuple(sorted(m.name for m in obs.meta_members if is_witness(m.name))),
            membership=obs.membership,
            server=obs.me,
        )
