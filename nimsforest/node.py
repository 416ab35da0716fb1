"""A NimsForest node: its NATS, its registry record, its streams, its forest, its API.

Start (seed 001): preflight (the API address is free, the settings fit, the forest
configuration parses) -> the mode opens NATS (cluster mode: register and apply the
founder rule first; the heavy half of the node is imported while nats-server boots) ->
connect, create the streams at min(cluster size, 3) -> start the forest and its control
plane -> serve the API -> start the loops (the NATS observer; in cluster mode the
reconcile loop and the registry watch) -> ready.

Every collaborator is built under one AsyncExitStack, so the node stops in the reverse
order of its start by construction: loops -> API (the listener closes first) -> forest
control -> forest -> deregister -> NATS connection -> nats-server (lame duck first) ->
registry client. A start cut short (a stop while a joiner waits) tears down just what was
built. SIGINT/SIGTERM stop the node (a cluster node drains first: nimsforest.drain);
SIGHUP reloads forest.yaml through the forest control (nimsforest.control).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimsforest.api.sockets import bind_socket
from nimsforest.drain import RESTART_EXIT_STATUS, Drainer
from nimsforest.health import NodeMode, NodeSnapshot, NodeState
from nimsforest.modes import load_forest_config, make_mode
from nimsforest.sdnotify import notify
from nimsforest.settings import Settings, SettingsError
from nimsforest.tasks import TaskOwner

if TYPE_CHECKING:
    from nimsforest.assembly import Assembly, Nats
    from nimsforest.forest import ForestConfig, ForestStatus

log = logging.getLogger("nimsforest")


class Node:
    """One NimsForest node. `await node.run()` serves until SIGINT or SIGTERM."""

    def __init__(self, settings: Settings, mode: NodeMode, *, demo: bool = False) -> None:
        self.settings = settings
        self.mode = make_mode(mode, settings)
        self.demo = demo
        self.state = NodeState.STARTING
        self.started_at = time.time()
        self.forest_path: Path | None = None
        self.forest_config: ForestConfig | None = None
        self._stop = asyncio.Event()
        self._replicas = 1
        # what start has reached, for the health snapshot and SIGHUP (each set once)
        self._assembly: Assembly | None = None
        self._nats: Nats | None = None
        self._forest_status: Callable[[], ForestStatus] | None = None
        self._reports_status: Callable[[], tuple[str, str]] | None = None
        self._reload: Callable[[], Coroutine[Any, Any, Any]] | None = None
        self._tasks: TaskOwner | None = None
        self._drainer: Drainer | None = None
        self._stop_drain: asyncio.Future[Any] | None = None  # a graceful stop's drain
        self._drain_cut = False
        # set when asked to restart (POST /api/v1/node/restart): the process's exit status
        self.exit_status: int | None = None

    # --- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            self.preflight()
            async with contextlib.AsyncExitStack() as stack:
                try:
                    await self._serve(stack)
                finally:
                    self.state = NodeState.STOPPING
                    notify("STOPPING=1")
                    log.info("Stopping node %s", self.settings.node_name)
            self.state = NodeState.STOPPED
            log.info("Node %s stopped", self.settings.node_name)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _serve(self, stack: contextlib.AsyncExitStack) -> None:
        """Start, then wait for a stop; a stop while starting cuts the start short."""
        start = asyncio.ensure_future(self._start(stack))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([start, stop], return_when=asyncio.FIRST_COMPLETED)
            if not start.done():  # stopped while starting (a joiner waiting, for instance)
                start.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await start
            else:
                start.result()
                await stop
                await self._drain_before_stop()
        finally:
            stop.cancel()

    async def _drain_before_stop(self) -> None:
        """A cluster node hands over its work and leaderships before it stops (bounded by
        NIMSFOREST_DRAIN_TIMEOUT); /health turns 503 at once, so load balancers move on."""
        drainer = self._drainer
        if drainer is None or self.mode.kind is not NodeMode.CLUSTER:
            return
        began = time.monotonic()
        self._stop_drain = asyncio.ensure_future(drainer.drain_for_stop(self.settings.drain_timeout))
        try:
            done = await self._stop_drain
        except asyncio.CancelledError:
            if not self._drain_cut:  # the node itself is being cancelled
                raise
            # a second SIGINT/SIGTERM: stop now
            log.info("Stopping without waiting for the drain (asked again)")
            return
        log.info("Drained for the stop in %.1fs: %s", time.monotonic() - began, done.sentence)

    def request_stop(self, sig: signal.Signals | None = None) -> None:
        if not self._stop.is_set():
            log.info("Received %s, shutting down", sig.name if sig else "stop request")
        elif self._stop_drain is not None and not self._stop_drain.done():
            self._drain_cut = True  # asked twice: do not wait for the drain
            self._stop_drain.cancel()
        self._stop.set()

    def request_restart(self) -> None:
        """Stop as a graceful stop does, then exit with RESTART_EXIT_STATUS for the node's
        supervisor (systemd, a container runtime) to start it again."""
        if self.exit_status is None:
            log.info("Restart asked through the API: stopping, then exiting with status %d for "
                     "the supervisor to start the node again", RESTART_EXIT_STATUS)
        self.exit_status = RESTART_EXIT_STATUS
        self.request_stop()

    def _on_sighup(self) -> None:
        if self._reload is None or self._tasks is None:
            log.info("Received SIGHUP; no forest configuration to reload")
            return
        log.info("Received SIGHUP, reloading the forest configuration")
        self._tasks.spawn(self._reload(), "sighup-reload")

    # --- start -----------------------------------------------------------------------------
    def preflight(self) -> None:
        """Checks that need nothing started: fail fast, before any process is spawned."""
        bind_socket(*self.settings.api_host_port).close()  # AddressInUse when taken
        check_api_exposure(self.settings)  # SettingsError: off localhost without a token
        self.mode.preflight()  # NatsBinaryNotFound, SettingsError
        if self.demo or self.settings.forest_config is not None:
            # ForestConfigError: a bad forest.yaml is a usage error
            self.forest_path, self.forest_config = load_forest_config(
                None if self.demo else self.settings.forest_config
            )

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        s = self.settings
        nats, assembly = await self.mode.open(stack)
        self._nats, self._assembly = nats, assembly
        self._set_replicas(nats.replicas)
        drainer = Drainer(s.node_name, s.data_dir, nats.embedded, nc=nats.conn.nc,
                          clustered=self.mode.kind is NodeMode.CLUSTER)
        self._drainer = drainer
        running = await assembly.start_forest(
            stack, nats, self.forest_path, self.forest_config, self.snapshot, drainer,
            self.request_restart,
        )
        self._forest_status = running.forest_status
        self._reports_status = running.reports_status
        self._reload = running.control.reload_from_signal
        tasks = await stack.enter_async_context(TaskOwner())  # the loops stop first
        self._tasks = tasks
        tasks.spawn(nats.observer.run(), "nats-observer")  # /health answers from its look
        tasks.spawn(drainer.run(), "drain")
        self.mode.start_loops(tasks, nats, self._set_replicas)
        self.state = NodeState.READY
        log.info("nimsforest is ready (%.2fs)", time.time() - self.started_at)
        notify("READY=1", f"STATUS=node {s.node_name} ready in {self.mode.kind.value} mode")

    # --- state -----------------------------------------------------------------------------
    @property
    def replicas(self) -> int:
        """The replication factor this node keeps its streams at."""
        return self._replicas

    def _set_replicas(self, replicas: int) -> None:
        self._replicas = replicas
        if self._assembly is not None:
            self._assembly.record_replicas(replicas)

    def snapshot(self) -> NodeSnapshot:
        """The node at this moment, for the health documents (no I/O)."""
        from_nats = self._nats
        observer = from_nats.observer if from_nats else None
        embedded = from_nats.embedded if from_nats else None
        return NodeSnapshot(
            node=self.settings.node_name,
            cluster_name=self.settings.cluster_name,
            mode=self.mode.kind,
            state=self.state,
            replicas=self._replicas,
            required_streams=self._assembly.required_streams if self._assembly else (),
            ingest_streams=self._assembly.ingest_streams if self._assembly else (),
            nats=observer.view if observer and observer.view.observed_at else None,
            nats_stale=observer.is_stale() if observer else False,
            nats_url=self.mode.nats_url,
            monitor_url=embedded.monitor_url if embedded else None,
            registry=self.mode.registry_status(),
            cluster=self.mode.cluster_status(),
            reconcile_interval=self.mode.reconcile_interval,
            forest=self._forest_status() if self._forest_status else None,
            drain=self._drainer.status() if self._drainer else None,
            started_at=self.started_at,
            status_reports=self._reports_status() if self._reports_status else None,
        )


def check_api_exposure(settings: Settings) -> None:
    """The management API may leave localhost only behind a token."""
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


__all__ = ["Node", "NodeMode", "NodeState", "check_api_exposure"]
