"""`nimsforest drain [NODE]` and `nimsforest undrain [NODE]`, through the node's API."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click

from nimsforest.cli._client import DaemonClient
from nimsforest.cli._common import EXIT_FAILURE, fail, run_async
from nimsforest.cli._nodes import node_api

_API = click.option("--api", default=None,
                    help="The daemon's management address [NIMSFOREST_API, 127.0.0.1:8080].")
_REGISTRY = click.option("--registry-url", envvar="REGISTRY_URL", default=None,
                         help="Find NODE's API in this registry [REGISTRY_URL].")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print the final drain as JSON.")


async def wait_drained(client: DaemonClient, timeout: float, echo: bool = True) -> dict[str, Any]:
    """Poll the node's drain until it is drained; fail (exit 1) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    said = None
    while True:
        doc: dict[str, Any] = await client.get_json("/api/v1/node/drain")
        if echo and doc["sentence"] != said:
            said = doc["sentence"]
            click.echo(f"{doc['node']}: {said}", err=True)
        if doc["state"] == "drained":
            return doc
        if doc["state"] == "serving":
            fail(f"Node {doc['node']} was undrained meanwhile.", EXIT_FAILURE)
        if time.monotonic() > deadline:
            fail(f"Node {doc['node']} did not drain within {timeout:.0f}s: {doc['sentence']}.",
                 EXIT_FAILURE)
        await asyncio.sleep(0.5)


async def _drain(node: str | None, api: str | None, registry_url: str | None, wait: bool,
                 timeout: float) -> dict[str, Any]:
    target = await node_api(node, api, registry_url)
    async with DaemonClient(target) as client:
        resp = await client.request("POST", "/api/v1/node/drain")
        doc: dict[str, Any] = client.json_or_fail(resp, (202,))
        return await wait_drained(client, timeout) if wait else doc


async def _undrain(node: str | None, api: str | None, registry_url: str | None) -> dict[str, Any]:
    target = await node_api(node, api, registry_url)
    async with DaemonClient(target) as client:
        resp = await client.request("POST", "/api/v1/node/undrain")
        doc: dict[str, Any] = client.json_or_fail(resp, (200,))
        return doc


def _say(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"{doc['node']}: {doc['sentence']}")


@click.command("drain")
@click.argument("node", required=False)
@_API
@_REGISTRY
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the node is drained.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds to wait for the drain (exit 1 after).")
@_JSON
def drain(node: str | None, api: str | None, registry_url: str | None, wait: bool,
          timeout: float, as_json: bool) -> None:
    """Drain a node: it takes no new work and hands over everything it leads.

    \b
    Its forest stops pulling, new River input is answered 503 with Retry-After (send it
    to another node), every meta, stream and consumer leadership it holds moves to a
    current replica elsewhere, and /health answers 503 `drained` so load balancers move
    on. Each single-replica stream held only there is moved to another serving node
    first (with none to take it, the drain says so and is not done). The drain is kept in the node's data directory: the node starts drained until
    `nimsforest undrain`. Without NODE, the daemon at --api is drained.

    \b
    Example:
      nimsforest drain n2 --registry-url http://registry:8500
    """
    _say(run_async(_drain(node, api, registry_url, wait, timeout)), as_json)


@click.command("undrain")
@click.argument("node", required=False)
@_API
@_REGISTRY
@_JSON
def undrain(node: str | None, api: str | None, registry_url: str | None, as_json: bool) -> None:
    """Serve again after `nimsforest drain`: the forest pulls, input is taken, /health is 200.

    Without NODE, the daemon at --api is undrained.
    """
    _say(run_async(_undrain(node, api, registry_url)), as_json)
