"""The node's NATS connection: initial retries, reconnects forever, visible state.

`ConnectionManager` wraps one nats-py client. It retries the first connection
(`NATS_RETRY_ATTEMPTS` x `NATS_RETRY_INTERVAL`), then lets nats-py reconnect
(`NATS_RECONNECT_WAIT`, `NATS_MAX_RECONNECTS`, -1 = forever). Every change is one log
line, a metric, and an event for subscribers.

With `stay_on_configured` (what a node uses) a reconnect goes only to the servers it was
given, never to one a server advertised: a node's client comes home to its own
nats-server once that is back, instead of staying on a peer whose trouble its API would
then share while its `/health` (which reads its own server) says it is fine.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from nats.aio.client import Client, Server

from natsembed.errors import reason
from nimsforest import metrics, natsclient
from nimsforest.settings import redact

log = logging.getLogger("nimsforest.connection")


class ConnectionState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


class ConnectionEvent(enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECTED = "reconnected"
    CLOSED = "closed"
    ERROR = "error"


@dataclass(frozen=True)
class ConnectionOptions:
    retry_attempts: int = 10
    retry_interval: float = 5.0
    reconnect_wait: float = 2.0
    max_reconnects: int = -1
    connect_timeout: float = 2.0
    name: str = "nimsforest"
    stay_on_configured: bool = False  # reconnect to the given servers only (see above)


@dataclass(frozen=True)
class ConnectionSnapshot:
    state: ConnectionState
    server: str | None
    reconnects: int
    last_error: str | None
    since: float


class NatsUnavailable(Exception):
    """The first connection failed after every retry; the message says where and why."""


class ConnectionManager:
    def __init__(self, servers: list[str], options: ConnectionOptions = ConnectionOptions(),
                 *, user: str | None = None, password: str | None = None) -> None:
        self.servers = servers
        self.options = options
        self._user = user
        self._password = password
        self.nc: Client = natsclient.Client()
        self._state = ConnectionState.CONNECTING
        self._since = time.time()
        self._reconnects = 0
        self._last_error: str | None = None
        self._connected = asyncio.Event()
        self._listeners: list[Callable[[ConnectionEvent], None]] = []
        self._closing = False
        self._connecting = False
        self._ever_connected = False
        self._configured = frozenset(_netloc(u) for u in servers)

    # --- observing -------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self.nc.is_connected

    def on_event(self, callback: Callable[[ConnectionEvent], None]) -> None:
        self._listeners.append(callback)

    async def wait_for_connection(self, timeout: float) -> bool:
        try:  # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            async with asyncio.timeout(timeout):
                await self._connected.wait()
            return True
        except TimeoutError:
            return False

    def snapshot(self) -> ConnectionSnapshot:
        server = None
        if self.nc.is_connected and self.nc.connected_url is not None:
            u = self.nc.connected_url
            server = f"{u.hostname}:{u.port}"
        return ConnectionSnapshot(self._state, server, self._reconnects, self._last_error, self._since)

    def _emit(self, event: ConnectionEvent, state: ConnectionState | None = None) -> None:
        if state is not None and state is not self._state:
            self._state = state
            self._since = time.time()
        metrics.nats_connection_status.set(1 if self.nc.is_connected else 0)
        if self.nc.is_connected:
            self._connected.set()
        else:
            self._connected.clear()
        for cb in list(self._listeners):
            try:
                cb(event)
            except Exception:  # a listener bug must not break the connection
                log.exception("Connection event listener failed")

    # --- nats-py callbacks ----------------------------------------------------------------------
    async def _disconnected(self) -> None:
        if self._closing or self._connecting:
            return
        log.warning("NATS connection lost; reconnecting every %gs", self.options.reconnect_wait)
        self._emit(ConnectionEvent.DISCONNECTED, ConnectionState.DISCONNECTED)

    async def _reconnected(self) -> None:
        self._reconnects += 1
        metrics.nats_reconnect_total.inc()
        log.info("NATS connection re-established to %s", self.snapshot().server)
        self._emit(ConnectionEvent.RECONNECTED, ConnectionState.CONNECTED)

    async def _closed(self) -> None:
        if self._connecting:
            return
        log.debug("NATS connection closed")
        self._emit(ConnectionEvent.CLOSED, ConnectionState.CLOSED)

    async def _error(self, exc: Exception) -> None:
        text = str(exc) or type(exc).__name__
        if text != self._last_error:
            log.debug("NATS connection error: %s", text)
        self._last_error = text
        self._emit(ConnectionEvent.ERROR)

    def _reconnect_to(self, servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
        """nats-py's reconnect choice when `stay_on_configured`: of the given servers, the
        one tried least since it last worked; at once the first time, then every
        `reconnect_wait` (as nats-py's own choice waits between attempts at one server)."""
        ours = [s for s in servers if s.uri.netloc in self._configured]
        if not ours:  # cannot happen: the given servers stay in the pool
            return None, self.options.reconnect_wait
        pick = min(ours, key=lambda s: s.reconnects)
        return pick, self.options.reconnect_wait if pick.reconnects else 0.0

    # --- connecting -----------------------------------------------------------------------------
    async def connect(self) -> Client:
        """Connect, retrying `retry_attempts` times; raise NatsUnavailable when all fail.

        nats-py's own connect keeps cycling through unreachable servers when reconnects
        are unlimited, so each first attempt is bounded here; once connected, nats-py
        reconnects on its own (forever with NATS_MAX_RECONNECTS=-1).
        """
        opts = self.options
        attempts = max(1, opts.retry_attempts)
        bound = opts.connect_timeout * max(1, len(self.servers)) + 0.5
        for attempt in range(1, attempts + 1):
            nc = natsclient.Client()
            self._connecting = True
            try:
                await asyncio.wait_for(
                    nc.connect(
                        servers=self.servers,
                        user=self._user,
                        password=self._password,
                        name=opts.name,
                        connect_timeout=opts.connect_timeout,  # type: ignore[arg-type]
                        reconnect_time_wait=opts.reconnect_wait,  # type: ignore[arg-type]
                        max_reconnect_attempts=opts.max_reconnects,
                        allow_reconnect=True,
                        disconnected_cb=self._disconnected,
                        reconnected_cb=self._reconnected,
                        closed_cb=self._closed,
                        error_cb=self._error,
                        reconnect_to_server_handler=(
                            self._reconnect_to if opts.stay_on_configured else None),
                    ),
                    bound,
                )
            except Exception as exc:  # noqa: BLE001 - every failure is retried, then reported
                self._last_error = self._last_error or reason(exc)
                with contextlib.suppress(Exception):
                    await nc.close()
                if attempt == attempts:
                    break
                log.warning(
                    "Cannot connect to NATS at %s (attempt %d of %d): %s; retrying in %gs",
                    _redact(self.servers), attempt, attempts, self._last_error, opts.retry_interval,
                )
                self._last_error = None
                await asyncio.sleep(opts.retry_interval)
                continue
            finally:
                self._connecting = False
            self.nc = nc
            self._ever_connected = True
            log.debug("NATS connection established to %s", self.snapshot().server)
            self._emit(ConnectionEvent.CONNECTED, ConnectionState.CONNECTED)
            return nc
        raise NatsUnavailable(
            f"Cannot connect to NATS at {_redact(self.servers)} after {attempts} attempt(s): "
            f"{self._last_error}."
        )

    async def close(self) -> None:
        self._closing = True
        if not self._ever_connected:
            return
        if self.nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 5.0)
        if not self.nc.is_closed:
            try:
                await self.nc.close()
            except OSError as exc:  # the transport was lost meanwhile: it is closed all the same
                log.debug("NATS connection closed with its transport already gone: %s", exc)
        self._emit(ConnectionEvent.CLOSED, ConnectionState.CLOSED)


def _netloc(url: str) -> str:
    """A server URL's host:port as nats-py keeps it (nats:// and port 4222 when left out)."""
    parsed = urlparse(url if "://" in url else f"nats://{url}")
    return f"{parsed.hostname}:{parsed.port or 4222}" if parsed.username is None else parsed.netloc


def _redact(servers: list[str]) -> str:
    return redact(",".join(servers))
