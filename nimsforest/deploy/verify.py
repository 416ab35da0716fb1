"""Wait until the node on this machine serves and is a member of its cluster.

Used by scripts/setup-node.sh after it starts the units, through the command
`python -m nimsforest.cli.verify --mode embedded --min-size 1 --timeout 5m`
(nimsforest/cli/verify.py).

Embedded mode asks the daemon's /health/cluster (200 and at least --min-size members);
sidecar mode asks the local nats-server's /healthz and /routez (routed to at least
--min-size - 1 other servers), then the daemon's /health. Exit 0 with one sentence when
it holds, 1 with the last reason when the time runs out, 2 for bad options.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass

import httpx


class Mode(enum.Enum):
    EMBEDDED = "embedded"
    SIDECAR = "sidecar"


@dataclass(frozen=True)
class Verdict:
    ok: bool
    sentence: str


async def _embedded(client: httpx.AsyncClient, api: str, min_size: int) -> Verdict:
    r = await client.get(f"{api}/health/cluster")
    body = r.json()
    size = int(body.get("size") or 0)
    if r.status_code != 200:
        problems = "; ".join(body.get("problems") or []) or f"status {r.status_code}"
        return Verdict(False, f"the cluster is not whole yet: {problems}")
    if size < min_size:
        return Verdict(False, f"the cluster has {size} member(s), waiting for {min_size}")
    return Verdict(True, f"node {body.get('node')} is in a cluster of {size} "
                         f"(replication {body.get('replication_factor')}): {body.get('last_sentence')}")


async def _sidecar(client: httpx.AsyncClient, api: str, monitor: str, min_size: int) -> Verdict:
    healthz = await client.get(f"{monitor}/healthz")
    if healthz.status_code != 200:
        return Verdict(False, f"nats-server is not healthy: {healthz.json().get('error', healthz.status_code)}")
    from natsembed import Routez

    routez = Routez.model_validate((await client.get(f"{monitor}/routez")).json())
    peers = routez.remote_names
    if len(peers) + 1 < min_size:
        return Verdict(False, f"nats-server is routed to {len(peers)} other server(s), waiting for {min_size - 1}")
    health = await client.get(f"{api}/health")
    if health.status_code != 200:
        reasons = "; ".join(health.json().get("reasons") or []) or f"status {health.status_code}"
        return Verdict(False, f"the NimsForest daemon does not serve yet: {reasons}")
    return Verdict(True, f"nats-server {routez.server_name} is routed to {', '.join(peers) or 'no one'} "
                         "and the NimsForest daemon serves")


async def verify(mode: Mode, api: str, monitor: str, min_size: int, timeout: float, interval: float = 2.0) -> Verdict:
    from nimsforest.settings import api_headers

    deadline = time.monotonic() + timeout
    last = Verdict(False, "nothing answered yet")
    async with httpx.AsyncClient(timeout=5, headers=api_headers(), trust_env=False) as client:
        while True:
            try:
                if mode is Mode.EMBEDDED:
                    last = await _embedded(client, api, min_size)
                else:
                    last = await _sidecar(client, api, monitor, min_size)
            except httpx.HTTPError as exc:
                last = Verdict(False, f"no answer yet ({type(exc).__name__})")
            except ValueError:
                last = Verdict(False, "an answer that is not JSON")
            if last.ok or time.monotonic() >= deadline:
                return last
            await asyncio.sleep(interval)


__all__ = ["Mode", "Verdict", "verify"]
