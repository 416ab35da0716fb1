"""Node health, answered from cached state.

`NatsObserver` is a loop that looks at the local NATS every second (the supervisor's
snapshot, the monitoring port's /jsz, the client connection) and stores a frozen
`NatsView`. Endpoints compose the answer from that view and from the in-memory status of
the other loops (cluster manager, registry client, forest), so a stuck nats-server can
never make /health hang: the worst it can do is make the view stale, which is itself
reported as unhealthy.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from natsembed import EmbeddedNats, MonitorClient, ProcessState, is_witness
from natsembed.errors import reason
from nimsforest.marks import OWNER_KEY, OWNER_VALUE

if TYPE_CHECKING:
    from nimsforest.connection import ConnectionManager

log = logging.getLogger("nimsforest.health")

_F = ConfigDict(frozen=True, defer_build=True)
class HealthStatus(enum.Enum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class NodeMode(enum.Enum):
    STANDALONE = "standalone"
    CLUSTER = "cluster"
    SIDECAR = "sidecar"


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


class NatsView(BaseModel):
    """One observation of the local NATS server."""

    model_config = _F
    observed_at: float
    process_state: str | None = None  # the supervised child's state (None in sidecar mode)
    process_pid: int | None = None
    restarts: int = 0
    witness: str | None = None
    connected: bool = False
    meta_leader: str | None = None
    members: tuple[str, ...] = ()  # JetStream servers in the meta group, witness excluded
    streams: tuple[StreamView, ...] = ()
    error: str | None = None

    @property
    def stream_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.streams if not s.name.startswith("KV_"))

    @property
    def kv_buckets(self) -> tuple[str, ...]:
        return tuple(s.name[3:] for s in self.streams if s.name.startswith("KV_"))


# The meta leader answers a stream list only after asking every stream leader, which can
# take seconds while streams move (a node joined, a replica count changed).
STREAM_LIST_TIMEOUT = 5.0


async def cluster_streams(conn: ConnectionManager, timeout: float = STREAM_LIST_TIMEOUT) -> tuple[StreamView, ...]:
    """Every stream of the application account, cluster-wide, via the JetStream API.

    Stream names come from the meta leader; each stream's state from its own leader, asked
    concurrently. (A single STREAM.LIST request makes the meta leader gather every
    stream's state and wait for the slowest, which takes seconds while streams move.) A
    stream whose leader does not answer in time is reported without a leader.
    """
    import json

    js = conn.nc.jetstream(timeout=timeout)
    names: list[str] = []
    offset = 0
    while True:
        msg = await conn.nc.request("$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode(), timeout)
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
        out.append(
            StreamView(
                name=info.config.name or name,
                replicas=info.config.num_replicas or 1,
                leader=cluster.leader if cluster else None,
                current=all(bool(r.current) and not r.offline for r in replicas),
                messages=info.state.messages,
                consumers=info.state.consumer_count,
                owned=bool(info.config.metadata and info.config.metadata.get(OWNER_KEY) == OWNER_VALUE),
                lagging=tuple(r.name for r in replicas if not r.current or r.offline),
            )
        )
    return tuple(sorted(out, key=lambda v: v.name))


class NatsObserver:
    """Observes the local NATS every `interval` seconds; keeps going through errors."""

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
        self._last_error: str | None = None
        self._changed = asyncio.Event()

    async def observe_once(self) -> NatsView:
        fields: dict[str, object] = {"observed_at": time.time(), "connected": self.conn.is_connected}
        if self.embedded is not None:
            snap = self.embedded.snapshot()
            fields.update(
                process_state=snap.node.state.value,
                process_pid=snap.node.pid,
                restarts=snap.node.restarts,
                witness=snap.witness_name,
            )
        errors: list[str] = []
        if self.monitor is not None:
            try:
                jsz = await self.monitor.jsz()
                meta = jsz.meta_cluster
                if meta is not None:
                    fields["meta_leader"] = meta.leader
                    names = {jsz.server_name or self.node_name, *meta.members}
                    fields["members"] = tuple(sorted(n for n in names if not is_witness(n)))
            except Exception as exc:  # noqa: BLE001 - reported in the view
                errors.append(f"monitoring port did not answer: {reason(exc)}")
        if self.conn.is_connected and (self.monitor is None or fields.get("meta_leader")):
            try:
                fields["streams"] = await cluster_streams(self.conn, timeout=STREAM_LIST_TIMEOUT)
            except Exception as exc:  # noqa: BLE001 - reported in the view
                errors.append(f"JetStream did not list its streams: {reason(exc)}")
        error = "; ".join(errors) or None
        fields["error"] = error
        if error != self._last_error:
            if error:
                log.warning("Health observer: %s", error)
            elif self._last_error:
                log.info("Health observer: NATS answers again")
            self._last_error = error
        self.view = NatsView.model_validate(fields)
        if self.view.members:
            from nimsforest import metrics

            metrics.cluster_size.set(len(self.view.members))
            metrics.nats_cluster_peers.set(len(self.view.members) - 1)
        return self.view

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self.observe_once(), STREAM_LIST_TIMEOUT + 3.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop lives on
                if str(exc) != self._last_error:
                    log.warning("Health observer failed: %s", reason(exc))
                    self._last_error = str(exc)
            await asyncio.sleep(self.interval)

    def is_stale(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now - self.view.observed_at > STREAM_LIST_TIMEOUT + 5.0 + self.interval * 2


def problems(view: NatsView, required_streams: tuple[str, ...], stale: bool) -> list[str]:
    """Why the node is not healthy (empty when it is)."""
    out: list[str] = []
    if stale:
        age = time.time() - view.observed_at
        out.append(f"health state is stale: NATS was last observed {age:.0f}s ago")
        return out
    if view.process_state is not None and view.process_state != ProcessState.READY.value:
        out.append(f"nats-server is {view.process_state}")
    if not view.connected:
        out.append("the node's NATS connection is down")
    if view.error:
        out.append(view.error)
    elif view.process_state is not None and view.meta_leader is None:
        out.append("JetStream has no meta leader")
    have = {s.name for s in view.streams}
    missing = [s for s in required_streams if s not in have]
    if missing and not view.error and view.process_state is not None:
        out.append("missing streams: " + ", ".join(missing))
    return out
