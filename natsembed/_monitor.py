"""An async client for nats-server's HTTP monitoring port, with typed answers.

Only the fields NimsForest uses are modelled; everything else is ignored.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from natsembed.errors import MonitorUnavailable

_M = ConfigDict(extra="ignore", frozen=True, defer_build=True)


class MetaPeer(BaseModel):
    model_config = _M
    name: str
    current: bool = False
    offline: bool = False
    active: int = 0  # nanoseconds since last heard from
    peer: str = ""


class MetaCluster(BaseModel):
    model_config = _M
    name: str | None = None
    leader: str | None = None
    peer: str | None = None
    cluster_size: int = 0
    quorum_needed: int = 0  # this server's current effective quorum
    rescue: bool = False  # a quorum rescue ($JS.API.META.RESCUE) is active on this server
    replicas: tuple[MetaPeer, ...] = ()

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.replicas)


class StreamReplica(BaseModel):
    model_config = _M
    name: str
    current: bool = False
    offline: bool = False
    lag: int = 0


class StreamCluster(BaseModel):
    model_config = _M
    leader: str | None = None
    replicas: tuple[StreamReplica, ...] = ()


class StreamDetail(BaseModel):
    model_config = _M
    name: str
    cluster: StreamCluster | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    state: dict[str, Any] = Field(default_factory=dict)
    consumer_detail: tuple[dict[str, Any], ...] = ()


class AccountDetail(BaseModel):
    model_config = _M
    name: str
    stream_detail: tuple[StreamDetail, ...] = ()


class Jsz(BaseModel):
    model_config = _M
    server_name: str = ""
    streams: int = 0
    consumers: int = 0
    messages: int = 0
    bytes: int = 0
    memory: int = 0
    storage: int = 0
    meta_cluster: MetaCluster | None = None
    account_details: tuple[AccountDetail, ...] = ()
    disabled: bool = False

    def stream_details(self) -> tuple[StreamDetail, ...]:
        return tuple(s for a in self.account_details for s in a.stream_detail)


class Varz(BaseModel):
    model_config = _M
    server_id: str = ""
    server_name: str = ""
    version: str = ""
    config_digest: str = ""
    config_load_time: str = ""
    cpu: float = 0.0
    mem: int = 0
    cores: int = 0
    connections: int = 0
    in_msgs: int = 0
    out_msgs: int = 0
    in_bytes: int = 0
    out_bytes: int = 0
    uptime: str = ""
    tags: tuple[str, ...] = ()


class Route(BaseModel):
    model_config = _M
    remote_name: str = ""
    ip: str = ""
    port: int = 0
    did_solicit: bool = False


class Routez(BaseModel):
    model_config = _M
    server_name: str = ""
    num_routes: int = 0
    routes: tuple[Route, ...] = ()

    @property
    def remote_names(self) -> tuple[str, ...]:
        """Distinct servers this one is routed to (pooled routes counted once)."""
        return tuple(sorted({r.remote_name for r in self.routes if r.remote_name}))


class MonitorClient:
    """Reads one nats-server's monitoring endpoints. Every call has a short timeout.

    Each call is one GET over a fresh asyncio connection, spoken with h11 (the HTTP/1.1
    protocol library uvicorn and httpcore are built on, already imported by the node): a
    monitoring port is local or near, so a pool saves nothing, and the node does not
    import and build an HTTP client library on its start-up path for these few reads
    (httpx with httpcore: 0.1 to 0.3 s of CPU, more where trio or rich are installed).
    A failed read raises MonitorUnavailable (one sentence); `healthz` answers False.
    """

    def __init__(self, base_url: str, timeout: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        url = urlsplit(self.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"A monitoring URL is http(s)://host:port, not {base_url!r}.")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._authority = url.netloc.rpartition("@")[2]
        self._prefix = url.path
        self._tls: ssl.SSLContext | None = None  # https only: verified, built on first use

    async def _exchange(self, target: str) -> tuple[int, bytes]:
        """One GET of `target`: its status and body."""
        import h11  # after the spawn: natsembed is imported before nats-server starts

        if self._https and self._tls is None:
            self._tls = ssl.create_default_context()
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._tls)
        try:
            conn = h11.Connection(h11.CLIENT)
            headers = [("Host", self._authority), ("Accept", "application/json"),
                       ("Connection", "close")]
            writer.write(conn.send(h11.Request(method="GET", target=target, headers=headers)))
            writer.write(conn.send(h11.EndOfMessage()))
            status, body = 0, bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, bytes(body)
        finally:
            writer.close()

    async def _request(self, path: str, params: dict[str, str] | None) -> tuple[int, bytes]:
        from h11 import ProtocolError

        target = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        try:
            async with asyncio.timeout(self.timeout):
                return await self._exchange(target)
        except (OSError, TimeoutError, ProtocolError) as exc:
            what = "no answer within the timeout" if isinstance(exc, TimeoutError) else (
                str(exc) or type(exc).__name__)
            raise MonitorUnavailable(
                f"nats-server monitoring at {self.base_url}{path} did not answer: {what}"
            ) from exc

    async def close(self) -> None:
        """Nothing is held between calls; kept for the callers' setup/teardown pairing."""

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        status, body = await self._request(path, params)
        if not 200 <= status < 300:
            raise MonitorUnavailable(
                f"nats-server monitoring at {self.base_url}{path} answered {status}"
            )
        try:
            return json.loads(body)
        except ValueError as exc:
            raise MonitorUnavailable(
                f"nats-server monitoring at {self.base_url}{path} answered with no JSON"
            ) from exc

    async def healthz(self, *, js_meta_only: bool = False, js_enabled_only: bool = False) -> bool:
        """True when /healthz answers 200 for the given JetStream check; False otherwise."""
        params = {}
        if js_meta_only:
            params["js-meta-only"] = "true"
        if js_enabled_only:
            params["js-enabled-only"] = "true"
        try:
            status, _ = await self._request("/healthz", params)
        except MonitorUnavailable:
            return False
        return status == 200

    async def leads_meta(self) -> bool:
        """True when this server leads the JetStream meta group *as JetStream sees it*.

        Raft tells JetStream of a new leadership only once the leader's first entry of its
        term is applied (a round trip to a quorum). Until then /healthz?js-meta-only
        already answers 200, but requests only the meta leader answers (stream and
        consumer create or info) go unanswered and time out. /jsz?leader-only answers 200
        on that leader only (400 elsewhere)."""
        try:
            status, _ = await self._request("/jsz", {"leader-only": "true"})
        except MonitorUnavailable:
            return False
        return status == 200

    async def varz(self) -> Varz:
        return Varz.model_validate(await self._get("/varz"))

    async def jsz(self, *, streams: bool = False, consumers: bool = False) -> Jsz:
        params = {}
        if streams or consumers:
            params["accounts"] = "true"
            params["streams"] = "true"
            params["config"] = "true"
        if consumers:
            params["consumers"] = "true"
        return Jsz.model_validate(await self._get("/jsz", params))

    async def routez(self) -> Routez:
        return Routez.model_validate(await self._get("/routez"))
