"""Where the nodes are (registry or --nodes) and what their nats-servers say (/varz, /jsz, /healthz).

Every node is asked at the same time, each with its own timeout. A node that does not
answer becomes a NodeSample with `reachable=False` and an `error`: it is reported, and
never stops the others from being read.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from natsembed import node_of
from nimsforest.grow.model import ForestRef, ForestSnapshot, NodeSample, NodeTarget, Source


class GrowError(RuntimeError):
    """Something `grow` cannot work around; the message is one sentence."""


def _int(value: Any) -> int | None:
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return "no answer in time"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    return str(exc) or type(exc).__name__


def forest_from_registry(url: str, service: str) -> ForestRef:
    return ForestRef(id=f"{url.rstrip('/')}#{service}", source=Source.REGISTRY, registry_url=url, service=service)


def forest_from_urls(urls: list[str]) -> ForestRef:
    return ForestRef(id="nodes:" + ",".join(sorted(urls)), source=Source.NODES)


def parse_monitor_urls(value: str) -> list[str]:
    """'http://h:8222,h2:8222' -> monitoring base URLs; ValueError (one sentence) if one is bad."""
    urls: list[str] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        split = urlsplit(part if "://" in part else f"http://{part}")
        try:
            port = split.port
        except ValueError:
            port = -1
        if split.scheme not in ("http", "https") or not split.hostname or port == -1 or split.username:
            raise ValueError(f"'{part}' is not a monitoring URL such as http://10.0.0.1:8222")
        base = f"{split.scheme}://{split.netloc if port else split.netloc + ':8222'}"
        if base not in urls:
            urls.append(base)
    if not urls:
        raise ValueError("--nodes lists no monitoring URL")
    return urls


async def targets_from_registry(url: str, service: str, token: str | None, timeout: float) -> list[NodeTarget]:
    from registry import RegistryError, open_registry

    try:
        reg = open_registry(url, service=service, token=token)
    except ValueError as exc:
        raise GrowError(str(exc)) from None
    try:
        nodes = await asyncio.wait_for(reg.list_nodes(), timeout)
    except (RegistryError, TimeoutError, OSError) as exc:
        raise GrowError(f"The registry at {url} cannot be read: {_reason(exc).rstrip('.')}.") from None
    finally:
        await reg.close()
    return [
        NodeTarget(name=n.name, monitor_url=n.monitor_url, cluster_address=n.cluster_address,
                   ram_bytes=_int(n.metadata.get("ram_bytes")), cpus=_int(n.metadata.get("cpus")))
        for n in sorted(nodes, key=lambda n: n.name)
    ]


def targets_from_urls(urls: list[str]) -> list[NodeTarget]:
    return [NodeTarget(name=urlsplit(u).netloc, monitor_url=u) for u in urls]


async def sample(client: httpx.AsyncClient, target: NodeTarget, timeout: float) -> NodeSample:
    """One node's view; never raises for a node that is down or answers nonsense."""
    if not target.monitor_url:
        return NodeSample(target, target.name, reachable=False,
                          error="no monitoring URL in the registry (is NATS_MONITOR_PORT 0?)")
    base = target.monitor_url.rstrip("/")
    try:
        varz_r, jsz_r, healthz_r = await asyncio.wait_for(
            asyncio.gather(client.get(f"{base}/varz"), client.get(f"{base}/jsz"), client.get(f"{base}/healthz")),
            timeout,
        )
        if varz_r.status_code != 200:
            return NodeSample(target, target.name, reachable=False, error=f"/varz answered {varz_r.status_code}")
        varz = varz_r.json()
        jsz = jsz_r.json() if jsz_r.status_code == 200 else {}
        health = healthz_r.json() if healthz_r.headers.get("content-type", "").startswith("application/json") else {}
    except (httpx.HTTPError, TimeoutError) as exc:
        return NodeSample(target, target.name, reachable=False, error=f"unreachable: {_reason(exc)}")
    except ValueError:
        return NodeSample(target, target.name, reachable=False, error="not a NATS monitoring endpoint (no JSON)")
    healthy = healthz_r.status_code == 200
    error = None if healthy else f"unhealthy: {health.get('error') or f'/healthz answered {healthz_r.status_code}'}"
    # a server name after a heal is <node>-gen-N: the node is what the forest counts
    name = target.name if target.cluster_address else node_of(str(varz.get("server_name") or target.name))
    return NodeSample(
        target=target,
        name=name,
        reachable=True,
        healthy=healthy,
        error=error,
        cpu_process_percent=float(varz["cpu"]) if isinstance(varz.get("cpu"), (int, float)) else None,
        memory_bytes=_int(varz.get("mem")),
        connections=int(varz.get("connections") or 0),
        in_msgs=int(varz.get("in_msgs") or 0),
        out_msgs=int(varz.get("out_msgs") or 0),
        in_bytes=int(varz.get("in_bytes") or 0),
        out_bytes=int(varz.get("out_bytes") or 0),
        jetstream_storage_bytes=int(jsz.get("storage") or 0) if jsz else None,
        jetstream_memory_bytes=int(jsz.get("memory") or 0) if jsz else None,
        streams=int(jsz.get("streams") or 0) if jsz else None,
        version=varz.get("version"),
    )


async def collect(forest: ForestRef, targets: list[NodeTarget], timeout: float) -> ForestSnapshot:
    """Every target sampled concurrently, each within `timeout` seconds."""
    async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
        samples = await asyncio.gather(*(sample(client, t, timeout) for t in targets))
    return ForestSnapshot(forest=forest, measured_at=datetime.now(UTC), nodes=tuple(samples))


__all__ = ["GrowError", "collect", "forest_from_registry", "forest_from_urls", "parse_monitor_urls", "sample",
           "targets_from_registry", "targets_from_urls"]
