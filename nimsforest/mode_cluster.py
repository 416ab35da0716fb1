"""The cluster mode: register, apply the founder rule, start the node's nats-server with
the routes it decided, then run the reconcile loop (cluster.ClusterManager) and follow the
registry. Imported only by cluster nodes (nimsforest.modes.make_mode).

Membership: the registry client is opened first and closed last; its heartbeat starts
with the first registration attempt; `leave()` (registered once NATS is connected, so it
runs before NATS stops) ends the heartbeat and deregisters, so peers stop routing here
before this node's server goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from cluster import ClusterManager, ClusterStatus, Role, Startup, Tuning, decide_role
from natsembed import advertise_host, has_meta_state, hostport
from natsembed.errors import reason
from nimsforest import __version__
from nimsforest.health import NodeMode
from nimsforest.modes import Mode, start_embedded
from nimsforest.node_setup import machine_metadata
from nimsforest.settings import Settings, SettingsError, ZoneSource, choose_zone, with_zone
from nimsforest.tasks import TaskOwner
from registry import NodeInfo, Registry, RegistryStatus, ensure_node_id, open_registry

if TYPE_CHECKING:
    from nimsforest.assembly import Assembly, Nats

log = logging.getLogger("nimsforest")


class ClusterMode(Mode):
    kind = NodeMode.CLUSTER

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._registry: Registry | None = None
        self._startup: Startup | None = None
        self._manager: ClusterManager | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    def preflight(self) -> None:
        super().preflight()
        if not self.settings.registry_url:
            raise SettingsError(
                "A cluster node needs a registry: set --registry-url or REGISTRY_URL "
                "(or run `nimsforest standalone` for a single node)."
            )

    async def open(self, stack: contextlib.AsyncExitStack) -> tuple[Nats, Assembly]:
        s = self.settings
        log.info("Starting as cluster node %s (NimsForest %s)", s.node_name, __version__)
        assert s.registry_url is not None  # preflight
        s.data_dir.mkdir(parents=True, exist_ok=True)
        registry = open_registry(
            s.registry_url,
            service=s.registry_service,
            token=s.registry_token,
            heartbeat_interval=s.registry_heartbeat_interval,
            cache_path=s.data_dir / "peers.json",
        )
        self._registry = registry
        stack.push_async_callback(registry.close)
        stack.push_async_callback(self._stop_heartbeat)
        startup = await decide_role(
            registry, self.self_info(), has_state=has_meta_state(s.data_dir),
            after_first_attempt=self._start_heartbeat,
        )
        self._startup = startup
        if startup.record is not None:
            log.info("Registered in registry at %s", registry.url)
        for peer in startup.peers:
            log.info("Discovered peer %s at %s", peer.name, peer.cluster_address)
        log.info("%s", startup.reason)
        s = self.settings = self._zoned(startup.record.metadata if startup.record else {})
        authorize = s.cluster_secret is not None
        if not authorize:
            log.warning(
                "NATS_CLUSTER_SECRET is not set: cluster routes are not authenticated; "
                "set the same secret on every node"
            )
        embedded, assembly = await start_embedded(
            stack, s, witness=startup.role is Role.FOUNDER, routes=startup.routes,
            authorize=authorize,
        )
        nats = await assembly.connect_embedded(stack, embedded)
        stack.push_async_callback(self._leave)
        return nats, assembly

    def start_loops(
        self, tasks: TaskOwner, nats: Nats, on_replicas: Callable[[int], None]
    ) -> None:
        assert nats.embedded is not None and self._registry is not None  # open() ran
        s = self.settings
        self._manager = ClusterManager(
            embedded=nats.embedded,
            observer=nats.observer,
            registry=self._registry,
            tuning=Tuning(grace=s.peer_grace_period, min_quorum=s.min_quorum,
                          stabilise=s.stabilisation_time),
            interval=s.reconcile_interval,
            on_replication=on_replicas,
        )
        known = self._startup.peers if self._startup else ()
        self._manager.seed_known(known)
        tasks.spawn(self._watch_registry(self._registry, self._manager, known), "registry-watch")
        tasks.spawn(self._manager.run(), "cluster-reconcile")

    @staticmethod
    async def _watch_registry(registry: Registry, manager: ClusterManager, known: Any) -> None:
        async for _event in registry.watch_peers(known=known):
            manager.wake()

    def _zoned(self, metadata: Mapping[str, str]) -> Settings:
        """The settings with the zone from the registry entry's metadata when
        NIMSFOREST_ZONE does not give one (before nats-server starts: it reads its tags
        and unique_tag at start)."""
        choice = choose_zone(self.settings.zone, metadata)
        if choice.note:
            log.warning("%s.", choice.note)
        if choice.source is ZoneSource.REGISTRY and choice.zone:
            log.info("Zone %s, from this node's registry entry (NIMSFOREST_ZONE is not set)",
                     choice.zone)
            return with_zone(self.settings, choice.zone)
        return self.settings

    def self_info(self) -> NodeInfo:
        s = self.settings
        host = advertise_host(s.bind_address, s.advertise_address)
        api_host, api_port = s.api_host_port
        api = host if api_host in ("0.0.0.0", "::") else api_host
        return NodeInfo(
            name=s.node_name,
            cluster_address=hostport(host, s.cluster_port),
            client_address=hostport(host, s.client_port),
            monitor_url=f"http://{hostport(host, s.monitor_port)}" if s.monitor_port else None,
            api_url=f"http://{hostport(api, api_port)}",
            node_id=ensure_node_id(s.data_dir / "node_id"),
            metadata=machine_metadata(s.cluster_name, s.zone),
        )

    # --- membership ------------------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        assert self._registry is not None
        self._heartbeat = asyncio.create_task(
            self._registry.run_heartbeat(), name="registry-heartbeat"
        )

    async def _stop_heartbeat(self) -> None:
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _leave(self) -> None:
        """End the heartbeat and deregister (the record expires after its TTL anyway)."""
        await self._stop_heartbeat()
        assert self._registry is not None
        try:
            await asyncio.wait_for(self._registry.deregister(), 5.0)
            log.info("Deregistered from registry at %s", self._registry.url)
        except Exception as exc:  # noqa: BLE001 - the record expires after its TTL anyway
            log.warning("Could not deregister (%s); the record expires after its TTL",
                        reason(exc))

    # --- what the health documents read -----------------------------------------------------
    def cluster_status(self) -> ClusterStatus | None:
        return self._manager.status() if self._manager else None

    def registry_status(self) -> RegistryStatus | None:
        return self._registry.status() if self._registry else None


__all__ = ["ClusterMode"]
