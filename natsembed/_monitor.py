"""An async client for nats-server's HTTP monitoring port, with typed answers.

Only the fields NimsForest uses are modelled; everything else is ignored.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import httpx

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
    """Reads one nats-server's monitoring endpoints. Every call has a short timeout."""

    def __init__(self, base_url: str, timeout: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None

    def _build(self) -> httpx.AsyncClient:
        import httpx

        # Plain HTTP to a monitoring port (nats-server's default): no TLS context (building
        # one loads the CA bundle, ~40 ms per client, on the start-up path). https is verified.
        return httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout, trust_env=False,
            verify=self.base_url.startswith("https:"),
        )

    async def _client(self) -> httpx.AsyncClient:
        # httpx is imported and the client built in a thread on first use (~0.2 s of CPU):
        # the event loop meanwhile goes on spawning nats-servers instead of waiting.
        if self._http is None:
            client = await asyncio.to_thread(self._build)
            if self._http is None:
                self._http = client
            else:  # another first call won the race
                await client.aclose()
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        resp = await (await self._client()).get(path, params=params)
        resp.raise_for_status()
        return resp.json()

    async def healthz(self, *, js_meta_only: bool = False, js_enabled_only: bool = False) -> bool:
        """True when /healthz answers 200 for the given JetStream check; False otherwise."""
        params = {}
        if js_meta_only:
            params["js-meta-only"] = "true"
        if js_enabled_only:
            params["js-enabled-only"] = "true"
        client = await self._client()
        import httpx

        try:
            resp = await client.get("/healthz", params=params)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

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
