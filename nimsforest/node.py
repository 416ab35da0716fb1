"""A NimsForest node: its NATS, its registry record, its streams, its forest, its API.

Start (seed 001): [cluster mode: register, read peers, decide founder/joiner/member]
-> start NATS (the rest of the node is imported meanwhile) -> connect -> wait for the
JetStream meta leader -> create the streams at min(cluster size, 3) -> start the forest
-> serve the API -> start the loops (observer, registry heartbeat and watch, reconcile)
-> ready.
Stop (SIGINT/SIGTERM): loops, forest control, forest, deregister, connection, NATS (lame
duck first), API. SIGHUP reloads forest.yaml through the forest control (nimsforest.control).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import time
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from natsembed import (
    NODE_TAG,
    EmbeddedNats,
    advertise_host,
    find_nats_server,
    has_meta_state,
    hostport,
)
from natsembed.errors import reason
from nimsforest import __version__
from nimsforest.health import NatsObserver, NodeMode
from nimsforest.node_setup import embedded_config, import_heavy, machine_metadata
from nimsforest.sdnotify import notify
from nimsforest.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from cluster import ClusterManager, Startup
    from nimsforest.connection import ConnectionManager
    from nimsforest.control import Controller
    from nimsforest.forest import Forest, ForestConfig
    from registry import NodeInfo, Registry

log = logging.getLogger("nimsforest")


class NodeState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Node:
    """One NimsForest node. `await node.run()` serves until SIGINT or SIGTERM."""

    def __init__(self, settings: Settings, mode: NodeMode, *, demo: bool = False) -> None:
        self.settings = settings
        self.mode = mode
        self.demo = demo
        self.state = NodeState.STARTING
        self.embedded: EmbeddedNats | None = None
        self.conn: ConnectionManager | None = None
        self.observer: NatsObserver | None = None
        self.registry: Registry | None = None
        self.manager: ClusterManager | None = None
        self.startup: Startup | None = None
        self.forest: Forest | None = None
        self.forest_path: Path | None = None
        self.forest_config: ForestConfig | None = None
        self.control: Controller | None = None
        self._replicas = 1
        self.api: Any = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.started_at = time.time()
        self.ready_at: float | None = None
        self._reload_hooks: list[Callable[[], Any]] = []

    @property
    def replicas(self) -> int:
        """The replication factor this node keeps its streams at."""
        return self._replicas

    @replicas.setter
    def replicas(self, value: int) -> None:
        from nimsforest import metrics  # not before nats-server is spawned: see start()

        self._replicas = value
        metrics.replication_factor.set(value)

    # --- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self.preflight()
        try:
            start = asyncio.ensure_future(self.start())
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([start, stop], return_when=asyncio.FIRST_COMPLETED)
            if not start.done():  # stopped while starting (a joiner waiting, for instance)
                start.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await start
            else:
                start.result()
                await stop
        finally:
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def request_stop(self, sig: signal.Signals | None = None) -> None:
        if not self._stop.is_set():
            log.info("Received %s, shutting down", sig.name if sig else "stop request")
        self._stop.set()

    def _on_sighup(self) -> None:
        if not self._reload_hooks:
            log.info("Received SIGHUP; no forest configuration to reload")
            return
        log.info("Received SIGHUP, reloading the forest configuration")
        for hook in self._reload_hooks:
            self._spawn(hook(), "sighup-reload")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.append(task)
        return task

    # --- start -----------------------------------------------------------------------------
    def preflight(self) -> None:
        """Checks that need nothing started: fail fast, before any process is spawned."""
        from nimsforest.api.sockets import bind_socket

        bind_socket(*self.settings.api_host_port).close()  # AddressInUse when taken
        _check_api_exposure(self.settings)  # SettingsError: off localhost without a token
        if self.mode is not NodeMode.SIDECAR:
            find_nats_server(self.settings.nats_server_bin)  # NatsBinaryNotFound
        self._load_forest_config()  # ForestConfigError: a bad forest.yaml is a usage error
        if self.mode is NodeMode.CLUSTER and not self.settings.registry_url:
            raise RuntimeError(
                "A cluster node needs a registry: set --registry-url or REGISTRY_URL "
                "(or run `nimsforest standalone` for a single node)."
            )

    async def start(self) -> None:
        s = self.settings
        host, port = s.api_host_port
        if self.mode is NodeMode.SIDECAR:
            from nimsforest.connection import redact

            log.info("Starting NimsForest %s in sidecar mode as node %s, with NATS at %s",
                     __version__, s.node_name, redact(s.nats_url or ""))
            app_module = import_heavy()
            await self._connect_sidecar()
        else:
            app_module = await self._start_embedded()
            await self._connect_and_create_streams()
        self._build_forest()
        # The web app (FastAPI analyses every route) is built in a thread while the forest
        # and its controller start, which is mostly waiting on JetStream.
        app = asyncio.ensure_future(asyncio.to_thread(app_module.create_app, self))
        try:
            await self._start_forest()
        finally:
            built = await app
        from nimsforest.api.server import ApiServer  # imported with the app (import_heavy)

        self.api = ApiServer(built, host, port)
        await self.api.start()
        log.info("Management API at http://%s:%d", host, self.api.port)
        assert self.observer is not None
        self._spawn(self.observer.run(), "nats-observer")  # /health answers from its first look
        if self.mode is NodeMode.CLUSTER:
            self._start_cluster_loops()
        self.state = NodeState.READY
        self.ready_at = time.time()
        log.info("nimsforest is ready (%.2fs)", self.ready_at - self.started_at)
        notify("READY=1", f"STATUS=node {s.node_name} ready in {self.mode.value} mode")

    async def _start_embedded(self) -> ModuleType:
        """Start the node's own nats-server (after the founder rule in cluster mode);
        returns the web app module, imported while nats-server boots."""
        s = self.settings
        if self.mode is NodeMode.CLUSTER:
            log.info("Starting as cluster node %s (NimsForest %s)", s.node_name, __version__)
            self.startup = await self._join_forest()
            witness, routes = self.startup.role.value == "founder", self.startup.routes
            authorize = s.cluster_secret is not None
            if not authorize:
                log.warning(
                    "NATS_CLUSTER_SECRET is not set: cluster routes are not authenticated; "
                    "set the same secret on every node"
                )
        else:
            log.info("Starting NimsForest %s in %s mode as node %s", __version__, self.mode.value, s.node_name)
            witness, routes, authorize = True, (), True

        # nats-server boots while the rest of the node (nats-py, the web stack, the forest)
        # is imported; the imports start once the node's server is spawned, so they do not
        # compete with the spawn itself.
        self.embedded = EmbeddedNats(
            embedded_config(s, witness=witness, routes=routes, authorize_routes=authorize)
        )
        nats_start = asyncio.ensure_future(self._start_nats())
        spawned = asyncio.ensure_future(self.embedded.node.spawned.wait())
        await asyncio.wait([nats_start, spawned], return_when=asyncio.FIRST_COMPLETED)
        spawned.cancel()
        began = time.monotonic()
        heavy = asyncio.ensure_future(asyncio.to_thread(import_heavy))
        try:
            await nats_start
        finally:
            app_module = await heavy
        log.debug("nats-server and the imports done in %.2fs", time.monotonic() - began)
        return app_module

    async def _connect_sidecar(self) -> None:
        """Sidecar mode: connect to an existing NATS (retrying), create the streams at the
        highest replica count its JetStream accepts (3, 2 or 1)."""
        from nimsforest.connection import ConnectionManager
        from nimsforest.streams import (
            CORE_STREAMS,
            choose_replicas,
            describe_streams,
            ensure_streams,
        )

        s = self.settings
        assert s.nats_url is not None
        user = password = None
        if "@" not in s.nats_url and s.cluster_secret is not None:
            # A sidecar rendered by `nimsforest nats-config` has the forest's derived users.
            from natsembed import Credentials

            creds = Credentials.derived(s.cluster_secret.get_secret_value())
            user, password = creds.app_user, creds.app_password
        self.conn = ConnectionManager(s.nats_url.split(","), self._connection_options(),
                                      user=user, password=password)
        await self.conn.connect()
        log.info("Connected to NATS at %s", self.conn.snapshot().server)
        js = self.conn.nc.jetstream()
        self.replicas = await choose_replicas(js, CORE_STREAMS[0])
        await ensure_streams(js, CORE_STREAMS, self.replicas, None)
        log.info("JetStream initialized with replication factor %d: %s",
                 self.replicas, describe_streams(CORE_STREAMS))
        self.observer = NatsObserver(s.node_name, self.conn)

    def _connection_options(self) -> Any:
        from nimsforest.connection import ConnectionOptions

        s = self.settings
        return ConnectionOptions(
            retry_attempts=s.nats_retry_attempts,
            retry_interval=s.nats_retry_interval,
            reconnect_wait=s.nats_reconnect_wait,
            max_reconnects=s.nats_max_reconnects,
            name=f"nimsforest-{s.node_name}",
        )

    def _load_forest_config(self) -> None:
        """The forest to run: the demo (--demo), FOREST_CONFIG / --forest-config, or none."""
        if not self.demo and self.settings.forest_config is None:
            return
        from nimsforest.forest import demo_config_path, load_forest_config

        self.forest_path = demo_config_path() if self.demo else self.settings.forest_config
        assert self.forest_path is not None
        self.forest_config = load_forest_config(self.forest_path)

    def _build_forest(self) -> None:
        """The forest (empty) and its controller, built but not started (no I/O)."""
        from nimsforest.control import Controller, without_components
        from nimsforest.forest import Forest, ForestConfig

        assert self.conn is not None
        s = self.settings
        tags = (NODE_TAG,) if self.embedded is not None else None
        config = self.forest_config or ForestConfig.empty()
        self.forest = Forest(
            self.conn.nc, without_components(config), replicas=self.replicas, placement_tags=tags
        )
        self.control = Controller(
            self.conn.nc, self.forest, node=s.node_name, config_file=self.forest_path,
            file_config=self.forest_config, replicas=self.replicas, placement_tags=tags,
            token=s.api_token.get_secret_value() if s.api_token else None, rate=s.api_rate_limit,
        )

    async def _start_forest(self) -> None:
        """Start the forest empty, then the controller fills it with the cluster's desired
        state (seeded from forest.yaml when the cluster has none yet)."""
        from nimsforest.connection import ConnectionEvent

        assert self.forest is not None and self.control is not None and self.conn is not None
        await self.forest.start()
        if self.forest_path:
            log.info("Forest configuration: %s", self.forest_path)
        control = self.control
        await control.start()
        self.conn.on_event(lambda e: control.resync() if e is ConnectionEvent.RECONNECTED else None)
        self._reload_hooks.append(control.reload_from_signal)

    def self_info(self) -> NodeInfo:
        from registry import NodeInfo, ensure_node_id

        s = self.settings
        host = advertise_host(s.bind_address, s.advertise_address)
        api_host, api_port = s.api_host_port
        return NodeInfo(
            name=s.node_name,
            cluster_address=hostport(host, s.cluster_port),
            client_address=hostport(host, s.client_port),
            monitor_url=f"http://{hostport(host, s.monitor_port)}" if s.monitor_port else None,
            api_url=f"http://{hostport(host if api_host in ('0.0.0.0', '::') else api_host, api_port)}",
            node_id=ensure_node_id(s.data_dir / "node_id"),
            metadata=machine_metadata(s.cluster_name),
        )

    async def _join_forest(self) -> Startup:
        from cluster import decide_role
        from registry import open_registry

        s = self.settings
        assert s.registry_url is not None
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.registry = open_registry(
            s.registry_url,
            service=s.registry_service,
            token=s.registry_token,
            heartbeat_interval=s.registry_heartbeat_interval,
            cache_path=s.data_dir / "peers.json",
        )
        registry = self.registry
        startup = await decide_role(
            registry, self.self_info(), has_state=has_meta_state(s.data_dir),
            after_first_attempt=lambda: self._spawn(registry.run_heartbeat(), "registry-heartbeat"),
        )
        if startup.record is not None:
            log.info("Registered in registry at %s", self.registry.url)
        for peer in startup.peers:
            log.info("Discovered peer %s at %s", peer.name, peer.cluster_address)
        log.info("%s", startup.reason)
        return startup

    async def _start_nats(self) -> None:
        s = self.settings
        assert self.embedded is not None
        await self.embedded.start()
        extra = f" (witness {self.embedded.witness_name})" if self.embedded.witness_name else ""
        log.info(
            "NATS server %s ready: clients at nats://%s, cluster %s at %s%s",
            s.node_name, self.embedded.client_address, s.cluster_name, self.embedded.cluster_address, extra,
        )

    async def _connect_and_create_streams(self) -> None:
        from natsembed import is_witness
        from nimsforest.connection import ConnectionManager
        from nimsforest.streams import (
            CORE_STREAMS,
            describe_streams,
            ensure_streams,
            replication_factor,
        )

        s = self.settings
        assert self.embedded is not None
        c = self.embedded.credentials
        self.conn = ConnectionManager(
            [self.embedded.system_url], self._connection_options(), user=c.app_user, password=c.app_password
        )
        await self.conn.connect()
        meta = (await self.embedded.monitor.jsz()).meta_cluster
        others = [m for m in (meta.members if meta else ()) if m != s.node_name and not is_witness(m)]
        size = 1 + len(others)
        self.replicas = replication_factor(size)
        log.info("Cluster size: %d, replication factor: %d", size, self.replicas)
        # missing streams are created at this size's factor; existing ones are the cluster
        # manager's to scale (a factor computed here may be stale by the time it lands)
        await ensure_streams(
            self.conn.nc.jetstream(), CORE_STREAMS, self.replicas, (NODE_TAG,), rescale=False
        )
        log.info(
            "JetStream initialized with replication factor %d: %s",
            self.replicas, describe_streams(CORE_STREAMS),
        )
        self.observer = NatsObserver(s.node_name, self.conn, embedded=self.embedded)

    def _start_cluster_loops(self) -> None:
        from cluster import ClusterManager, Tuning

        s = self.settings
        assert self.embedded is not None and self.conn is not None and self.registry is not None

        def on_replication(rf: int) -> None:
            self.replicas = rf

        self.manager = ClusterManager(
            embedded=self.embedded,
            conn=self.conn,
            registry=self.registry,
            tuning=Tuning(grace=s.peer_grace_period),
            interval=s.reconcile_interval,
            on_replication=on_replication,
        )
        self.manager.seed_known(self.startup.peers if self.startup else ())
        self._spawn(self._watch_registry(), "registry-watch")
        self._spawn(self.manager.run(), "cluster-reconcile")

    async def _watch_registry(self) -> None:
        assert self.registry is not None and self.manager is not None
        known = self.startup.peers if self.startup else ()
        async for _event in self.registry.watch_peers(known=known):
            self.manager.wake()

    # --- stop ------------------------------------------------------------------------------
    async def stop(self) -> None:
        if self.state == NodeState.STOPPED:
            return
        self.state = NodeState.STOPPING
        notify("STOPPING=1")
        log.info("Stopping node %s", self.settings.node_name)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.control is not None:
            await self.control.stop()
        if self.forest is not None:
            await self.forest.stop()
        if self.registry is not None:
            try:
                await asyncio.wait_for(self.registry.deregister(), 5.0)
                log.info("Deregistered from registry at %s", self.registry.url)
            except Exception as exc:  # noqa: BLE001 - the record expires after its TTL anyway
                log.warning("Could not deregister (%s); the record expires after its TTL", reason(exc))
            await self.registry.close()
        if self.conn is not None:
            await self.conn.close()
        if self.embedded is not None:
            await self.embedded.stop()
            await self.embedded.close()
        if self.api is not None:
            await self.api.stop()
        self.state = NodeState.STOPPED
        log.info("Node %s stopped", self.settings.node_name)

    # --- API -------------------------------------------------------------------------------
    def routers(self) -> list[Any]:
        """FastAPI routers the node's components add to the API."""
        if self.forest is None:
            return []
        from nimsforest.forest.http import make_router

        if self.control is None:
            return [make_router(self.forest)]
        return self.control.routers(make_router(self.forest))

    def health(self) -> tuple[int, dict[str, Any]]:
        from nimsforest.health_docs import node_health

        return node_health(self)

    def cluster_health(self) -> tuple[int, dict[str, Any]]:
        from nimsforest.health_docs import cluster_health

        return cluster_health(self)

    def registry_health(self) -> tuple[int, dict[str, Any]]:
        from nimsforest.health_docs import registry_health

        return registry_health(self)


def _check_api_exposure(settings: Settings) -> None:
    """The management API may leave localhost only behind a token."""
    import ipaddress

    from nimsforest.settings import SettingsError

    host, _ = settings.api_host_port
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and settings.api_token is None:
        raise SettingsError(
            f"NIMSFOREST_API is {settings.api_address}, off localhost: set NIMSFOREST_API_TOKEN "
            "so that only holders of the token can change the forest."
        )
