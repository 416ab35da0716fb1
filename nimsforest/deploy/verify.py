"""Wait until the node on this machine serves and is a member of its cluster.

Used by scripts/setup-node.sh after it starts the units:

    python -m nimsforest.deploy.verify --mode embedded --min-size 1 --timeout 5m

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

import click
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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--mode", type=click.Choice([m.value for m in Mode]), default="embedded", show_default=True)
@click.option("--api", envvar="NIMSFOREST_API", default="127.0.0.1:8080", show_default=True,
              help="The daemon's management API [env NIMSFOREST_API].")
@click.option("--monitor", default="127.0.0.1:8222", show_default=True,
              help="The local nats-server's monitoring address (sidecar mode).")
@click.option("--min-size", type=click.IntRange(1), default=1, show_default=True,
              help="Members the cluster must have, this node included.")
@click.option("--timeout", default="5m", show_default=True, help="How long to wait (10s, 5m, ...).")
def main(mode: str, api: str, monitor: str, min_size: int, timeout: str) -> None:
    """Wait until this machine's node serves and is a member of its cluster."""
    from nimsforest.cli._common import EXIT_FAILURE, EXIT_USAGE, fail, run_async
    from nimsforest.settings import local_http_url, parse_duration

    try:
        seconds = parse_duration(timeout)
        api_url, monitor_url = local_http_url(api), local_http_url(monitor)
    except ValueError as exc:
        fail(f"{str(exc).rstrip('.')}.", EXIT_USAGE)
    verdict = run_async(verify(Mode(mode), api_url, monitor_url, min_size, seconds))
    if not verdict.ok:
        fail(f"Not a cluster member after {timeout}: {verdict.sentence}.", EXIT_FAILURE)
    click.echo(f"Verified: {verdict.sentence}.")


if __name__ == "__main__":
    main()
