"""What a node builds once its NATS runs: the connection and the observer, the streams,
the forest and its control plane, the API.

This module imports the heavy half of NimsForest (nats-py, the forest with Lua and
jinja2, the control plane, FastAPI and uvicorn). The node imports it in a thread while
its nats-server boots (`node_setup.import_heavy`), so nothing here delays the spawn.
Every builder that starts something registers its teardown on the caller's
AsyncExitStack, so the node stops in the reverse order of its start by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from natsembed import NODE_TAG, Credentials, EmbeddedNats, is_witness, node_of
from nimsforest import metrics
from nimsforest.api.app import create_app
from nimsforest.api.dashboard import Dashboard
from nimsforest.api.drain import DrainGate, make_drain_router
from nimsforest.api.lineage import Lineages
from nimsforest.api.readers import Readers
from nimsforest.api.server import ApiServer
from nimsforest.connection import ConnectionEvent, ConnectionManager, ConnectionOptions
from nimsforest.control import Controller, record_refused, without_components
from nimsforest.drain import Drainer
from nimsforest.forest import Forest, ForestConfig, ForestStatus, tracing_from_env
from nimsforest.forest.http import make_router
from nimsforest.health import NodeSnapshot
from nimsforest.observer import NatsObserver, consumer_lag
from nimsforest.settings import Settings
from nimsforest.streams import (
    CORE_STREAMS,
    RIVER,
    choose_replicas,
    describe_streams,
    ensure_streams,
    replication_factor,
)

log = logging.getLogger("nimsforest")

REQUIRED_STREAMS = tuple(spec.name for spec in CORE_STREAMS)

# The node's own nats-server has just answered ready when the node connects to it and
# creates its streams: a failure then is a moment's hiccup, retried at once, not after
# the NATS_RETRY_INTERVAL meant for a NATS that is elsewhere and may be down (5 s).
OWN_SERVER_RETRY = 0.2  # first-connection retries (at most NATS_RETRY_INTERVAL)
OWN_STREAMS_RETRY = 0.1  # the first retry of the stream creation (then doubling)
OWN_STREAMS_ATTEMPTS = 12  # about the time in all that 10 attempts from 0.5 s took


@dataclass(frozen=True)
class Nats:
    """A node's way to NATS, once connected: built by the mode, never changed after."""

    conn: ConnectionManager
    observer: NatsObserver
    replicas: int  # the replication factor at start (the cluster manager keeps it after)
    embedded: EmbeddedNats | None = None  # None in sidecar mode
    placement_tags: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Running:
    """The node's forest, control plane and API, started."""

    forest: Forest
    control: Controller
    api: ApiServer

    def forest_status(self) -> ForestStatus:
        return self.forest.status()

    def reports_status(self) -> tuple[str, str]:
        """The status-report loop's state and sentence, for /health."""
        st = self.control.board.status()
        return st.state.value, st.sentence


class Assembly:
    """The builders of a node's heavy half, for one node's settings."""

    required_streams = REQUIRED_STREAMS  # what /health requires
    ingest_streams = (RIVER.name,)  # what a River API request or webhook writes to

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def connection_options(self, *, own_server: bool = False) -> ConnectionOptions:
        """How the node connects; to its `own_server` (embedded, ready) retried at once."""
        s = self.settings
        return ConnectionOptions(
            retry_attempts=s.nats_retry_attempts,
            retry_interval=(
                min(s.nats_retry_interval, OWN_SERVER_RETRY) if own_server else s.nats_retry_interval
            ),
            reconnect_wait=s.nats_reconnect_wait,
            max_reconnects=s.nats_max_reconnects,
            name=f"nimsforest-{s.node_name}",
            stay_on_configured=True,  # the node's API uses the server its /health reads
        )

    @staticmethod
    def record_replicas(replicas: int) -> None:
        metrics.replication_factor.set(replicas)

    async def connect_embedded(
        self, stack: contextlib.AsyncExitStack, embedded: EmbeddedNats
    ) -> Nats:
        """Connect to the node's own server; create the streams that are missing at this
        cluster size's factor (existing ones are the cluster manager's to scale: a factor
        computed here may be stale by the time it lands)."""
        c = embedded.credentials
        conn = ConnectionManager(
            [embedded.system_url], self.connection_options(own_server=True), user=c.app_user,
            password=c.app_password,
        )
        stack.push_async_callback(conn.close)
        await conn.connect()
        meta = (await embedded.monitor.jsz()).meta_cluster
        members = meta.members if meta else ()
        node = self.settings.node_name
        # other nodes: each server name as its node (natsembed._names), this one excluded
        size = 1 + len({node_of(m) for m in members if not is_witness(m)} - {node})
        replicas = replication_factor(size)
        log.info("Cluster size: %d, replication factor: %d", size, replicas)
        await ensure_streams(
            conn.nc.jetstream(), CORE_STREAMS, replicas, (NODE_TAG,), rescale=False,
            interval=OWN_STREAMS_RETRY, attempts=OWN_STREAMS_ATTEMPTS,
        )
        log.info("JetStream initialized with replication factor %d: %s",
                 replicas, describe_streams(CORE_STREAMS))
        observer = NatsObserver(node, conn, embedded=embedded)
        return Nats(conn, observer, replicas, embedded, (NODE_TAG,))

    async def connect_sidecar(self, stack: contextlib.AsyncExitStack) -> Nats:
        """Connect to an existing NATS (retrying); create the streams at the highest replica
        count its JetStream accepts (3, 2 or 1)."""
        s = self.settings
        assert s.nats_url is not None  # the sidecar mode is chosen by it
        user = password = None
        if "@" not in s.nats_url and s.cluster_secret is not None:
            # A sidecar rendered by `nimsforest nats-config` has the forest's derived users.
            creds = Credentials.derived(s.cluster_secret.get_secret_value())
            user, password = creds.app_user, creds.app_password
        conn = ConnectionManager(s.nats_url.split(","), self.connection_options(), user=user,
                                 password=password)
        stack.push_async_callback(conn.close)
        await conn.connect()
        log.info("Connected to NATS at %s", conn.snapshot().server)
        js = conn.nc.jetstream()
        replicas = await choose_replicas(js, CORE_STREAMS[0])
        await ensure_streams(js, CORE_STREAMS, replicas, None)
        log.info("JetStream initialized with replication factor %d: %s",
                 replicas, describe_streams(CORE_STREAMS))
        return Nats(conn, NatsObserver(s.node_name, conn), replicas)

    async def start_forest(
        self,
        stack: contextlib.AsyncExitStack,
        nats: Nats,
        forest_path: Path | None,
        forest_config: ForestConfig | None,
        snapshot: Callable[[], NodeSnapshot],
        drainer: Drainer,
        restart: Callable[[], None] | None = None,
    ) -> Running:
        """Start the forest empty, then the controller fills it with the cluster's desired
        state (seeded from forest.yaml when the cluster has none yet); then serve the API.
        The web app (FastAPI analyses every route) is built in a thread meanwhile. A node
        kept drained starts with its forest stopped (the drainer starts it when undrained).
        `restart` stops the node for its supervisor to start it (POST /api/v1/node/restart)."""
        s = self.settings
        config = forest_config or ForestConfig.empty()
        tracing = tracing_from_env(os.environ, "nimsforest", s.node_name)
        await tracing.start()
        stack.push_async_callback(tracing.stop)  # after the forest stopped: its last spans go
        forest = Forest(nats.conn.nc, without_components(config), replicas=nats.replicas,
                        placement_tags=nats.placement_tags, node=s.node_name,
                        river_hold=s.river_hold, tracing=tracing)
        control = Controller(
            nats.conn.nc, forest, node=s.node_name, config_file=forest_path,
            file_config=forest_config, replicas=nats.replicas, placement_tags=nats.placement_tags,
            token=s.api_token.get_secret_value() if s.api_token else None, rate=s.api_rate_limit,
            zone=s.zone, lag=lambda: consumer_lag(nats.observer.view),
        )

        async def refused(request: Request, message: str) -> None:
            await record_refused(control, request, message)

        # one flat router (the control plane guards its /api/ routes with the token)
        ingest = make_router(forest)
        ingest.routes.extend(
            make_drain_router(drainer, control.guard(), control.audit_log.record, restart).routes)
        readers = Readers(nats.conn.nc)
        lineages = Lineages(nats.conn.nc)
        dashboard = Dashboard(snapshot, control.cluster_status, control.guard(cookie=True),
                              control.accepts_token, control.needs_token, control.check_rate)
        routers = [*control.routers(ingest), readers.router(control.guard(cookie=True)),
                   lineages.router(control.guard(cookie=True)),
                   dashboard.router()]
        app = asyncio.ensure_future(asyncio.to_thread(create_app, snapshot, routers, refused))
        drainer.attach(forest)
        try:
            stack.push_async_callback(forest.stop)
            if drainer.wanted is None:
                await forest.start()
            else:
                log.info("Node %s is kept drained: its forest stays stopped until "
                         "`nimsforest undrain`", s.node_name)
            if forest_path:
                log.info("Forest configuration: %s", forest_path)
            stack.push_async_callback(control.stop)
            await control.start()
        finally:
            built = await app
        nats.conn.on_event(
            lambda e: control.resync() if e is ConnectionEvent.RECONNECTED else None
        )
        built.add_middleware(DrainGate, status=drainer.status, node=s.node_name)
        host, port = s.api_host_port
        api = ApiServer(built, host, port)
        stack.push_async_callback(api.stop)
        stack.callback(readers.close)  # open streams end before the API stops
        stack.callback(dashboard.close)
        await api.start()
        log.info("Management API at http://%s:%d", host, api.port)
        return Running(forest, control, api)


__all__ = ["REQUIRED_STREAMS", "Assembly", "Nats", "Running"]
