"""A NimsForest node: its NATS, its streams, its forest and its HTTP API, in order.

Start: bind the management address (fail fast), start NATS (the web stack is imported
meanwhile), connect, create the streams, start the forest, serve, ready.
Stop (SIGINT/SIGTERM): the reverse, with NATS stopped in order (lame duck first).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib
import logging
import signal
import time
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from natsembed import NODE_TAG, EmbeddedConfig, EmbeddedNats, RestartPolicy, Timeouts, find_nats_server
from nimsforest import __version__
from nimsforest.health import HealthStatus, NatsObserver, NodeMode, problems
from nimsforest.settings import Settings

if TYPE_CHECKING:
    from nimsforest.connection import ConnectionManager
    from nimsforest.streams import StreamSpec

log = logging.getLogger("nimsforest")


class NodeState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"


def _import_heavy() -> ModuleType:
    """Modules a node needs only once NATS runs; imported in a thread meanwhile."""
    for name in ("nats", "nats.js", "nimsforest.connection", "nimsforest.streams"):
        importlib.import_module(name)
    return importlib.import_module("nimsforest.api.app")


def embedded_config(
    settings: Settings, *, witness: bool, routes: tuple[str, ...] = ()
) -> EmbeddedConfig:
    return EmbeddedConfig(
        name=settings.node_name,
        data_dir=settings.data_dir,
        binary=find_nats_server(settings.nats_server_bin),
        cluster_name=settings.cluster_name,
        bind=settings.bind_address,
        advertise=settings.advertise_address,
        client_port=settings.client_port,
        cluster_port=settings.cluster_port,
        monitor_port=settings.monitor_port,
        routes=routes,
        witness=witness,
        extra_tags=tuple(settings.server_tags),
        jetstream_max_mem=settings.jetstream_max_mem,
        jetstream_max_file=settings.jetstream_max_file,
        cluster_secret=settings.cluster_secret.get_secret_value() if settings.cluster_secret else None,
        policy=RestartPolicy(max_restarts=settings.nats_max_restarts, window=settings.nats_restart_window),
        timeouts=Timeouts(start=settings.nats_start_timeout, interrupt=settings.nats_stop_timeout),
    )


async def ensure_streams(
    js: Any,
    specs: tuple[StreamSpec, ...],
    replicas: int,
    placement_tags: tuple[str, ...] | None,
    *,
    attempts: int = 10,
    interval: float = 0.5,
) -> None:
    """Create or re-scale `specs`, retrying with backoff while JetStream is unavailable."""
    from nimsforest.streams import ensure_stream

    delay = interval
    for attempt in range(1, attempts + 1):
        try:
            for spec in specs:
                await ensure_stream(js, spec, replicas, placement_tags)
            return
        except Exception as exc:  # noqa: BLE001 - retried, then reported in one sentence
            if attempt == attempts:
                raise RuntimeError(
                    f"JetStream did not accept the streams after {attempts} attempts: "
                    f"{exc or type(exc).__name__}"
                ) from None
            log.warning("JetStream not ready for streams (%s); retrying in %.1fs", exc or type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


def describe_streams(specs: tuple[StreamSpec, ...]) -> str:
    streams = [s.name for s in specs if s.kv_bucket is None]
    buckets = [s.kv_bucket for s in specs if s.kv_bucket is not None]
    parts = [f"streams {', '.join(streams)}"] if streams else []
    if buckets:
        parts.append(f"KV bucket{'s' if len(buckets) > 1 else ''} {', '.join(buckets)}")
    return " and ".join(parts)


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
        self.replicas = 1
        self.api: Any = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.started_at = time.time()
        self.ready_at: float | None = None
        self._reload_hooks: list[Callable[[], Any]] = []

    # --- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        self.preflight()
        try:
            await self.start()
            await self._stop.wait()
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
        find_nats_server(self.settings.nats_server_bin)  # NatsBinaryNotFound

    async def start(self) -> None:
        s = self.settings
        from nimsforest.api.server import ApiServer

        host, port = s.api_host_port
        log.info("Starting NimsForest %s in %s mode as node %s", __version__, self.mode.value, s.node_name)

        # nats-server boots while the rest of the node (nats-py, the web stack) is imported;
        # the imports start only once it is spawned, so they do not delay the spawn.
        self.embedded = EmbeddedNats(embedded_config(s, witness=True))
        nats_start = asyncio.ensure_future(self._start_nats())
        spawned = asyncio.ensure_future(self.embedded.node.spawned.wait())
        await asyncio.wait([nats_start, spawned], return_when=asyncio.FIRST_COMPLETED)
        spawned.cancel()
        heavy = asyncio.ensure_future(asyncio.to_thread(_import_heavy))
        try:
            await nats_start
        finally:
            app_module = await heavy
        await self._connect_and_create_streams()
        self.api = ApiServer(app_module.create_app(self), host, port)
        await self.api.start()
        log.info("Management API at http://%s:%d", host, self.api.port)
        assert self.observer is not None
        await self.observer.observe_once()
        self._spawn(self.observer.run(), "nats-observer")
        self.state = NodeState.READY
        self.ready_at = time.time()
        log.info("nimsforest is ready (%.2fs)", self.ready_at - self.started_at)

    async def _start_nats(self) -> None:
        s = self.settings
        assert self.embedded is not None
        await self.embedded.start()
        log.info(
            "NATS server %s ready: clients at nats://%s, cluster %s at %s (witness %s)",
            s.node_name, self.embedded.client_address, s.cluster_name,
            self.embedded.cluster_address, self.embedded.witness_name,
        )

    async def _connect_and_create_streams(self) -> None:
        from nimsforest.connection import ConnectionManager, ConnectionOptions
        from nimsforest.streams import CORE_STREAMS, replication_factor

        s = self.settings
        assert self.embedded is not None
        c = self.embedded.credentials
        self.conn = ConnectionManager(
            [self.embedded.system_url],
            ConnectionOptions(
                retry_attempts=s.nats_retry_attempts,
                retry_interval=s.nats_retry_interval,
                reconnect_wait=s.nats_reconnect_wait,
                max_reconnects=s.nats_max_reconnects,
                name=f"nimsforest-{s.node_name}",
            ),
            user=c.app_user,
            password=c.app_password,
        )
        await self.conn.connect()
        self.replicas = replication_factor(1)
        await ensure_streams(self.conn.nc.jetstream(), CORE_STREAMS, self.replicas, (NODE_TAG,))
        log.info(
            "JetStream initialized with replication factor %d: %s",
            self.replicas, describe_streams(CORE_STREAMS),
        )
        self.observer = NatsObserver(s.node_name, self.conn, embedded=self.embedded)

    # --- stop ------------------------------------------------------------------------------
    async def stop(self) -> None:
        if self.state == NodeState.STOPPED:
            return
        self.state = NodeState.STOPPING
        log.info("Stopping node %s", self.settings.node_name)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.conn is not None:
            await self.conn.close()
        if self.embedded is not None:
            await self.embedded.stop()
            await self.embedded.close()
        if self.api is not None:
            await self.api.stop()
        self.state = NodeState.STOPPED
        log.info("Node %s stopped", self.settings.node_name)

    def routers(self) -> list[Any]:
        """FastAPI routers the node's components add to the API."""
        return []

    # --- health ----------------------------------------------------------------------------
    def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of GET /health, from cached state only."""
        obs = self.observer
        view = obs.view if obs else None
        reasons: list[str] = []
        if self.state != NodeState.READY:
            reasons.append(f"node is {self.state.value}")
        if view is None or obs is None:
            reasons.append("NATS not observed yet")
        else:
            from nimsforest.streams import CORE_STREAMS

            required = tuple(spec.name for spec in CORE_STREAMS)
            reasons += problems(view, required, obs.is_stale())
        members = view.members if view else ()
        size = max(1, len(members))
        body: dict[str, Any] = {
            "status": (HealthStatus.UNHEALTHY if reasons else HealthStatus.HEALTHY).value,
            "node": self.settings.node_name,
            "mode": self.mode.value,
            "cluster": {
                "name": self.settings.cluster_name,
                "size": size,
                "peers": [m for m in members if m != self.settings.node_name],
                "replication_factor": self.replicas,
            },
            "jetstream": {
                "streams": list(view.stream_names) if view else [],
                "kv_buckets": list(view.kv_buckets) if view else [],
                "meta_leader": view.meta_leader if view else None,
            },
            "nats": {
                "state": view.process_state if view else None,
                "pid": view.process_pid if view else None,
                "restarts": view.restarts if view else 0,
                "witness": view.witness if view else None,
                "connected": view.connected if view else False,
            },
        }
        if reasons:
            body["reasons"] = reasons
        return (503 if reasons else 200), body
