"""The one observer of NATS on a node: what /health, /health/cluster, the metrics and the
cluster manager all read.

`NatsObserver.look()` reads the local server at once (the supervisor's snapshot, the
monitoring port's /jsz and /routez, the client connection) and returns a frozen
`NatsView` with the latest completed cluster-wide stream list and, read with it at most
every CONSUMERS_EVERY seconds, every durable consumer's lag (the components' lag in the
status and `nimsforest_consumer_pending` in /metrics). Listing the streams can
take seconds while streams move, so it runs in the background: `refresh_streams()`
starts a new listing, and a look never waits for one. The observer's own loop looks
every `interval` seconds unless someone (the cluster manager, each cycle) looked more
recently, and keeps going through every error: an error is part of the view.

Contract: `view` never blocks and is never older than the last look; a view whose
`observed_at` is older than `stale_after()` is itself a reason to be unhealthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from natsembed import EmbeddedNats, MonitorClient, ProcessState, is_witness, node_of
from natsembed.errors import reason
from nimsforest import metrics
from nimsforest.marks import OWNER_KEY, OWNER_VALUE

if TYPE_CHECKING:
    from nimsforest.connection import ConnectionManager

log = logging.getLogger("nimsforest.observer")

_F = ConfigDict(frozen=True, defer_build=True)

# The meta leader answers a stream list only after asking every stream leader, which can
# take seconds while streams move (a node joined, a replica count changed).
STREAM_LIST_TIMEOUT = 5.0
# The consumers' lag is read at most this often (a listing of the streams runs about every
# second): it goes out in the status reports, which are sent every 2 s.
CONSUMERS_EVERY = 2.0


class StreamView(BaseModel):
    model_config = _F
    name: str
    replicas: int
    leader: str | None
    current: bool  # every replica is current
    messages: int = 0
    consumers: int = 0
    owned: bool = True  # unknown (True) when its leader did not answer: replicas is then 0
    lagging: tuple[str, ...] = ()


class ConsumerView(BaseModel):
    """A durable consumer of a stream, as its stream's leader answered for it: what it has
    not been delivered yet (`pending`) and what was delivered but is not acknowledged yet
    (`ack_pending`); their sum is the component's lag."""

    model_config = _F
    stream: str
    name: str
    pending: int = 0
    ack_pending: int = 0
    at: float = 0.0  # time.time() its stream's consumers were asked for

    @property
    def lag(self) -> int:
        return self.pending + self.ack_pending


class MetaPeerView(BaseModel):
    """Another server of the meta group, as the local server sees it."""

    model_config = _F
    name: str
    current: bool
    offline: bool


class NatsView(BaseModel):
    """One observation of the local NATS server."""

    model_config = _F
    observed_at: float  # time.time()
    at: float = 0.0  # time.monotonic() of the same moment
    process_state: ProcessState | None = None  # the supervised child (None in sidecar mode)
    process_pid: int | None = None
    restarts: int = 0
    witness: str | None = None
    connected: bool = False
    monitor_ok: bool = False  # the monitoring port answered (False in sidecar mode)
    server_name: str = ""  # the local server's name, from its monitoring port
    meta_leader: str | None = None
    members: tuple[str, ...] = ()  # JetStream servers in the meta group, witness excluded
    meta_peers: tuple[MetaPeerView, ...] = ()  # the other servers of the group, witness included
    meta_size: int = 0  # the meta group's size as the local server knows it
    jetstream_disabled: bool = False  # the local server's JetStream is off (e.g. removed)
    routed: frozenset[str] = frozenset()  # servers the local one has live routes to
    streams: tuple[StreamView, ...] = ()
    streams_listed: bool = False  # `streams` comes from a completed listing
    consumers: tuple[ConsumerView, ...] = ()  # every durable consumer of the listed streams
    error: str | None = None

    @property
    def member_nodes(self) -> frozenset[str]:
        """The meta group's members as nodes: each server name as its node, once
        (natsembed._names: after a heal a node's server is <node>-gen-N)."""
        return frozenset(node_of(m) for m in self.members)

    @property
    def stream_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.streams if not s.name.startswith("KV_"))

    @property
    def kv_buckets(self) -> tuple[str, ...]:
        return tuple(s.name[3:] for s in self.streams if s.name.startswith("KV_"))


async def cluster_streams(
    conn: ConnectionManager, timeout: float = STREAM_LIST_TIMEOUT
) -> tuple[StreamView, ...]:
    """Every stream of the application account, cluster-wide, via the JetStream API.

    Stream names come from the meta leader; each stream's state from its own leader, asked
    concurrently. (A single STREAM.LIST request makes the meta leader gather every
    stream's state and wait for the slowest, which takes seconds while streams move.) A
    stream whose leader does not answer in time is reported without a leader.
    """
    js = conn.nc.jetstream(timeout=timeout)
    names: list[str] = []
    offset = 0
    while True:
        msg = await conn.nc.request(
            "$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode(), timeout
        )
        page = json.loads(msg.data)
        names += page.get("streams") or []
        offset = len(names)
        if offset >= int(page.get("total", 0)) or not page.get("streams"):
            break
    infos = await asyncio.gather(
        *(asyncio.wait_for(js.stream_info(n), timeout) for n in names), return_exceptions=True
    )
    out = []
    for name, info in zip(names, infos, strict=True):
        if isinstance(info, BaseException):
            out.append(StreamView(name=name, replicas=0, leader=None, current=False))
            continue
        cluster = info.cluster
        replicas = (cluster.replicas or []) if cluster else []
        meta = info.config.metadata
        out.append(
            StreamView(
                name=info.config.name or name,
                replicas=info.config.num_replicas or 1,
                leader=cluster.leader if cluster else None,
                current=all(bool(r.current) and not r.offline for r in replicas),
                messages=info.state.messages,
                consumers=info.state.consumer_count,
                owned=bool(meta and meta.get(OWNER_KEY) == OWNER_VALUE),
                lagging=tuple(r.name for r in replicas if not r.current or r.offline),
            )
        )
    return tuple(sorted(out, key=lambda v: v.name))


async def stream_consumers(
    conn: ConnectionManager, streams: tuple[StreamView, ...],
    before: tuple[ConsumerView, ...] = (), timeout: float = STREAM_LIST_TIMEOUT,
) -> tuple[ConsumerView, ...]:
    """The durable consumers of every stream that has consumers (one CONSUMER.LIST a
    stream, asked concurrently, from the stream's leader: the same answer on every node),
    each with the time it was asked for. A stream whose leader does not answer keeps its
    consumers' readings from `before` (older: the cluster view prefers a fresher one)."""
    js = conn.nc.jetstream(timeout=timeout)

    async def of(stream: str) -> list[ConsumerView]:
        at = time.time()
        found: list[ConsumerView] = []
        while True:
            page = await js.consumers_info(stream, offset=len(found) or None)
            found += [
                ConsumerView(stream=stream, name=c.name, pending=c.num_pending or 0,
                             ack_pending=c.num_ack_pending or 0, at=at)
                for c in page if c.config.durable_name
            ]
            if len(page) < 256:  # the server's page size
                return found

    wanted = [s.name for s in streams if s.consumers]
    pages = await asyncio.gather(
        *(asyncio.wait_for(of(n), timeout) for n in wanted), return_exceptions=True)
    out = [c for p in pages if not isinstance(p, BaseException) for c in p]
    unanswered = {n for n, p in zip(wanted, pages, strict=True) if isinstance(p, BaseException)}
    out += [c for c in before if c.stream in unanswered]
    return tuple(sorted(out, key=lambda c: (c.stream, c.name)))


def export_consumers(consumers: tuple[ConsumerView, ...], before: tuple[ConsumerView, ...]
                     ) -> None:
    """Set /metrics' consumer gauges to a listing (a consumer gone loses its series)."""
    now = {(c.stream, c.name) for c in consumers}
    for c in before:
        if (c.stream, c.name) not in now:
            with contextlib.suppress(KeyError):
                metrics.consumer_pending.remove(c.stream, c.name)
    for c in consumers:
        metrics.consumer_pending.labels(c.stream, c.name).set(c.lag)


def consumer_lag(view: NatsView) -> dict[str, tuple[int, float]]:
    """A view's consumers' lag by durable name, with the time each was read (what the
    controller puts in the node's status)."""
    return {c.name: (c.lag, c.at) for c in view.consumers}


class NatsObserver:
    """Observes the local NATS; see the module's docstring for the contract."""

    def __init__(
        self,
        node_name: str,
        conn: ConnectionManager,
        *,
        embedded: EmbeddedNats | None = None,
        monitor: MonitorClient | None = None,
        interval: float = 1.0,
    ) -> None:
        self.node_name = node_name
        self.conn = conn
        self.embedded = embedded
        self.monitor = monitor or (embedded.monitor if embedded else None)
        self.interval = interval
        self.view = NatsView(observed_at=0.0)
        self._streams: tuple[StreamView, ...] = ()
        self._consumers: tuple[ConsumerView, ...] = ()
        self._consumers_read = -1e9  # time.monotonic() of the last consumer listing
        self._streams_error: str | None = None
        self._listing: asyncio.Task[None] | None = None
        self._listed = False
        self._looked: tuple[dict[str, object], tuple[str, ...]] = ({"observed_at": 0.0}, ())
        self._last_error: str | None = None

    # --- looking ---------------------------------------------------------------------------
    async def look(self) -> NatsView:
        """Observe the local server now (never waits for a stream list)."""
        now, mono = time.time(), time.monotonic()
        fields: dict[str, object] = {
            "observed_at": now, "at": mono, "connected": self.conn.is_connected
        }
        if self.embedded is not None:
            snap = self.embedded.snapshot()
            fields.update(
                process_state=snap.node.state,
                process_pid=snap.node.pid,
                restarts=snap.node.restarts,
                witness=snap.witness_name,
            )
        errors: list[str] = []
        if self.monitor is not None:
            try:
                jsz, routez = await asyncio.gather(self.monitor.jsz(), self.monitor.routez())
            except Exception as exc:  # noqa: BLE001 - reported in the view
                errors.append(f"monitoring port did not answer: {reason(exc)}")
            else:
                fields["monitor_ok"] = True
                fields["routed"] = frozenset(routez.remote_names)
                fields["jetstream_disabled"] = jsz.disabled
                # /jsz has no server name; /routez has it. After a heal it is not the node's
                # name (natsembed._names)
                own = routez.server_name or (
                    self.embedded.server_name if self.embedded else self.node_name)
                fields["server_name"] = own
                meta = jsz.meta_cluster
                if meta is not None:
                    fields["meta_leader"] = meta.leader
                    fields["meta_size"] = meta.cluster_size
                    names = {own, *meta.members}
                    fields["members"] = tuple(sorted(n for n in names if not is_witness(n)))
                    fields["meta_peers"] = tuple(
                        MetaPeerView(name=p.name, current=p.current, offline=p.offline)
                        for p in meta.replicas
                        if p.name != own
                    )
        self._looked = (fields, tuple(errors))
        if self._listing is None and self._wants_streams(fields):
            self.refresh_streams()
        view = self._compose()
        if view.members:
            metrics.cluster_size.set(len(view.member_nodes))
            metrics.nats_cluster_peers.set(len(view.member_nodes) - 1)
        return view

    def _compose(self) -> NatsView:
        """The view from the last look and the last completed stream listing."""
        fields, errors = self._looked
        wanted = self._wants_streams(fields)
        problems = list(errors)
        if wanted and self._streams_error:
            problems.append(self._streams_error)
        self.view = NatsView.model_validate({
            **fields,
            "streams": self._streams if wanted else (),
            "consumers": self._consumers if wanted else (),
            "streams_listed": wanted and self._listed,
            "error": "; ".join(problems) or None,
        })
        self._note(self.view.error)
        return self.view

    def _wants_streams(self, fields: dict[str, object]) -> bool:
        """Streams are listed once the connection is up and (with a monitor) JetStream has
        a meta leader to answer."""
        return self.conn.is_connected and (self.monitor is None or bool(fields.get("meta_leader")))

    def refresh_streams(self) -> None:
        """Start listing the streams anew (a listing still running is dropped)."""
        if self._listing is not None:
            self._listing.cancel()
        self._listing = asyncio.create_task(self._list_streams(), name="stream-list")

    async def _list_streams(self) -> None:
        try:
            self._streams = await cluster_streams(self.conn, timeout=STREAM_LIST_TIMEOUT)
            self._streams_error, self._listed = None, True
            if time.monotonic() - self._consumers_read >= CONSUMERS_EVERY:
                consumers = await stream_consumers(self.conn, self._streams, self._consumers,
                                                   STREAM_LIST_TIMEOUT)
                export_consumers(consumers, self._consumers)
                self._consumers, self._consumers_read = consumers, time.monotonic()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported in the view
            self._streams_error = f"JetStream did not list its streams: {reason(exc)}"
        finally:
            if self._listing is asyncio.current_task():
                self._listing = None
        self._compose()  # a finished listing shows at once, not at the next look

    def _note(self, error: str | None) -> None:
        if error != self._last_error:
            if error:
                log.warning("NATS observer: %s", error)
            elif self._last_error:
                log.info("NATS observer: NATS answers again")
            self._last_error = error

    # --- the loop --------------------------------------------------------------------------
    async def run(self) -> None:
        """Look every `interval` seconds (unless a look came sooner), through every error."""
        try:
            while True:
                if time.monotonic() - self.view.at >= self.interval:
                    try:
                        await asyncio.wait_for(self.look(), STREAM_LIST_TIMEOUT)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # noqa: BLE001 - the loop lives on
                        self._note(f"observing failed: {reason(exc)}")
                await asyncio.sleep(self.interval / 2)
        finally:
            if self._listing is not None:
                self._listing.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._listing

    def stale_after(self) -> float:
        """Seconds after which the view no longer speaks for NATS."""
        return STREAM_LIST_TIMEOUT + 5.0 + self.interval * 2

    def is_stale(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now - self.view.observed_at > self.stale_after()


__all__ = [
    "CONSUMERS_EVERY",
    "STREAM_LIST_TIMEOUT",
    "ConsumerView",
    "MetaPeerView",
    "NatsObserver",
    "NatsView",
    "StreamView",
    "cluster_streams",
    "consumer_lag",
    "stream_consumers",
]
