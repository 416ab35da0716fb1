"""Finding a node's management API: the local daemon's, or another node's from the registry."""

from __future__ import annotations

import os
from dataclasses import dataclass

from nimsforest.cli._client import DaemonClient
from nimsforest.cli._common import EXIT_FAILURE, EXIT_USAGE, fail


@dataclass(frozen=True)
class NodeApi:
    name: str
    api: str  # host:port of its management API


def _hostport(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


async def registry_nodes(registry_url: str) -> list[NodeApi]:
    """Every node the registry knows that advertises its management API."""
    from registry import RegistryError, open_registry

    reg = open_registry(registry_url, token=os.environ.get("REGISTRY_TOKEN"))
    try:
        async with reg:
            listed = await reg.list_nodes()
    except RegistryError as exc:
        fail(f"The registry at {registry_url} did not list its nodes: {exc}.", EXIT_FAILURE)
    return [NodeApi(n.name, _hostport(n.api_url)) for n in listed if n.api_url]


async def node_api(node: str | None, api: str | None, registry_url: str | None) -> str:
    """The API address (host:port) of `node`: the daemon at --api when no node is named,
    else the node's entry in the registry, else the daemon at --api if it is that node."""
    if node is None:
        return api or os.environ.get("NIMSFOREST_API") or "127.0.0.1:8080"
    if registry_url:
        for n in await registry_nodes(registry_url):
            if n.name == node:
                return n.api
        fail(f"There is no node '{node}' with a management API in the registry at "
             f"{registry_url}.", EXIT_USAGE)
    async with DaemonClient(api) as client:
        doc = await client.get_json("/api/v1/node/drain")
    if doc.get("node") == node:
        return api or os.environ.get("NIMSFOREST_API") or "127.0.0.1:8080"
    fail(f"The daemon at {client.base} is node '{doc.get('node')}', not '{node}': give "
         "--registry-url (or REGISTRY_URL) to find other nodes, or that node's --api.",
         EXIT_USAGE)
