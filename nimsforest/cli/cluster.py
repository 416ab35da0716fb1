"""`nimsforest cluster status`: members, streams and the health of every node."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click
import httpx
from tabulate import tabulate

from nimsforest.cli._client import DaemonClient
from nimsforest.cli._common import run_async
from nimsforest.cli.rolling import restart


@click.group()
def cluster() -> None:
    """Look at the cluster this node belongs to, or restart it one node at a time."""


async def _probe_node(name: str, monitor_url: str | None) -> dict[str, Any]:
    """One node's own view: /healthz (JetStream health) and /varz (load) of its NATS."""
    out: dict[str, Any] = {"name": name, "monitor_url": monitor_url}
    if not monitor_url:
        out["error"] = "no monitoring URL known (NATS_MONITOR_PORT=0?)"
        return out
    try:
        async with httpx.AsyncClient(base_url=monitor_url, timeout=3, trust_env=False) as client:
            healthz, varz = await asyncio.gather(client.get("/healthz"), client.get("/varz"))
        out["jetstream_ok"] = healthz.status_code == 200
        if healthz.status_code != 200:
            out["jetstream_error"] = healthz.json().get("error")
        v = varz.json()
        out.update(cpu=v.get("cpu"), mem=v.get("mem"), connections=v.get("connections"),
                   version=v.get("version"), uptime=v.get("uptime"))
    except (httpx.HTTPError, ValueError) as exc:
        out["error"] = f"unreachable ({type(exc).__name__})"
    return out


async def _status(api: str | None) -> dict[str, Any]:
    async with DaemonClient(api) as client:
        doc = await client.get_json("/health/cluster", ok=(200, 503))
    members = [{"name": doc["node"], "state": "self", "monitor_url": doc.get("monitor_url"),
                "address": None, "routed": None, "in_registry": None}]
    members += [p for p in doc.get("peers", [])]
    probes = await asyncio.gather(*(_probe_node(m["name"], m.get("monitor_url")) for m in members))
    return {"cluster": doc, "nodes": list(probes)}


def _mb(value: Any) -> str:
    return f"{value / 1048576:.0f}MB" if isinstance(value, (int, float)) else "-"


def _render(result: dict[str, Any]) -> str:
    doc, nodes = result["cluster"], {n["name"]: n for n in result["nodes"]}
    lines = [
        f"Cluster of {doc['size']} node(s) seen from {doc['node']}: replication {doc['replication_factor']}, "
        f"meta leader {doc.get('meta_leader') or 'none'}, {doc['status']}",
        f"Last decision: {doc.get('last_sentence')}",
    ]
    if doc.get("problems"):
        lines.append("Problems: " + "; ".join(doc["problems"]))
    rows = []
    peers = [{"name": doc["node"], "state": "self"}, *doc.get("peers", [])]
    for p in peers:
        n = nodes.get(p["name"], {})
        health = n.get("error") or ("ok" if n.get("jetstream_ok") else f"not ok: {n.get('jetstream_error')}")
        rows.append([p["name"], p["state"], p.get("address") or "-",
                     _yes(p.get("routed")), _yes(p.get("in_registry")), health,
                     f"{n['cpu']:.1f}%" if isinstance(n.get("cpu"), (int, float)) else "-",
                     _mb(n.get("mem")), n.get("connections", "-")])
    lines += ["", "MEMBERS", tabulate(rows, headers=["NODE", "STATE", "ADDRESS", "ROUTED", "REGISTRY",
                                                     "JETSTREAM", "CPU", "MEM", "CONNS"])]
    srows = [[s["name"], s["replicas"], s.get("leader") or "-", _yes(s["current"]), s.get("messages", "-"),
              s.get("consumers", "-"), ", ".join(s.get("lagging") or []) or "-"] for s in doc.get("streams", [])]
    lines += ["", "STREAMS", tabulate(srows, headers=["NAME", "REPLICAS", "LEADER", "CURRENT", "MESSAGES",
                                                      "CONSUMERS", "LAGGING"])]
    return "\n".join(lines)


def _yes(v: Any) -> str:
    return "-" if v is None else ("yes" if v else "no")


@cluster.command("status")
@click.option("--api", default=None, help="The daemon's management address [NIMSFOREST_API, 127.0.0.1:8080].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(api: str | None, as_json: bool) -> None:
    """Members, streams (replication, leader, consumers) and every node's health.

    Asks the local daemon for its view of the cluster, then each member's NATS
    monitoring port for its own JetStream health and load.
    """
    result = run_async(_status(api))
    click.echo(json.dumps(result, indent=2) if as_json else _render(result))


cluster.add_command(restart)
